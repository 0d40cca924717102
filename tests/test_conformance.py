"""The conformance kit over the whole registry, and proof that the kit catches broken components."""
import torch
import torch.nn as nn

import zoo
from zoo.components import KVCache, causal_sdpa
from zoo.plugin.registry import Component
from zoo.testing import check_report, checks_for, parametrize_with_checks, run_checks
from zoo_plugins.attention.gqa import GroupedQueryAttention, TAGS as GQA_TAGS, MHA_PARAMS
from zoo_plugins.ffn.mlp import MLP, PARAMS as MLP_PARAMS, TAGS as MLP_TAGS


@parametrize_with_checks()
def test_registry_conformance(component, check):
    check(component)


def test_kit_covers_every_registered_component():
    reg = zoo.get_registry()
    for comp in reg.list_components():
        names = {c.name for c in checks_for(comp)}
        if comp.kind == "transform":  # applied to a tiny model, and to every named model with a cache
            assert {"check_transform_applies", "check_transform_cache_matches_full"} <= names, comp.name
        else:
            own = {"check_head_logits_and_loss"} if comp.kind == "head" else {"check_output_shape"}
            assert {"check_causality", "check_gradients"} | own <= names, comp.name
    assert reg.list_components("transform"), "no transform registered: the built-in lora is missing"


# ---- broken components: the kit must fail them -------------------------------------------------

