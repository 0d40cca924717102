"""The public conformance kit: the checks the zoo runs on every component, for any component.

Modelled on scikit-learn's ``check_estimator`` / ``parametrize_with_checks``. Each check is a
function ``check_<property>(component)`` taking a registered :class:`zoo.plugin.registry.Component`; it
raises ``AssertionError`` with a message when the property does not hold. A component's tags decide
which checks apply, and known failures are given as ``{check_name: reason}``.

In a plugin package's tests::

    from zoo.testing import parametrize_with_checks

    @parametrize_with_checks(kind="ffn", names=["relu2"])
    def test_conformance(component, check):
        check(component)

Checks build components with ``tags["example_params"]`` if given, else the schema's defaults, at
tiny sizes, in float32 on the CPU. :func:`check_report` also says which checks a component's tags
skip (with the reason) and which partner components each check exercised (``zoo check`` shows both).
tiny sizes, in float32 on the CPU. A transform (built as ``cls(**params)``) is checked applied to a
tiny model, and applied to every named model at the ``tiny`` preset with the parameters it adds
moved away from their start (non-zero adapters): cached decoding must still equal the full forward.
"""
from __future__ import annotations

import copy
import dataclasses
import traceback
from dataclasses import dataclass

import torch
from jsonschema import Draft202012Validator

from ..errors import ZooError
from ..nn.transformer import Transformer, build_from_spec
from ..nn.transforms import apply_all
from ..plugin.base import PosEnc
from ..plugin.contract import KINDS, SLOT_ATTR, Dims
from ..plugin.protocols import MergesWeights, Transform, carries_state, max_positions_of, segment_of
from ..spec.catalog import get_registry
from ..spec.resolve import cross_field_problems, fill_defaults, posenc_uses, resolve_spec

DIMS = Dims(d_model=32, n_heads=4, n_layers=2, block_size=16, vocab_size=50, bias=True, dropout=0.0)
B, T = 2, 12
ATOL = 1e-5


LAYER_AND_POSENC = ("attention", "posenc", "ffn")  # the kinds most checks are for (a head has its own)


@dataclass
class CheckSpec:
    name: str
    fn: object
    kinds: tuple
    applies: object  # tags -> bool
    skip_reason: object = ""  # why it does not apply when ``applies`` or ``needs`` says no (or component -> why)
    needs: object = None  # component -> bool: what the class or an instance offers (a protocol), or None

    def __call__(self, component):
        return self.fn(component)

    def applies_to(self, component) -> bool:
        return component.kind in self.kinds and bool(self.applies(component.tags)) and (
            self.needs is None or bool(self.needs(component)))


CHECKS: list[CheckSpec] = []


def _check(kinds=LAYER_AND_POSENC, applies=lambda tags: True, skip="", needs=None):
    def deco(fn):
        CHECKS.append(CheckSpec(fn.__name__, fn, tuple(kinds), applies, skip, needs))
        return fn
    return deco


_EXERCISED: list = []  # (kind, name) of the partner components the running check built models with


# ---- helpers ----------------------------------------------------------------------------------

def component_params(comp, dims=DIMS) -> dict:
    params = comp.tags.get("example_params", {})
    return fill_defaults(comp.params_schema, params)


def make(comp, dims=DIMS, seed=0):
    torch.manual_seed(seed)
    return comp.cls(dims, **component_params(comp, dims))


def _partners(comp, reg):
    """For an attention: the posencs it uses (tag ``posenc``); for a posenc: the attentions that use it.
    Kinds a mixer only ignores (tag ``posenc_ignores``) are not partners: a model of such a pair alone
    is refused (no layer uses the encoding)."""
    if comp.kind == "attention":
        ok = posenc_uses(comp.tags)
        return [p for p in reg.list_components("posenc") if p.tags.get("kind") in ok]
    if comp.kind == "posenc":
        return [a for a in reg.list_components("attention") if comp.tags.get("kind") in posenc_uses(a.tags)]
    return []


def _reference(reg, kind, prefer, accept=lambda c: True):
    comps = [c for c in reg.list_components(kind) if accept(c)]
    for c in comps:
        if c.name == prefer:
            return c
    if not comps:
        raise AssertionError(f"no {kind} component is registered to test with")
    return comps[0]


def tiny_model(reg, attention, posenc, ffn, dims=DIMS, seed=0, head=None):
    """A two-layer Transformer from registered components (``ffn`` None: no ffn; ``head`` None: the
    next-token head), for checks that need a model."""
    spec = {"name": "conformance", "preset": "conformance", "norm": "layernorm", "bias": dims.bias,
            "tie_weights": True, "n_layers": dims.n_layers, "n_heads": dims.n_heads,
            "d_model": dims.d_model, "block_size": dims.block_size, "vocab_size": dims.vocab_size,
            "dropout": 0.0}
    view = dataclasses.replace(reg, components={k: dict(v) for k, v in reg.components.items()})
    parts = [("attention", attention), ("posenc", posenc), ("ffn", ffn), ("head", head)]
    for kind, c in parts:
        if c is None:
            spec[kind] = {"name": "none", "params": {}} if kind == "ffn" else {"name": "next_token", "params": {}}
            continue
        spec[kind] = {"name": c.name, "params": component_params(c, dims)}
        view.components[kind][c.name] = c  # the component under test need not be registered
    problems = cross_field_problems(view, spec)
    if problems:
        raise AssertionError(" ".join(problems))
    torch.manual_seed(seed)
    return Transformer(spec, attention.cls, posenc.cls, ffn.cls if ffn is not None else None,
                       component_cls=lambda kind, name: view.get(kind, name).cls,
                       head_cls=head.cls if head is not None else None).eval()


