"""Perplexity table of Palu on the embedded SmolLM2-135M: ratio x group size, quantized latents x Hadamard,
and the rank search modes, each row with its KV bytes per token.

Calibration: Emma (64 windows x 512 tokens by default); evaluation: Pride and Prejudice (32 non-overlapping
windows x 512 tokens), both from ../shared/data/corpus (or --calib-file / --eval-file). The model is float32
(transformers dequantizes the GGUF Q4_1 weights); KV bytes per token are for float32 latents (fp32 cache)
or packed codes + float32 scales/zeros, positions included, residual window excluded (palu_c.kv_bytes_per_token).

Run:  python python/eval_ppl.py [--calib-samples 64] [--eval-windows 32] [--seq-len 512] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

import torch
from report import add_corpus_arguments, emit

import palu_c
from palu_c.models import EMBEDDED_NAME, load_model



def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_arguments(parser)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/palu_c"))
    parser.add_argument("--quick", action="store_true", help="a few rows only (smoke test)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore", palu_c.WhiteningWarning)
    torch.manual_seed(0)

    base, tok = load_model()
    calib = palu_c.calibration_tokens(tok, args.calib_file, args.calib_samples, args.seq_len, seed=0)
    eval_text = open(args.eval_file, encoding="utf-8").read()

    def ppl(model):
        return palu_c.eval.perplexity(model, tok, eval_text, seq_len=args.seq_len, max_windows=args.eval_windows)

    rows = []
    full_bytes = palu_c.kv_bytes_per_token(base)
    t0 = time.perf_counter()
    base_ppl = ppl(base)
    rows.append(("baseline (no compression)", "-", "-", "-", "-", "-", base_ppl, full_bytes, time.perf_counter() - t0))
    print(f"baseline ppl {base_ppl:.3f}", flush=True)

    configs = [dict(ratio=r, group_size=g) for r in (1.0, 0.7, 0.5, 0.3) for g in (1, 3)]
    configs += [dict(ratio=0.5, group_size=3, bits=b, hadamard=h) for b in (4, 3, 2) for h in (False, True)]
    configs += [dict(ratio=0.5, group_size=3, search=s) for s in ("uniform", "greedy", "fisher_uniform")]
    # group size 1 (what compress_kv picks on CUDA) by search: uniform ranks are the ones the fast decode kernels take
    configs += [dict(ratio=0.5, group_size=1, search=s) for s in ("uniform", "greedy", "fisher_uniform")]
    if args.quick:
        configs = [configs[0], configs[5], configs[9]]
    for cfg in configs:
        t = time.perf_counter()
        model = palu_c.compress_kv(copy.deepcopy(base), calib, progress=False, cache_dir=args.cache_dir, **cfg)
        value = ppl(model)
        kv = palu_c.kv_bytes_per_token(model)
        rows.append((f"palu", cfg["ratio"], cfg["group_size"], cfg.get("search", "fisher"),
                     cfg.get("bits") or "fp32", ("on" if cfg.get("hadamard", True) else "off") if cfg.get("bits") else "-",
                     value, kv, time.perf_counter() - t))
        print(f"{cfg}: ppl {value:.3f}, {kv:,.0f} B/token", flush=True)
        del model

    lines = ["# Palu perplexity on SmolLM2-135M-Instruct", "",
             f"Model: {EMBEDDED_NAME}, float32. Calibration: {args.calib_samples} x {args.seq_len} tokens of "
             f"{os.path.basename(args.calib_file)}; evaluation: {args.eval_windows} non-overlapping windows x "
             f"{args.seq_len} tokens of {os.path.basename(args.eval_file)} (held out). Quantized rows: per token and "
             f"head group, asymmetric, 128-token full-precision residual window; perplexity reads every older token "
             f"back from its quantized block.", "",
             f"Command: `python python/eval_ppl.py {' '.join(os.sys.argv[1:])}`".rstrip(), "",
             "| method | ratio | group | search | latents | Hadamard | ppl | KV B/token | vs full | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, ratio, group, search, bits, had, value, kv, secs in rows:
        lines.append(f"| {name} | {ratio} | {group} | {search} | {bits} | {had} | {value:.3f} | {kv:,.0f} | "
                     f"{kv / full_bytes:.1%} | {secs:.0f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
