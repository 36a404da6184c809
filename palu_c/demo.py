"""The main job: Palu on the embedded model (``run_palu_demo``), and the factorization report (``run_demo``).

``run_palu_demo`` compresses the KV cache (ratio 0.5, 3-bit latents, group size 3 by default) on calibration
text shipped in the package (Emma) and prints perplexity before/after on held-out text (Persuasion), the KV
cache bytes before/after for the held-out sequence, and a short greedy continuation from each model.

``run_demo`` (``palu-c demo --factors``) factors every layer's k_proj and v_proj only:

For each decoder layer, K and V projections (out = kv_heads * head_dim, in = hidden) are factored jointly
over all KV heads (Palu's J-LRD) at ``ratio`` of their output dimensions (rounded to a multiple of 16),
once by plain SVD and once activation-aware (whitened with the Gram of calibration activations, Emma).
Reported per layer: relative weight error and relative output error on held-out text (Persuasion), both
computed exactly from Grams: ||X E^T||_F^2 = trace(E G E^T) for the error E = W - up @ down. Then the bytes a
latent cache would hold per token instead of full keys and values.
"""

from __future__ import annotations

import time
from importlib import resources

import numpy as np

from .linalg import lowrank_factor
from .models import EMBEDDED_NAME, load_model


def _sample_text(name: str) -> str:
    return resources.files("palu_c").joinpath("data", name).read_text(encoding="utf-8")


def _windows(tokenizer, text: str, n_samples: int, seq_len: int):
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    n = min(n_samples, ids.numel() // seq_len)
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len).to(torch.long)


def _kv_input_grams(model, windows):
    """Gram X^T X (float64 NumPy) of the input of every layer's k_proj (v_proj reads the same input)."""
    from .statistics import collect_kv_statistics

    stats = collect_kv_statistics(model, windows, grams=True, fisher=False, batch_size=4, progress=False)
    return [g.cpu().numpy() for g in stats.gram]


def _rel_output_error(w, approx, gram):
    e = w - approx
    return float(np.sqrt(max(np.sum((e @ gram) * e), 0.0) / np.sum((w @ gram) * w)))


