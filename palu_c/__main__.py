"""Command line: ``palu-c`` / ``python -m palu_c``.

Subcommands: ``demo`` (the main job on the embedded model, or ``--model``), ``compress`` (Palu-compress a
model, optionally FLRC-compress its weights too, and save it), ``eval`` (perplexity of a saved palu_c model or any
HF model), ``bench`` (one decode step of the fused CUDA kernel against full-cache SDPA on this GPU, for a model's
attention shape: :mod:`palu_c.bench`), ``info`` (build facts).
"""

from __future__ import annotations

import argparse
import json
import sys

from .shapes import ATTENTION_SHAPES as SHAPES


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
    comp.add_argument("--key-basis", default="auto", choices=["auto", "svd", "interpolative"],
                      help="interpolative: half the key coordinates stored as the latent (unquantized only); auto "
                           "(default): interpolative where a decode kernel uses it (no --bits, group size <= 2)")
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
    bench = sub.add_parser("bench", help="time one decode step of the CUDA latent kernel against full-cache SDPA")
    bench.add_argument("--shape", default=None, choices=sorted(SHAPES),
                       help="attention shape preset (default: the embedded SmolLM2-135M's, or --model's)")
    bench.add_argument("--model", default=None,
                       help="HF model id or folder whose config gives the attention shape (no weights are loaded)")
    bench.add_argument("--ratio", type=float, default=0.5, help="fraction of K/V dimensions kept (default 0.5)")
    bench.add_argument("--group-size", default="1,2", help="comma-separated KV heads per group (default 1,2)")
    bench.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    bench.add_argument("--tokens", default="4096,16384", help="comma-separated context lengths (default 4096,16384)")
    bench.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    bench.add_argument("--impls", default="auto", help="comma-separated kernels besides SDPA (default auto)")
    bench.add_argument("--iters", type=int, default=25, help="timed calls per row; the median is reported")
    bench.add_argument("--graphs", action="store_true", help="time CUDA-graph replays instead of eager calls")
    bench.add_argument("--key-basis", default="both", choices=["svd", "interpolative", "both"],
                       help="latent key basis (compress_kv's key_basis); 'both' (default) adds '<kernel> ib' rows "
                            "for the kernels that use the interpolative one, which compress_kv's default "
                            "key_basis='auto' gives group sizes 1 and 2")
    bench.add_argument("--out", default=None, help="also write the markdown table to this file")
    sub.add_parser("info", help="print build facts (BLAS/LAPACK, CUDA)")
    args = parser.parse_args(argv)

    if args.command in ("compress", "eval"):
        try:
            return _model_command(args)
        except (FileNotFoundError, ImportError, ValueError, NotImplementedError) as exc:
            print(f"palu-c {args.command}: {exc}", file=sys.stderr)
            return 2

    if args.command == "bench":
        try:
            return _bench_command(args)
        except (OSError, ImportError, ValueError, RuntimeError) as exc:
            print(f"palu-c bench: {exc}", file=sys.stderr)
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


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} takes comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--{what} takes comma-separated positive integers, got {text!r}")
    return values


def _attention_shape(model: str) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) from an HF config (the weights are not loaded)."""
    import os

    from transformers import AutoConfig

    if (os.sep in model or model.startswith(".")) and not os.path.isdir(model):
        raise FileNotFoundError(f"--model {model!r}: no such folder (give an HF model id or a folder with a config)")
    cfg = AutoConfig.from_pretrained(model)
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = getattr(cfg, "num_attention_heads", None)
    if not heads:
        raise ValueError(f"the config of {model!r} names no num_attention_heads: not a decoder this benchmark knows")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return int(heads), int(kv_heads), int(head_dim)


def _bench_command(args) -> int:
    import time

    import torch

    from .bench import decode_step_report

    if args.shape and args.model:
        raise ValueError("give --shape or --model, not both")
    groups = _int_list(args.group_size, "group-size")
    batches = _int_list(args.batch, "batch")
    tokens = _int_list(args.tokens, "tokens")
    if not 0 < args.ratio <= 1:
        raise ValueError(f"--ratio must be in (0, 1], got {args.ratio}")
    if args.iters < 1:
        raise ValueError(f"--iters must be positive, got {args.iters}")
    name = args.shape or (args.model if args.model else "smollm2")
    H, Hkv, D = SHAPES[name] if name in SHAPES else _attention_shape(args.model)
    if H % Hkv or D % 2:
        raise ValueError(f"{name}: {H} heads over {Hkv} KV heads, head_dim {D}: not a shape the kernels take")
    if not any(Hkv % g == 0 for g in groups):
        raise ValueError(f"none of the group sizes {groups} divides the {Hkv} KV heads of {name}")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device is visible; this benchmark times the CUDA decode kernel (on a CPU, Palu "
                           "saves memory, not time: see the README)")
    lines, ok = decode_step_report({name: (H, Hkv, D)}, groups=groups, batches=batches, contexts=tokens,
                                   dtype=getattr(torch, args.dtype), impls=[i for i in args.impls.split(",") if i],
                                   ratio=args.ratio, iters=args.iters, warmup=min(5, args.iters), graphs=args.graphs,
                                   key_bases=("svd", "interpolative") if args.key_basis == "both" else (args.key_basis,),
                                   title="palu-c bench", log=lambda s: print(s, file=sys.stderr, flush=True))
    lines += ["", "Command: palu-c " + " ".join(sys.argv[1:]) + f" ({time.strftime('%Y-%m-%d')})"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:  # temp file + rename: never a half-written table
        import os
        from pathlib import Path

        from .io import _atomic_write

        os.replace(_atomic_write(Path(args.out).resolve(), lambda tmp: Path(tmp).write_text(text)), args.out)
    return 0 if ok else 1


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
                    bits=args.bits or None, hadamard=not args.no_hadamard, key_basis=args.key_basis)
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
