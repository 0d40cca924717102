"""Sliding-window attention: the mask in training, the ring-buffer cache in decoding, equal to the
full masked forward past the window; the FlexAttention path equals the SDPA one."""
import dataclasses

import pytest
import torch

import zoo
from zoo.components import causal_sdpa, flex_attention_fn
from zoo_plugins.attention.gqa import GroupedQueryAttention


def _decode(model, idx, prompt):
    cache = model.new_cache(idx.shape[0], idx.shape[1])
    parts = [model(idx[:, :prompt], cache=cache)[0]]
    for t in range(prompt, idx.shape[1]):
        parts.append(model(idx[:, t:t + 1], cache=cache)[0])
    return torch.cat(parts, 1), cache


@pytest.mark.parametrize("posenc", ["rope", "alibi", "learned"])
@pytest.mark.parametrize("prompt", [1, 4, 6, 19, 32])
def test_decoding_past_the_window_equals_the_full_masked_forward(posenc, prompt):
    torch.manual_seed(0)
    model = zoo.build("mixtral", "tiny", posenc={"name": posenc}, **{"attention.params.window": 6}).eval()
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        full, _ = model(idx)
        dec, cache = _decode(model, idx, prompt)
    torch.testing.assert_close(dec, full, atol=1e-5, rtol=0)
    assert all(layer.k.shape[2] == 6 for layer in cache.layers)  # the cache is a ring buffer of the window


def test_the_window_changes_the_model_and_a_long_window_does_not():
    torch.manual_seed(0)
    idx = torch.randint(0, 96, (2, 32))
    base = zoo.build("llama", "tiny").eval()
    state = base.state_dict()
    outs = {}
    for w in (None, 32, 8):
        m = zoo.build("llama", "tiny", **{"attention.params.window": w}).eval()
        m.load_state_dict(state)
        with torch.no_grad():
            outs[w] = m(idx)[0]
    torch.testing.assert_close(outs[32], outs[None], atol=1e-5, rtol=0)  # window = context: no change
    torch.testing.assert_close(outs[8][:, :8], outs[None][:, :8], atol=1e-5, rtol=0)  # inside the first window
    assert (outs[8][:, 8:] - outs[None][:, 8:]).abs().max() > 1e-3


def test_mask_is_the_window():
    q_pos = torch.arange(10)
    q = torch.randn(1, 2, 10, 4)
    k = torch.randn(1, 2, 10, 4)
    v = torch.eye(10)[None, None].expand(1, 2, 10, 10)  # value of key j is the one-hot e_j
    y = causal_sdpa(q, k, v, q_pos, q_pos, window=3)  # (1, 2, 10, 10): attention weights
    allowed = (q_pos[:, None] >= q_pos[None]) & (q_pos[:, None] - q_pos[None] < 3)
    assert ((y[0, 0] > 0) == allowed).all()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.skipif(flex_attention_fn(compiled=False) is None, reason="this torch has no flex_attention")
@pytest.mark.parametrize("case", ["window", "alibi", "window+alibi+gqa", "cache slots"])
def test_flex_attention_path_equals_sdpa(case):
    """The CUDA path (FlexAttention) against SDPA with a mask, run eagerly on the CPU."""
    from zoo_plugins.posenc.alibi import alibi_slopes
    torch.manual_seed(0)
    H, Hkv, T = 4, (2 if "gqa" in case else 4), 20
    q, k, v = torch.randn(2, H, T, 8), torch.randn(2, Hkv, T, 8), torch.randn(2, Hkv, T, 8)
    q_pos = k_pos = torch.arange(T)
    if case == "cache slots":  # a ring buffer after wrap-around: slots out of order, one empty
        k_pos = torch.tensor([16, 17, 18, 19, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, -1, 1, 2, 3])
        q, q_pos = q[:, :, -4:], torch.arange(16, 20)
    window = 5 if "window" in case or case == "cache slots" else None
    bias = None
    if "alibi" in case:
        bias = -alibi_slopes(H)[:, None, None] * (q_pos[:, None] - k_pos[None, :]).float()  # (H, Tq, Tk)
    ref = causal_sdpa(q, k, v, q_pos, k_pos, bias=bias, window=window, backend="sdpa")
    got = causal_sdpa(q, k, v, q_pos, k_pos, bias=bias, window=window, backend="flex")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_kit_catches_a_cache_that_ignores_the_window():
    """A ring buffer written before attending loses keys in a multi-token prefill past the window;
    the conformance check for windowed attention must fail it."""

    class WriteFirst(GroupedQueryAttention):
        def forward(self, x, posenc, pos, cache=None):
            from einops import rearrange
            q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim,
                                         self.n_kv_heads * self.head_dim], dim=-1)
            q = rearrange(q, "b t (h d) -> b h t d", h=self.n_heads)
            k = rearrange(k, "b t (h d) -> b h t d", h=self.n_kv_heads)
            v = rearrange(v, "b t (h d) -> b h t d", h=self.n_kv_heads)
            q, k = posenc.rotate(q, pos), posenc.rotate(k, pos)
            k_pos = pos
            if cache is not None:
                k, v, k_pos = cache.update(k, v, pos)
            y = causal_sdpa(q, k, v, pos, k_pos, window=self.window, full_causal=cache is None)
            return self.proj(rearrange(y, "b h t d -> b t (h d)"))

    from zoo.testing import check_sliding_window_cache_matches_full, checks_for
    comp = dataclasses.replace(zoo.get_registry().get("attention", "gqa"), name="write-first", cls=WriteFirst)
    assert "check_sliding_window_cache_matches_full" in {c.name for c in checks_for(comp)}
    with pytest.raises(AssertionError, match="prefill .* vs full forward"):
        check_sliding_window_cache_matches_full(comp)
