"""Command line: ``palu-c`` / ``python -m palu_c``.

Subcommands: ``demo`` (the main job on the embedded model, or ``--model``), ``compress`` (Palu-compress a
model, optionally FLRC-compress its weights too, and save it), ``eval`` (perplexity of a saved palu_c model or any HF model), ``info`` (build facts).
``bench`` arrives with the CUDA kernels.
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
    comp = sub.add_parser("compress", help="Palu-compress a model's KV cache and save it (palu_c.save format)")
    comp.add_argument("output", help="folder to write")
    comp.add_argument("--model", default=None, help="HF model id or folder (default: embedded SmolLM2-135M)")
    comp.add_argument("--calib", required=True, help="calibration text file (or 'wikitext2')")
    comp.add_argument("--samples", type=int, default=64)
    comp.add_argument("--seq-len", type=int, default=512)
    comp.add_argument("--ratio", type=float, default=0.5)
    comp.add_argument("--group-size", type=int, default=None)
    comp.add_argument("--search", default="fisher", choices=["fisher", "fisher_uniform", "uniform", "greedy"])
    comp.add_argument("--bits", type=int, default=0, help="latent bits (2, 3, 4, 8; 0 for none)")
    comp.add_argument("--no-hadamard", action="store_true")
    comp.add_argument("--weights-ratio", type=float, default=None,
                      help="also compress the weights with FLRC, keeping this fraction of the projections' "
                           "parameters (applied after the KV cache; default: off)")
    comp.add_argument("--weights-search", default="fisher",
                      choices=["fisher", "fisher_proportional", "uniform", "greedy", "fisher_loss"])
    comp.add_argument("--progressive", action="store_true",
                      help="with --weights-ratio: progressive low-rank decoding with the default schedule")
    ev = sub.add_parser("eval", help="perplexity of a model on a text file")
    ev.add_argument("model", nargs="?", default=None,
                    help="folder written by `palu-c compress`, an HF id/folder, or nothing for the embedded model")
    ev.add_argument("--text", required=True, help="evaluation text file (or 'wikitext2')")
    ev.add_argument("--seq-len", type=int, default=512)
    ev.add_argument("--windows", type=int, default=None, help="at most this many windows")
    sub.add_parser("info", help="print build facts (BLAS/LAPACK, CUDA)")
    args = parser.parse_args(argv)

    if args.command in ("compress", "eval"):
        try:
            return _model_command(args)
        except (FileNotFoundError, ImportError, ValueError, NotImplementedError) as exc:
            print(f"palu-c {args.command}: {exc}", file=sys.stderr)
            return 2

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


def _model_command(args) -> int:
    import os

    from . import calibration_tokens, compress_kv, eval as palu_eval, load, save, summary
    from .models import load_model

    if args.command == "compress":
        if args.progressive and args.weights_ratio is None:
            print("palu-c compress: --progressive needs --weights-ratio (it schedules the FLRC ranks)", file=sys.stderr)
            return 2
        model, tok = load_model(args.model)
        calib = calibration_tokens(tok, args.calib, args.samples, args.seq_len)
        compress_kv(model, calib, ratio=args.ratio, group_size=args.group_size, search=args.search,
                    bits=args.bits or None, hadamard=not args.no_hadamard)
        if args.weights_ratio is not None:
            from .weights import compress_weights, parameter_report

            compress_weights(model, calib, ratio=args.weights_ratio, search=args.weights_search,
                             progressive=True if args.progressive else None)
            r = parameter_report(model, generated_tokens=128)
            print(f"FLRC: stored {r['stored']:,} of {r['targeted']:,} targeted parameters ({r['stored_ratio']:.1%}); "
                  f"average active over 128 generated tokens {r['active']:,.0f} ({r['active_ratio']:.1%})")
        save(model, args.output)
        tok.save_pretrained(args.output)  # so `palu-c eval OUTPUT` finds its tokenizer
        print(summary(model))
        print(f"saved to {args.output}")
        return 0
    if args.model and os.path.isfile(os.path.join(args.model, "palu_config.json")):
        from transformers import AutoTokenizer

        model, tok = load(args.model), AutoTokenizer.from_pretrained(args.model)
    else:
        model, tok = load_model(args.model)
    value = palu_eval.perplexity(model, tok, args.text, seq_len=args.seq_len, max_windows=args.windows, progress=True)
    print(f"perplexity: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
