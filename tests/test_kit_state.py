"""The kit's checks for mixers that carry state (CarriesState) and segment mixers (Segmented): the toy
EMA mixer of tests/plugins/zoo-toys and a toy segment mixer pass them, and each check fails a mixer
that does the wrong thing (and the checks before it let that mixer through: each new check is needed)."""
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from zoo.components import Dims
from zoo.plugin.protocols import Segmented, segment_of
from zoo.plugin.registry import Component
from zoo.testing import (check_batch_independence, check_causality, check_kv_cache_matches_full, check_report,
                         check_segment_decoding_keeps_boundaries, check_segment_memory_updates_at_boundaries,
                         check_state_carries_across_pieces, check_state_decoding_past_context,
                         check_state_parallel_equals_recurrent, checks_for, skipped_checks)

sys.path.insert(0, str(Path(__file__).parent / "plugins" / "zoo-toys" / "src"))
from zoo_toys import ema  # noqa: E402

STATE_CHECKS = {"check_state_parallel_equals_recurrent", "check_state_carries_across_pieces",
                "check_state_decoding_past_context"}
SEGMENT_CHECKS = {"check_segment_decoding_keeps_boundaries", "check_segment_memory_updates_at_boundaries"}


def _comp(cls, name="toy", tags=ema.TAGS):
    return Component("attention", name, cls, ema.PARAMS if issubclass(cls, ema.EMAMixer) else {"type": "object"},
                     tags, "test", "0")


@pytest.fixture(autouse=True)
def _one_thread():
    """The checks run tiny tensors: one thread is faster than several fighting over two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- a toy segment mixer ---------------------------------------------------------------------

class SegMemCache:
    """The toy's generation cache: its carried state (tensors that are never changed in place, so a
    reference is a snapshot)."""

    rewind = "snapshot"

    def __init__(self):
        self.s = None

    def reset(self):
        self.s = None

    def snapshot(self):
        return self.s

    def restore(self, snap):
        self.s = snap

    @property
    def nbytes(self):
        return 0 if self.s is None else sum(t.numel() * t.element_size() for t in self.s.values())


class SegMem(nn.Module):
    """A segment mixer in miniature (the shape of Infini-attention): u = in_proj(x); the output at t
    in segment k is out_proj(mean of u over segment k up to t + M_k), with the memory
    M_k = a M_(k-1) + mean of u over segment k-1, updated when segment k-1 completes (M_0 = 0).
    Segments of ``segment`` tokens from the stream's start. The class flags make it wrong on purpose."""

    shift = 0  # the first segment is segment + shift tokens long: boundaries off by shift
    lag = False  # read the memory of one segment earlier
    frozen = False  # never update the memory
    fixed = False  # use the segment length it was built with, not the attribute
    whole_prefill = False  # a cached prefill longer than a segment is one segment

    def __init__(self, dims):
        super().__init__()
        C = dims.d_model
        self.in_proj = nn.Linear(C, C, bias=dims.bias)
        self.out_proj = nn.Linear(C, C, bias=dims.bias)
        self.segment = self._built = dims.block_size

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return SegMemCache()

    def forward_state(self, x, posenc, pos, state, segment=None):  # x: (B, T, C)
        u = self.in_proj(x)  # (B, T, C)
        B, T, _ = u.shape
        if state is None:
            z = u.new_zeros(B, u.shape[2])  # (B, C)
            n = torch.zeros(B, dtype=torch.long)
            state = {"M": z, "prev": z, "sum": z, "n": n, "k": n}
        st = dict(state)
        S = segment or (self._built if self.fixed else self.segment)
        outs, i = [], 0
        while i < T:
            n, k = int(st["n"][0]), int(st["k"][0])
            length = S + self.shift if k == 0 else S
            take = min(length - n, T - i)
            cs = st["sum"][:, None] + u[:, i:i + take].cumsum(1)  # (B, take, C)
            count = torch.arange(n + 1, n + take + 1, dtype=u.dtype)[:, None]  # (take, 1)
            outs.append(cs / count + (st["prev"] if self.lag else st["M"])[:, None])
            st["sum"], st["n"], i = cs[:, -1], st["n"] + take, i + take
            if n + take == length:  # the segment is complete
                if not self.frozen:
                    st["prev"], st["M"] = st["M"], 0.5 * st["M"] + st["sum"] / length
                st["sum"], st["n"], st["k"] = torch.zeros_like(st["sum"]), st["n"] * 0, st["k"] + 1
        return self.out_proj(torch.cat(outs, 1)), st  # (B, T, C)

    def forward(self, x, posenc, pos, cache=None):
        if cache is None:
            return self.forward_state(x, posenc, pos, None)[0]
        whole = self.whole_prefill and x.shape[1] > 1
        y, cache.s = self.forward_state(x, posenc, pos, cache.s, segment=max(x.shape[1], self.segment) if whole else None)
        return y


