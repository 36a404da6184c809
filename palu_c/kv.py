"""Palu KV-cache compression of a Hugging Face causal LM: rank search, decomposition, module replacement.

Pipeline of :func:`compress_kv` (facts of the method: ../shared/docs/ALGORITHMS.md; cache layout:
docs/design/latent_cache.md):

1. Check the model is supported (Llama, Mistral, Qwen2 families; RoPE whose frequencies do not depend on the
   sequence length; no sliding-window layers) and resolve the group size.
2. Statistics on the calibration tokens (``palu_c.statistics``): per layer the Gram X^T X of the k/v projection
   input (whitening) and per output row the summed squared gradients (Fisher), both cached on disk.
3. Rank search: the budget is ``ratio`` x all K+V dimensions of the model, pooled over layers, K and V; one item
   per (layer, K or V, head group) of size G*D; ranks are multiples of ``rank_multiple`` and at least one unit.
   ``fisher``: proportional to each group's Fisher importance (Palu); ``fisher_uniform``: proportional per
   (layer, K/V), split equally among its groups; ``uniform``: the same rank everywhere; ``greedy`` (ours): rank
   units go where Fisher importance x the next squared singular value of the whitened group matrix is largest.
4. Decomposition: ``palu_c.lowrank_factor_grouped`` (activation-aware, float64 Gram work, in C) per layer for K
   and V. With ``bits`` set and ``hadamard=True``, an orthonormal Hadamard rotation of every group latent is folded
   into the factor pair (it spreads the outliers SVD ordering puts in the first channels before quantization).
5. Every attention module is replaced by :class:`palu_c.attention.PaluAttention`; ``model.palu_config`` records
   every decision (and is what ``palu_c.save`` writes).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np

from .errors import KernelSpeedWarning
from .group_choice import choose_group_size, slow_group_message
from .hadamard import hadamard_matrix
from .key_basis import interpolative_factors
from .kv_config import PaluConfig, PaluLayerConfig
from .linalg import lowrank_factor_grouped, svd
from .ranks import allocate_ranks

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SEARCH_MODES = ("fisher", "fisher_uniform", "uniform", "greedy")
KEY_BASES = ("auto", "svd", "interpolative")
# key_basis="auto": the interpolative basis where a decode kernel rebuilds only its half of the keys (v10 at G = 1,
# v11 at G = 2, palu_c/key_basis.py) and nothing is quantized; elsewhere it buys no speed, so the SVD basis stays
AUTO_INTERPOLATIVE_MAX_GROUP = 2
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _attention_layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"palu_c.compress_kv: unsupported model {type(model).__name__} (no model.layers); "
                         f"supported families: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return layers


def check_supported(model) -> None:
    """Raise ValueError/NotImplementedError with what is supported when ``model`` cannot be Palu-compressed."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"palu_c.compress_kv: model type {model_type!r} is not supported; supported families: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise NotImplementedError(
            f"palu_c.compress_kv: RoPE type {rope_type!r} is not supported (its frequencies depend on the sequence "
            f"length, so cached latents cannot be rotated once); supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    window = getattr(cfg, "sliding_window", None)
    uses_window = getattr(cfg, "use_sliding_window", window is not None)
    if window is not None and uses_window:
        raise NotImplementedError(
            f"palu_c.compress_kv: sliding-window attention (sliding_window={window}) is not supported yet; "
            f"set config.sliding_window = None if the model is used within its window")
    for i, layer in enumerate(_attention_layers(model)):
        attn = getattr(layer, "self_attn", None)
        if attn is None or not hasattr(attn, "k_proj") or not hasattr(attn, "v_proj"):
            raise ValueError(f"palu_c.compress_kv: layer {i} has no self_attn.k_proj/v_proj (already compressed?)")


def head_geometry(model) -> tuple[int, int, int, int]:
    """(num_layers, kv_heads, head_dim, hidden_size) of a supported model."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return len(_attention_layers(model)), cfg.num_key_value_heads, head_dim, cfg.hidden_size


def resolve_group_size(kv_heads: int, group_size: int | None, *, num_heads: int | None = None, head_dim: int = 128,
                       device=None) -> tuple[int, str]:
    """(group size, reason). An explicit group size must divide the KV-head count; None picks one that is fast on
    ``device`` (:func:`palu_c.group_choice.choose_group_size`: CPU, the largest divisor <= 4; CUDA, the measured
    kernel table)."""
    if group_size is None:
        return choose_group_size(kv_heads, num_heads or kv_heads, head_dim, device)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"palu_c.compress_kv: group_size must be an int or None, got {type(group_size).__name__}")
    if group_size < 1 or kv_heads % group_size:
        divisors = [d for d in range(1, kv_heads + 1) if kv_heads % d == 0]
        raise ValueError(f"palu_c.compress_kv: group_size={group_size} does not divide the {kv_heads} KV heads; "
                         f"use one of {divisors}")
    return int(group_size), "given"


def _whitened_spectrum(w: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Singular values of W L (L the Cholesky factor of the Gram), the spectrum the whitened factorization
    truncates; used by the greedy search only."""
    shift = 0.0
    scale = float(np.mean(np.diag(gram))) or 1.0
    for _ in range(12):
        try:
            chol = np.linalg.cholesky(gram + shift * np.eye(gram.shape[0]))
            break
        except np.linalg.LinAlgError:
            shift = 1e-6 * scale if shift == 0.0 else shift * 10
    else:  # pragma: no cover - lowrank_factor_grouped raises the real error later
        chol = np.eye(gram.shape[0])
    return svd(w @ chol, method="exact")[1]


def search_ranks(stats, weights, *, ratio: float, group_size: int, head_dim: int, search: str,
                 rank_multiple: int) -> list[tuple[list[int], list[int]]]:
    """Per layer (k_ranks, v_ranks), one rank per head group, under the pooled ``ratio`` budget.

    ``weights[i] = (w_k, w_v)`` float64 NumPy arrays of layer i; ``stats`` provides ``gram[i]`` and
    ``fisher_blocks(i, group_rows)``.
    """
    if search not in SEARCH_MODES:
        raise ValueError(f"palu_c.compress_kv: search must be one of {SEARCH_MODES}, got {search!r}")
    n_layers = len(weights)
    hidden = weights[0][0].shape[1]
    n_groups = weights[0][0].shape[0] // (group_size * head_dim)
    size = min(group_size * head_dim, hidden)
    cap = size - size % rank_multiple
    if cap < rank_multiple:
        raise ValueError(f"palu_c.compress_kv: rank_multiple={rank_multiple} exceeds the largest group rank {size}")
    n_items = n_layers * 2 * n_groups
    budget = ratio * n_items * group_size * head_dim
    if budget < n_items * rank_multiple:
        raise ValueError(f"palu_c.compress_kv: ratio {ratio:g} keeps {ratio * group_size * head_dim:g} dims per head "
                         f"group on average, less than one rank_multiple ({rank_multiple}); raise the ratio or the "
                         f"group size, or lower rank_multiple")
    if search == "uniform":
        r = int(min(cap, max(rank_multiple, round(ratio * size / rank_multiple) * rank_multiple)))
        return [([r] * n_groups, [r] * n_groups) for _ in range(n_layers)]

    scores = np.empty(n_items)
    for i in range(n_layers):
        k_scores, v_scores = stats.fisher_blocks(i, group_size * head_dim)
        base = i * 2 * n_groups
        scores[base:base + n_groups] = np.asarray(k_scores, dtype=np.float64)
        scores[base + n_groups:base + 2 * n_groups] = np.asarray(v_scores, dtype=np.float64)
    sizes = np.full(n_items, cap, dtype=np.int64)
    if search == "fisher":
        ranks = allocate_ranks(scores, sizes, budget, multiple_of=rank_multiple, minimum=rank_multiple)
    elif search == "fisher_uniform":
        proj_scores = scores.reshape(n_layers * 2, n_groups).mean(axis=1)
        proj_ranks = allocate_ranks(proj_scores, np.full(n_layers * 2, cap * n_groups, dtype=np.int64), budget,
                                    multiple_of=rank_multiple * n_groups, minimum=rank_multiple * n_groups)
        ranks = np.repeat(proj_ranks // n_groups, n_groups)
    else:  # greedy
        spectra = []
        for i in range(n_layers):
            gram = stats.gram[i].double().cpu().numpy() if hasattr(stats.gram[i], "cpu") else np.asarray(stats.gram[i])
            for w in weights[i]:
                rows = group_size * head_dim
                for g in range(n_groups):
                    spectra.append(_whitened_spectrum(w[g * rows:(g + 1) * rows], gram))
        ranks = allocate_ranks(scores, sizes, budget, method="greedy", multiple_of=rank_multiple,
                               minimum=rank_multiple, spectra=spectra)
    ranks = ranks.reshape(n_layers, 2, n_groups)
    return [([int(r) for r in ranks[i, 0]], [int(r) for r in ranks[i, 1]]) for i in range(n_layers)]


def _per_group(down: np.ndarray, ups: list[np.ndarray], ranks: list[int],
               change) -> tuple[np.ndarray, list[np.ndarray]]:
    """Apply ``change(g, down_g, up_g) -> (new down_g, new up_g)`` to every group's factor pair (down_g: the group's
    rows of the stacked down-projection); a change of basis keeps ``up_g @ down_g``."""
    out_down = down.copy()
    out_ups = []
    offset = 0
    for g, (up, r) in enumerate(zip(ups, ranks)):
        out_down[offset:offset + r], new_up = change(g, down[offset:offset + r], up)
        out_ups.append(new_up)
        offset += r
    return out_down, out_ups


def _rotate(down: np.ndarray, ups: list[np.ndarray], ranks: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fold an orthonormal Hadamard rotation R_g into each group's pair: down_g <- R^T down_g, up_g <- up_g R."""
    def rotate(g, down_g, up):
        rot = hadamard_matrix(up.shape[1])  # hadamard(x) == x @ rot.T, orthonormal
        return rot.T @ down_g, up @ rot
    return _per_group(down, ups, ranks, rotate)


def _interpolative(down: np.ndarray, ups: list[np.ndarray], ranks: list[int], head_dim: int,
                   layer: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each group's key factors in the interpolative basis (:mod:`palu_c.key_basis`): the same keys."""
    def change(g, down_g, up):
        # two heads per group: as many pairs from each (v11's layout; the constraint costs accuracy, 2.65x vs 2.17x
        # the SVD basis's fp16 storage error at G = 3 on SmolLM2, so only where a kernel uses it)
        heads, r = up.shape[0] // head_dim, up.shape[1]
        try:
            return interpolative_factors(down_g, up, head_dim, balanced=heads == 2 and (r // 2) % 2 == 0)
        except ValueError as exc:
            raise ValueError(f"palu_c.compress_kv: layer {layer}, key group {g}: {exc}") from None
    return _per_group(down, ups, ranks, change)


def resolve_key_basis(key_basis: str, bits: int | None, group_size: int, k_ranks: list[int]) -> str:
    """The key basis ``compress_kv(key_basis=...)`` uses: "auto" becomes "interpolative" where a decode kernel
    rebuilds only half of the keys with it (unquantized latents, group size <= 2) and every key rank allows whole
    RoPE pairs (even, >= 2); else "svd". The other values are returned as given."""
    if key_basis != "auto":
        return key_basis
    pairs_ok = all(r >= 2 and r % 2 == 0 for r in k_ranks)
    return "interpolative" if bits is None and group_size <= AUTO_INTERPOLATIVE_MAX_GROUP and pairs_ok else "svd"


def compress_kv(model, calib, *, ratio: float = 0.5, group_size: int | None = None, search: str = "fisher",
                bits: int | None = None, hadamard: bool = True, residual: int = 128, rank_multiple: int = 16,
                quant_group: int | None = None, key_basis: str = "auto", progress: bool = True,
                cache_dir: str | None = None):
    """Compress the KV cache of ``model`` with Palu; returns the same model object, modified in place.

    Parameters
    ----------
    model : transformers causal LM (Llama, Mistral, Qwen2 families)
    calib : LongTensor (n_samples, seq_len)
        Calibration token windows (see :func:`palu_c.calibration_tokens`).
    ratio : float in (0, 1]
        Fraction of K+V dimensions KEPT over the whole model (Palu's ``--param_ratio_target``; "Palu-30%" is 0.7).
    group_size : int, optional
        KV heads per decomposition group (1: per head, kv_heads: joint). None picks one that divides the KV-head
        count and is fast on the model's device (:mod:`palu_c.group_choice`): on a CPU the largest divisor <= 4
        (accuracy first: CPU decode is compute-bound at any group size), on CUDA the largest group whose measured
        kernel time is within 10% of the fastest (G = 1 on an H200). ``model.palu_config.group_size_reason``
        says why. A given group size on a CUDA model whose measured decode attention is slower than over the full
        cache at every measured point (on an H200: 2 and 4) raises a :class:`palu_c.KernelSpeedWarning`.
    search : {"fisher", "fisher_uniform", "uniform", "greedy"}
    bits : {2, 3, 4, 8}, optional
        Quantize cached latents (per token and head group, asymmetric) with a full-precision window of the newest
        ``residual`` tokens. None keeps latents in the model dtype.
    hadamard : bool
        With ``bits``, fold an orthonormal Hadamard rotation into every group's factors (no run-time cost).
    rank_multiple : int
        Every group rank is a multiple of this (16: the fp16 tensor-core k-tile).
    quant_group : int, optional
        Channels per scale/zero inside a group latent (must divide every rank); None: one per group and token.
    key_basis : {"auto", "svd", "interpolative"}
        How the key latent is expressed (the same keys either way in exact arithmetic; :mod:`palu_c.key_basis`).
        "interpolative" stores half of each group's pre-RoPE key coordinates (whole RoPE pairs, chosen for a well
        conditioned basis) as the latent itself, so a decode kernel rebuilds only the other half (on an H200 the
        GQA group-size-1 and the group-size-2 decode steps take 4-16% less time); its fp16 storage error is a few
        times the SVD basis's (~2e-4 of the keys on SmolLM2), which left perplexity within 0.02 of it on SmolLM2
        in fp16 and bf16 at group sizes 1 and 3 (``python/results/key_basis_ppl_cpu.md``). Only with
        ``bits=None``. "auto" (default) takes it where a kernel uses it: ``bits=None``, group size <= 2 and every
        key rank even; else "svd". ``model.palu_config.key_basis`` says which was used.
    progress : bool
        tqdm progress bars for statistics and decomposition.
    cache_dir : str, optional
        Where calibration statistics are cached by content hash (default: $PALU_C_CACHE_DIR if set).
    """
    import torch
    from tqdm.auto import tqdm

    from .attention import PaluAttention
    from .statistics import collect_kv_statistics

    if getattr(model, "flrc_config", None) is not None:
        raise ValueError("palu_c.compress_kv: the model is already weight-compressed (compress_weights); apply "
                         "compress_kv first, then compress_weights")
    check_supported(model)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1 or math.isnan(ratio):
        raise ValueError(f"palu_c.compress_kv: ratio must be in (0, 1] (fraction of K/V dims kept), got {ratio!r}")
    if bits is not None and (isinstance(bits, bool) or bits not in (2, 3, 4, 8)):
        raise ValueError(f"palu_c.compress_kv: bits must be None or one of 2, 3, 4, 8, got {bits!r}")
    if isinstance(rank_multiple, bool) or not isinstance(rank_multiple, int) or rank_multiple < 1:
        raise ValueError(f"palu_c.compress_kv: rank_multiple must be a positive int, got {rank_multiple!r}")
    if isinstance(residual, bool) or not isinstance(residual, int) or residual < 0:
        raise ValueError(f"palu_c.compress_kv: residual must be an int >= 0, got {residual!r}")
    if key_basis not in KEY_BASES:
        raise ValueError(f"palu_c.compress_kv: key_basis must be one of {KEY_BASES}, got {key_basis!r}")
    if key_basis == "interpolative" and bits is not None:
        raise ValueError(f"palu_c.compress_kv: key_basis={key_basis!r} needs unquantized latents (bits=None): with "
                         f"bits={bits} the Hadamard rotation mixes the coordinates it stores, and quantization error "
                         f"would be amplified by the basis change")
    if search not in SEARCH_MODES:
        raise ValueError(f"palu_c.compress_kv: search must be one of {SEARCH_MODES}, got {search!r}")
    n_layers, kv_heads, head_dim, hidden = head_geometry(model)
    device = next(model.parameters()).device
    group_size, group_reason = resolve_group_size(kv_heads, group_size, num_heads=model.config.num_attention_heads,
                                                  head_dim=head_dim, device=device)
    if group_reason == "given" and bits is None:  # the decode kernels' case: say when the given size decodes slowly
        slow = slow_group_message(kv_heads, model.config.num_attention_heads, head_dim, group_size, device)
        if slow is not None:
            warnings.warn(slow, KernelSpeedWarning, stacklevel=2)
    if quant_group is not None and (rank_multiple % quant_group if quant_group > 0 else True):
        raise ValueError(f"palu_c.compress_kv: quant_group={quant_group} must divide rank_multiple={rank_multiple} "
                         f"(so it divides every rank)")

    t0 = time.perf_counter()
    stats = collect_kv_statistics(model, calib, fisher=search != "uniform", progress=progress, cache_dir=cache_dir)
    layers = _attention_layers(model)
    weights = [(layer.self_attn.k_proj.weight.detach().double().cpu().numpy(),
                layer.self_attn.v_proj.weight.detach().double().cpu().numpy()) for layer in layers]
    all_ranks = search_ranks(stats, weights, ratio=ratio, group_size=group_size, head_dim=head_dim, search=search,
                             rank_multiple=rank_multiple)
    key_basis = resolve_key_basis(key_basis, bits, group_size, [r for k_ranks, _ in all_ranks for r in k_ranks])
    rows = group_size * head_dim
    layer_cfgs = []
    for i, layer in enumerate(tqdm(layers, desc="palu_c: decomposing K/V", disable=not progress)):
        attn = layer.self_attn
        k_ranks, v_ranks = all_ranks[i]
        gram = stats.gram[i].double().cpu().numpy()
        factors = []
        for w, ranks in ((weights[i][0], k_ranks), (weights[i][1], v_ranks)):
            down, ups = lowrank_factor_grouped(w, ranks, rows, gram=gram)
            if bits is not None and hadamard:
                down, ups = _rotate(down, ups, ranks)
            factors.append((down, ups))
        if key_basis == "interpolative":
            factors[0] = _interpolative(*factors[0], k_ranks, head_dim, i)
        cfg = PaluLayerConfig(layer_idx=i, group_size=group_size, k_ranks=list(k_ranks), v_ranks=list(v_ranks))
        layer_cfgs.append(cfg)
        dtype, device = attn.k_proj.weight.dtype, attn.k_proj.weight.device
        as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        (k_down, k_ups), (v_down, v_ups) = factors
        layer.self_attn = PaluAttention(attn, cfg, as_t(k_down), [as_t(u) for u in k_ups], as_t(v_down),
                                        [as_t(u) for u in v_ups], model.model.rotary_emb,
                                        bits=bits, residual=residual, quant_group=quant_group)
    model.palu_config = PaluConfig(ratio=float(ratio), group_size=group_size, search=search,
                                   rank_multiple=rank_multiple, kv_heads=kv_heads, head_dim=head_dim,
                                   hidden_size=hidden, bits=bits, hadamard=bool(hadamard), residual=residual,
                                   quant_group=quant_group, key_basis=key_basis, layers=layer_cfgs)
    model.palu_config.seconds = time.perf_counter() - t0  # not saved; for the summary
    model.palu_config.group_size_reason = group_reason  # not saved; why this group size
    return model


def _elem_bytes(model) -> int:
    import torch

    return torch.empty((), dtype=next(model.parameters()).dtype).element_size()


def kv_bytes_per_token(model) -> float:
    """Steady-state bytes one cached token costs over all layers (keys + values), from the configuration.

    Uncompressed models: 2 * kv_heads * head_dim * dtype bytes per layer. Palu models: latents in the model dtype,
    or with ``bits``: packed codes (whole 32-bit words per token and group, as stored) + float32 scale and zero per
    (token, group or sub-group), plus the int32 position of every token. The full-precision residual window is a
    fixed cost per sequence, not per token, and is excluded (``kv_cache_bytes`` counts it).
    """
    elem = _elem_bytes(model)
    cfg = getattr(model, "palu_config", None)
    if cfg is None:
        n_layers, kv_heads, head_dim, _ = head_geometry(model)
        return float(n_layers * 2 * kv_heads * head_dim * elem)
    total = 0.0
    for layer in cfg.layers:
        total += 4  # position
        for r in layer.k_ranks + layer.v_ranks:
            if cfg.bits is None:
                total += r * elem
            else:
                n_sub = r // cfg.quant_group if cfg.quant_group else 1
                total += 4 * math.ceil(r * cfg.bits / 32) + 8 * n_sub
    return total


def summary(model) -> str:
    """One screen: ranks per layer and KV bytes per token before/after (also printed by the CLI)."""
    cfg = getattr(model, "palu_config", None)
    if cfg is None:
        return f"{type(model).__name__}: not Palu-compressed ({kv_bytes_per_token(model):,.0f} KV bytes/token)"
    elem = _elem_bytes(model)
    full = len(cfg.layers) * 2 * cfg.kv_heads * cfg.head_dim * elem
    after = kv_bytes_per_token(model)
    lines = [f"Palu: ratio {cfg.ratio:g}, group size {cfg.group_size} ({cfg.kv_heads // cfg.group_size} groups/layer), "
             f"search {cfg.search}, bits {cfg.bits or 'none'}"
             + (f", Hadamard, residual {cfg.residual}" if cfg.bits else "")
             + (f", key basis {cfg.key_basis}" if cfg.key_basis != "svd" else ""),
             f"{'layer':>5}  {'K ranks':<24} {'V ranks':<24} {'K+V kept':>8}"]
    for layer in cfg.layers:
        kept = (layer.k_rank + layer.v_rank) / (2 * cfg.kv_heads * cfg.head_dim)
        lines.append(f"{layer.layer_idx:>5}  {str(layer.k_ranks):<24} {str(layer.v_ranks):<24} {kept:>8.1%}")
    lines.append(f"KV bytes/token: {full:,.0f} -> {after:,.0f} ({after / full:.1%}; scales, zeros and positions "
                 f"counted, residual window excluded)")
    return "\n".join(lines)
