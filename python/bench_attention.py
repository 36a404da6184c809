"""One decode step of one attention layer: the fused latent kernel (palu_c.latent_kernels) vs PyTorch SDPA over a
full fp16/bf16 KV cache, side by side (kernels/latent_decode.cu; notes in docs/design/latent_decode_notes.md). The
committed tables (python/results/bench_attention_h200*.md) come from here; the engine, its method (correctness
first, L2 flush, GPU sleep, CUDA-event medians) and its byte/FLOP/floor accounting are in palu_c/bench.py, which
``palu-c bench`` runs too.

Shapes: Llama-2-7B (32 heads, MHA, D 128) and Llama-3-8B (32 query / 8 KV heads, GQA, D 128); context 4K, 16K,
64K, 128K; batch 1 and 8; Palu at ratio 0.5 (rk_g = rv_g = 0.5 * G * D) with group sizes 1, 2, 4.

    python python/bench_attention.py                          # full table (H200: about 2-3 minutes)
    python python/bench_attention.py --quick                  # 4K/16K, batch 1 only
    python python/bench_attention.py --out python/results/bench_attention_h200.md
    python python/bench_attention.py --graphs --impls auto,v3      # CUDA-graph replay timing
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from palu_c.bench import SHAPES, decode_step_report  # noqa: E402
from report import emit  # noqa: E402

MODELS = {m: SHAPES[m] for m in ("llama2-7b", "llama3-8b")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="4K and 16K, batch 1 only")
    ap.add_argument("--v1", action="store_true", help="also time the CUDA-core kernel v1 (batch 1, <= 16K)")
    ap.add_argument("--impls", default="auto,v2",
                    help="comma-separated kernels to time besides SDPA (names of latent_kernels._IMPLS, e.g. "
                         "auto,v2,v3w); one that refuses a shape is skipped for it")
    ap.add_argument("--graphs", action="store_true",
                    help="time one CUDA-graph replay of a step (ours: kernel + merge; SDPA) instead of eager calls")
    ap.add_argument("--flush", default="clean", choices=["clean", "dirty"],
                    help="L2 flush before each timed call: read (clean) or rewrite (dirty) a 256 MB buffer")
    ap.add_argument("--key-basis", default="both", choices=["svd", "interpolative", "both"],
                    help="latent key basis of our rows (palu_c.key_basis); 'both' adds '<kernel> ib' rows beside "
                         "the kernels that use the interpolative basis (v10, v11)")
    ap.add_argument("--out", default=None, help="write the markdown table here (atomically)")
    args = ap.parse_args(argv)
    impl_list = [i for i in args.impls.split(",") if i]
    if not torch.cuda.is_available():
        print("bench_attention: no CUDA device", file=sys.stderr)
        return 2
    try:
        lines, ok = decode_step_report(
            MODELS, groups=(1, 2, 4), batches=[1] if args.quick else [1, 8],
            contexts=[4096, 16384] if args.quick else [4096, 16384, 65536, 131072], dtype=getattr(torch, args.dtype),
            impls=impl_list, iters=args.iters, warmup=args.warmup, graphs=args.graphs, flush=args.flush, v1=args.v1,
            key_bases=("svd", "interpolative") if args.key_basis == "both" else (args.key_basis,),
            log=lambda s: print(s, flush=True))
    except ValueError as exc:
        print(f"bench_attention: --impls {args.impls!r}: {exc}", file=sys.stderr)
        return 2
    lines += ["", f"Command: python python/bench_attention.py --dtype {args.dtype}"
              f"{' --quick' if args.quick else ''}{' --v1' if args.v1 else ''}{' --graphs' if args.graphs else ''} "
              f"--impls {args.impls} --key-basis {args.key_basis} ({time.strftime('%Y-%m-%d')})"]
    emit(lines, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
