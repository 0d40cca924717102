"""The mamba mixer's scan: milliseconds of forward + backward per chunk size, and of a whole model's
training step, against a plain per-token loop.

    OMP_NUM_THREADS=1 python benchmarks/mamba_scan.py --device cpu --threads 1
    python benchmarks/mamba_scan.py --device cuda

Scan: the states of h_t = a_t h_(t-1) + b_t over (batch, T, D, N) = (12, 64, 256, 16) (the baby
preset's mamba layer) read out through C, forward + backward; "loop" is the textbook loop over time,
"chunk L" the mixer's chunked doubling scan (chunk 1: one token per step). Model: one training step
(forward + backward) of the named model mamba at the baby preset per chunk size, and of gpt2 and
llama. Each figure is the median of --reps runs after a warm-up.
"""
import argparse
import statistics
import time

import torch

import zoo
from zoo_plugins.attention.mamba import prefix_scan


def _ms(fn, device, reps):
    fn()
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out)


def chunked(a, b, chunk):
    hs, h = [], None
    for a_c, b_c in zip(a.split(chunk, 1), b.split(chunk, 1)):
        P, H = prefix_scan(a_c, b_c)
        if h is not None:
            H = H + P * h[:, None]
        hs.append(H)
        h = H[:, -1]
    return torch.cat(hs, 1)


def loop(a, b, chunk):
    h, hs = None, []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = b_t if h is None else a_t * h + b_t
        hs.append(h)
    return torch.stack(hs, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(12, 64, 256, 16, generator=g).to(dev).requires_grad_()
    b = torch.randn(12, 64, 256, 16, generator=g).to(dev).requires_grad_()
    C = torch.randn(12, 64, 16, generator=g).to(dev)

    def scan(fn, chunk):
        return lambda: (fn(a, b, chunk) @ C[..., None]).sum().backward()
    print(f"scan (12, 64, 256, 16), forward + backward, {dev}, {torch.get_num_threads()} threads")
    print(f"  loop      {_ms(scan(loop, 0), dev, args.reps):8.1f} ms")
    for c in (1, 2, 4, 8, 16, 64):
        print(f"  chunk {c:<3} {_ms(scan(chunked, c), dev, args.reps):8.1f} ms")
    idx = torch.randint(0, 65, (12, 64), generator=g).to(dev)
    print("one training step at the baby preset (batch 12 x 64 tokens)")
    runs = [("gpt2", {}), ("llama", {})] + [("mamba", {"attention.params.chunk": c}) for c in (1, 4, 16, 64)]
    for name, kw in runs:
        torch.manual_seed(0)
        m = zoo.build(name, "baby", **kw).to(dev)
        label = name + (f" chunk {kw['attention.params.chunk']}" if kw else "")
        print(f"  {label:<15} {_ms(lambda: m(idx, idx)[1].backward(), dev, args.reps):8.1f} ms")


if __name__ == "__main__":
    main()
