"""FLRC weight compression of a Hugging Face causal LM: per-projection Fisher ranks under one parameter budget,
whitened low-rank factorization, optional progressive low-rank decoding.

Pipeline of :func:`compress_weights` (facts of the method: ../shared/docs/ALGORITHMS.md):

1. Targets: the q, k, v, o, gate, up, down projections of every decoder layer (or the ``targets`` subset),
   found at ``model.model.layers[i].self_attn.{q,k,v,o}_proj`` and ``.mlp.{gate,up,down}_proj`` as
   ``nn.Linear``. After :func:`palu_c.compress_kv` the attention modules are ``PaluAttention``: their key
   and value projections became ``k_down``/``v_down``/``k_ups``/``v_ups``, which Palu owns and this step
   leaves alone (recorded in ``flrc_config.skipped``); their ``q_proj`` and ``o_proj`` are still the
   original ``nn.Linear`` modules (o_proj is not fused with the value up-projection in palu_c) and are
   compressed like any other. The reverse order is refused by both functions.
2. Statistics (``palu_c.statistics.collect_linear_statistics``): one calibration pass collects the input
   Gram of every projection input (q/k/v share one, gate/up share one) and, for the Fisher searches, one
   backward per sample gives each projection's output Fisher (per output channel, the summed squared
   gradient of the loss w.r.t. the projection's output) and its weight importance sqrt(mean over samples and
   weight elements of grad^2). Both are cached on disk by content hash.
3. Rank allocation (:func:`allocate_projection_ranks`, solved in C by ``palu_c.allocate_ranks`` with
   ``costs``): a projection (m, n) costs m + n parameters per rank unit; the budget is ``ratio`` x the
   targeted dense parameters. See that function for the modes, the dense rule and the floor.

   The default search, ``fisher``, spends rank units where the Fisher estimate of the loss they save per
   parameter is largest. The estimate is Kronecker-factored (output Fisher x input Gram, as K-FAC): replacing W
   by W + dW costs about 1/2 sum_i h_i (dW G dW^T)_ii, h the output Fisher, G the input Gram. For the whitened
   rank-k factorization (G = S S^T, W S = U Sigma V^T) the error (W - W_k) S is the SVD tail, so the loss of
   every k follows from the factors at the largest useful rank alone (:func:`output_fisher_curve`); the greedy
   rule on these convex curves is the optimal budgeted choice. Why not the FLRC paper's rule (a kept fraction
   proportional to the weight-gradient importance, kept as ``fisher_proportional``): it ignores how compressible a
   projection is (two projections of equal importance can lose very different amounts at the same rank); on
   SmolLM2 it lost to this rule on perplexity at every ratio (python/results/eval_flrc_smollm2.md).
4. Factorization: ``palu_c.lowrank_factor(w, R, gram=...)`` (whitened, float64, in C) per low-rank
   projection; the ``nn.Linear`` is replaced by :class:`palu_c.lowrank_linear.LowRankLinear` (bias kept
   exact). Dense projections stay the original modules.
5. Progressive decoding (``progressive``): a schedule per projection class (``palu_c.progressive``) and one
   decode counter per model; prefill always uses the full stored rank.

``model.flrc_config`` (:class:`palu_c.weights_config.FLRCConfig`) records every decision; ``palu_c.save``
writes it. :func:`parameter_report` counts stored and average active parameters.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any, Mapping, Sequence

import numpy as np

from .ranks import allocate_ranks
from .weights_config import PROJECTION_KINDS, FLRCConfig, FLRCProjectionConfig

SEARCH_MODES = ("fisher", "fisher_proportional", "uniform", "greedy", "fisher_loss")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# 16: the fp16/bf16 tensor-core k-tile, so every (active) rank fills whole MMA tiles on GPUs; it is also the
# granularity Palu's KV ranks use in palu_c. Coarser (32, 64) wastes budget on small models (a 576-wide
# projection has only 18 units of 32); finer ranks buy nothing on the hardware that runs these models.
DEFAULT_RANK_MULTIPLE = 16
_PATHS = {"q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
          "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
          "down": ("mlp", "down_proj")}
# Projections of one layer that read the same input tensor share one Gram (collected once).
_GRAM_GROUP = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "o": "o_in", "gate": "mlp_in", "up": "mlp_in",
               "down": "down_in"}
_FUNC = "compress_weights"


def _layers(model):
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"{_FUNC}: unsupported model {type(model).__name__} (no model.model.layers); supported "
                         f"families: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return layers


def _is_palu(attn) -> bool:
    return hasattr(attn, "k_down") and hasattr(attn, "v_down")


def parse_targets(targets: Any) -> tuple[str, ...]:
    """``None`` -> all seven classes; else a non-empty list of class names (``"q"`` or ``"q_proj"``), in
    canonical order."""
    if targets is None:
        return PROJECTION_KINDS
    if isinstance(targets, str) or not isinstance(targets, (list, tuple, set, frozenset)):
        raise TypeError(f"{_FUNC}: targets must be None or a list of projection classes "
                        f"({', '.join(PROJECTION_KINDS)}), got {type(targets).__name__}")
    kinds = set()
    for t in targets:
        if not isinstance(t, str):
            raise TypeError(f"{_FUNC}: targets must hold str class names, got {type(t).__name__}")
        k = t[:-5] if t.endswith("_proj") else t
        if k not in PROJECTION_KINDS:
            raise ValueError(f"{_FUNC}: unknown projection class {t!r} in targets; choose from "
                             f"{', '.join(PROJECTION_KINDS)}")
        kinds.add(k)
    if not kinds:
        raise ValueError(f"{_FUNC}: targets is empty; pass None for all projections")
    return tuple(k for k in PROJECTION_KINDS if k in kinds)


def find_projections(model, kinds: Sequence[str], *, explicit: bool = False):
    """The targeted ``nn.Linear`` projections and the names compress_kv owns.

    Returns
    -------
    found : list of (name, kind, layer_idx, parent_module, attribute, nn.Linear)
    skipped : list of str
        k/v projections of Palu layers (only when not ``explicit``; explicit k/v targets on a Palu model raise).
    """
    from torch import nn

    found, skipped = [], []
    for i, layer in enumerate(_layers(model)):
        for kind in kinds:
            block_name, attr = _PATHS[kind]
            block = getattr(layer, block_name, None)
            prefix = f"model.layers.{i}.{block_name}"
            if kind in ("k", "v") and block is not None and _is_palu(block):
                if explicit:
                    raise ValueError(f"{_FUNC}: layer {i}'s {kind}_proj belongs to compress_kv (Palu latents); "
                                     f"drop {kind!r} from targets (compress_weights leaves Palu's k/v alone)")
                skipped.append(f"{prefix}.{kind}_down")
                continue
            mod = getattr(block, attr, None) if block is not None else None
            if not isinstance(mod, nn.Linear):
                from .lowrank_linear import LowRankLinear

                if isinstance(mod, LowRankLinear):
                    raise ValueError(f"{_FUNC}: {prefix}.{attr} is already low rank; the model was "
                                     f"weight-compressed before")
                raise ValueError(f"{_FUNC}: unsupported model {type(model).__name__}: {prefix}.{attr} is "
                                 f"{type(mod).__name__}, expected nn.Linear (families: "
                                 f"{', '.join(SUPPORTED_MODEL_TYPES)})")
            found.append((f"{prefix}.{attr}", kind, i, block, attr, mod))
    return found, skipped


def dense_break_even(m: int, n: int, multiple: int) -> int:
    """Largest multiple of ``multiple`` whose rank-r pair stores FEWER parameters than the dense (m, n) weight
    (r (m + n) < m n); 0 when even one multiple does not save."""
    return ((m * n - 1) // (m + n)) // multiple * multiple


def allocate_projection_ranks(shapes: Sequence[tuple[int, int]], ratio: float, *, search: str = "fisher",
                              scores: Any = None, spectra: Sequence[Any] | None = None,
                              rank_multiple: int = DEFAULT_RANK_MULTIPLE, min_rank: int | None = None,
                              loss_curves: Sequence[Any] | None = None) -> list[int | None]:
    """Ranks of projections under one parameter budget (None = keep dense).

    Parameters
    ----------
    shapes : sequence of (m, n)
        (out, in) of each projection.
    ratio : float in (0, 1]
        Fraction of the targeted parameters kept: the budget is ``ratio * sum(m * n)``.
    search : {"fisher", "fisher_proportional", "uniform", "greedy", "fisher_loss"}
        ``fisher``: ``allocate_ranks`` greedy rule on the Kronecker-factored Fisher estimate of the loss each
        rank unit saves, per parameter (needs ``loss_curves`` from :func:`output_fisher_curve`).
        ``fisher_proportional``: ``allocate_ranks`` proportional rule with budget shares proportional to
        importance x dense size, i.e. each projection's KEPT FRACTION is proportional to its Fisher importance
        (a per-element quantity, so sizes must enter the share; with equal importances this is ``uniform``).
        ``uniform``: the same kept fraction everywhere (the proportional rule with shares proportional to
        size; SVD-LLM's setting). ``greedy``: ``allocate_ranks`` greedy rule, rank units where importance x
        the next squared whitened singular values per parameter is largest (needs ``spectra``).
        ``fisher_loss``: the same greedy rule on the element-Fisher (diagonal) estimate of the loss (needs
        ``loss_curves`` from :func:`fisher_loss_curve`).
    scores : array_like (N,), optional
        Fisher importances (fisher_proportional, greedy).
    spectra : sequence of N 1-D arrays, optional
        Whitened singular values of each projection (greedy).
    loss_curves : sequence of N 1-D arrays, optional
        fisher, fisher_loss: ``loss_curves[i][u]`` = estimated loss of projection i truncated to ``u * rank_multiple``
        (u = 0 .. cap / rank_multiple), see :func:`fisher_loss_curve`.
    rank_multiple : int
        Every rank is a multiple of it.
    min_rank : int, optional
        Per-projection floor (rounded up to a multiple); default one multiple.

    Returns
    -------
    list of int or None, one per projection

    Notes
    -----
    Dense rule: a rank r with r (m + n) >= m n saves nothing, so low ranks are capped at the largest multiple
    below that break-even (:func:`dense_break_even`); ``allocate_ranks`` water-fills the share a capped
    projection cannot use over the others (that is where the budget a would-be-dense rank frees is re-spent).
    Then, in order of importance (uniform: of size), capped projections whose step to dense (m n - R (m + n),
    at most one rank unit) fits in the budget left over become dense and are counted at m n. A projection
    whose break-even is below the floor cannot save anything: it stays dense and its m n is taken out of the
    budget first. Result: stored parameters <= budget, and the budget left over is smaller than one rank
    unit ``rank_multiple * (m + n)`` of some projection (every projection not at its cap, every capped one not
    made dense); at ratio 1.0 every projection is dense.
    """
    func = "allocate_projection_ranks"
    if search not in SEARCH_MODES:
        raise ValueError(f"{func}: search must be one of {SEARCH_MODES}, got {search!r}")
    shapes = [(int(m), int(n)) for m, n in shapes]
    if not shapes:
        raise ValueError(f"{func}: no projections")
    mult = int(rank_multiple)
    floor = mult if min_rank is None else max(mult, -(-int(min_rank) // mult) * mult)
    dense = np.array([m * n for m, n in shapes], dtype=np.float64)
    unit = np.array([m + n for m, n in shapes], dtype=np.float64)
    caps = np.array([dense_break_even(m, n, mult) for m, n in shapes], dtype=np.int64)
    fixed = caps < floor  # cannot save parameters at the floor: always dense
    curve_search = search in ("fisher", "fisher_loss")
    if search in ("fisher_proportional", "greedy"):
        if scores is None:
            raise ValueError(f"{func}: search={search!r} needs the Fisher `scores`")
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(shapes),) or not np.all(np.isfinite(scores)) or np.any(scores < 0):
            raise ValueError(f"{func}: scores must be {len(shapes)} finite values >= 0")
    if search == "greedy" and (spectra is None or len(spectra) != len(shapes)):
        raise ValueError(f"{func}: search='greedy' needs one whitened spectrum per projection")
    if curve_search:
        if loss_curves is None or len(loss_curves) != len(shapes):
            raise ValueError(f"{func}: search={search!r} needs one loss curve per projection")
        loss_curves = [np.asarray(c, dtype=np.float64) for c in loss_curves]
        for i, (c, cap) in enumerate(zip(loss_curves, caps)):
            if c.ndim != 1 or c.size < cap // mult + 1 or not np.all(np.isfinite(c)):
                raise ValueError(f"{func}: loss_curves[{i}] must hold {cap // mult + 1} finite values")
        # A unit's value is the loss it saves (never negative: an extra unit can always be left unused).
        gains = [np.maximum(-np.diff(c[:cap // mult + 1]), 0.0) for c, cap in zip(loss_curves, caps)]
        spectra = [np.repeat(np.sqrt(g / mult), mult) for g in gains]
        scores = np.ones(len(shapes))
    budget = float(ratio) * float(dense.sum())
    ranks: list[int | None] = [None] * len(shapes)
    free = np.flatnonzero(~fixed)
    if free.size == 0:
        return ranks
    left = budget - float(dense[fixed].sum())
    need = float((floor * unit[free]).sum())
    if left < need - 1e-6:
        total = float(dense.sum())
        needed = need + float(dense[fixed].sum())
        raise ValueError(f"{_FUNC}: ratio {ratio:g} keeps {budget:,.0f} of {total:,.0f} parameters, fewer than the "
                         f"per-projection floor (rank {floor}) needs ({needed:,.0f}: ratio >= {needed / total:.3f}); "
                         f"raise ratio or lower min_rank / rank_multiple")
    if search == "uniform":
        item_scores = dense[free]
    elif curve_search:  # promotion order: loss left at the cap, i.e. what going dense saves
        item_scores = np.array([loss_curves[i][caps[i] // mult] for i in free])
    else:
        item_scores = scores[free] * (dense[free] if search == "fisher_proportional" else 1.0)
    if search in ("greedy", "fisher", "fisher_loss"):
        alloc = allocate_ranks(item_scores, caps[free], left, method="greedy", multiple_of=mult, minimum=floor,
                               costs=unit[free], spectra=[np.asarray(spectra[i], dtype=np.float64) for i in free])
    else:
        alloc = allocate_ranks(item_scores, caps[free], left, multiple_of=mult, minimum=floor, costs=unit[free])
    alloc = np.asarray(alloc, dtype=np.int64)
    left -= float((alloc * unit[free]).sum())
    for j, i in enumerate(free):
        ranks[i] = int(alloc[j])
    # Promote capped projections to dense, most important first, while the step fits.
    order = sorted((i for j, i in enumerate(free) if alloc[j] == caps[i]), key=lambda i: (-item_scores[
        np.searchsorted(free, i)], i))
    for i in order:
        step = dense[i] - ranks[i] * unit[i]
        if step <= left + 1e-6:
            ranks[i] = None
            left -= step
    return ranks


def fisher_loss_curve(w: np.ndarray, down: np.ndarray, up: np.ndarray, fisher_diag: np.ndarray,
                      multiple: int) -> np.ndarray:
    """Fisher estimate of the loss of a projection truncated to each multiple of ``multiple``.

    ``curve[u] = sum(F * (W - up[:, :k] @ down[:k])**2)`` with k = u * multiple, u = 0 .. R // multiple, F the
    element Fisher (sum over samples of grad^2, the diagonal of the empirical Fisher) and the factors ordered as
    the whitened factorization returns them. Up to the constant 1/2 this is the second-order estimate of the
    calibration loss increase from replacing W by its rank-k pair (diagonal Fisher approximation).

    Parameters
    ----------
    w : (m, n) float64; down : (R, n); up : (m, R); fisher_diag : (m, n)
    multiple : int

    Returns
    -------
    ndarray (R // multiple + 1,) float64
    """
    f = np.asarray(fisher_diag, dtype=np.float64)
    resid = np.array(w, dtype=np.float64, copy=True)
    units = down.shape[0] // multiple
    out = np.empty(units + 1)
    out[0] = float(np.einsum("ij,ij,ij->", f, resid, resid))
    for u in range(units):
        sl = slice(u * multiple, (u + 1) * multiple)
        resid -= up[:, sl] @ down[sl]
        out[u + 1] = float(np.einsum("ij,ij,ij->", f, resid, resid))
    return out


def output_fisher_curve(w: np.ndarray, up: np.ndarray, gram: np.ndarray, output_fisher: np.ndarray,
                        multiple: int) -> np.ndarray:
    """Kronecker-factored Fisher estimate of the loss of a projection truncated to each multiple of ``multiple``.

    ``curve[u] = sum_i h_i ((W - W_k) G (W - W_k)^T)_ii`` with k = u * multiple, W_k the whitened rank-k
    factorization, G the input Gram and h the output Fisher (per output channel, the summed squared loss
    gradient w.r.t. the output). Up to the constant 1/2 this is the second-order estimate of the calibration
    loss increase under the Kronecker (K-FAC) approximation of the Fisher, h x G.

    Computed from the factors at the largest rank R alone: with G = S S^T and W S = U Sigma V^T, the error
    (W - W_k) S is the SVD tail sum_{j>k} sigma_j u_j v_j^T, and ``lowrank_factor`` returns up = U Sigma^1/2, so
    ``||up_j||^2 = sigma_j`` and the term rank j removes is sigma_j * sum_i h_i up_ij^2. The loss at k = 0 is
    the whole sum_i h_i (W G W^T)_ii. (With a diagonal shift for a singular Gram, the shifted Gram is what the
    factors whiten; the curve is then exact for that Gram.)

    Parameters
    ----------
    w : (m, n) float64; up : (m, R) float64; gram : (n, n) float64; output_fisher : (m,) float64, >= 0
    multiple : int

    Returns
    -------
    ndarray (R // multiple + 1,) float64, non-increasing and >= 0
    """
    h = np.asarray(output_fisher, dtype=np.float64)
    total = float(np.einsum("i,ij,ij->", h, w @ gram, w))
    sigma = np.einsum("ij,ij->j", up, up)
    removed = sigma * (h @ (up * up))
    units = up.shape[1] // multiple
    saved = np.concatenate([[0.0], np.cumsum(removed)])[::multiple][:units + 1]
    return np.minimum.accumulate(np.maximum(total - saved, 0.0))


def _whitened_spectrum(w: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Singular values of W L, L the Cholesky factor of the Gram (what the whitened factorization truncates)."""
    from .kv import _whitened_spectrum as spectrum

    return spectrum(w, gram)


def whitened_factors(w: np.ndarray, rank: int, gram: np.ndarray, *, cache: dict | None = None, key: Any = None,
                     cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``palu_c.lowrank_factor(w, rank, gram=gram)``, optionally through a factorization cache.

    The whitened factorization truncates one exact SVD, so the rank-r pair is the first r rows of ``down``
    and columns of ``up`` of any higher-rank pair of the same (w, gram). With ``cache`` (a dict the caller
    keeps), the pair is computed once at rank ``max(rank, cap)`` and later calls for the same weight and Gram
    slice it: comparing several ratios or search modes on one model then factorizes each projection once.
    Entries are keyed by ``key`` plus a sha1 of the weight and (when ``key`` carries no Gram identity) of the
    Gram, so a changed weight or Gram never reuses a stale pair.

    Returns
    -------
    down : ndarray (rank, in), up : ndarray (out, rank), float64
    """
    import hashlib

    from .linalg import lowrank_factor

    if cache is None:
        return lowrank_factor(w, rank, gram=gram)
    if not isinstance(cache, dict):
        raise TypeError(f"{_FUNC}: factor_cache must be a dict (or None), got {type(cache).__name__}")
    ident = [key, hashlib.sha1(np.ascontiguousarray(w).view(np.uint8)).hexdigest(), w.shape]
    if not (isinstance(key, tuple) and len(key) > 1 and key[1]):
        ident.append(hashlib.sha1(np.ascontiguousarray(gram).view(np.uint8)).hexdigest())
    ident = repr(ident)
    hit = cache.get(ident)
    if hit is None or hit[0].shape[0] < rank:
        full = max(rank, cap or 0)
        hit = lowrank_factor(w, full, gram=gram)
        cache[ident] = hit
    down, up = hit
    return down[:rank], up[:, :rank]


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not (0 < float(ratio) <= 1) \
            or math.isnan(float(ratio)):
        raise ValueError(f"{_FUNC}: ratio must be in (0, 1] (fraction of targeted parameters kept), got {ratio!r}")
    return float(ratio)


def _check_explicit_ranks(ranks: Any, found: list, budget: float, mult: int, floor: int) -> list[int | None]:
    if not isinstance(ranks, Mapping):
        raise TypeError(f"{_FUNC}: ranks must be a dict projection name -> rank (int) or None (dense), "
                        f"got {type(ranks).__name__}")
    names = [f[0] for f in found]
    unknown = sorted(set(ranks) - set(names))
    if unknown:
        raise ValueError(f"{_FUNC}: ranks names unknown projections {unknown[:3]}; names look like {names[0]!r}")
    out: list[int | None] = []
    for name, _kind, _i, _p, _a, mod in found:
        r = ranks.get(name)
        if r is not None:
            if isinstance(r, bool) or not isinstance(r, numbers.Integral):
                raise TypeError(f"{_FUNC}: ranks[{name!r}] must be an int or None, got {type(r).__name__}")
            cap = dense_break_even(mod.out_features, mod.in_features, mult)
            if r % mult or not floor <= r <= cap:
                raise ValueError(f"{_FUNC}: ranks[{name!r}] = {r} must be a multiple of {mult} in [{floor}, {cap}] "
                                 f"(above {cap} it stores no fewer parameters than dense: use None)")
            r = int(r)
        out.append(r)
    stored = sum(mod.out_features * mod.in_features if r is None else r * (mod.out_features + mod.in_features)
                 for r, (*_, mod) in zip(out, found))
    if stored > budget + 1e-6:
        raise ValueError(f"{_FUNC}: the explicit ranks store {stored:,} parameters, over the ratio budget "
                         f"{budget:,.0f}; raise ratio or lower ranks")
    return out


def _statistics(model, calib, found, **kwargs):
    from .statistics import collect_linear_statistics

    modules = {name: mod for name, *_, mod in found}
    gram_of = {name: f"{i}.{_GRAM_GROUP[kind]}" for name, kind, i, *_ in found}
    return collect_linear_statistics(model, calib, modules, gram_of=gram_of, **kwargs)


def collect_projection_statistics(model, calib, *, targets: Any = None, grams: bool = True, fisher: bool = True,
                                  fisher_diag: bool = False, batch_size: int = 1, progress: bool = True,
                                  cache_dir: str | None = None):
    """The statistics :func:`compress_weights` uses (same projections, same Gram sharing, same cache files):
    a :class:`palu_c.statistics.LinearStatistics` keyed by module path. Lets a caller time or pre-compute
    the Gram pass and the Fisher pass separately; ``compress_weights`` then reads both from ``cache_dir``."""
    found, _ = find_projections(model, parse_targets(targets), explicit=targets is not None)
    return _statistics(model, calib, found, grams=grams, fisher=fisher, fisher_diag=fisher_diag,
                       batch_size=batch_size, progress=progress, cache_dir=cache_dir)


def compress_weights(model, calib, *, ratio: float = 0.8, search: str = "fisher", targets: Any = None,
                     progressive: Any = None, rank_multiple: int = DEFAULT_RANK_MULTIPLE, min_rank: int | None = None,
                     ranks: Mapping[str, int | None] | None = None, batch_size: int = 1, progress: bool = True,
                     cache_dir: str | None = None, factor_cache: dict | None = None):
    """Compress the linear projections of ``model`` with FLRC; returns the same model object, modified in place.

    Parameters
    ----------
    model : transformers causal LM (Llama, Mistral, Qwen2 families), optionally after ``compress_kv``
    calib : LongTensor (n_samples, seq_len)
        Calibration token windows (:func:`palu_c.calibration_tokens`).
    ratio : float in (0, 1]
        Fraction of the targeted projections' parameters KEPT (stored parameters <= ratio x targeted, within
        one rank unit). 1.0 keeps every projection dense.
    search : {"fisher", "fisher_proportional", "uniform", "greedy", "fisher_loss"}
        Rank allocation (see :func:`allocate_projection_ranks`): ``fisher`` (default) spends rank units where
        the Kronecker-factored Fisher estimate of the loss they save per parameter is largest (one calibration
        pass + one backward; every projection is factorized once at its largest useful rank before the
        allocation, then again at its chosen rank unless ``factor_cache`` keeps the first); ``fisher_proportional``
        keeps a fraction proportional to each projection's Fisher importance (the FLRC paper's rule);
        ``uniform`` the same kept fraction everywhere (SVD-LLM-style baseline); ``greedy`` weight importance x
        whitened spectrum; ``fisher_loss`` the element-Fisher (diagonal) loss estimate (needs a statistics
        cache as large as the weights).
    targets : list of str, optional
        Projection classes among ``q k v o gate up down`` (``"q_proj"`` also accepted); None: all. On a Palu
        model the default skips k and v (compress_kv owns them); naming them explicitly is an error.
    progressive : None, True, list of (tokens_generated_from, keep_fraction), or dict class -> list
        Progressive low-rank decoding schedule (``palu_c.progressive``); None: off; True: the conservative
        default.
    rank_multiple : int
        Every stored and active rank is a multiple of it (default 16: the tensor-core k-tile).
    min_rank : int, optional
        Per-projection floor of stored and active ranks (default one ``rank_multiple``).
    ranks : dict name -> int or None, optional
        Explicit stored ranks (None = dense) for projections by name (``"model.layers.0.mlp.up_proj"``;
        unnamed ones stay dense), instead of a search; they must fit the ``ratio`` budget. Used to run
        external searches (e.g. a sensitivity sweep) through this same code path.
    batch_size : int
        Calibration samples per forward/backward pass.
    progress : bool
        tqdm progress bars.
    cache_dir : str, optional
        Statistics cache directory (default $PALU_C_CACHE_DIR if set).
    factor_cache : dict, optional
        An in-memory cache of whitened factorizations (see :func:`whitened_factors`) shared across calls on
        the same base model: pass the same empty dict to several calls (other ratios, other searches) and
        each projection is factorized once, at its largest useful rank. Results are identical to no cache.

    Returns
    -------
    model, with ``model.flrc_config``.
    """
    from torch import nn
    from tqdm.auto import tqdm

    from .lowrank_linear import LowRankLinear
    from .progressive import install_counter, parse_schedule, rank_steps

    if not isinstance(model, nn.Module):
        raise TypeError(f"{_FUNC}: model must be a transformers causal LM, got {type(model).__name__}")
    if getattr(model, "flrc_config", None) is not None:
        raise ValueError(f"{_FUNC}: the model is already weight-compressed (model.flrc_config is set); start from "
                         f"the uncompressed model")
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{_FUNC}: model type {model_type!r} is not supported; supported families: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    ratio = _check_ratio(ratio)
    if not isinstance(search, str) or search not in SEARCH_MODES:
        raise ValueError(f"{_FUNC}: search must be one of {SEARCH_MODES}, got {search!r}")
    if isinstance(rank_multiple, bool) or not isinstance(rank_multiple, int) or rank_multiple < 1:
        raise ValueError(f"{_FUNC}: rank_multiple must be a positive int, got {rank_multiple!r}")
    if min_rank is not None and (isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1):
        raise ValueError(f"{_FUNC}: min_rank must be None or a positive int, got {min_rank!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"{_FUNC}: progress must be a bool, got {type(progress).__name__}")
    if factor_cache is not None and not isinstance(factor_cache, dict):
        raise TypeError(f"{_FUNC}: factor_cache must be a dict (or None), got {type(factor_cache).__name__}")
    floor = rank_multiple if min_rank is None else -(-min_rank // rank_multiple) * rank_multiple
    kinds = parse_targets(targets)
    schedule = parse_schedule(progressive, kinds)
    found, skipped = find_projections(model, kinds, explicit=targets is not None)
    if not found:
        raise ValueError(f"{_FUNC}: nothing to compress: the targets {list(kinds)} are all owned by compress_kv")
    kinds_found = {f[1] for f in found}
    if schedule is not None:
        schedule = {k: v for k, v in schedule.items() if k in kinds_found} or None
    shapes = [(mod.out_features, mod.in_features) for *_, mod in found]
    budget = ratio * sum(m * n for m, n in shapes)

    t0 = time.perf_counter()
    need_fisher = ranks is None and search in ("fisher", "fisher_proportional", "greedy", "fisher_loss")
    if ranks is not None:
        explicit_ranks = _check_explicit_ranks(ranks, found, budget, rank_multiple, floor)
    need_diag = ranks is None and search == "fisher_loss"
    stats = _statistics(model, calib, found, grams=True, fisher=need_fisher, batch_size=batch_size,
                        progress=progress, cache_dir=cache_dir, fisher_diag=need_diag)
    if need_diag and factor_cache is None:
        factor_cache = {}  # the curves need every projection factorized at its cap; reuse those pairs below
    importance = [stats.importance(name) for name, *_ in found] if need_fisher else None
    weights64 = {name: mod.weight.detach().double().cpu().numpy() for name, *_, mod in found}
    if ranks is not None:
        alloc = explicit_ranks
        search_name = "explicit"
    else:
        spectra = None
        if search == "greedy":
            spectra = [_whitened_spectrum(weights64[name], stats.gram_for(name).numpy())
                       for name, *_ in tqdm(found, desc="FLRC: whitened spectra", disable=not progress)]
        curves = None
        if search in ("fisher", "fisher_loss"):
            curves = []
            for name, *_, mod in tqdm(found, desc="FLRC: Fisher loss curves", disable=not progress):
                cap = dense_break_even(mod.out_features, mod.in_features, rank_multiple)
                if cap < floor:
                    curves.append(np.zeros(cap // rank_multiple + 1))
                    continue
                gram = stats.gram_for(name).numpy()
                down, up = whitened_factors(weights64[name], cap, gram, cache=factor_cache,
                                            key=(name, stats.cache_keys.get("gram")), cap=cap)
                if search == "fisher":
                    curves.append(output_fisher_curve(weights64[name], up, gram, stats.output_fisher[name].numpy(),
                                                      rank_multiple))
                else:
                    curves.append(fisher_loss_curve(weights64[name], down, up, stats.fisher_diag[name].numpy(),
                                                    rank_multiple))
                del down, up
        alloc = allocate_projection_ranks(shapes, ratio, search=search, scores=importance, spectra=spectra,
                                          rank_multiple=rank_multiple, min_rank=floor, loss_curves=curves)
        search_name = search
    search_seconds = time.perf_counter() - t0

    counter = install_counter(model) if schedule is not None else None
    proj_cfgs = []
    for j, (name, kind, i, parent, attr, mod) in enumerate(tqdm(found, desc="FLRC: factorizing", disable=not progress)):
        r = alloc[j]
        proj_cfgs.append(FLRCProjectionConfig(name=name, kind=kind, layer_idx=i, out_features=mod.out_features,
                                              in_features=mod.in_features, rank=r,
                                              importance=None if importance is None else importance[j]))
        if r is None:
            continue
        down, up = whitened_factors(weights64[name], r, stats.gram_for(name).numpy(), cache=factor_cache,
                                    key=(name, stats.cache_keys.get("gram")),
                                    cap=dense_break_even(mod.out_features, mod.in_features, rank_multiple))
        new = LowRankLinear.from_factors(down, up, mod.bias, dtype=mod.weight.dtype, device=mod.weight.device)
        if schedule is not None and kind in schedule:
            new.set_schedule(rank_steps(r, schedule[kind], rank_multiple, floor), counter)
        setattr(parent, attr, new)
    model.flrc_config = FLRCConfig(
        ratio=ratio, search=search_name, rank_multiple=rank_multiple, min_rank=floor, targets=list(kinds),
        projections=proj_cfgs, skipped=skipped, budget=budget,
        progressive=None if schedule is None else {k: [list(s) for s in v] for k, v in schedule.items()})
    model.flrc_config.seconds = time.perf_counter() - t0  # not saved; for reports
    # statistics (computed, or read from the cache) + weights to float64 + spectra (greedy) + allocation
    model.flrc_config.search_seconds = search_seconds
    model.flrc_config.statistics_seconds = dict(stats.seconds)  # time of the passes that computed them
    return model


def install_progressive(model, schedule: Any) -> None:
    """(Re)install a progressive schedule on an FLRC model: ``schedule`` as ``compress_weights(progressive=)``
    accepts it (None turns it off). Updates ``model.flrc_config.progressive``."""
    from .lowrank_linear import LowRankLinear
    from .progressive import install_counter, parse_schedule, rank_steps

    cfg = getattr(model, "flrc_config", None)
    if not isinstance(cfg, FLRCConfig):
        raise ValueError("install_progressive: the model is not weight-compressed (no flrc_config)")
    kinds = tuple(k for k in PROJECTION_KINDS if k in {p.kind for p in cfg.projections})
    parsed = parse_schedule(schedule, kinds)
    counter = install_counter(model) if parsed is not None else None
    modules = dict(model.named_modules())
    for p in cfg.projections:
        mod = modules.get(p.name)
        if isinstance(mod, LowRankLinear):
            steps = parsed.get(p.kind, ()) if parsed else ()
            mod.set_schedule(rank_steps(mod.rank, steps, cfg.rank_multiple, cfg.min_rank) if steps else (), counter)
    cfg.progressive = None if parsed is None else {k: [list(s) for s in v] for k, v in parsed.items()}


def parameter_report(model, generated_tokens: int | None = None) -> dict:
    """Stored and average active weight parameters of the targeted projections (biases excluded: kept exact).

    Parameters
    ----------
    model : an FLRC model (``compress_weights``), or any model (then nothing is compressed)
    generated_tokens : int, optional
        G >= 1: also average the ACTIVE parameters over a generation of G new tokens, i.e. over the G forward
        passes that produce them (the prefill, at full stored rank, then decode steps g = 1 .. G-1 with the
        schedule's rank at step g), each weighted equally (parameters touched per generated token).

    Returns
    -------
    dict
        ``targeted`` (dense parameters of the targeted projections), ``stored`` (dense ones at m n, low-rank
        ones at R (m + n)), ``stored_ratio``, ``low_rank`` / ``dense`` (counts), ``by_kind`` (kind ->
        (targeted, stored)); with G also ``active`` (average active parameters) and ``active_ratio``.
    """
    from .lowrank_linear import LowRankLinear

    cfg = getattr(model, "flrc_config", None)
    if not isinstance(cfg, FLRCConfig):
        raise ValueError("parameter_report: the model is not weight-compressed (no flrc_config); call "
                         "palu_c.compress_weights first")
    if generated_tokens is not None and (isinstance(generated_tokens, bool) or
                                         not isinstance(generated_tokens, int) or generated_tokens < 1):
        raise ValueError(f"parameter_report: generated_tokens must be None or an int >= 1, got {generated_tokens!r}")
    modules = dict(model.named_modules())
    targeted = stored = 0
    by_kind: dict = {}
    active_sum = 0.0
    low = 0
    for p in cfg.projections:
        t, s = p.dense_parameters, p.stored_parameters
        targeted += t
        stored += s
        kt, ks = by_kind.get(p.kind, (0, 0))
        by_kind[p.kind] = (kt + t, ks + s)
        if p.rank is not None:
            low += 1
        if generated_tokens is not None:
            mod = modules.get(p.name)
            if isinstance(mod, LowRankLinear):
                per_step = [mod.rank_at(g) for g in range(generated_tokens)]  # g = 0: prefill
                active_sum += sum(per_step) * (p.out_features + p.in_features) / generated_tokens
            else:
                active_sum += s
    report = {"targeted": targeted, "stored": stored, "stored_ratio": stored / targeted, "low_rank": low,
              "dense": len(cfg.projections) - low, "by_kind": by_kind, "budget": cfg.budget}
    if generated_tokens is not None:
        report["active"] = active_sum
        report["active_ratio"] = active_sum / targeted
    return report


def summary(model) -> str:
    """One screen: per class stored fraction and rank range, totals (also usable in notebooks)."""
    cfg = getattr(model, "flrc_config", None)
    if not isinstance(cfg, FLRCConfig):
        return f"{type(model).__name__}: not weight-compressed"
    rep = parameter_report(model)
    lines = [f"FLRC: ratio {cfg.ratio:g}, search {cfg.search}, rank multiple {cfg.rank_multiple}, floor "
             f"{cfg.min_rank}, progressive {'off' if cfg.progressive is None else cfg.progressive}",
             f"{'class':>5}  {'kept':>6}  {'ranks (min-max)':<16} dense"]
    for kind in PROJECTION_KINDS:
        if kind not in rep["by_kind"]:
            continue
        t, s = rep["by_kind"][kind]
        ranks = [p.rank for p in cfg.projections if p.kind == kind and p.rank is not None]
        n_dense = sum(1 for p in cfg.projections if p.kind == kind and p.rank is None)
        span = f"{min(ranks)}-{max(ranks)}" if ranks else "-"
        lines.append(f"{kind:>5}  {s / t:>6.1%}  {span:<16} {n_dense}")
    lines.append(f"stored {rep['stored']:,} of {rep['targeted']:,} targeted parameters ({rep['stored_ratio']:.1%}; "
                 f"budget {cfg.budget:,.0f})" + (f"; {len(cfg.skipped)} Palu-owned k/v left alone" if cfg.skipped else ""))
    return "\n".join(lines)


__all__ = ["compress_weights", "collect_projection_statistics", "allocate_projection_ranks", "parameter_report", "install_progressive", "summary",
           "find_projections", "parse_targets", "dense_break_even", "whitened_factors", "fisher_loss_curve",
           "output_fisher_curve", "SEARCH_MODES", "DEFAULT_RANK_MULTIPLE"]
