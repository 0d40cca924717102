"""Throughput of MoE dispatch modes and of KAN against an MLP with the same parameters.

    python benchmarks/moe_kan.py --device cpu --threads 2
    python benchmarks/moe_kan.py --device cuda --dtype bf16 --tokens 16384 --d-model 1024

Each figure is forward + backward of one layer on (tokens, d_model) inputs, tokens per second,
median of --reps timed runs after warm-up runs. MoE: the same weights under dispatch "loop" (a
Python loop over experts), "batched" (bmm over experts padded to the busiest) and "grouped"
(grouped_mm, where this torch and device have it). KAN: the default width (about the MLP's
parameters) against the 4x GELU MLP.
"""
import argparse
import statistics
import time

import torch

from zoo.components import Dims
from zoo_plugins.ffn.kan import KAN
from zoo_plugins.ffn.mlp import MLP
from zoo_plugins.ffn.moe import MoE, grouped_mm_available


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def tokens_per_s(module, x, reps, warmup):
    def step():
        module(x).float().sum().backward()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        _sync(x.device)
        t = time.perf_counter()
        step()
        _sync(x.device)
        times.append(time.perf_counter() - t)
    return x.shape[0] * x.shape[1] / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    dims = Dims(d_model=a.d_model, n_heads=4, n_layers=1, bias=False)
    x = torch.randn(1, a.tokens, a.d_model, device=device, dtype=dtype, requires_grad=True)
    print(f"torch {torch.__version__}, device {device}, dtype {a.dtype}, tokens {a.tokens}, d_model {a.d_model}, "
          f"CPU threads {torch.get_num_threads()}")

    torch.manual_seed(0)
    moe = MoE(dims, n_experts=a.experts, top_k=a.top_k).to(device, dtype).train()
    print(f"\nMoE, {a.experts} SwiGLU experts of width {moe.hidden}, top-{a.top_k} (fwd+bwd, tokens/s):")
    modes = ["loop", "batched"] + (["grouped"] if grouped_mm_available(device, dtype) else [])
    res = {}
    for mode in modes:
        moe.dispatch = mode
        res[mode] = tokens_per_s(moe, x, a.reps, a.warmup)
        print(f"  {mode:<8} {res[mode]:>12,.0f}  ({res[mode] / res['loop']:.2f}x the loop)")
    if "grouped" not in modes:
        print("  grouped  not available for this torch/device/dtype")

    torch.manual_seed(0)
    kan = KAN(dims).to(device, dtype)
    mlp = MLP(dims).to(device, dtype)
    nk, nm = (sum(q.numel() for q in m.parameters()) for m in (kan, mlp))
    tk, tm = tokens_per_s(kan, x, a.reps, a.warmup), tokens_per_s(mlp, x, a.reps, a.warmup)
    print(f"\nKAN ({nk:,} params) vs 4x GELU MLP ({nm:,} params), fwd+bwd tokens/s:")
    print(f"  kan {tk:>12,.0f}\n  mlp {tm:>12,.0f}\n  KAN is {tm / tk:.2f}x slower than the MLP")


if __name__ == "__main__":
    main()
