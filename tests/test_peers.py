"""zoo bench --vs transformers / --vs nanogpt PATH: the peers get the zoo model's very weights (equal
logits, equal greedy tokens), and the report holds both sides' times. No timing is asserted: the
ratios are recorded in docs/benchmarks.md, measured on a quiet machine."""
import json
import os
import textwrap

import pytest

from zoo.cli import main
from zoo.errors import ZooError
from zoo.perf import peers

# A model.py in nanoGPT's layout (GPT, GPTConfig, transformer.h.N.attn.c_attn, ...), written for this
# test from the GPT-2 equations, so the name mapping is checked without a nanoGPT checkout.
FAKE_NANOGPT = textwrap.dedent('''
    from dataclasses import dataclass
    import torch, torch.nn as nn, torch.nn.functional as F

    @dataclass
    class GPTConfig:
        block_size: int = 8
        vocab_size: int = 16
        n_layer: int = 1
        n_head: int = 1
        n_embd: int = 8
        dropout: float = 0.0
        bias: bool = True

    class Attn(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c_attn, self.c_proj, self.h = nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd), c.n_head
        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, self.h, -1).transpose(1, 2) for t in self.c_attn(x).split(C, 2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    class MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c_fc, self.c_proj = nn.Linear(c.n_embd, 4 * c.n_embd), nn.Linear(4 * c.n_embd, c.n_embd)
        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.ln_1, self.attn, self.ln_2, self.mlp = nn.LayerNorm(c.n_embd), Attn(c), nn.LayerNorm(c.n_embd), MLP(c)
        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(c.vocab_size, c.n_embd),
                                                  wpe=nn.Embedding(c.block_size, c.n_embd),
                                                  h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
                                                  ln_f=nn.LayerNorm(c.n_embd)))
            self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
            self.lm_head.weight = self.transformer.wte.weight
            print("number of parameters: (printed as nanoGPT does)")
        def forward(self, idx, targets=None):
            t = self.transformer
            x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
            for b in t.h:
                x = b(x)
            logits = self.lm_head(t.ln_f(x))
            loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            return logits, loss
''')


def test_nanogpt_gets_the_same_weights(tmp_path, capsys):
    (tmp_path / "model.py").write_text(FAKE_NANOGPT)
    res = peers.compare("nanogpt", preset="tiny", nanogpt_path=tmp_path, reps=2, warmup=1)
    assert res["max_logit_diff"] < 1e-5
    t = res["train"]
    assert t["zoo"]["reps"] == t["nanogpt"]["reps"] == 2
    assert t["zoo_speed_vs_peer"] == pytest.approx(t["nanogpt"]["median_s"] / t["zoo"]["median_s"])
    assert "decode" not in res  # nanoGPT's generate recomputes the context: only the training step compares
    assert "number of parameters" not in capsys.readouterr().out


def test_a_different_model_is_caught(tmp_path):
    # a model.py whose layers differ (no bias in c_attn) cannot take the zoo's weights: refused, not timed
    (tmp_path / "model.py").write_text(FAKE_NANOGPT.replace("nn.Linear(c.n_embd, 3 * c.n_embd)",
                                                            "nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)"))
    with pytest.raises(ZooError, match="c_attn.bias"):
        peers.compare("nanogpt", preset="tiny", nanogpt_path=tmp_path, reps=1, warmup=0)


@pytest.mark.skipif(not os.environ.get("ZOO_NANOGPT"),
                    reason="set ZOO_NANOGPT to a nanoGPT checkout to compare with the real model.py (not in CI: "
                           "nanoGPT is no dependency)")
def test_real_nanogpt_checkout():
    res = peers.compare("nanogpt", preset="tiny", nanogpt_path=os.environ["ZOO_NANOGPT"], reps=2, warmup=1)
    assert res["max_logit_diff"] < 1e-5


def test_transformers_same_weights_and_tokens(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the comparison with transformers needs the hf extra")
    out = tmp_path / "peer.json"
    assert main(["bench", "--vs", "transformers", "--preset", "tiny", "--reps", "2", "--warmup", "1",
                 "--new-tokens", "6", "--prompt-len", "3", "--decode-batches", "1", "3", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["max_logit_diff"] < 1e-5
    for b in ("b1", "b3"):
        d = res["decode"][b]
        assert d["same_tokens"] is True
        assert d["zoo_speed_vs_peer"] == pytest.approx(d["transformers"]["median_s"] / d["zoo"]["median_s"])
    assert "zoo speed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["--vs", "nanogpt"], "needs the path"),
    (["--vs", "nanogpt", "/nonexistent-nanogpt"], "no model.py"),
    (["--vs", "transformers", "x"], "takes no path"),
    (["--vs", "a.json", "b.json"], "takes one earlier"),
    (["gpt2-rope", "--vs", "transformers"], "name no other model"),
])
def test_bad_peer_arguments(argv, msg, capsys):
    assert main(["bench", "--preset", "tiny", *argv]) == 2
    assert msg in capsys.readouterr().err
