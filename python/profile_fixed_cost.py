"""The fixed cost of one latent decode step: kernel durations against the context length (torch profiler).

    python python/profile_fixed_cost.py [--impl v4] [--shapes llama3-8b,llama2-7b] [--batches 1,8] [--group 1]

For each shape and batch, times one decode step (fused decode kernel + split merge, random fp16 latents at ratio
0.5, group size --group, default 1) at several context lengths, each step after an L2 flush and a 1 ms GPU sleep as
python/bench_attention.py does, and prints per length the median CUDA-event time of the whole call and the decode
kernel's and the merge kernel's mean durations (torch profiler). A least-squares line through (tokens, decode kernel
us), printed on each shape's last row, gives the per-token slope and the per-step intercept: what a step
costs before it reads its first token (launch, prologue, first-tile latency, epilogue), the part that a longer
context does not amortize at batch 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the in-place build
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from palu_c.bench import timed  # noqa: E402
from profile_latent_decode import decode_step  # noqa: E402


def kernel_means(step, flush, iters):
    """(median event us of the whole call, {kernel kind: mean device us}) over `iters` flushed calls, timed as
    bench_attention.py times them."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call = timed(step, flush, iters, warmup=0)[0]
    kinds = {}
    for ev in prof.key_averages():
        kind = "decode" if "decode_v" in ev.key else "merge" if "merge_kernel" in ev.key else None
        if kind is not None and ev.count:
            total = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
            kinds[kind] = kinds.get(kind, 0.0) + total / ev.count
    return call, kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impl", default="v4")
    ap.add_argument("--shapes", default="llama3-8b,llama2-7b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", default="1024,4096,16384,65536")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--group", type=int, default=1, help="Palu group size G (ranks 0.5 G D)")
    ap.add_argument("--key-basis", default="svd", choices=["svd", "interpolative"],
                    help="latent key basis (palu_c.key_basis): interpolative passes the pair table (v10 uses it)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*Profiler clears events.*")  # one profiler per call, on purpose
    flush = torch.empty(64 * 2**20, device="cuda")
    print(f"{torch.cuda.get_device_name()}; impl {args.impl}; fp16, ratio 0.5, group {args.group}, key basis "
          f"{args.key_basis}")
    print("| shape | B | tokens | call us (events) | decode kernel us | merge us | fit: intercept us, us per 1K tokens |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        for B in (int(x) for x in args.batches.split(",")):
            rows = []
            for T in (int(x) for x in args.tokens.split(",")):
                step = decode_step(shape, T, B, args.group, args.impl, args.key_basis)
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
                call, kinds = kernel_means(step, flush, args.iters)
                rows.append((T, call, kinds.get("decode", float("nan")), kinds.get("merge", 0.0)))
                del step
                torch.cuda.empty_cache()
            n = len(rows)
            mx = sum(r[0] for r in rows) / n
            my = sum(r[2] for r in rows) / n
            slope = sum((r[0] - mx) * (r[2] - my) for r in rows) / max(sum((r[0] - mx) ** 2 for r in rows), 1e-9)
            icept = my - slope * mx
            for i, (T, call, dec, mer) in enumerate(rows):
                fit = f"{icept:.1f}, {slope * 1024:.2f}" if i == n - 1 else ""
                print(f"| {shape} | {B} | {T} | {call:.1f} | {dec:.1f} | {mer:.1f} | {fit} |", flush=True)


if __name__ == "__main__":
    main()
