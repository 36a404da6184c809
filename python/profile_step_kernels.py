"""Where the GPU time of one latent decode step goes, kernel by kernel (torch profiler), next to SDPA.

    python python/profile_step_kernels.py [--impls v4,v5] [--batch 1] [--tokens 65536] [--shape llama3-8b]

Builds random fp16 latents at ratio 0.5 (group size 1), then for each implementation runs ten steps (each after
an L2 flush by reading 256 MB and a 1 ms GPU sleep, as python/bench_attention.py does) under the torch profiler
and prints the CUDA time per kernel: the fused decode kernel and the split merge; then the same for SDPA over a
full fp16 cache. This is how the merge kernel was found to take 19 us of an 85 us step at Llama-3-8B B=1 64K
(python/results/kernel_profile_h200_merge_fix.txt has the run after the fix).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the in-place build
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_latent_decode import SHAPES, decode_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--impls", default="v4,v5")
    args = ap.parse_args()
    H, Hkv, D = SHAPES[args.shape]
    B, T = args.batch, args.tokens
    dev, dt = torch.device("cuda"), torch.float16
    q = torch.randn(B, H, D, device=dev, dtype=dt)
    flush = torch.empty(64 * 2**20, device=dev)
    k = torch.randn(B, Hkv, T, D, device=dev, dtype=dt)
    v = torch.randn_like(k)

    def report(name, step):
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                flush.sum()
                torch.cuda._sleep(2_000_000)
                step()
            torch.cuda.synchronize()
        print(f"== {name}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=6))

    for impl in [i for i in args.impls.split(",") if i]:
        report(impl, decode_step(args.shape, T, B, 1, impl))
    report("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(q.view(B, H, 1, D), k, v,
                                                                            enable_gqa=H != Hkv))


if __name__ == "__main__":
    main()
