"""Truncated SVD and low-rank factorization of weights (thin wrappers over ``csrc/svd.c``, ``csrc/lowrank.c``).

Every function takes NumPy arrays or CPU DLPack producers (torch CPU tensors), float32 or float64, and
returns NumPy arrays of the input dtype. Non-contiguous inputs are copied. The C core validates shapes,
ranks and finiteness and releases the GIL while it computes.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from . import _C
from ._arrays import as_host_array, as_int
from .errors import WhiteningWarning

_SVD_METHODS = ("auto", "exact", "randomized")


def _default_power_iters(rank: int, mn: int) -> int:
    """Subspace iterations when the caller gives none.

    Measured (python/bench_linalg.py, spectra ~ 1/(1+i)^0.5, the slow decay of real projections): with 8
    extra columns, 2 iterations keep the rank-k error within 1% of optimal up to k ~ min(m, n)/32 but give
    ~2% at k = min(m, n)/4; 4 iterations give 0.6% there for ~1.6x the work.
    """
    return 2 if rank <= mn / 32 else 4


def svd(a: Any, rank: int | None = None, *, method: str = "auto", oversample: int = 8,
        power_iters: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated singular value decomposition ``a ~= U @ diag(S) @ Vt``.

    Parameters
    ----------
    a : array_like, shape (m, n), float32 or float64
    rank : int, optional
        Number of singular triplets k, ``1 <= k <= min(m, n)``; default ``min(m, n)`` (thin SVD).
    method : {"auto", "exact", "randomized"}
        ``exact``: LAPACK gesdd (falls back to gesvd if it does not converge). ``randomized``: Gaussian
        sketch with ``oversample`` extra columns and ``power_iters`` subspace iterations (Halko et al.
        2011), far faster for small ranks. ``auto`` picks randomized when ``rank <= min(m, n) / 4``.
    oversample : int
        Randomized method only: extra test vectors beyond ``rank`` (more is slower and more accurate).
    power_iters : int, optional
        Randomized method only: subspace iterations. Default: 2 for ``rank <= min(m, n) / 32`` and 4
        above, which keeps the error within 1% of optimal on slowly decaying spectra (measured in
        ``python/bench_linalg.py``).
    seed : int
        Seed of the randomized method's test matrix (same seed, same result).

    Returns
    -------
    U : ndarray (m, k), S : ndarray (k,), non-increasing, Vt : ndarray (k, n)
    """
    a = as_host_array(a, "a", "svd")
    if method not in _SVD_METHODS:
        raise ValueError(f"svd: method must be one of {_SVD_METHODS}, got {method!r}")
    shape = np.shape(a)
    if len(shape) != 2:
        raise ValueError(f"svd: `a` must be 2-dimensional, got shape {shape}")
    mn = min(shape)
    k = mn if rank is None else as_int(rank, "rank", "svd")
    oversample = as_int(oversample, "oversample", "svd")
    power_iters = _default_power_iters(k, mn) if power_iters is None else as_int(power_iters, "power_iters", "svd")
    seed = as_int(seed, "seed", "svd")
    if oversample < 0 or power_iters < 0:
        raise ValueError(f"svd: oversample and power_iters must be >= 0, got {oversample} and {power_iters}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"svd: seed must be in [0, 2**64), got {seed}")
    if method == "auto":
        method = "randomized" if k <= mn / 4 else "exact"
    code = _C.SVD_RANDOMIZED if method == "randomized" else _C.SVD_EXACT
    return _C.svd(a, k, code, oversample, power_iters, seed)


def lowrank_factor_grouped(w: Any, ranks: Sequence[int], group_rows: int, *, gram: Any = None,
                           return_info: bool = False):
    """Factor the row groups of a weight separately: ``w[g*G:(g+1)*G] ~= ups[g] @ down[rows of group g]``.

    Parameters
    ----------
    w : array_like, shape (out, in), float32 or float64
        ``nn.Linear``-style weight (rows are output features).
    ranks : sequence of int, one per group
        ``1 <= ranks[g] <= min(group_rows, in)``.
    group_rows : int
        Rows per group (e.g. ``group_size * head_dim`` for a head group); must divide ``out`` into
        ``len(ranks)`` groups.
    gram : array_like, shape (in, in), optional
        ``X^T X`` of the layer inputs over calibration data; makes the factorization activation-aware
        (minimizes ``||X w^T - X down^T up^T||_F``). Without it, plain truncated SVD.
    return_info : bool
        Also return a dict ``{"shift": float}``: the diagonal shift added to ``gram`` when it was not
        positive definite (0.0 otherwise). A non-zero shift also emits :class:`palu_c.WhiteningWarning`.

    Returns
    -------
    down : ndarray (sum(ranks), in)
        The groups' down-projections stacked in group order.
    ups : list of ndarray, ``ups[g]`` of shape (group_rows, ranks[g])
    info : dict, only with ``return_info=True``
    """
    w = as_host_array(w, "w", "lowrank_factor")
    gram = as_host_array(gram, "gram", "lowrank_factor")
    group_rows = as_int(group_rows, "group_rows", "lowrank_factor_grouped")
    if isinstance(ranks, np.ndarray):
        if ranks.dtype.kind not in "iu":
            raise TypeError(f"lowrank_factor_grouped: `ranks` must hold ints, got dtype {ranks.dtype}")
        ranks = ranks.tolist()
    down, ups, shift = _C.lowrank_factor_grouped(w, ranks, group_rows, gram)
    if shift > 0:
        warnings.warn(f"gram was not positive definite; added {shift:.3g} * I before the Cholesky factorization "
                      f"(more or more varied calibration data avoids this)", WhiteningWarning, stacklevel=2)
    if return_info:
        return down, ups, {"shift": shift}
    return down, ups


def lowrank_factor(w: Any, rank: int, *, gram: Any = None, return_info: bool = False):
    """Factor a weight ``w (out, in) ~= up @ down`` with ``down (rank, in)`` and ``up (out, rank)``.

    ``sqrt(Sigma)`` is split evenly between the factors. With ``gram`` (``X^T X`` of the layer inputs,
    (in, in)) the factorization is activation-aware (whitened): it minimizes ``||X w^T - X down^T up^T||_F``
    via Cholesky whitening in float64 (SVD-LLM / Palu). See :func:`lowrank_factor_grouped` for
    ``return_info`` and the warning on a non-positive-definite Gram.

    Returns
    -------
    down : ndarray (rank, in), up : ndarray (out, rank)[, info : dict]
    """
    w = as_host_array(w, "w", "lowrank_factor")
    shape = np.shape(w)
    if len(shape) != 2:
        raise ValueError(f"lowrank_factor: `w` must be 2-dimensional (out, in), got shape {shape}")
    rank = as_int(rank, "rank", "lowrank_factor")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WhiteningWarning)
        down, ups, info = lowrank_factor_grouped(w, [rank], max(shape[0], 1), gram=gram, return_info=True)
    for item in caught:
        warnings.warn(item.message, item.category, stacklevel=2)
    if return_info:
        return down, ups[0], info
    return down, ups[0]