SEG_TAGS = {"causal": True, "kv_cache": True, "posenc": ["absolute", "none"]}


def _seg(**flags):
    name = "segmem" + "".join(f"-{k}" for k in flags)
    return _comp(type(name, (SegMem,), flags), name, SEG_TAGS)


# ---- the right mixers pass -------------------------------------------------------------------

def test_the_toy_mixers_pass_every_check_and_the_state_checks_apply_by_protocol():
    rep = check_report(_comp(ema.EMAMixer, "ema"))
    status = {c["check"]: c["status"] for c in rep["checks"]}
    assert STATE_CHECKS <= status.keys() and all(s == "passed" for s in status.values()), rep
    assert {s["check"]: s["reason"] for s in rep["skipped"]}["check_segment_memory_updates_at_boundaries"] \
        .startswith("it is no segment mixer")
    seg = _seg()
    assert isinstance(seg.cls(Dims(d_model=8, n_heads=2)), Segmented)
    rep = check_report(seg)
    status = {c["check"]: c["status"] for c in rep["checks"]}
    assert STATE_CHECKS | SEGMENT_CHECKS <= status.keys(), status
    assert all(s == "passed" for s in status.values()), [c for c in rep["checks"] if c["status"] != "passed"]
    # a softmax attention carries no state: the checks are skipped, with the reason
    import zoo
    mha = zoo.get_registry().get("attention", "mha")
    assert not (STATE_CHECKS | SEGMENT_CHECKS) & {c.name for c in checks_for(mha)}
    assert dict(skipped_checks(mha))["check_state_carries_across_pieces"] == \
        "it carries no state (no forward_state: CarriesState)"
    assert segment_of(mha.cls(Dims(d_model=8, n_heads=2))) is None


# ---- parallel vs recurrent: outputs, final state, gradients -------------------------------------

class PrefillForgets(ema.EMAMixer):
    """The parallel form ignores the state it is given (a prefill after a snapshot forgets)."""

    def forward_state(self, x, posenc, pos, state):
        return super().forward_state(x, posenc, pos, state if x.shape[1] == 1 else None)


class DetachedDecay(ema.EMAMixer):
    """The parallel form detaches the decay: same outputs, no gradient for it."""

    def _scan(self, u, h0):
        if u.shape[1] == 1:
            return super()._scan(u, h0)
        logit = self.decay_logit
        self.decay_logit = nn.Parameter(logit.detach())
        try:
            return super()._scan(u, h0)
        finally:
            self.decay_logit = logit


class CountsWrong(ema.EMAMixer):
    """The state also counts the tokens seen, which the parallel form restarts: the outputs agree,
    the final state does not."""

    def forward_state(self, x, posenc, pos, state):
        h, n = (None, 0) if state is None else (state["h"], state["n"])
        y, h = super().forward_state(x, posenc, pos, h)
        return y, {"h": h, "n": (n if x.shape[1] == 1 else 0) + torch.full((x.shape[0],), x.shape[1])}


class ChangesItsInput(ema.EMAMixer):
    """Updates the state it is given in place (one outside a graph)."""

    def forward_state(self, x, posenc, pos, state):
        y, h = super().forward_state(x, posenc, pos, state)
        if state is not None and not state.requires_grad:
            state.copy_(h.detach())
            return y, state
        return y, h


@pytest.mark.parametrize("cls, match", [
    (PrefillForgets, r"from the state after 5 tokens, 35 one-token calls vs one call over 35 tokens: outputs"),
    (DetachedDecay, r"from an empty state, .*: gradient of parameter decay_logit"),
    (CountsWrong, r"from the state after 5 tokens, .*: final state: state\['n'\]: "),
    (ChangesItsInput, r"forward_state must return a new state, not change the one it is given"),
])
def test_parallel_vs_recurrent_fails_forms_that_disagree(cls, match):
    comp = _comp(cls)
    with pytest.raises(AssertionError, match=match):
        check_state_parallel_equals_recurrent(comp)
    if cls is DetachedDecay:  # outputs, pieces and decoding agree: only this check sees it
        check_kv_cache_matches_full(comp)
        check_state_carries_across_pieces(comp)


# ---- pieces, decoding past the context, causality and batch independence of long streams -------

class Clock(ema.EMAMixer):
    """Adds a function of the absolute position: a stream carried over windows whose positions
    restart at 0 is not the stream in one pass."""

    def forward_state(self, x, posenc, pos, state):
        y, h = super().forward_state(x, posenc, pos, state)
        return y + 0.1 * torch.sin(pos.to(y.dtype)[:, None] * torch.linspace(0.1, 1, y.shape[-1])), h  # (B, T, C)