def model_for(comp, reg=None, partner=None, dims=DIMS, seed=0):
    """A tiny model with ``comp`` in its slot and reference components (mha, none/rope, mlp, the
    next-token head) elsewhere. The partners are recorded for :func:`check_report`."""
    reg = reg or get_registry()
    if comp.kind == "attention":
        pe = partner or _reference(reg, "posenc", "none", lambda p: p in _partners(comp, reg))
        parts = {"attention": comp, "posenc": pe, "ffn": _reference(reg, "ffn", "mlp")}
    elif comp.kind == "posenc":
        att = partner or _reference(reg, "attention", "mha", lambda a: a in _partners(comp, reg))
        parts = {"attention": att, "posenc": comp, "ffn": _reference(reg, "ffn", "mlp")}
    else:
        pe = _reference(reg, "posenc", "none")
        parts = {"attention": _reference(reg, "attention", "mha", lambda a: pe in _partners(a, reg)), "posenc": pe,
                 "ffn": comp if comp.kind == "ffn" else _reference(reg, "ffn", "mlp")}
        if comp.kind == "head":
            parts["head"] = comp
    for c in parts.values():
        if c is not comp and (c.kind, c.name) not in _EXERCISED:
            _EXERCISED.append((c.kind, c.name))
    return tiny_model(reg, dims=dims, seed=seed, **parts)


def run(comp, module, x, pos=None):
    """Call a component the way the model does. x: (B, T, C) -> (B, T, C)."""
    pos = torch.arange(x.shape[1]) if pos is None else pos
    if comp.kind == "attention":
        return module(x, PosEnc(DIMS), pos)
    if comp.kind == "ffn":
        return module(x)
    # posenc: everything its protocol offers, in one tensor
    out = module.embed(x, pos)  # (B, T, C)
    q = x.view(x.shape[0], x.shape[1], DIMS.n_heads, -1).transpose(1, 2)  # (B, H, T, D)
    out = out + module.rotate(q, pos).transpose(1, 2).reshape(x.shape)
    bias = module.bias(pos, pos)
    if bias is not None:
        out = out + bias.sum() * 0
    return out


def _x(seed=1, dtype=torch.float32, length=T):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, length, DIMS.d_model, generator=g).to(dtype)


def _close(a, b, what, atol=ATOL):
    diff = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    assert a.shape == b.shape, f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}"
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} exceeds {atol:g}"


def _token_wise(tags):
    return tags.get("token_wise", True)


# ---- the checks -------------------------------------------------------------------------------

@_check(kinds=KINDS)
def check_params_schema_valid(component):
    """The params schema is a valid JSON Schema of an object, and the defaults satisfy it."""
    s = component.params_schema
    Draft202012Validator.check_schema(s)
    assert s.get("type") == "object", "params schema must have type 'object'"
    errs = list(Draft202012Validator(s).iter_errors(component_params(component)))
    assert not errs, f"default/example params do not satisfy the schema: {errs[0].message}"


@_check(kinds=("attention", "posenc", "ffn", "head"))
def check_builds_from_defaults(component):
    """The class builds from Dims and its default (or example) params."""
    m = make(component)
    assert isinstance(m, torch.nn.Module), f"{component.cls} did not build an nn.Module"


@_check()
def check_output_shape(component):
    """(B, T, C) in, (B, T, C) out; a posenc's bias is (H, Tq, Tk) or None."""
    m = make(component).eval()
    x = _x()
    y = run(component, m, x)
    assert y.shape == x.shape, f"output shape {tuple(y.shape)}, expected {tuple(x.shape)}"
    if component.kind == "posenc":
        b = m.bias(torch.arange(3, 8), torch.arange(8))
        assert b is None or tuple(b.shape) == (DIMS.n_heads, 5, 8), f"bias shape {tuple(b.shape)}, expected (H, Tq, Tk)"


@_check()
def check_dtypes(component):
    """Runs in float32 and bfloat16, keeping the input's dtype and staying finite."""
    for dtype in (torch.float32, torch.bfloat16):
        m = make(component).to(dtype).eval()
        y = run(component, m, _x(dtype=dtype))
        assert y.dtype == dtype, f"{dtype} input gave {y.dtype} output"
        assert torch.isfinite(y.float()).all(), f"non-finite output in {dtype}"