def run_demo(model_name: str | None = None, *, ratio: float = 0.5, n_samples: int = 8, seq_len: int = 256,
             rank_multiple: int = 16, context: int = 2048, out=print) -> dict:
    """Factor every layer's K/V projections at ``ratio`` and print the errors and cache savings."""
    import torch

    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    t0 = time.perf_counter()
    model, tokenizer = load_model(model_name)
    cfg = model.config
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_dim = kv_heads * head_dim
    rank = int(min(kv_dim, max(rank_multiple, round(ratio * kv_dim / rank_multiple) * rank_multiple)))
    out(f"model: {model_name or EMBEDDED_NAME}  layers={cfg.num_hidden_layers} hidden={cfg.hidden_size} "
        f"kv_heads={kv_heads} head_dim={head_dim}  (loaded in {time.perf_counter() - t0:.1f} s)")
    out(f"K/V projections ({kv_dim} x {cfg.hidden_size}) factored jointly over the {kv_heads} KV heads at rank "
        f"{rank} = ratio {rank / kv_dim:.3f}")

    t1 = time.perf_counter()
    calib = _windows(tokenizer, _sample_text("calibration_emma.txt"), n_samples, seq_len)
    held_out = _windows(tokenizer, _sample_text("eval_persuasion.txt"), max(2, n_samples // 2), seq_len)
    calib_grams = _kv_input_grams(model, calib)
    eval_grams = _kv_input_grams(model, held_out)
    out(f"Grams from {calib.numel()} calibration tokens (Emma) and {held_out.numel()} held-out tokens "
        f"(Persuasion) in {time.perf_counter() - t1:.1f} s")

    header = (f"{'layer':>5} | {'K weight err':>12} {'K out err':>10} {'K out err':>10} | "
              f"{'V weight err':>12} {'V out err':>10} {'V out err':>10}")
    out(header)
    out(f"{'':>5} | {'(plain)':>12} {'(plain)':>10} {'(whiten)':>10} | {'(plain)':>12} {'(plain)':>10} {'(whiten)':>10}")
    out("-" * len(header))
    rows = []
    t2 = time.perf_counter()
    for i, layer in enumerate(model.model.layers):
        row = {"layer": i}
        for tag, proj in (("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj)):
            w = proj.weight.detach().to(torch.float64).cpu().numpy()
            down, up = lowrank_factor(w, rank)
            wdown, wup = lowrank_factor(w, rank, gram=calib_grams[i])
            row[f"{tag}_weight"] = float(np.linalg.norm(w - up @ down) / np.linalg.norm(w))
            row[f"{tag}_out_plain"] = _rel_output_error(w, up @ down, eval_grams[i])
            row[f"{tag}_out_whiten"] = _rel_output_error(w, wup @ wdown, eval_grams[i])
        rows.append(row)
        out(f"{i:>5} | {row['k_weight']:>12.4f} {row['k_out_plain']:>10.4f} {row['k_out_whiten']:>10.4f} | "
            f"{row['v_weight']:>12.4f} {row['v_out_plain']:>10.4f} {row['v_out_whiten']:>10.4f}")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "layer"}
    out("-" * len(header))
    out(f"{'mean':>5} | {mean['k_weight']:>12.4f} {mean['k_out_plain']:>10.4f} {mean['k_out_whiten']:>10.4f} | "
        f"{mean['v_weight']:>12.4f} {mean['v_out_plain']:>10.4f} {mean['v_out_whiten']:>10.4f}")
    out(f"factored {2 * len(rows)} projections in {time.perf_counter() - t2:.1f} s; whitening cuts the mean "
        f"held-out output error of K from {mean['k_out_plain']:.3f} to {mean['k_out_whiten']:.3f} and of V from "
        f"{mean['v_out_plain']:.3f} to {mean['v_out_whiten']:.3f}")

    n_layers = len(rows)
    out(f"\nKV cache per token (all {n_layers} layers, keys + values), {context}-token context:")
    for name, nbytes in (("float16", 2), ("float32", 4)):
        full = 2 * kv_dim * nbytes * n_layers
        latent = 2 * rank * nbytes * n_layers
        out(f"  {name}: full {full:,} B/token -> latent {latent:,} B/token "
            f"({latent / full:.1%}); {context} tokens: {full * context / 2**20:.1f} MiB -> "
            f"{latent * context / 2**20:.1f} MiB, saves {(full - latent) * context / 2**20:.1f} MiB")
    out("(latents in the cache's own dtype, no quantization; scales/zeros arrive with quantized caches)")
    return {"rank": rank, "kv_dim": kv_dim, "rows": rows, "mean": mean}


def run_palu_demo(model_name: str | None = None, *, ratio: float = 0.5, bits: int | None = 3, group_size: int | None = 3,
                  n_samples: int = 16, seq_len: int = 256, eval_windows: int = 4, prompt: str | None = None,
                  max_new_tokens: int = 40, progress: bool = True, out=print) -> dict:
    """Compress the KV cache of the (embedded) model and report perplexity, cache bytes and a sample."""
    import copy
    import warnings

    import torch

    from . import eval as palu_eval
    from .cache import kv_cache_bytes
    from .errors import WhiteningWarning
    from .kv import compress_kv, kv_bytes_per_token, summary

    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    t0 = time.perf_counter()
    base, tokenizer = load_model(model_name)
    out(f"model: {model_name or EMBEDDED_NAME} (loaded in {time.perf_counter() - t0:.1f} s)")
    calib = _windows(tokenizer, _sample_text("calibration_emma.txt"), n_samples, seq_len)
    held_out = _sample_text("eval_persuasion.txt")
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WhiteningWarning)
        model = compress_kv(copy.deepcopy(base), calib, ratio=ratio, bits=bits, group_size=group_size,
                            progress=progress)
    out(f"compressed in {time.perf_counter() - t1:.1f} s on {calib.numel()} calibration tokens (Emma)\n")
    out(summary(model) + "\n")

    ids = tokenizer(held_out, return_tensors="pt").input_ids[:, : eval_windows * seq_len]
    with torch.no_grad():
        bytes_before = kv_cache_bytes(base(ids, use_cache=True).past_key_values)
        bytes_after = kv_cache_bytes(model(ids, use_cache=True).past_key_values)
    ppl_before = palu_eval.perplexity(base, tokenizer, held_out, seq_len=seq_len, max_windows=eval_windows)
    ppl_after = palu_eval.perplexity(model, tokenizer, held_out, seq_len=seq_len, max_windows=eval_windows)
    out(f"held-out perplexity (Persuasion, {eval_windows} x {seq_len} tokens): {ppl_before:.2f} -> {ppl_after:.2f}")
    out(f"KV cache for one {ids.shape[1]}-token sequence: {bytes_before / 2**20:.2f} MiB -> "
        f"{bytes_after / 2**20:.2f} MiB ({bytes_after / bytes_before:.1%}; scales, zeros, positions and the "
        f"residual window counted); steady state {kv_bytes_per_token(base):,.0f} -> {kv_bytes_per_token(model):,.0f} "
        f"B/token")
    prompt = prompt or "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition,"
    enc = tokenizer(prompt, return_tensors="pt")
    samples = {}
    for name, m in (("original", base), ("palu", model)):
        with torch.no_grad():
            gen = m.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        samples[name] = tokenizer.decode(gen[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
        out(f"\n[{name}] {prompt}{samples[name]}")
    return {"ppl_before": ppl_before, "ppl_after": ppl_after, "bytes_before": bytes_before,
            "bytes_after": bytes_after, "samples": samples}