class ForgetsAtMaxLen(ema.EMAMixer):
    """Its cache empties itself when it has seen ``max_len`` tokens (as if it were a buffer)."""

    def new_cache(self, batch, max_len, device=None, dtype=None):
        cache = super().new_cache(batch, max_len, device, dtype)
        cache.seen, cache.max_len = 0, max_len
        return cache

    def forward(self, x, posenc, pos, cache=None):
        if cache is not None:
            if cache.seen + x.shape[1] > cache.max_len:
                cache.reset()
                cache.seen = 0
            cache.seen += x.shape[1]
        return super().forward(x, posenc, pos, cache)


class PeeksLate(ema.EMAMixer):
    """Sees the next token, but only past the context (position 16 on)."""

    def forward(self, x, posenc, pos, cache=None):
        y = super().forward(x, posenc, pos, cache)
        if cache is None and x.shape[1] > 17:
            y = torch.cat([y[:, :16], y[:, 16:-1] + x[:, 17:], y[:, -1:]], 1)
        return y


class MixesStates(ema.EMAMixer):
    """Starts every sequence from the batch's mean state."""

    def forward_state(self, x, posenc, pos, state):
        return super().forward_state(x, posenc, pos, None if state is None else state.mean(0, keepdim=True).expand_as(state))


def test_pieces_fail_a_mixer_that_depends_on_absolute_positions():
    comp = _comp(Clock)
    check_state_parallel_equals_recurrent(comp)  # both forms get the stream's positions
    with pytest.raises(AssertionError, match=r"two pieces of 1 and 34 tokens with the state carried: logits vs one pass"):
        check_state_carries_across_pieces(comp)


def test_decoding_past_the_context_fails_a_cache_that_forgets_there():
    comp = _comp(ForgetsAtMaxLen)
    check_kv_cache_matches_full(comp)  # within the context it is right
    with pytest.raises(AssertionError, match=r"prefill 1 \+ decode to 35 in a cache of 16 slots vs full forward"):
        check_state_decoding_past_context(comp)


def test_causality_and_batch_independence_run_long_streams_and_carried_states():
    with pytest.raises(AssertionError, match=r"logits before position 17 after changing later tokens"):
        check_causality(_comp(PeeksLate))
    with pytest.raises(AssertionError, match=r"sequence 1 run alone from its row of the state after 5 tokens vs in a "
                                             r"batch: outputs"):
        check_batch_independence(_comp(MixesStates))


# ---- segment mixers ---------------------------------------------------------------------------

@pytest.mark.parametrize("flags, match", [
    ({"lag": True}, r"the output at position 16, the first token of segment 1, does not change when the first "
                    r"token of segment 0 \(position 0\) changes"),
    ({"frozen": True}, r"the output at position 16, the first token of segment 1, does not change"),
    ({"shift": 1}, r"the first output that changes is at position 17 .*no boundary of segment 16"),
    ({"shift": -1}, r"the first output that changes is at position 15 .*no boundary of segment 16"),
    ({"fixed": True}, r"setting segment from 16 to 17 changed none of the 37 outputs"),
])
def test_memory_check_fails_a_memory_updated_at_the_wrong_time(flags, match):
    """Each wrong mixer is self-consistent (its forms and its cache agree with its forward); only the
    memory check sees that it updates its memory at the wrong time."""
    comp = _seg(**flags)
    with pytest.raises(AssertionError, match=match):
        check_segment_memory_updates_at_boundaries(comp)
    check_state_parallel_equals_recurrent(comp)
    check_segment_decoding_keeps_boundaries(comp)


def test_decoding_check_fails_a_prefill_that_ignores_a_boundary():
    comp = _seg(whole_prefill=True)
    check_kv_cache_matches_full(comp)  # prompts up to the context (one segment) are right
    check_state_decoding_past_context(comp)
    with pytest.raises(AssertionError, match=r"a prompt of 17 tokens \(ending just after a boundary\) decoded to 35 "
                                             r"vs the forward segment by segment"):
        check_segment_decoding_keeps_boundaries(comp)


def test_zoo_check_shows_the_state_checks(with_plugins, capsys):
    from zoo.cli import main
    with_plugins((types.SimpleNamespace(register_attention=ema.register_attention), "zoo-toys"))
    assert main(["check", "attention", "ema", "--verbose"]) == 0
    out = capsys.readouterr().out
    for name in STATE_CHECKS:
        assert f"attention/ema {name}: passed" in out
    assert "attention/ema check_segment_memory_updates_at_boundaries: it is no segment mixer" in out  # skipped