@_check(kinds=("attention", "posenc", "ffn", "head"))
def check_causality(component):
    """Changing a future token changes no earlier output (a model with this component, and the
    component alone). A mixer that carries state or a segment mixer runs a stream that crosses two
    boundaries of the context (or of its segment), changed from its middle and from a boundary."""
    m = model_for(component)
    n = _stream_len(component)
    bound = max_positions_of(m.posenc)
    n = min(n, bound) if bound else n
    seg = _segment(component)
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, DIMS.vocab_size, (B, n), generator=g)
    mod = make(component).eval() if component.kind in ("attention", "ffn") and _token_wise(component.tags) else None
    x = _x(length=n)
    for t in sorted({n // 2, *((seg,) if seg and seg < n else ())}):
        idx2 = idx.clone()
        idx2[:, t:] = torch.randint(0, DIMS.vocab_size, (B, n - t), generator=g)
        with torch.no_grad():
            a, _ = m(idx)
            b, _ = m(idx2)
        _close(a[:, :t], b[:, :t], f"logits before position {t} after changing later tokens")
        if mod is not None:
            x2 = x.clone()
            x2[:, t:] = torch.randn_like(x2[:, t:])
            with torch.no_grad():
                _close(run(component, mod, x)[:, :t], run(component, mod, x2)[:, :t],
                       f"component output before position {t} after changing later inputs")


@_check(applies=lambda tags: tags.get("batch_independent", True), skip="tag batch_independent is False")
def check_batch_independence(component):
    """A sequence's output does not depend on the other sequences in the batch. A mixer that carries
    state runs a stream across two boundaries of the context (or of its segment), and also from a
    non-empty state: a sequence run alone from its row of the state gives its row of the outputs
    and of the new state."""
    m = make(component).eval()
    n = _stream_len(component)
    x = _x(length=n)
    with torch.no_grad():
        full = run(component, m, x)
        one = run(component, m, x[1:2])
    _close(full[1:2], one, "output of sequence 1 run alone vs in a batch")
    if _carries(component):
        pe, pos = PosEnc(DIMS), torch.arange(PREFIX, PREFIX + n)
        with torch.no_grad():
            _, s = m.forward_state(_x(seed=2)[:, :PREFIX], pe, torch.arange(PREFIX), None)
            y, new = m.forward_state(x, pe, pos, s)
            y1, new1 = m.forward_state(x[1:2], pe, pos, _map_state(s, lambda t: t[1:2]))
        what = f"sequence 1 run alone from its row of the state after {PREFIX} tokens vs in a batch"
        _close(y[1:2], y1, f"{what}: outputs")
        _states_near(_map_state(new, lambda t: t[1:2]), new1, f"{what}: new state")


@_check(kinds=("attention", "posenc", "ffn", "head"))
def check_gradients(component):
    """A backward pass gives finite gradients that reach every parameter."""
    m = model_for(component).train()
    idx = torch.randint(0, DIMS.vocab_size, (B, T), generator=torch.Generator().manual_seed(4))
    _, loss = m(idx, idx.roll(-1, 1))
    loss.backward()
    slot = f"blocks.0.{SLOT_ATTR[component.kind]}." if component.kind in SLOT_ATTR else f"{component.kind}."
    for name, p in m.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"parameter {name} received no gradient"
        assert torch.isfinite(p.grad).all(), f"parameter {name} has a non-finite gradient"
    own = [n for n, _ in m.named_parameters() if n.startswith(slot)]
    if own:
        assert any(m.get_parameter(n).grad.abs().sum() > 0 for n in own), "all of the component's gradients are zero"


@_check()
def check_state_dict_roundtrip(component):
    """Loading one instance's state_dict into a fresh one gives the same outputs."""
    a, b = make(component, seed=0).eval(), make(component, seed=1).eval()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    x = _x()
    with torch.no_grad():
        _close(run(component, a, x), run(component, b, x), "outputs after load_state_dict")


@_check()
def check_deterministic_eval(component):
    """In eval mode, two calls with the same input give the same output."""
    m = make(component).eval()
    x = _x()
    with torch.no_grad():
        _close(run(component, m, x), run(component, m, x), "two eval-mode calls", atol=0.0)


@_check(kinds=("attention", "posenc"))
def check_every_partner(component):
    """Every attention works with every posenc it accepts (and vice versa): a tiny model with each
    pair runs forward and backward, finite and causal."""
    reg = get_registry()
    partners = _partners(component, reg)
    assert partners, f"no registered {'posenc' if component.kind == 'attention' else 'attention'} fits it"
    for p in partners:
        m = model_for(component, reg, partner=p).train()
        idx = torch.randint(0, DIMS.vocab_size, (B, T), generator=torch.Generator().manual_seed(5))
        logits, loss = m(idx, idx.roll(-1, 1))
        assert torch.isfinite(loss), f"non-finite loss with {p.kind} {p.name!r}"
        loss.backward()
        m.eval()
        idx2 = idx.clone()
        idx2[:, -1] = (idx2[:, -1] + 1) % DIMS.vocab_size
        with torch.no_grad():
            _close(m(idx)[0][:, :-1], m(idx2)[0][:, :-1], f"causality with {p.kind} {p.name!r}")


def _prefill_decode(m, idx, prompt_len, cache_len, explicit_pos=False):
    """(logits (B, total, V), cache): prefill ``prompt_len`` tokens of ``idx`` (B, total) into a fresh
    cache of ``cache_len`` slots, then decode the rest one token at a time."""
    total = idx.shape[1]
    pos = torch.arange(total)  # (total,)
    with torch.no_grad():
        cache = m.new_cache(idx.shape[0], cache_len, dtype=torch.float32)
        parts = [m(idx[:, :prompt_len], cache=cache, pos=pos[:prompt_len] if explicit_pos else None)[0]]
        for t in range(prompt_len, total):
            parts.append(m(idx[:, t:t + 1], cache=cache, pos=pos[t:t + 1] if explicit_pos else None)[0])
    return torch.cat(parts, 1), cache


def _cache_matches_full(m, prompt_len, total, spare=0, explicit_pos=False, atol=ATOL, vocab=DIMS.vocab_size,
                        cache_len=None, full=None, idx=None, what=""):
    """Prefill ``prompt_len`` tokens, then decode one token at a time up to ``total``; the logits
    must equal one full forward pass (or ``full``, logits of ``idx``). ``spare`` extra cache slots
    stay empty and must be masked out (a static cache allocated for the whole context);
    ``explicit_pos`` passes positions as a tensor, as a compiled decode step does, instead of
    letting the cache count them; ``cache_len`` allocates that many slots instead (the generator
    allocates at most the context, ``block_size``, and decodes a state model past it)."""
    if idx is None:
        idx = torch.randint(0, vocab, (B, total), generator=torch.Generator().manual_seed(6))
    if full is None:
        with torch.no_grad():
            full, _ = m(idx)  # (B, total, V)
    out, cache = _prefill_decode(m, idx, prompt_len, total + spare if cache_len is None else cache_len, explicit_pos)
    what = (f"prefill {prompt_len} + decode to {total}" + (f", {spare} spare cache slots" if spare else "")
            + (f", a cache of {cache_len} slots" if cache_len is not None else "")
            + (", positions given" if explicit_pos else "") + what)
    assert cache.length == total, f"{what}: the cache counts {cache.length} positions, expected {total}"
    _close(out, full, f"{what} vs full forward", atol=atol)


# (prompt length, spare slots, explicit positions): a prompt of one token, a short prompt in a cache
# larger than needed, and prompts reaching the context limit (block_size); decoding covers every
# position between them.
KV_CACHE_CASES = ((1, 0, False), (2, 3, True), (DIMS.block_size - 1, 1, True), (DIMS.block_size, 0, False))


@_check(kinds=("attention", "posenc"), applies=lambda tags: tags.get("kv_cache", True), skip="tag kv_cache is False")
def check_kv_cache_matches_full(component):
    """Prefill plus token-by-token decode with the cache equals a full forward pass (float32,
    within 1e-5), for prompts of length 1 up to the context limit, with every partner component
    (every posenc for an attention, every attention for a posenc), and positions continue."""
    reg = get_registry()
    partners = [p for p in _partners(component, reg) if p.tags.get("kv_cache", True)]
    assert partners, "no partner component with a KV cache to test with"
    for p in partners:
        m = model_for(component, reg, partner=p).float()
        for prompt_len, spare, explicit in KV_CACHE_CASES:
            try:
                _cache_matches_full(m, prompt_len, DIMS.block_size, spare, explicit)
            except AssertionError as e:
                raise AssertionError(f"with {p.kind} {p.name!r}: {e}") from None


def _decode(m, idx, cache):
    """Logits (B, T, V) of feeding idx (B, T) one token at a time after what the cache holds."""
    return torch.cat([m(idx[:, t:t + 1], cache=cache)[0] for t in range(idx.shape[1])], 1)


@_check(kinds=("attention",), applies=lambda tags: tags.get("kv_cache", True))
def check_cache_rewinds(component):
    """The cache undoes tokens exactly as its ``rewind`` says (speculative decoding relies on it):
    after a prompt, k other tokens decoded and then undone -- ``truncate`` (rewind "truncate") or
    ``snapshot``/``restore`` (rewind "truncate" or "snapshot") -- decoding the true continuation
    gives the logits of a full forward pass (float32, within 1e-5). ``ModelCache.truncate`` refuses
    a cache that only takes snapshots, and ``snapshot`` one that cannot rewind ("none"), naming it."""
    from ..errors import ZooError
    m = model_for(component).float()
    P, k, total = 5, 3, DIMS.block_size
    g = torch.Generator().manual_seed(9)
    idx = torch.randint(0, DIMS.vocab_size, (B, total), generator=g)
    other = torch.randint(0, DIMS.vocab_size, (B, k), generator=g)
    with torch.no_grad():
        full = m(idx)[0][:, P:]  # (B, total - P, V)
        modes = set(m.new_cache(B, total).rewind_modes())
        ways = (["truncate"] if modes == {"truncate"} else []) + (["snapshot"] if modes <= {"truncate", "snapshot"} else [])
        for way in ways:
            cache = m.new_cache(B, total, dtype=torch.float32)
            m(idx[:, :P], cache=cache)
            snap = cache.snapshot() if way == "snapshot" else None
            _decode(m, other, cache)
            if way == "truncate":
                cache.truncate(P)
            else:
                cache.restore(snap)
            assert cache.length == P, f"after rewinding by {way}, the cache counts {cache.length} positions, not {P}"
            _close(_decode(m, idx[:, P:], cache), full, f"decoding after {k} tokens undone by {way} vs full forward")
        cache = m.new_cache(B, total, dtype=torch.float32)
        m(idx[:, :P], cache=cache)
        refusals = ([("truncate", lambda: cache.truncate(P - 1))] if modes != {"truncate"} else []) + \
                   ([("snapshot", cache.snapshot)] if "none" in modes else [])
        for what, call in refusals:
            try:
                call()
            except ZooError as e:
                assert "layer" in str(e), f"the refusal of {what} does not name the layer: {e}"
            else:
                raise AssertionError(f"ModelCache.{what} did not refuse caches with rewind modes {sorted(modes)}")


# ---- mixers that carry state (CarriesState) and segment mixers (Segmented) ----------------------

STATE_ATOL, STATE_RTOL = 1e-5, 1e-4  # two forms of one computation in float32: |a - b| <= atol + rtol |b|
PREFIX = 5  # tokens before the stream of a check that starts from a non-empty state
NO_STATE = "it carries no state (no forward_state: CarriesState)"
NO_SEGMENT = "it is no segment mixer (no int attribute segment: Segmented)"
NO_CACHE = "tag kv_cache is False"


def _carries(component) -> bool:
    """Whether an attention carries state across windows (:class:`CarriesState`, on the class)."""
    return component.kind == "attention" and carries_state(component.cls)


def _segment(component):
    """A segment mixer's segment length (``segment`` of an instance: :class:`Segmented`), or None
    (also when it does not build: check_builds_from_defaults reports that)."""
    if component.kind != "attention":
        return None
    try:
        return segment_of(make(component))
    except Exception:
        return None


def _stream_len(component) -> int:
    """How many tokens a check runs: T, and for a mixer that carries state or a segment mixer a
    stream that crosses two boundaries of its segment (or of the context, block_size) and decodes
    past the context."""
    seg = _segment(component)
    if not _carries(component) and seg is None:
        return T
    return 2 * max(DIMS.block_size, seg or 0) + 3


def _mixer_posenc(component, reg=None):
    """The encoding a state check calls a mixer with: its reference partner (``none`` where it
    takes it), recorded for :func:`check_report`."""
    reg = reg or get_registry()
    pe = _reference(reg, "posenc", "none", lambda p: p in _partners(component, reg))
    if (pe.kind, pe.name) not in _EXERCISED:
        _EXERCISED.append((pe.kind, pe.name))
    return make(pe).eval()


def _leaves(state, path="state"):
    """[(path, leaf)] of a state: a tensor, or tuples/lists/dicts of them (or of plain numbers)."""
    if isinstance(state, dict):
        return [x for k in sorted(state, key=str) for x in _leaves(state[k], f"{path}[{k!r}]")]
    if isinstance(state, (list, tuple)):
        return [x for i, v in enumerate(state) for x in _leaves(v, f"{path}[{i}]")]
    return [(path, state)]


def _map_state(state, fn):
    """The state with ``fn`` applied to each tensor."""
    if isinstance(state, dict):
        return {k: _map_state(v, fn) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_map_state(v, fn) for v in state)
    return fn(state) if isinstance(state, torch.Tensor) else state


def _near(a, b, what, atol=STATE_ATOL, rtol=STATE_RTOL):
    """a equals the reference b within atol + rtol |b|, elementwise."""
    assert a.shape == b.shape, f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}"
    if not a.numel():
        return
    a, b = a.detach().float(), b.detach().float()
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), f"{what}: non-finite values"
    diff = (a - b).abs()
    excess = (diff - rtol * b.abs()).max().item()
    assert excess <= atol, (f"{what}: max abs difference {diff.max().item():.3g} exceeds {atol:g} + {rtol:g} x "
                            f"|reference|")


