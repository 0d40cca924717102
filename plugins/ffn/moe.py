"""Mixture of experts with token-choice top-k routing: Switch Transformer (Fedus et al. 2021,
arXiv:2101.03961), Mixtral (Jiang et al. 2024, arXiv:2401.04088), DeepSeekMoE shared experts
(Dai et al. 2024, arXiv:2401.06066) and the auxiliary-loss-free balancing of DeepSeek-V3
(DeepSeek-AI 2024, arXiv:2412.19437).

Each token's router scores (softmax or sigmoid) pick its ``top_k`` experts; their outputs are
summed with the (optionally renormalised) scores as weights, plus the output of ``n_shared``
always-on shared experts. Experts have the form of an FFN plugin: ``swiglu`` or ``mlp`` experts
keep their weights stacked, (E, C, H), and run without a Python loop over experts: the token
copies are sorted by expert and go through grouped matrix products
(``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm``) where this torch, device and dtype
have them, else through a batched product over the experts padded to the busiest one. Experts of any other registered FFN plugin are instances of
it, run one expert after another.

Load balancing: ``aux_loss`` adds Switch's loss coef * E * sum_i f_i * P_i to the training loss
(f_i: fraction of routed token copies that went to expert i, P_i: mean router score of expert i);
``bias`` keeps a per-expert bias that is added to the scores only to choose experts and is nudged
after each training step towards equal load (DeepSeek-V3); ``none`` does nothing. An optional
``capacity_factor`` caps each expert at ceil(cf * tokens * top_k / E) token copies per batch; the
copies over it are dropped (they pass through the residual only) and counted. Without it routing
is dropless. ``zoo_stats()`` reports expert load and the dropped fraction of the last training batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.hookspecs import hookimpl

STACKED = ("swiglu", "mlp")  # expert forms with stacked weights and grouped dispatch

PARAMS = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "n_experts": {"type": "integer", "minimum": 1, "default": 8, "description": "routed experts"},
        "top_k": {"type": "integer", "minimum": 1, "default": 2, "description": "experts per token"},
        "n_shared": {"type": "integer", "minimum": 0, "default": 0,
                     "description": "shared experts every token goes through (DeepSeekMoE)"},
        "expert": {"type": "object", "additionalProperties": False, "required": ["name"],
                   "default": {"name": "swiglu", "params": {}},
                   "properties": {"name": {"type": "string"}, "params": {"type": "object"}},
                   "description": "the FFN plugin the experts are made of, with its params; swiglu and "
                                  "mlp experts get grouped dispatch, any other runs expert by expert"},
        "expert_hidden_mult": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                               "description": "hidden width of a swiglu/mlp expert as a multiple of d_model "
                                              "(rounded up to a multiple of 8), for fine-grained experts; "
                                              "null: the expert plugin's own width"},
        "score": {"enum": ["softmax", "sigmoid"], "default": "softmax",
                  "description": "router score function"},
        "norm_topk": {"type": "boolean", "default": True,
                      "description": "renormalise the top-k scores of a token to sum to 1 (when top_k > 1)"},
        "balance": {"enum": ["aux_loss", "bias", "none"], "default": "aux_loss",
                    "description": "load balancing: Switch's auxiliary loss, DeepSeek-V3's aux-loss-free "
                                   "bias update, or none"},
        "aux_loss_coef": {"type": "number", "minimum": 0, "default": 0.01,
                          "description": "weight of the auxiliary load-balancing loss"},
        "bias_update_rate": {"type": "number", "minimum": 0, "default": 0.001,
                             "description": "step of the aux-loss-free bias update (gamma in DeepSeek-V3)"},
        "capacity_factor": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                            "description": "expert capacity as a multiple of the even share of token copies; "
                                           "copies over it are dropped; null: dropless"},
        "dispatch": {"enum": ["auto", "grouped", "batched", "loop"], "default": "auto",
                     "description": "auto: grouped matrix products where available, else batched "
                                    "(padded bmm); loop: a Python loop over experts (the reference)"},
    },
}
TAGS = {"token_wise": True, "moe": True,
        "example_params": {"n_experts": 4, "top_k": 2, "n_shared": 1}}

_GROUPED_OK: dict = {}


def grouped_mm_fn():
    """The grouped matrix product of this torch (public or private name), or None."""
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@torch.compiler.disable  # a probe: run it eagerly, also when first asked from a compiled model
def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether grouped_mm runs forward and backward here (probed once per device type and dtype:
    it is CUDA-only, SM80+ or bfloat16-only in some torch versions)."""
    key = (device.type, dtype)
    if key not in _GROUPED_OK:
        fn = grouped_mm_fn()
        ok = fn is not None
        if ok:
            try:
                a = torch.randn(8, 16, device=device, dtype=dtype, requires_grad=True)
                w = torch.randn(2, 16, 8, device=device, dtype=dtype, requires_grad=True)
                y = fn(a, w, offs=torch.tensor([3, 8], device=device, dtype=torch.int32))
                y.backward(torch.ones_like(y))
                ref = torch.cat([a[:3] @ w[0], a[3:] @ w[1]])
                ok = torch.allclose(y.float(), ref.float(), atol=1e-2, rtol=1e-2)
            except Exception:
                ok = False
        _GROUPED_OK[key] = ok
    return _GROUPED_OK[key]