class PeekingAttention(GroupedQueryAttention):
    """Attends to the future: no causal mask."""

    def __init__(self, dims, **params):
        super().__init__(dims, n_kv_heads=dims.n_heads, **params)

    def forward(self, x, posenc, pos, cache=None):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(*x.shape[:2], self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # no mask
        return self.proj(y.transpose(1, 2).reshape(x.shape))


class ForgetfulCache(KVCache):
    """Drops everything but the newest token: decoding diverges from the full forward."""

    def update(self, k, v, pos):
        return k, v, pos


class ForgetfulAttention(GroupedQueryAttention):
    def __init__(self, dims, **params):
        super().__init__(dims, n_kv_heads=dims.n_heads, **params)

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return ForgetfulCache(batch, self.n_kv_heads, max_len, self.head_dim, device=device, dtype=dtype)


class BatchMixingFFN(MLP):
    """Leaks information across the batch."""

    def forward(self, x):
        return super().forward(x + x.mean(0, keepdim=True))


class DeadParamFFN(MLP):
    """Has a parameter that never receives a gradient."""

    def __init__(self, dims, **kw):
        super().__init__(dims, **kw)
        self.unused = nn.Parameter(torch.zeros(3))


def _status(comp):
    return {n: s for n, s, _ in run_checks(comp)}


def _messages(comp):
    return {n: m for n, s, m in run_checks(comp)}


def test_kit_fails_a_non_causal_attention():
    comp = Component("attention", "peeking", PeekingAttention, MHA_PARAMS, GQA_TAGS, "test", "0")
    st, msg = _status(comp), _messages(comp)
    assert st["check_causality"] == "failed" and "after changing later tokens" in msg["check_causality"]
    assert st["check_every_partner"] == "failed" and "causality with posenc" in msg["check_every_partner"]
    assert st["check_output_shape"] == "passed" and st["check_gradients"] == "passed"


def test_kit_fails_a_cache_that_forgets():
    comp = Component("attention", "forgetful", ForgetfulAttention, MHA_PARAMS, GQA_TAGS, "test", "0")
    st, msg = _status(comp), _messages(comp)
    assert st["check_kv_cache_matches_full"] == "failed"
    assert "vs full forward" in msg["check_kv_cache_matches_full"]
    assert st["check_causality"] == "passed" and st["check_every_partner"] == "passed"


def test_kit_fails_batch_mixing_and_dead_parameters():
    mixing = Component("ffn", "mixing", BatchMixingFFN, MLP_PARAMS, MLP_TAGS, "test", "0")
    assert _status(mixing)["check_batch_independence"] == "failed"
    assert "run alone vs in a batch" in _messages(mixing)["check_batch_independence"]
    dead = Component("ffn", "dead", DeadParamFFN, MLP_PARAMS, MLP_TAGS, "test", "0")
    assert _status(dead)["check_gradients"] == "failed"
    assert "received no gradient" in _messages(dead)["check_gradients"]
    assert _status(dead)["check_causality"] == "passed"


def test_known_failures_are_reported_as_xfail():
    comp = Component("attention", "peeking", PeekingAttention, MHA_PARAMS,
                     dict(GQA_TAGS, known_failures={"check_causality": "it peeks, on purpose"}), "test", "0")
    st = _status(comp)
    assert st["check_causality"] == "xfail"
    # a known failure that passes is flagged too
    ok = Component("attention", "mha2", GroupedQueryAttention, MHA_PARAMS,
                   dict(GQA_TAGS, known_failures={"check_output_shape": "not really"}), "test", "0")
    assert _status(ok)["check_output_shape"] == "xpass"


def test_sdpa_helper_masks_empty_cache_slots():
    q = torch.randn(1, 2, 1, 4)
    k = torch.randn(1, 2, 3, 4)
    v = torch.randn(1, 2, 3, 4)
    k_pos = torch.tensor([0, -1, -1])  # only slot 0 holds a token
    y = causal_sdpa(q, k, v, torch.tensor([0]), k_pos)
    torch.testing.assert_close(y, v[:, :, :1])


# ---- positional encodings must reach the mixer ---------------------------------------------------

class DeafAttention(GroupedQueryAttention):
    """Accepts every encoding but ignores posenc.rotate and posenc.bias (the attention of issue #13)."""

    def __init__(self, dims, **params):
        super().__init__(dims, n_kv_heads=dims.n_heads, **params)

    def forward(self, x, posenc, pos, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        y = causal_sdpa(q, k, v, pos, pos, full_causal=True)  # no rotate, no bias
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class RotaryOnlyDeafAttention(DeafAttention):
    """Applies rotary encodings but drops the additive bias."""

    def forward(self, x, posenc, pos, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = posenc.rotate(q, pos), posenc.rotate(k, pos)
        y = causal_sdpa(q, k, v, pos, pos, full_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def _deaf(cls, **tags):
    return Component("attention", "deaf", cls, MHA_PARAMS, dict(GQA_TAGS, kv_cache=False, sliding_window=None, **tags),
                     "test", "0")


def test_kit_fails_an_attention_that_ignores_rotate_and_bias():
    st, msg = _status(_deaf(DeafAttention)), _messages(_deaf(DeafAttention))
    assert st["check_posenc_changes_output"] == "failed"
    assert "rotary posenc 'rope'" in msg["check_posenc_changes_output"]
    assert st["check_causality"] == "passed" and st["check_every_partner"] == "passed"  # only the new check sees it
    half = _messages(_deaf(RotaryOnlyDeafAttention))["check_posenc_changes_output"]
    assert "bias posenc 'alibi'" in half and "posenc.bias" in half


def test_a_mixer_that_declares_it_ignores_relative_encodings_passes():
    comp = _deaf(DeafAttention, posenc=["absolute", "none"], posenc_ignores=["rotary", "bias"])
    rep = check_report(comp)
    assert all(c["status"] == "passed" for c in rep["checks"]), rep
    assert {"check": "check_posenc_changes_output", "reason": "it uses no rotary or bias encoding (tag posenc)"} \
        in rep["skipped"]


def test_check_report_names_skipped_checks_and_partners():
    reg = zoo.get_registry()
    rep = check_report(reg.get("attention", "mla"))
    skipped = {s["check"]: s["reason"] for s in rep["skipped"]}
    assert "sliding_window" in skipped["check_sliding_window_cache_matches_full"]
    partners = {c["check"]: set(c["partners"]) for c in rep["checks"]}
    assert {"posenc/rope", "posenc/alibi", "posenc/learned"} <= partners["check_every_partner"]
    assert partners["check_posenc_changes_output"] == {"posenc/rope", "posenc/alibi"}
    assert partners["check_output_shape"] == set()  # built alone
    assert "ffn/mlp" in partners["check_causality"]