def _states_near(a, b, what):
    """Two states hold the same tensors (structure, shapes, values)."""
    la, lb = _leaves(a), _leaves(b)
    assert [p for p, _ in la] == [p for p, _ in lb], (f"{what}: the states differ in structure, "
                                                      f"{[p for p, _ in la]} vs {[p for p, _ in lb]}")
    for (p, x), (_, y) in zip(la, lb):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            _near(torch.as_tensor(x), torch.as_tensor(y), f"{what}: {p}")
        else:
            assert x == y, f"{what}: {p} is {x!r} vs {y!r}"


@_check(kinds=("attention",), needs=_carries, skip=NO_STATE)
def check_state_parallel_equals_recurrent(component):
    """The parallel (chunked) form equals the recurrent one: one ``forward_state`` over L tokens
    against L calls of one token each, from an empty state and from the state after a few tokens,
    give the same outputs, the same final state (every tensor in it) and the same gradients of a
    loss on the outputs with respect to the input and every parameter (float32, within 1e-5 + 1e-4
    x |value|; for a gradient, 1e-4 x the largest |value| of the tensor is added, as its rounding
    grows with the sum it is); neither changes the state it was given. L crosses two boundaries of the context
    (and of a segment mixer's segment)."""
    m = make(component).train()
    pe = _mixer_posenc(component)
    L = _stream_len(component)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(B, L, DIMS.d_model, generator=g)  # (B, L, C)
    w = torch.randn(B, L, DIMS.d_model, generator=g)  # (B, L, C): the loss is sum(w * y)
    prefix = torch.randn(B, PREFIX, DIMS.d_model, generator=g)  # (B, PREFIX, C)
    with torch.no_grad():
        _, s0 = m.forward_state(prefix, pe, torch.arange(PREFIX), None)
    for start, state, off in (("an empty state", None, 0), (f"the state after {PREFIX} tokens", s0, PREFIX)):
        pos = torch.arange(off, off + L)  # (L,)
        given = _map_state(state, torch.clone)
        out = {}
        for form in ("parallel", "recurrent"):
            m.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_(True)
            if form == "parallel":
                y, s = m.forward_state(xi, pe, pos, state)  # (B, L, C)
            else:
                s, ys = state, []
                for t in range(L):
                    yt, s = m.forward_state(xi[:, t:t + 1], pe, pos[t:t + 1], s)  # (B, 1, C)
                    ys.append(yt)
                y = torch.cat(ys, 1)  # (B, L, C)
            _states_near(state, given, f"from {start}: the state given to the {form} form after the call "
                                       f"(forward_state must return a new state, not change the one it is given)")
            (y * w).sum().backward()
            grads = {"the input": xi.grad}
            grads.update((f"parameter {n}", p.grad) for n, p in m.named_parameters() if p.requires_grad)
            out[form] = (y.detach(), _map_state(s, torch.Tensor.detach), grads)
        (yp, sp, gp), (yr, sr, gr) = out["parallel"], out["recurrent"]
        what = f"from {start}, {L} one-token calls vs one call over {L} tokens"
        _near(yr, yp, f"{what}: outputs")
        _states_near(sr, sp, f"{what}: final state")
        for name, a in gr.items():
            b = gp[name]
            if a is None and b is None:
                continue
            zeros = torch.zeros_like(b if a is None else a)
            a, b = zeros if a is None else a, zeros if b is None else b
            # a gradient sums many terms, so its rounding scales with the tensor's largest entry
            _near(a, b, f"{what}: gradient of {name}", atol=STATE_ATOL + STATE_RTOL * b.abs().max().item())