def _compute_dtype(x):
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def _grouped(x, w, offs):
    """x: (M, K) sorted by group, w: (E, K, N), offs: (E,) int32 ends -> (M, N)."""
    y = grouped_mm_fn()(x, w, offs=offs)  # (M, N)
    if y.requires_grad:  # its backward wants a dense incoming gradient
        y.register_hook(lambda g: g.contiguous())
    return y


class MoE(nn.Module):
    def __init__(self, dims, n_experts=8, top_k=2, n_shared=0, expert=None, expert_hidden_mult=None,
                 score="softmax", norm_topk=True, balance="aux_loss", aux_loss_coef=0.01,
                 bias_update_rate=0.001, capacity_factor=None, dispatch="auto", parts=None):
        super().__init__()
        expert = expert or {"name": "swiglu", "params": {}}
        if parts is None:  # built by hand, not by a model: the parts from the loaded registry
            from zoo.components import parts_for
            parts = parts_for(MoE, {"expert": expert, "n_shared": n_shared})
        self.n_experts, self.top_k, self.score = n_experts, top_k, score
        self.norm_topk, self.balance, self.aux_loss_coef = norm_topk, balance, aux_loss_coef
        self.bias_update_rate, self.capacity_factor, self.dispatch = bias_update_rate, capacity_factor, dispatch
        self.form = expert["name"]
        C = dims.d_model
        self.router = nn.Linear(C, n_experts, bias=False)
        self.register_buffer("route_bias", torch.zeros(n_experts), persistent=True)  # aux-loss-free balancing
        if self.form in STACKED:
            self.hidden = self._hidden(dims, expert, expert_hidden_mult)
            self.approximate = expert.get("params", {}).get("approximate", "none")
            n_in = 2 * self.hidden if self.form == "swiglu" else self.hidden
            resid_std = 0.02 / math.sqrt(2 * dims.n_layers)  # as the model does for residual projections
            self.w_in = nn.Parameter(torch.randn(n_experts, C, n_in) * 0.02)  # (E, C, H or 2H)
            self.w_out = nn.Parameter(torch.randn(n_experts, self.hidden, C) * resid_std)  # (E, H, C)
            self.b_in = nn.Parameter(torch.zeros(n_experts, n_in)) if dims.bias else None
            self.b_out = nn.Parameter(torch.zeros(n_experts, C)) if dims.bias else None
            self.experts = None
            # stacked Linear weights, (E, ...): a transform that adapts Linear layers refuses them by name
            self.zoo_stacked = tuple(n for n in ("w_in", "w_out", "b_in", "b_out") if getattr(self, n) is not None)
        else:  # experts are instances of another FFN plugin
            from zoo.spec.resolve import fill_defaults
            comp = parts[("ffn", self.form)]
            params = fill_defaults(comp.params_schema, expert.get("params", {}))
            self.experts = nn.ModuleList(comp.cls(dims, **params) for _ in range(n_experts))
            self.hidden, self.b_in, self.b_out = None, None, None
        self.shared = None
        if n_shared:
            hidden = self.hidden if self.form in STACKED else None
            self.shared = parts[("ffn", "swiglu")].cls(dims, hidden=n_shared * hidden if hidden else None)
        self.drop = nn.Dropout(dims.dropout)
        self.aux_loss = None
        self._stats = None

    def flops_per_token(self, seq_len):
        """Forward FLOPs per token with the experts a token actually uses: the router, top_k routed
        experts and the shared experts (not all n_experts)."""
        router = 2 * self.router.weight.numel()
        if self.experts is None:  # stacked weights: one expert's in and out matrices
            expert = 2 * (self.w_in[0].numel() + self.w_out[0].numel())
        else:
            e = self.experts[0]
            fn = getattr(e, "flops_per_token", None)
            expert = fn(seq_len) if fn is not None else 2 * sum(p.numel() for p in e.parameters())
        shared = self.shared.flops_per_token(seq_len) if self.shared is not None else 0
        return router + self.top_k * expert + shared

    @staticmethod
    def _hidden(dims, expert, mult):
        p = expert.get("params", {})
        if mult is not None:
            return -(-int(mult * dims.d_model) // 8) * 8
        if expert["name"] == "swiglu":
            if p.get("hidden"):
                return p["hidden"]
            m = p.get("multiple_of", 64)
            return -(-int(8 * dims.d_model / 3) // m) * m
        return int(p.get("hidden_mult", 4) * dims.d_model)

    @classmethod
    def sizes(cls, dims, params):
        """``expert_hidden``: a swiglu/mlp expert's hidden width (None for experts of another plugin,
        which have their own sizes); ``shared_hidden``: the shared SwiGLU's (0 without shared experts)."""
        expert = params.get("expert") or {"name": "swiglu", "params": {}}
        hidden = cls._hidden(dims, expert, params.get("expert_hidden_mult")) if expert["name"] in STACKED else None
        n = params.get("n_shared", 0)  # as __init__ builds them: n x an expert's width, or SwiGLU's own
        shared = (n * hidden if hidden else cls._hidden(dims, {"name": "swiglu"}, None)) if n else 0
        return {"expert_hidden": hidden, "shared_hidden": shared}

    @classmethod
    def composes(cls, params):
        """The ffn plugins a MoE is made of (zoo.plugin.protocols.Composite): its experts' and, with
        shared experts, swiglu."""
        expert = params.get("expert") or {"name": "swiglu"}
        return [("ffn", expert["name"])] + ([("ffn", "swiglu")] if params.get("n_shared") else [])

    @classmethod
    def validate_spec(cls, dims, params, parts=None):
        out = []
        if params.get("top_k", 2) > params.get("n_experts", 8):
            out.append(f"top_k={params.get('top_k')} is more than n_experts={params.get('n_experts')}; "
                       f"lower top_k or add experts")
        expert = params.get("expert") or {"name": "swiglu"}
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match
        if parts is None:
            from zoo.components import parts_for
            parts = parts_for(cls, params)
        comp = parts.get(("ffn", expert["name"]))
        if comp is None or expert["name"] == "moe":
            out.append(f"expert.name {expert['name']!r} is not an ffn plugin experts can be made of; "
                       f"use a registered ffn plugin other than moe (`zoo plugins` lists them)")
        else:  # the experts' params against their plugin's own schema
            err = best_match(Draft202012Validator(comp.params_schema).iter_errors(expert.get("params", {})))
            if err is not None:
                where = ".".join(["expert.params"] + [str(p) for p in err.absolute_path])
                out.append(f"{where}: {err.message}; see the params of ffn {expert['name']!r} in "
                           f"`zoo plugins --json`")
        if params.get("n_shared") and ("ffn", "swiglu") not in parts:
            out.append("shared experts are swiglu, and no ffn plugin 'swiglu' is registered; set n_shared to 0")
        return out

    # ---- routing -------------------------------------------------------------------------------
    def route(self, x):
        """x: (N, C) -> (expert ids (N, k), weights (N, k), scores (N, E))."""
        logits = self.router(x).float()  # (N, E)
        scores = logits.softmax(-1) if self.score == "softmax" else logits.sigmoid()  # (N, E)
        choose = scores + self.route_bias if self.balance == "bias" else scores  # bias only picks experts
        ids = choose.topk(self.top_k, dim=-1).indices  # (N, k)
        w = scores.gather(1, ids)  # (N, k)
        if self.norm_topk and self.top_k > 1:  # with one expert the raw score keeps the router learning
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-9)
        return ids, w, scores

    # ---- experts over tokens sorted by expert --------------------------------------------------
    def _act(self, h, e_sorted):
        if self.b_in is not None:
            h = h + self.b_in[e_sorted].to(h.dtype)  # (M, H')
        if self.form == "swiglu":
            gate, up = h.chunk(2, dim=-1)  # (M, H) each
            return F.silu(gate) * up  # (M, H)
        return F.gelu(h, approximate=self.approximate)  # (M, H)

    def _experts_grouped(self, xs, e_sorted, counts):
        offs = counts.cumsum(0).to(torch.int32)  # (E,)
        h = self._act(_grouped(xs, self.w_in.to(xs.dtype), offs), e_sorted)  # (M, H)
        return _grouped(h, self.w_out.to(xs.dtype), offs)  # (M, C)

    def _experts_batched(self, xs, e_sorted, counts):
        E, M = self.n_experts, xs.shape[0]
        cap = int(counts.max()) if M else 0
        starts = counts.cumsum(0) - counts  # (E,)
        slot = e_sorted * cap + (torch.arange(M, device=xs.device) - starts[e_sorted])  # (M,)
        xp = xs.new_zeros(E * cap, xs.shape[1]).index_copy_(0, slot, xs).view(E, cap, -1)  # (E, cap, C)
        h = torch.bmm(xp, self.w_in.to(xs.dtype)).view(E * cap, -1)[slot]  # (M, H')
        h = self._act(h, e_sorted)  # (M, H)
        hp = h.new_zeros(E * cap, h.shape[1]).index_copy_(0, slot, h).view(E, cap, -1)  # (E, cap, H)
        return torch.bmm(hp, self.w_out.to(xs.dtype)).view(E * cap, -1)[slot]  # (M, C)

    def _experts_loop(self, xs, e_sorted, counts):
        outs, start = [], 0
        for e, n in enumerate(counts.tolist()):
            seg = xs[start:start + n]  # (n, C)
            if self.experts is not None:
                outs.append(self.experts[e](seg[None])[0] if n else seg)  # (n, C)
            else:
                h = seg @ self.w_in[e].to(seg.dtype)  # (n, H')
                outs.append(self._act(h, e_sorted[start:start + n]) @ self.w_out[e].to(seg.dtype))  # (n, C)
            start += n
        return torch.cat(outs) if outs else xs  # (M, C)

    def dispatch_mode(self, x):
        if self.experts is not None:
            return "loop"
        if self.dispatch != "auto":
            return self.dispatch
        # grouped_mm wherever it runs (it measured fastest on the CPU too: docs/components.md)
        aligned = all(n * x.element_size() % 16 == 0 for n in (x.shape[-1], self.hidden))
        if torch.compiler.is_compiling() and x.device.type != "cuda":
            # tracing grouped_mm for CPU inputs fails in torch's meta kernel (seen on torch 2.13,
            # CPU build), so a compiled graph off CUDA takes the batched product, which compiles
            return "batched"
        return "grouped" if aligned and grouped_mm_available(x.device, x.dtype) else "batched"

    def forward(self, x):  # x: (B, T, C)
        B, T, C = x.shape
        xf = x.reshape(-1, C)  # (N, C)
        N, k, E = xf.shape[0], self.top_k, self.n_experts
        ids, w, scores = self.route(xf)  # (N, k), (N, k), (N, E)
        flat = ids.reshape(-1)  # (N*k,) expert of each token copy
        order = flat.argsort(stable=True)  # (N*k,) copies sorted by expert
        e_sorted = flat[order]  # (N*k,)
        counts = torch.bincount(flat, minlength=E)  # (E,)
        kept = counts
        if self.capacity_factor is not None:
            cap = math.ceil(self.capacity_factor * N * k / E)
            starts = counts.cumsum(0) - counts  # (E,)
            rank = torch.arange(N * k, device=x.device) - starts[e_sorted]  # (N*k,) place in its expert's queue
            keep = rank < cap  # (N*k,) earlier tokens of the batch win
            order, e_sorted = order[keep], e_sorted[keep]  # (M,)
            kept = counts.clamp(max=cap)  # (E,)
        token = order // k  # (M,) source token of each kept copy
        xs = xf[token].to(_compute_dtype(xf))  # (M, C), in the autocast dtype if autocast is on
        mode = self.dispatch_mode(xs)
        ys = getattr(self, f"_experts_{mode}")(xs, e_sorted, kept)  # (M, C)
        if self.b_out is not None:
            ys = ys + self.b_out[e_sorted].to(ys.dtype)  # (M, C)
        wk = w.reshape(-1)[order].to(ys.dtype)  # (M,)
        y = ys.new_zeros(N, C).index_add_(0, token, ys * wk[:, None])  # (N, C)
        if self.shared is not None:
            y = y + self.shared(xf[None])[0]  # (N, C)
        self._account(scores, counts, kept, N)
        return self.drop(y).view(B, T, C)  # (B, T, C)

    # ---- balancing and statistics --------------------------------------------------------------
    def _account(self, scores, counts, kept, N):
        self.aux_loss = None
        if not self.training:
            return
        load = counts.float() / max(1, N * self.top_k)  # (E,) fraction of token copies per expert
        if self.balance == "aux_loss" and self.aux_loss_coef > 0:
            p = scores / scores.sum(-1, keepdim=True) if self.score == "sigmoid" else scores  # (N, E)
            self.aux_loss = self.aux_loss_coef * self.n_experts * (load * p.mean(0)).sum()
        elif self.balance == "bias":
            with torch.no_grad():  # DeepSeek-V3: raise the bias of under-loaded experts, lower the others
                self.route_bias += self.bias_update_rate * torch.sign(load.mean() - load)
        self._stats = (load.detach(), 1.0 - kept.sum().float().detach() / max(1, N * self.top_k))

    def zoo_stats(self) -> dict:
        """Expert load (fraction of routed token copies) of the last training batch, per expert, its
        max/mean ratio, and the fraction of copies dropped by the capacity limit."""
        if self._stats is None:
            return {}
        load, dropped = self._stats
        out = {f"load/expert_{i}": float(v) for i, v in enumerate(load.tolist())}
        out["load/max_over_mean"] = float(load.max() / load.mean().clamp_min(1e-9))
        out["dropped_fraction"] = float(dropped)
        if self.aux_loss is not None:
            out["aux_loss"] = float(self.aux_loss.detach())
        return out


@hookimpl
def register_ffn(register):
    register("moe", MoE, PARAMS, TAGS)
