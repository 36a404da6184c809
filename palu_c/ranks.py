"""Rank allocation under a global budget: Palu's proportional rule and a spectrum-aware greedy allocator.

The numerics and the exact rules live in C (``csrc/rank_alloc.c``, documented in ``csrc/rank_alloc.h``);
this module checks the Python-level types, turns DLPack producers into NumPy and converts real inputs to
the dtypes the binding takes (float64 scores/costs/spectra, int64 sizes).
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

from . import _C
from ._arrays import as_host_array, as_int

_FUNC = "allocate_ranks"
_METHODS = ("proportional", "greedy")
_MAX_INT = 2**53  # ranks, sizes and multiples stay exact in float64 cost arithmetic


def _real_vector(obj: Any, name: str) -> np.ndarray:
    """``obj`` as a float64 NumPy array; refuses bool, complex, string and object data with a TypeError."""
    obj = as_host_array(obj, name, _FUNC)
    if obj is None:
        raise TypeError(f"{_FUNC}: `{name}` must be an array of real numbers, got None")
    try:
        arr = np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{_FUNC}: `{name}` must be an array of real numbers ({exc})") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{_FUNC}: `{name}` must hold real numbers (integer or float), got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _size_vector(obj: Any) -> np.ndarray:
    """``sizes`` as int64; floats must be whole numbers, unsigned values must fit."""
    obj = as_host_array(obj, "sizes", _FUNC)
    if obj is None:
        raise TypeError(f"{_FUNC}: `sizes` must be an integer array, got None")
    try:
        arr = np.asarray(obj)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{_FUNC}: `sizes` must be an array of integers ({exc})") from exc
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.floor(arr)) if arr.size else np.zeros(0, bool)
        if np.any(bad):
            i = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(f"{_FUNC}: `sizes` must be whole numbers (the largest rank of each item), "
                             f"got {arr.ravel()[i]!r} at index {i}")
        if arr.size and np.max(np.abs(arr)) > _MAX_INT:
            raise ValueError(f"{_FUNC}: `sizes` must be at most 2^53, got {np.max(arr)!r}")
        return arr.astype(np.int64)
    if arr.dtype.kind == "u":
        if arr.size and int(np.max(arr)) > _MAX_INT:
            raise ValueError(f"{_FUNC}: `sizes` must be at most 2^53, got {int(np.max(arr))}")
        return arr.astype(np.int64)
    if arr.dtype.kind != "i":
        raise TypeError(f"{_FUNC}: `sizes` must hold integers (the largest rank of each item), got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def allocate_ranks(scores: Any, sizes: Any, budget: float, *, method: str = "proportional", multiple_of: int = 1,
                   minimum: int = 0, spectra: Sequence[Any] | None = None, costs: Any = None) -> np.ndarray:
    """Choose one rank per item so that the total cost stays within ``budget``.

    Every rank is a multiple of ``multiple_of``, at most its item's size (rounded down to a multiple) and at
    least ``minimum`` (rounded up to a multiple; an item whose size is below that keeps its rounded-down
    size: the cap wins). The total ``sum(costs * ranks)`` never exceeds ``budget``, and the result is
    maximal: the budget left over is smaller than the cost of one more unit (``multiple_of * costs[i]``) of
    every item not at its cap. Results are deterministic; ties go to the lower index.

    Parameters
    ----------
    scores : array_like, shape (N,)
        Importance of each item (e.g. Fisher information), finite and >= 0. Any real dtype.
    sizes : array_like of int, shape (N,)
        Largest rank of each item (e.g. ``min(out, in)`` of a weight, or a head group's dimension), >= 1.
    budget : float
        Total cost allowed, in the units of ``costs`` (e.g. ``ratio * sum(costs * sizes)``), finite, >= 0.
    method : {"proportional", "greedy"}
        ``"proportional"`` is Palu's rule: budget shares proportional to ``scores`` (equal shares when all
        are 0), water-filled so that no item exceeds its cap or falls below the minimum, floored to multiples,
        then leftover units one at a time by largest fractional remainder. ``"greedy"`` adds units one at a
        time where ``scores[i] * sum(spectra[i][r:r+m]**2) / (m * costs[i])`` is largest (m = multiple_of).
        ``csrc/rank_alloc.h`` states both rules exactly.
    multiple_of : int
        Every rank is a multiple of it (16 keeps fp16 tensor-core tiles full), >= 1.
    minimum : int
        Every rank is at least this, rounded up to a multiple of ``multiple_of`` (items whose cap is lower
        keep their cap), >= 0.
    spectra : sequence of N array_like, optional
        Required by, and only accepted with, ``method="greedy"``: ``spectra[i]`` is 1-D, finite, >= 0, with
        at least as many values as item i's cap (typically its singular values, non-increasing).
    costs : array_like, shape (N,), optional
        Cost of ONE rank of each item, finite and > 0 (default 1; for a weight (m, n) it is m + n).

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
        The ranks.

    Raises
    ------
    ValueError
        Bad values (negative or NaN scores, non-positive sizes, mismatched lengths, unknown method, a budget
        too small for the minimum ranks ...); the message names the argument.
    TypeError
        Non-real data (bool, complex, strings), non-integer ``sizes``, ``multiple_of`` or ``minimum``.
    """
    if not isinstance(method, str):
        raise TypeError(f"{_FUNC}: `method` must be a string, one of {_METHODS}, got {type(method).__name__}")
    if method not in _METHODS:
        raise ValueError(f"{_FUNC}: unknown `method` {method!r}; choose one of {', '.join(map(repr, _METHODS))}")
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Real):
        raise TypeError(f"{_FUNC}: `budget` must be a real number, got {type(budget).__name__}")
    multiple_of = as_int(multiple_of, "multiple_of", _FUNC, low=1, high=_MAX_INT)
    minimum = as_int(minimum, "minimum", _FUNC, low=0, high=_MAX_INT)
    scores_arr = _real_vector(scores, "scores")
    sizes_arr = _size_vector(sizes)
    costs_arr = None if costs is None else _real_vector(costs, "costs")
    spectra_list = None
    if spectra is not None:
        if method != "greedy":
            raise ValueError(f"{_FUNC}: `spectra` is only used by method='greedy'; drop it or pass method='greedy'")
        if isinstance(spectra, (str, bytes)) or not hasattr(spectra, "__iter__"):
            raise TypeError(f"{_FUNC}: `spectra` must be a list of N 1-D arrays, got {type(spectra).__name__}")
        spectra_list = [_real_vector(s, f"spectra[{i}]") for i, s in enumerate(spectra)]
    elif method == "greedy":
        raise ValueError(f"{_FUNC}: method='greedy' needs `spectra` (one 1-D array of singular values per item)")
    return _C.allocate_ranks(scores_arr, sizes_arr, float(budget), method, multiple_of, minimum, spectra_list,
                             costs_arr)