@_check(kinds=("attention",), needs=_carries, skip=NO_STATE)
def check_state_carries_across_pieces(component):
    """A stream run in two pieces with the state carried (``Transformer.forward(idx, state=s)``,
    each piece's positions from 0 as the trainer's windows have them) equals one pass, for cuts at
    several points (after 1 token, at the context, mid-stream, before the last token, and around a
    segment mixer's boundary): the logits and each layer's final state; one pass with a state from
    empty equals the forward without one (float32, within 1e-5 + 1e-4 x |value|)."""
    m = model_for(component).float()
    L = _stream_len(component)
    seg = _segment(component)
    idx = torch.randint(0, DIMS.vocab_size, (B, L), generator=torch.Generator().manual_seed(12))
    cuts = sorted(c for c in {1, DIMS.block_size, L // 2, L - 1, *((seg - 1, seg, seg + 1) if seg else ())}
                  if 0 < c < L)
    with torch.no_grad():
        full = m(idx)[0]  # (B, L, V)
        ref = m.new_state()
        _near(m(idx, state=ref)[0], full, "one pass with a carried state (from empty) vs the forward without one")
        for c in cuts:
            st = m.new_state()
            first = m(idx[:, :c], state=st)[0]
            second = m(idx[:, c:], state=st)[0]
            what = f"two pieces of {c} and {L - c} tokens with the state carried"
            _near(torch.cat([first, second], 1), full, f"{what}: logits vs one pass")
            for i in m.carried_layers():
                _states_near(st.layers[i], ref.layers[i], f"{what}: layer {i}'s final state vs one pass")


@_check(kinds=("attention",), needs=lambda c: _carries(c) and c.tags.get("kv_cache", True),
        skip=lambda c: NO_STATE if not _carries(c) else NO_CACHE)
def check_state_decoding_past_context(component):
    """A mixer that carries state decodes past the training context as the generator runs it: a
    cache of at most ``block_size`` slots, positions given, prompts of 1, 2 and ``block_size``
    tokens, then token by token to more than twice the context; the logits equal one full forward
    over the whole stream (float32, within 1e-5 + 1e-4 x |value|)."""
    from ..generate.generation import context_window
    m = model_for(component).float()
    window, bounded = context_window(m)
    L = min(_stream_len(component), window) if bounded else _stream_len(component)
    idx = torch.randint(0, DIMS.vocab_size, (B, L), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        full = m(idx)[0]  # (B, L, V)
    for prompt_len in (1, 2, DIMS.block_size):
        out, cache = _prefill_decode(m, idx, prompt_len, min(L, window), explicit_pos=True)
        what = f"prefill {prompt_len} + decode to {L} in a cache of {min(L, window)} slots"
        assert cache.length == L, f"{what}: the cache counts {cache.length} positions, expected {L}"
        _near(out, full, f"{what} vs full forward")


@_check(kinds=("attention",), needs=lambda c: _segment(c) is not None and c.tags.get("kv_cache", True),
        skip=lambda c: NO_SEGMENT if _segment(c) is None else NO_CACHE)
def check_segment_decoding_keeps_boundaries(component):
    """A segment mixer keeps its boundaries (multiples of ``segment`` from the stream's start): the
    full forward equals the forward computed segment by segment (pieces of ``segment`` tokens with
    the state carried, when it carries state), and cached decoding with prompts ending just before,
    at and just after a boundary, on to a third segment past the context, equals both (float32,
    within 1e-5 + 1e-4 x |value|)."""
    from ..generate.generation import context_window
    m = model_for(component).float()
    S = segment_of(m.blocks[0].attn)
    L = 2 * S + 3
    window, _ = context_window(m)
    idx = torch.randint(0, DIMS.vocab_size, (B, L), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        full = m(idx)[0]  # (B, L, V)
        if m.carried_layers():
            st = m.new_state()
            by_segment = torch.cat([m(idx[:, k:k + S], state=st)[0] for k in range(0, L, S)], 1)  # (B, L, V)
            _near(full, by_segment, f"the full forward vs the forward segment by segment (segment {S}, "
                                    f"the state carried)")
    for prompt_len, where in ((S - 1, "just before"), (S, "at"), (S + 1, "just after")):
        out, cache = _prefill_decode(m, idx, prompt_len, min(L, window), explicit_pos=True)
        what = f"segment {S}: a prompt of {prompt_len} tokens (ending {where} a boundary) decoded to {L}"
        assert cache.length == L, f"{what}: the cache counts {cache.length} positions, expected {L}"
        _near(out, full, f"{what} vs the forward segment by segment")


@_check(kinds=("attention",), needs=lambda c: _segment(c) is not None, skip=NO_SEGMENT)
def check_segment_memory_updates_at_boundaries(component):
    """A segment mixer updates its memory when a segment completes, not before and not after
    (the mixer alone, float32): the output at the first token of segments 1 and 2 changes when the
    first or the last token of the segment before changes (the memory took in the whole segment: a
    memory that lags, is updated late or never fails); and with ``segment`` set to S + 1 on the
    instance instead of S, the first output that changes is at a boundary of S (a multiple of S),
    none before it (a memory updated, or a segment started, anywhere else fails, and so does a
    mixer that does not read its ``segment``)."""
    m = make(component).eval()
    pe = _mixer_posenc(component)
    S = segment_of(m)
    assert S >= 2, f"segment {S}: the kit needs segments of 2 tokens or more"
    L = 2 * (S + 1) + 3  # past the second boundary of S + 1 too
    g = torch.Generator().manual_seed(15)
    x = torch.randn(B, L, DIMS.d_model, generator=g)  # (B, L, C)
    pos = torch.arange(L)  # (L,)
    with torch.no_grad():
        y = m(x, pe, pos)  # (B, L, C)
        for k in (1, 2):
            t = k * S
            for j, which in (((k - 1) * S, "first"), (k * S - 1, "last")):
                x2 = x.clone()
                x2[:, j] = torch.randn(B, DIMS.d_model, generator=g)
                d = (m(x2, pe, pos)[:, t] - y[:, t]).abs().max().item()
                assert d > ATOL, (f"segment {S}: the output at position {t}, the first token of segment {k}, does "
                                  f"not change when the {which} token of segment {k - 1} (position {j}) changes "
                                  f"(max abs difference {d:.2g}): the memory must take in a segment when it "
                                  f"completes, before the next segment's first token")
        moved = copy.deepcopy(m)
        try:
            moved.segment = S + 1
        except AttributeError as e:
            raise AssertionError(f"cannot set segment on {type(m).__name__} ({e}): the kit moves a segment "
                                 f"mixer's boundaries by setting it (Segmented)") from None
        d = (moved(x, pe, pos) - y).abs().amax(dim=(0, 2))  # (L,)
    changed = (d > ATOL).nonzero().flatten().tolist()
    assert changed, (f"setting segment from {S} to {S + 1} changed none of the {L} outputs: the mixer must read "
                     f"its segment when it runs and place its boundaries there")
    first = changed[0]
    assert first >= S and first % S == 0, (
        f"with segment {S + 1} instead of {S}, the first output that changes is at position {first} (by "
        f"{d[first].item():.2g}), which is no boundary of segment {S} (a multiple of {S}, from {S} on): the "
        f"memory is updated, or a segment starts, at the wrong time")


# ---- positional encodings reach the mixer ------------------------------------------------------

RELATIVE_KINDS = ("rotary", "bias")  # the encodings a mixer applies itself, through rotate and bias


def _relative_kinds(tags):
    return [k for k in posenc_uses(tags) if k in RELATIVE_KINDS]


@_check(kinds=("attention",), applies=lambda tags: bool(_relative_kinds(tags)),
        skip="it uses no rotary or bias encoding (tag posenc)")
def check_posenc_changes_output(component):
    """A mixer that uses rotary or bias encodings is changed by them, relatively: with such an
    encoding (one registered posenc of each kind it uses), shifting every position by a constant
    changes nothing (within 1e-4), while spreading the positions apart (same order, other distances)
    changes the output, and so does the encoding itself against none at the same positions. An
    attention that ignores ``posenc.rotate`` or ``posenc.bias`` fails."""
    reg = get_registry()
    n = 6  # positions 0..5, shifted by 3 and spread x2 stay within DIMS.block_size
    x = _x()[:, :n]  # (B, n, C)
    pos = torch.arange(n)  # (n,)
    for kind in _relative_kinds(component.tags):
        pes = [p for p in reg.list_components("posenc") if p.tags.get("kind") == kind]
        assert pes, f"no registered {kind} posenc to test with"
        pe_comp = next((p for p in pes if p.name in ("rope", "alibi")), pes[0])
        if (pe_comp.kind, pe_comp.name) not in _EXERCISED:
            _EXERCISED.append((pe_comp.kind, pe_comp.name))
        m, pe = make(component).eval(), make(pe_comp).eval()
        what = f"with {kind} posenc {pe_comp.name!r}"
        with torch.no_grad():
            y = m(x, pe, pos)  # (B, n, C)
            shifted = m(x, pe, pos + 3)
            spread = m(x, pe, pos * 2)
            plain = m(x, PosEnc(DIMS), pos)
        _close(shifted, y, f"{what}: output at positions shifted by 3 vs unshifted (relative positions unchanged)",
               atol=1e-4)
        for other, how in ((spread, "positions spread x2 (same order, other distances)"),
                           (plain, "no encoding at the same positions")):
            diff = (other - y).abs().max().item()
            assert diff > 1e-4, (f"{what}: the output with {how} equals the output with the encoding (max abs "
                                 f"difference {diff:.2g}): does the mixer apply posenc.rotate to its queries and keys "
                                 f"and add posenc.bias to its scores? If it does not use {kind} encodings, say so "
                                 f"with the tag posenc_ignores instead of posenc.")


# ---- heads -----------------------------------------------------------------------------------

@_check(kinds=("head",))
def check_head_logits_and_loss(component):
    """A model with the head gives logits (B, T, V) and a finite scalar loss with targets, the same
    logits and no loss without them, ignores targets of -1, and its own parameters are under
    ``head.`` in the model's state dict."""
    m = model_for(component).train()
    g = torch.Generator().manual_seed(9)
    idx = torch.randint(0, DIMS.vocab_size, (B, T), generator=g)
    targets = idx.roll(-1, 1)
    logits, loss = m(idx, targets)
    assert tuple(logits.shape) == (B, T, DIMS.vocab_size), f"logits shape {tuple(logits.shape)}, expected (B, T, V)"
    assert loss is not None and loss.dim() == 0, "with targets the head must return a scalar loss"
    assert torch.isfinite(loss), f"non-finite loss {loss.item()}"
    m.eval()
    with torch.no_grad():
        a, loss_none = m(idx)
        b, _ = m(idx, targets)
        masked = targets.clone()
        masked[:, -3:] = -1
        _, loss_masked = m(idx, masked)
    assert loss_none is None, "without targets the head must return loss None"
    _close(a, b, "logits with and without targets")
    assert torch.isfinite(loss_masked), "targets of -1 (ignored positions) gave a non-finite loss"
    own = {n for n, _ in make(component).named_parameters()}
    in_model = {n.removeprefix("head.") for n in m.state_dict() if n.startswith("head.")}
    assert own <= in_model, f"head parameters {sorted(own - in_model)} are not under 'head.' in the model"


@_check(kinds=("head",))
def check_head_cached_decoding(component):
    """Generation goes through the head: prefill plus token-by-token decoding with the cache equals a
    full forward pass (float32, within 1e-5)."""
    m = model_for(component).float()
    for prompt_len in (1, DIMS.block_size // 2):
        _cache_matches_full(m, prompt_len, DIMS.block_size)


# ---- sliding windows (tag "sliding_window": the name of the window param) ----------------------

def _windowed(comp, window):
    """The component with its window param set, as an unregistered Component."""
    param = comp.tags["sliding_window"]
    tags = dict(comp.tags, example_params=dict(comp.tags.get("example_params", {}), **{param: window}))
    return dataclasses.replace(comp, tags=tags)


@_check(kinds=("attention",), applies=lambda tags: bool(tags.get("sliding_window")),
        skip="no tag sliding_window (the name of a window param)")
def check_sliding_window_cache_matches_full(component):
    """With a window shorter than the context, the window is honoured (a token's logits do not
    depend on tokens further back than the layers' windows reach) and prefill plus decoding past
    the window, through the cache's ring buffer, equals the full masked forward (float32)."""
    window = 5
    comp = _windowed(component, window)
    m = model_for(comp)
    idx = torch.randint(0, DIMS.vocab_size, (B, DIMS.block_size), generator=torch.Generator().manual_seed(8))
    idx2 = idx.clone()
    idx2[:, 0] = (idx2[:, 0] + 1) % DIMS.vocab_size
    reach = DIMS.n_layers * (window - 1) + 1  # first position that token 0 cannot reach
    with torch.no_grad():
        a, b = m(idx)[0], m(idx2)[0]
    _close(a[:, reach:], b[:, reach:], f"logits at positions >= {reach} after changing token 0 (window {window})")
    assert (a[:, 1:reach] - b[:, 1:reach]).abs().max() > 0, "changing token 0 changed no later logits"
    for prompt_len in (1, window - 1, window + 2, DIMS.block_size):
        _cache_matches_full(m, prompt_len, DIMS.block_size)


# ---- transforms -------------------------------------------------------------------------------

TRANSFORM_ATOL = 1e-4  # cached decoding vs the full forward of a transformed named model
TRANSFORM_PRESET = "tiny"


def make_transform(comp):
    """A transform component's object, from its example params (or the schema's defaults)."""
    return comp.cls(**component_params(comp))


def _move_added(model, before, seed=0):
    """Move every parameter that is not in ``before`` (those the transform added) away from its
    start by N(0, 0.1): non-zero adapters, gains other than 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n not in before and p.is_floating_point():
                p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.dtype))


def transformed(comp, spec, reg=None, seed=0):
    """(model with the transform applied and its added parameters moved, the same model without it)
    of a resolved spec, in eval mode; raises ZooError where the transform refuses the model."""
    reg = reg or get_registry()
    torch.manual_seed(seed)
    plain = build_from_spec(spec, reg).float().eval()
    model = copy.deepcopy(plain)
    before = {n for n, _ in model.named_parameters()}
    apply_all(model, [make_transform(comp)])
    _move_added(model, before, seed)
    return model.eval(), plain


def check_transform_decoding(comp, name, reg=None, preset=TRANSFORM_PRESET, atol=TRANSFORM_ATOL):
    """Named model ``name`` at ``preset`` with the transform applied (added parameters moved):
    prefill and token-by-token decoding with the cache equal the full forward (``atol``). Returns
    whether the transform changed the model's logits, or None where it refuses the model by name
    (a ZooError), the model does not resolve at ``preset`` or its mixer keeps no cache."""
    reg = reg or get_registry()
    try:
        spec = resolve_spec(reg, name, preset)
    except ZooError:  # a model that does not resolve at this preset is its own problem, not the transform's
        return None
    if not reg.get("attention", spec["attention"]["name"]).tags.get("kv_cache", True):
        return None
    try:
        model, plain = transformed(comp, spec, reg)
    except ZooError:
        return None
    total = min(8, spec["block_size"])
    try:
        _cache_matches_full(model, 3, total, atol=atol, vocab=spec["vocab_size"])
    except AssertionError as e:
        raise AssertionError(f"model {name!r} ({preset}) with transform {comp.name!r}: {e}") from None
    idx = torch.randint(0, spec["vocab_size"], (B, total), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return bool((model(idx)[0] - plain(idx)[0]).abs().max() > atol)


@_check(kinds=("transform",))
def check_transform_applies(component):
    """Built as ``cls(**params)`` it is a Transform; applied to a tiny model, the model runs forward
    and backward, finite, with gradients reaching every parameter left trainable; a transform that
    merges (:class:`zoo.plugin.protocols.MergesWeights`) gives a state dict whose plain model has
    the transformed model's logits."""
    t = make_transform(component)
    assert isinstance(t, Transform), f"{component.cls} built no Transform (it has no apply(model))"
    reg = get_registry()
    pe = _reference(reg, "posenc", "none")
    plain = tiny_model(reg, _reference(reg, "attention", "mha", lambda a: pe in _partners(a, reg)), pe,
                       _reference(reg, "ffn", "mlp"))
    m = copy.deepcopy(plain)
    before = {n for n, _ in m.named_parameters()}
    apply_all(m, [t])
    _move_added(m, before)
    m.train()
    idx = torch.randint(0, DIMS.vocab_size, (B, T), generator=torch.Generator().manual_seed(4))
    logits, loss = m(idx, idx.roll(-1, 1))
    assert logits.shape == (B, T, DIMS.vocab_size), f"logits {tuple(logits.shape)} after the transform"
    assert torch.isfinite(loss), "non-finite loss after the transform"
    loss.backward()
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    assert trainable, "the transform left no parameter trainable"
    for n, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"parameter {n} got no finite gradient"
    if isinstance(t, MergesWeights):
        m.eval()
        merged = copy.deepcopy(plain)
        merged.load_state_dict(t.merge(m.state_dict()))
        with torch.no_grad():
            _close(merged(idx)[0], m(idx)[0], "logits of the merged state dict vs the transformed model",
                   atol=TRANSFORM_ATOL)


@_check(kinds=("transform",), applies=lambda tags: tags.get("changes_layers", True))
def check_transform_cache_matches_full(component):
    """For every named model at the tiny preset, with the transform applied and the parameters it
    adds moved away from their start (non-zero adapters): prefill plus decoding with the cache equals
    the full forward (atol 1e-4), through every path a component reads its layers (e.g. MLA's
    absorbed decoding). The transform must change some model's logits (else tag it
    ``changes_layers: False``); a model it refuses by name (ZooError) is left out."""
    reg = get_registry()
    changed = [name for name in reg.list_models() if check_transform_decoding(component, name, reg)]
    assert changed, (f"transform {component.name!r} changed the logits of none of the named models "
                     f"{reg.list_models()} (or refused them all)")


# ---- running ----------------------------------------------------------------------------------

def checks_for(component):
    return [c for c in CHECKS if c.applies_to(component)]


def skipped_checks(component):
    """[(check_name, reason)]: the checks of the component's kind that its tags (or what it offers:
    a check for mixers that carry state skips one that does not) leave out."""
    return [(c.name, (c.skip_reason(component) if callable(c.skip_reason) else c.skip_reason)
             or "its tags leave it out") for c in CHECKS if component.kind in c.kinds and not c.applies_to(component)]


def check_report(component, known_failures=None) -> dict:
    """Run every applicable check. ``{"checks": [{"check", "status", "message", "partners"}],
    "skipped": [{"check", "reason"}]}``: status as in :func:`run_checks`; ``partners`` the
    ``"kind/name"`` of the other components the check built models with."""
    known = dict(component.tags.get("known_failures", {}), **(known_failures or {}))
    checks = []
    for c in checks_for(component):
        _EXERCISED.clear()
        try:
            c(component)
        except Exception as e:  # a crashing check is a failing check
            msg = str(e) if isinstance(e, AssertionError) else "".join(
                traceback.format_exception_only(type(e), e)).strip()
            status, msg = ("xfail" if c.name in known else "failed"), msg or type(e).__name__
        else:
            status, msg = ("xpass" if c.name in known else "passed"), ""
        checks.append({"check": c.name, "status": status, "message": msg,
                       "partners": [f"{k}/{n}" for k, n in _EXERCISED]})
        _EXERCISED.clear()
    return {"checks": checks, "skipped": [{"check": n, "reason": r} for n, r in skipped_checks(component)]}


def run_checks(component, known_failures=None):
    """Run every applicable check; returns [(check_name, status, message)] with status one of
    'passed', 'failed', 'xfail' (a known failure that failed), 'xpass' (a known failure that passed)."""
    return [(c["check"], c["status"], c["message"]) for c in check_report(component, known_failures)["checks"]]


def check_component(kind: str, name: str, known_failures=None):
    """Run the kit on one registered component; raise AssertionError listing every failure."""
    comp = get_registry().get(kind, name)
    failed = [(c, m) for c, s, m in run_checks(comp, known_failures) if s == "failed"]
    if failed:
        raise AssertionError(f"{kind} {name!r} fails: " + "; ".join(f"{c}: {m}" for c, m in failed))


def parametrize_with_checks(kind=None, names=None, known_failures=None):
    """A pytest decorator over (component, check) pairs for registered components.

    ``kind``/``names`` select components (default: the whole registry). ``known_failures`` maps a
    check name, or "KIND/NAME:check", to a reason; those cases are marked xfail with it.
    """
    import pytest
    reg = get_registry()
    comps = [c for c in reg.list_components(kind) if names is None or c.name in names]
    if names is not None:
        missing = set(names) - {c.name for c in comps}
        if missing:
            raise ValueError(f"not registered: {sorted(missing)}; see `zoo plugins`")
    known = dict(known_failures or {})
    params = []
    for comp in comps:
        comp_known = dict(comp.tags.get("known_failures", {}))
        for c in checks_for(comp):
            reason = known.get(f"{comp.kind}/{comp.name}:{c.name}") or known.get(c.name) or comp_known.get(c.name)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            params.append(pytest.param(comp, c, id=f"{comp.kind}/{comp.name}-{c.name}", marks=marks))
    return pytest.mark.parametrize("component, check", params)
