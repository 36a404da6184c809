"""Command line: ``palu-c`` / ``python -m palu_c``.

Subcommands: ``demo`` (the main job on the embedded model, or ``--model``), ``info`` (build facts).
Model-level ``compress``, ``eval`` and ``bench`` arrive with the Palu/FLRC issues.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="palu-c", description="Low-rank KV-cache and weight compression.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compress the KV cache of the embedded model; perplexity, bytes, samples")
    demo.add_argument("--model", default=None, help="HF model id or folder (default: embedded SmolLM2-135M)")
    demo.add_argument("--ratio", type=float, default=0.5, help="fraction of K/V dimensions kept (default 0.5)")
    demo.add_argument("--bits", type=int, default=3, help="latent bits, 0 for none (default 3)")
    demo.add_argument("--group-size", type=int, default=3, help="KV heads per group (default 3)")
    demo.add_argument("--samples", type=int, default=16, help="calibration windows (default 16)")
    demo.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    demo.add_argument("--factors", action="store_true",
                      help="only factor every layer's K/V projections and report their errors (no compression)")
    sub.add_parser("info", help="print build facts (BLAS/LAPACK, CUDA)")
    args = parser.parse_args(argv)

    if args.command == "info":
        from . import build_info

        print(json.dumps(build_info(), indent=2))
        return 0
    if args.command == "demo":
        from .demo import run_demo, run_palu_demo

        try:
            if args.factors:
                run_demo(args.model, ratio=args.ratio, n_samples=args.samples, seq_len=args.seq_len)
            else:
                run_palu_demo(args.model, ratio=args.ratio, bits=args.bits or None, group_size=args.group_size,
                              n_samples=args.samples, seq_len=args.seq_len)
        except (FileNotFoundError, ImportError, ValueError) as exc:
            print(f"palu-c demo: {exc}", file=sys.stderr)
            return 2
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
