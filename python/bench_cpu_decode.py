"""CPU decode speed of Palu-compressed SmolLM2-shaped models: the C path vs the PyTorch path vs no compression.

One run, side by side: for each context length and batch, the model is prefilled with random tokens, then one
decode step (the whole model, batch B, one new token per sequence) is timed (median of --steps steps after a
warm-up) for

- baseline: the uncompressed model with transformers' DynamicCache (full keys/values, SDPA);
- palu torch: the compressed model with ``decode_backend="torch"`` (rebuild K/V for every cached token, SDPA);
- palu C: the default path (``csrc/latent_attention.c`` reading the C ``LatentCache`` in place).

Weights are random (SmolLM2-135M shapes: 30 layers, hidden 576, 9 heads, 3 KV heads, head_dim 64); speed does
not depend on their values. Correctness first: the C and torch paths' logits of the first timed step must agree
(max |diff| <= 1e-3) before any time is printed. The cache bytes column is palu_c.kv_cache_bytes after prefill.

Run:  python python/bench_cpu_decode.py [--threads 2] [--contexts 256,1024,2048] [--batches 1,4] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from report import emit
from transformers import LlamaConfig, LlamaForCausalLM

import palu_c


def smollm2_shaped(layers: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def decode_times(model, batch: int, context: int, steps: int, seed: int):
    """Prefill `context` random tokens, then time `steps` one-token steps. Returns (median ms, first logits,
    cache bytes after prefill)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen)
    nxt = torch.randint(0, model.config.vocab_size, (batch, steps + 2), generator=gen)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        nbytes = palu_c.kv_cache_bytes(cache)
        times, first = [], None
        for i in range(steps + 2):
            t0 = time.perf_counter()
            out = model(nxt[:, i:i + 1], past_key_values=cache, use_cache=True)
            dt = time.perf_counter() - t0
            if i == 0:
                first = out.logits[:, -1].clone()
            if i >= 2:  # two warm-up steps
                times.append(dt)
    return 1e3 * statistics.median(times), first, nbytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--contexts", default="256,1024,2048")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=3)
    parser.add_argument("--bits", default="none,3")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", palu_c.WhiteningWarning)

    base = smollm2_shaped(args.layers)
    calib = torch.randint(0, base.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
    models = {}
    for bits in args.bits.split(","):
        b = None if bits == "none" else int(bits)
        models[b] = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.5, group_size=args.group_size,
                                       search="uniform", bits=b, progress=False)

    lines = [
        "# CPU decode step: Palu C path vs PyTorch path vs uncompressed (SmolLM2-135M shapes, random weights)",
        "",
        f"Command: `python python/bench_cpu_decode.py --threads {args.threads} --layers {args.layers} "
        f"--contexts {args.contexts} --batches {args.batches} --steps {args.steps} --group-size {args.group_size} "
        f"--bits {args.bits}`",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, ratio 0.5, group size "
        f"{args.group_size}, uniform ranks; median of {args.steps} whole-model decode steps after 2 warm-up steps.",
        "",
        "| context | batch | bits | baseline ms | palu torch ms | palu C ms | C / baseline | C / torch | "
        "cache MiB baseline | cache MiB palu |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for context in (int(c) for c in args.contexts.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            t_base, _, bytes_base = decode_times(base, batch, context, args.steps, seed=context + batch)
            for bits, model in models.items():
                for layer in model.model.layers:
                    layer.self_attn.decode_backend = "torch"
                t_torch, logits_torch, _ = decode_times(model, batch, context, args.steps, seed=context + batch)
                for layer in model.model.layers:
                    layer.self_attn.decode_backend = "auto"
                t_c, logits_c, bytes_palu = decode_times(model, batch, context, args.steps, seed=context + batch)
                err = float((logits_c - logits_torch).abs().max())
                if err > 1e-3:
                    raise SystemExit(f"C and torch paths disagree: max |logit diff| {err:.2e} (context {context}, "
                                     f"batch {batch}, bits {bits})")
                row = (f"| {context} | {batch} | {bits or 'fp32'} | {t_base:.1f} | {t_torch:.1f} | {t_c:.1f} | "
                       f"{t_c / t_base:.2f} | {t_c / t_torch:.2f} | {bytes_base / 2**20:.2f} | "
                       f"{bytes_palu / 2**20:.2f} |")
                print(row, flush=True)
                lines.append(row)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
