"""The whole plugin contract as ``typing.Protocol`` classes: what each kind of component is, and every
optional method or attribute the core may call on one.

The core reaches a component's optional behaviour only through this module: ``isinstance(obj,
Proto)`` on the ``runtime_checkable`` protocols below, or the small accessors at the end
(:func:`flops_of`, :func:`aux_loss_of`, ...), never a bare ``getattr`` on a name of its own.
docs/plugins.md documents every protocol and every method here; a test fails when one is missing
from it.

Kinds (each registered through its hook ``register_<kind>(register)`` as
``register(name, cls, params_schema, tags)``):

* ``attention`` -- a :class:`TokenMixer`: anything causal from (B, T, C) to (B, T, C) that owns its
  cache (keys and values that grow per token, or a fixed-size state).
* ``posenc`` -- a :class:`PositionalEncoding` (base class :class:`zoo.plugin.base.PosEnc`).
* ``ffn`` -- a :class:`FeedForward`, token-wise; a spec may say ``"ffn": "none"``.
* ``transform`` -- a :class:`Transform` applied to a built model (LoRA, ...).
* ``head`` -- a :class:`Head`: the output head and its loss (``next_token`` built in).

Every component class is built as ``cls(dims, **params)`` (a transform as ``cls(**params)``), with
``dims`` a :class:`zoo.plugin.contract.Dims` and ``params`` validated against its JSON Schema with
the defaults filled in. This module imports no torch: annotations name tensors as strings.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing this module imports no torch
    from torch import Tensor
    from torch.nn import Module

# ---- the kinds ------------------------------------------------------------------------------------


@runtime_checkable
class TokenMixer(Protocol):
    """The attention slot. ``x``: (B, T, C); ``pos``: (T,) absolute positions of the T tokens (a
    tensor, so a compiled decode step does not recompile); ``posenc``: the model's encoding, passed at
    call time; ``cache``: this layer's cache from :meth:`new_cache`, or None (training, full forward).
    Causal: output t depends on inputs 0..t only. Returns (B, T, C)."""

    def forward(self, x: "Tensor", posenc: "PositionalEncoding", pos: "Tensor", cache: Any = None) -> "Tensor": ...

    def new_cache(self, batch: int, max_len: int, device=None, dtype=None) -> "MixerCache": ...


@runtime_checkable
class PositionalEncoding(Protocol):
    """``embed(x, pos)`` adds absolute positions to (B, T, C) embeddings; ``rotate(t, pos)`` rotates
    (..., T, D) queries or keys for any even D; ``bias(q_pos, k_pos)`` returns an additive (H, Tq, Tk)
    attention bias with H = ``dims.n_heads``, or None. A kind uses one of the three, the others are
    identities (its ``tags["kind"]``: absolute, rotary, bias or none)."""

    def embed(self, x: "Tensor", pos: "Tensor") -> "Tensor": ...

    def rotate(self, t: "Tensor", pos: "Tensor") -> "Tensor": ...

    def bias(self, q_pos: "Tensor", k_pos: "Tensor") -> "Tensor | None": ...

    def max_positions(self) -> int | None: ...


@runtime_checkable
class FeedForward(Protocol):
    """The ffn slot: token-wise (B, T, C) -> (B, T, C)."""

    def forward(self, x: "Tensor") -> "Tensor": ...


@runtime_checkable
class Transform(Protocol):
    """A change applied to a built model, in place, after the build and before the weights load:
    ``apply(model)``. Built as ``cls(**params)``; a spec lists transforms in order under
    ``"transforms"``. It replaces only the Linear layers components declare
    (:class:`DeclaresLinears`, found with ``zoo.components.replaceable_linears``); where it meets
    weights it cannot handle (:class:`DeclaresStacked`) it raises :class:`zoo.errors.ZooError`
    naming them. ``model`` is the Transformer, or, when the zoo counts parameters, a module holding
    only ``blocks`` on the meta device: reach the components with ``zoo.components.component_sites``
    and allocate nothing that the meta device cannot hold. Optional: :class:`SelectsTrainable`,
    :class:`MergesWeights`, :class:`ParamsFromText`."""

    def apply(self, model: "Module") -> None: ...


@runtime_checkable
class SelectsTrainable(Protocol):
    """A transform's say on which parameters (names as in the model's state dict) train:
    ``trainable(name)`` is True (train it), False (freeze it) or None (no opinion). After every
    transform is applied, a parameter is frozen when some transform says False and none says True
    (LoRA freezes every parameter but its adapters). A transform without it freezes nothing."""

    def trainable(self, name: str) -> "bool | None": ...


@runtime_checkable
class MergesWeights(Protocol):
    """A transform that can fold itself into the weights: ``merge(state_dict)`` takes the state dict
    of a model with this transform applied (and the transforms before it) and returns the state dict
    of the same function without this transform (e.g. W + (alpha / r) B A for LoRA), raising
    :class:`zoo.errors.ZooError` when the tensors do not fit. ``zoo lora merge`` and
    ``zoo export hf`` merge the transforms of a run, last first, and refuse one without it."""

    def merge(self, state_dict: dict) -> dict: ...


@runtime_checkable
class ParamsFromText(Protocol):
    """Class method: the params of a short command-line form, e.g. ``"r=8,alpha=16"`` -> ``{"r": 8,
    "alpha": 16.0}`` (``zoo finetune --lora``), raising :class:`zoo.errors.ZooError` with the fix."""

    @classmethod
    def params_from_text(cls, text: str) -> dict: ...


@runtime_checkable
class Head(Protocol):
    """The output head and its loss. ``forward(h, targets, model)``: ``h`` (B, T, C) is the last
    block's output before the final norm, ``targets`` (B, T) or None, ``model`` the Transformer (its
    ``norm_f``, ``lm_head`` and ``wte`` are shared). Returns (logits (B, T, V), loss or None)."""

    def forward(self, h: "Tensor", targets: "Tensor | None", model: "Module") -> tuple: ...


# ---- caches -----------------------------------------------------------------------------------


@runtime_checkable
class MixerCache(Protocol):
    """A layer's cache for generation, from :meth:`TokenMixer.new_cache`. ``reset()`` forgets
    everything; ``nbytes`` is what it holds; ``rewind`` says how speculative decoding may undo
    tokens: ``"truncate"`` (``truncate(n)`` forgets every position >= n), ``"snapshot"``
    (``snapshot()`` returns an object that ``restore(snap)`` goes back to) or ``"none"`` (it cannot;
    a caller that needs it refuses the mixer by name)."""

    rewind: str

    def reset(self) -> None: ...

    @property
    def nbytes(self) -> int: ...


@runtime_checkable
class Truncatable(Protocol):
    """A cache with ``rewind == "truncate"``: ``truncate(n)`` forgets every position >= n, exactly (a
    ring buffer that has overwritten what decoding at n needs raises :class:`zoo.errors.ZooError`)."""

    def truncate(self, n: int) -> None: ...


@runtime_checkable
class Snapshottable(Protocol):
    """A cache with ``rewind == "snapshot"`` (a fixed-size state): ``snapshot()`` returns a copy of the
    state that later updates do not change; ``restore(snap)`` puts it back, exactly."""

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...


# ---- optional behaviour ---------------------------------------------------------------------------


@runtime_checkable
class ValidatesSpec(Protocol):
    """Class method: cross-field problems of these params at these sizes, each a sentence with the fix."""

    @classmethod
    def validate_spec(cls, dims, params: dict) -> list: ...


@runtime_checkable
class Composite(Protocol):
    """A component made of other registered components (a MoE's experts are an ffn plugin). Class
    method ``composes(params) -> [(kind, name), ...]``: the components it is made of with these
    params. The build passes them as the keyword ``parts={(kind, name): component}``, each the
    registered component (its ``cls``, ``params_schema``, ``tags``) from the registry the spec was
    resolved with, never the global one; ``validate_spec(dims, params, parts=...)`` gets the same
    mapping, where a name no plugin registers is missing (say so; if the component says nothing, the
    core reports the missing part). Built by hand (a unit test) it may be given no ``parts``: then
    :func:`zoo.components.parts_for` gives them from the loaded registry."""

    @classmethod
    def composes(cls, params: dict) -> list: ...


@runtime_checkable
class ReportsCacheSize(Protocol):
    """Class method of a mixer: what its cache holds per layer, in numbers (elements, not bytes):
    ``(per_token, per_sequence)``. Keys and values grow per token; a fixed-size state is per sequence.
    API 1.0's ``kv_cache_elems_per_token(dims, params)`` is read as ``(that, 0)``."""

    @classmethod
    def cache_size(cls, dims, params: dict) -> tuple: ...


@runtime_checkable
class ReportsFlops(Protocol):
    """Forward matmul FLOPs per token (2 per multiply-add) as the component executes them in
    training, attention over the whole context of ``seq_len`` as nanoGPT counts it."""

    def flops_per_token(self, seq_len: int) -> float: ...


@runtime_checkable
class HasAuxLoss(Protocol):
    """A module (any module of the model: a mixer, an ffn, a head, a submodule of one) that declares
    ``aux_loss``: ``None`` from ``__init__`` on, a scalar tensor once a training forward set it. The
    model finds these modules when it is built and adds their ``aux_loss`` to the training loss
    (``model.aux_loss()`` is the sum). A layer component of plugin API 1.0 that sets it during the
    forward only is given ``aux_loss = None`` at the build, so it is found too."""

    aux_loss: Any


@runtime_checkable
class ResidualProjection(Protocol):
    """A Linear layer that writes into the residual stream, marked by
    :func:`zoo.nn.ops.init_residual_` (``zoo_residual = True``): the model scales its initial
    weights by 1/sqrt(2 x n_layers) (GPT-2)."""

    zoo_residual: bool


@runtime_checkable
class NoDecay(Protocol):
    """A parameter with ``zoo_no_decay = True``: the optimizer gives it no weight decay (as norms,
    biases and embeddings get none)."""

    zoo_no_decay: bool


@runtime_checkable
class BoundedPositions(Protocol):
    """A positional encoding that says how many positions it can represent (``None``: unbounded);
    generation stops at a bounded encoding's last position and slides a window otherwise."""

    def max_positions(self) -> int | None: ...


@runtime_checkable
class ReportsStats(Protocol):
    """Numbers logged to TensorBoard under ``components/<module path>/<key>`` at each log step."""

    def zoo_stats(self) -> dict: ...


@runtime_checkable
class CarriesState(Protocol):
    """A mixer whose state carries over contiguous training windows (segment recurrence):
    ``forward_state(x, posenc, pos, state) -> (y, new_state)``; ``state`` None starts a stream. The
    trainer detaches ``new_state`` before the next window and saves it in checkpoints (a tensor or a
    tuple/dict of tensors)."""

    def forward_state(self, x: "Tensor", posenc: "PositionalEncoding", pos: "Tensor", state: Any) -> tuple: ...


@runtime_checkable
class ChoosesCarry(Protocol):
    """A mixer with ``forward_state`` (:class:`CarriesState`) that carries its state across training
    windows only for some params: ``carries(dims, params) -> bool``, a classmethod, asked once per
    layer when the model is built and when the trainer picks its sampler. False: the layer trains on
    independent windows, as a mixer without ``forward_state`` does (e.g. linear attention, whose
    state has no decay, so over a long stream it averages everything seen); ``forward_state`` still
    serves the conformance kit and decoding is unchanged."""

    @classmethod
    def carries(cls, dims: Any, params: dict) -> bool: ...


@runtime_checkable
class Segmented(Protocol):
    """A segment-recurrent mixer (Infini-attention, Transformer-XL): ``segment`` is its segment
    length in tokens (default ``dims.block_size``). Its forward over T tokens processes segments of
    ``segment`` tokens in order, with boundaries at multiples of ``segment`` counted from the start
    of the stream (not of the call), and updates its memory when a segment completes; decoding one
    token at a time keeps the same boundaries. The mixer reads ``segment`` when it runs: the kit sets
    it on an instance to move the boundaries."""

    segment: int


@runtime_checkable
class DeclaresLinears(Protocol):
    """``zoo_linears``: the names (paths below the component) of the Linear layers a transform may
    replace. A component reads such a layer's weight only through :func:`zoo.nn.ops.linear_weight`
    (``zoo.components.linear_weight``), so a transform's change reaches every path. Without it,
    every ``nn.Linear`` below the component is replaceable, and a weight the component reads
    outside the layer's forward goes through ``linear_weight`` too."""

    zoo_linears: tuple


@runtime_checkable
class DeclaresStacked(Protocol):
    """``zoo_stacked``: names of parameters (paths below the component) that hold several Linear
    weights stacked, e.g. a MoE's (E, C, H) expert weights. A transform that cannot handle them
    refuses by name."""

    zoo_stacked: tuple


@runtime_checkable
class EffectiveWeight(Protocol):
    """A module a transform put in place of a Linear: ``effective_weight()`` is the (out, in) weight
    its forward applies (e.g. W + scale * B A for LoRA), read by :func:`zoo.nn.ops.linear_weight`.
    Its bias, if any, stays ``.bias``."""

    def effective_weight(self) -> "Tensor": ...


@runtime_checkable
class DeclaresSizes(Protocol):
    """Class method: the sizes a component derives from its params (e.g. ``hidden``, ``kv_heads``),
    so that HF mappings and reports ask the component instead of repeating its formula."""

    @classmethod
    def sizes(cls, dims, params: dict) -> dict: ...


# ---- accessors: the core's only way to optional behaviour --------------------------------------


def flops_of(module, seq_len: int):
    """(FLOPs per token, whether the module reported them) -- else 2 x its parameters."""
    if isinstance(module, ReportsFlops):
        return float(module.flops_per_token(seq_len)), True
    return 2.0 * sum(p.numel() for p in module.parameters()), False


def stats_of(module) -> dict:
    """The numbers a module reports for logging (:class:`ReportsStats`), or {}."""
    return (module.zoo_stats() or {}) if isinstance(module, ReportsStats) else {}


def aux_loss_of(module):
    """A module's auxiliary loss (:class:`HasAuxLoss`): a tensor, or None."""
    return module.aux_loss if isinstance(module, HasAuxLoss) else None


def is_residual(module) -> bool:
    """Whether a module is marked as a residual projection (:class:`ResidualProjection`)."""
    return isinstance(module, ResidualProjection) and bool(module.zoo_residual)


def no_decay(param) -> bool:
    """Whether a parameter is marked to get no weight decay (:class:`NoDecay`)."""
    return isinstance(param, NoDecay) and bool(param.zoo_no_decay)


def max_positions_of(posenc):
    """The positions an encoding can represent (:class:`BoundedPositions`), None if unbounded or not said."""
    return posenc.max_positions() if isinstance(posenc, BoundedPositions) else None


def parts_of(cls, params: dict, components: dict) -> dict:
    """``{(kind, name): component}`` of what a :class:`Composite` class composes with these params,
    from ``components`` (a registry's ``components``: kind -> name -> component); a name not there
    is left out. ``{}`` for a class that composes nothing."""
    if not isinstance(cls, Composite):
        return {}
    out = {}
    for kind, name in cls.composes(params) or []:
        comp = components.get(kind, {}).get(name)
        if comp is not None:
            out[(kind, name)] = comp
    return out


def construct(cls, dims, params: dict, components: dict | None = None):
    """``cls(dims, **params)``; a :class:`Composite` also gets ``parts`` from ``components`` (a
    registry's ``components``), when given."""
    if components is not None and isinstance(cls, Composite):
        return cls(dims, **params, parts=parts_of(cls, params, components))
    return cls(dims, **params)


def spec_problems(cls, dims, params, components: dict | None = None) -> list:
    """What ``validate_spec`` says (a :class:`Composite` gets its ``parts`` from ``components``), and
    for a composite that says nothing, each part no plugin registers."""
    if components is None or not isinstance(cls, Composite):
        return list(cls.validate_spec(dims, params) or []) if isinstance(cls, ValidatesSpec) else []
    parts = parts_of(cls, params, components)
    out = list(cls.validate_spec(dims, params, parts=parts) or []) if isinstance(cls, ValidatesSpec) else []
    if not out:
        for kind, name in cls.composes(params) or []:
            if (kind, name) not in parts:
                out.append(f"{kind} {name!r}, which {cls.__name__} is made of, is not registered; registered "
                           f"{kind} components: {', '.join(sorted(components.get(kind, {}))) or '(none)'}")
    return out


def cache_size(cls, dims, params):
    """(per_token, per_sequence) numbers held per layer by a mixer class's cache, or None if it does
    not say."""
    if isinstance(cls, ReportsCacheSize):
        per_tok, per_seq = cls.cache_size(dims, params)
        return int(per_tok), int(per_seq)
    legacy = getattr(cls, "kv_cache_elems_per_token", None)  # plugin API 1.0
    if callable(legacy):
        return int(legacy(dims, params)), 0
    return None


REWIND_MODES = ("truncate", "snapshot", "none")


def rewind_of(cache) -> str:
    """How a layer cache can undo tokens: its ``rewind`` when it is one of :data:`REWIND_MODES` and
    it has the methods that mode needs, else "none" (e.g. an API 1.0 cache that does not say)."""
    mode = cache.rewind if isinstance(cache, MixerCache) else None
    if mode == "truncate" and isinstance(cache, Truncatable):
        return mode
    if mode == "snapshot" and isinstance(cache, Snapshottable):
        return mode
    return "none"


def carries_state(module, dims=None, params=None) -> bool:
    """Whether a mixer (class or instance) carries state across training windows: it has
    ``forward_state`` (:class:`CarriesState`) and, given the layer's ``dims`` and ``params``, does
    not decline it for them (:class:`ChoosesCarry`). Without ``dims``: whether it can carry state."""
    if not isinstance(module, CarriesState):
        return False
    if dims is not None and isinstance(module, ChoosesCarry):
        return bool(module.carries(dims, dict(params or {})))
    return True


def segment_of(module):
    """A segment-recurrent mixer's segment length (:class:`Segmented`), or None."""
    return int(module.segment) if isinstance(module, Segmented) else None


def sizes_of(cls, dims, params) -> dict:
    return dict(cls.sizes(dims, params)) if isinstance(cls, DeclaresSizes) else {}


def trainable_of(transform, name: str):
    """What a transform says about parameter ``name``: True, False or None (no opinion)."""
    return transform.trainable(name) if isinstance(transform, SelectsTrainable) else None


def reset_cache(cache) -> None:
    """Empty a layer's cache (:class:`MixerCache`); a cache of plugin API 1.0 without ``reset`` is left as is."""
    fn = getattr(cache, "reset", None)
    if callable(fn):
        fn()


def cache_nbytes(cache) -> int:
    """Bytes a layer's cache holds (:class:`MixerCache`), 0 if it does not say (plugin API 1.0)."""
    return int(getattr(cache, "nbytes", 0) or 0)


def offers_cache(mixer) -> bool:
    """Whether a mixer makes its own cache (:class:`TokenMixer`'s ``new_cache``); else generation recomputes."""
    return callable(getattr(mixer, "new_cache", None))

