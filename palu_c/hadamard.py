"""Orthonormal Hadamard-type transforms: ``hadamard`` (CPU or CUDA, by the input's device) and ``hadamard_matrix``.

Why: an orthonormal rotation of the low-rank latent spreads the outliers that SVD ordering concentrates in
the first channels before low-bit quantization (ALGORITHMS.md). A block-diagonal Hadamard does not spread
them when the length is not a power of two, so every length gets a DENSE orthonormal matrix here: every
output depends on every input, the leading channels included.

Construction (csrc/hadamard.h has the full statement). For a length n = 2^a * m with m odd,
``H = (S_K / sqrt(K)) kron P`` with channel index ``i = i_outer * p + i_inner``, ``K = n / p``:

* n a power of two: ``P = [1]``, H is the Sylvester-order Walsh-Hadamard matrix ``S_n / sqrt(n)``
  (``S_n[i, j] = (-1)**popcount(i & j)``): symmetric, orthonormal, its own inverse.
* otherwise, if some ``p = m * 2**b <= n`` has ``q = p - 1`` prime with ``q % 4 == 3``, the smallest such p
  and the Paley-I Hadamard matrix ``P = (I + C) / sqrt(p)``, ``C[0, j>0] = 1``, ``C[i>0, 0] = -1``,
  ``C[i, j] = chi(j - i mod q)`` for ``i, j >= 1`` (chi the quadratic character mod q). So n = 12 * 2**j
  uses p = 12 and n = 20 * 2**j uses p = 20. H is orthonormal but not symmetric.
* otherwise ``p = m`` and ``P = I - (2/m) ones((m, m))``, the Householder reflection through the all-ones
  direction (n = 3, 6, 7, 112 ...): symmetric, orthonormal, its own inverse, no zero entry.

The inverse is always the transpose; ``inverse=True`` applies it (the same transform for symmetric H).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _C
from ._arrays import as_bool, as_host_array, as_int, dlpack_device_name

__all__ = ["hadamard", "hadamard_matrix"]


def hadamard(x: Any, axis: int = -1, *, inverse: bool = False) -> Any:
    """Apply the orthonormal Hadamard-type transform of length ``x.shape[axis]`` along ``axis``.

    ``hadamard(x) == x @ hadamard_matrix(n).T`` along the last axis (for a power-of-two n, H is symmetric,
    so this also equals ``x @ H``); ``hadamard(hadamard(x), inverse=True) == x`` for every n.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (..., n, ...)
        CPU input: a NumPy array or CPU DLPack producer (torch CPU tensor ...), float32 or float64, finite,
        non-empty, any memory layout. CUDA input: a torch CUDA tensor, float32, float16 or bfloat16.
    axis : int, default -1
        The axis to transform; every other axis indexes independent vectors.
    inverse : bool, default False
        Apply ``H.T`` (the inverse) instead of ``H``. Identical for powers of two and Householder lengths.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape of x
        CPU input: a new C-contiguous NumPy array of x's dtype (computed in float64, rounded once).
        CUDA input: a new contiguous torch tensor of x's dtype on x's device, computed in fp32 by a kernel
        launched on the current torch stream (no synchronization; CUDA-graph capturable; no autograd).

    Notes
    -----
    Cost per vector: O(n log n) for powers of two and lengths with a small block p (12, 20, Householder);
    O(n p) when the chosen Paley order p is large (e.g. n = 44 * 2**j). On CUDA, n is limited by one block's
    shared memory (n <= 32768 for powers of two on an H200); rows that are not contiguous along ``axis``, or
    whose leading axes do not share one row stride, are first copied with ``.contiguous()``; non-last axes
    are moved last and back (a copy each way). The CUDA path does not scan for NaN/Inf (a NaN spreads
    through its row); the CPU path refuses them.

    Raises
    ------
    TypeError
        Wrong dtype (integer, complex, float16 on the CPU, float64 is NotImplementedError on CUDA), a
        non-int ``axis``, a non-bool ``inverse``, or a CUDA object that is not a torch tensor.
    ValueError
        0-d or empty input, NaN/Inf (CPU), ``axis`` out of range, a device other than CPU/CUDA.
    RuntimeError
        CUDA input but palu_c was built without CUDA, or a CUDA launch error.
    """
    inverse = as_bool(inverse, "inverse", "hadamard")
    axis = as_int(axis, "axis", "hadamard")
    device = dlpack_device_name(x)
    if device is not None and device.startswith("cuda:"):
        return _hadamard_cuda(x, axis, inverse, device)
    return _C.hadamard(as_host_array(x, "x", "hadamard"), axis, inverse)


def hadamard_matrix(n: int, dtype: Any = np.float64) -> np.ndarray:
    """The n x n orthonormal matrix H of :func:`hadamard`: ``hadamard(x) == x @ H.T`` along the last axis.

    Parameters
    ----------
    n : int
        Transform length, >= 1 (n = 1 gives ``[[1.0]]``).
    dtype : float32 or float64, default float64
        Element type (entries computed in float64, rounded once).

    Returns
    -------
    numpy.ndarray, shape (n, n)
        H, with ``H @ H.T == I``, no zero entry, ``H == H.T`` for powers of two and Householder lengths
        (see the module docstring for the construction). O(n**2) memory.
    """
    n = as_int(n, "n", "hadamard_matrix")
    if n < 1:
        raise ValueError(f"hadamard_matrix: `n` must be >= 1, got {n}")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"hadamard_matrix: `dtype` must be float32 or float64, got {dtype!r}") from exc
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"hadamard_matrix: `dtype` must be float32 or float64, got {dt}")
    return _C.hadamard_matrix(n, dt)


# ---- CUDA path ------------------------------------------------------------------------------------------


def _rows_collapse(t: Any) -> bool:
    """True when ``t`` is contiguous along its last axis and its leading axes share one row stride
    (what ``_C.hadamard_cuda`` reads without a copy; mirrors palu_dl_as_rows in csrc/py_dlpack.c)."""
    shape, strides = tuple(t.shape), tuple(t.stride())
    if shape[-1] > 1 and strides[-1] != 1:
        return False
    expect = None
    for size, stride in zip(reversed(shape[:-1]), reversed(strides[:-1])):
        if size == 1:
            continue
        if stride < 0 or (expect is not None and stride != expect):
            return False
        expect = stride * size
    return True


def _dlpack(t: Any, stream: int) -> Any:
    """``t.__dlpack__`` for a consumer on ``stream`` (versioned capsule where the producer offers one)."""
    try:
        return t.__dlpack__(stream=stream, max_version=(1, 3))
    except TypeError:  # producers that predate DLPack's max_version keyword: legacy capsule
        return t.__dlpack__(stream=stream)


def _hadamard_cuda(x: Any, axis: int, inverse: bool, device: str) -> Any:
    import sys

    torch = sys.modules.get("torch")  # a torch tensor implies torch is imported; never import it here
    if torch is None or not isinstance(x, torch.Tensor):
        raise TypeError(f"hadamard: `x` is on {device} but is not a torch.Tensor; the CUDA path takes torch "
                        f"tensors (or move the data to the CPU for the NumPy path)")
    nd = x.dim()
    if nd == 0:
        raise ValueError("hadamard: `x` must have at least 1 dimension, got a 0-d tensor")
    if not -nd <= axis < nd:
        raise ValueError(f"hadamard: `axis` {axis} is out of range for an array with {nd} dimension(s) "
                         f"(use {-nd}..{nd - 1})")
    axis %= nd
    # torch exports only tensors of the current device, and "current stream" is per device
    with torch.cuda.device(x.device):
        t = x.detach()
        if axis != nd - 1:
            t = t.transpose(axis, nd - 1)
        if t.numel() > 0 and not _rows_collapse(t):
            t = t.contiguous()
        out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        handle = torch.cuda.current_stream().cuda_stream
        # DLPack: stream 0 is ambiguous and refused by torch; 1 names the legacy default stream (handle 0).
        dl_stream = handle if handle != 0 else 1
        _C.hadamard_cuda(_dlpack(t, dl_stream), _dlpack(out, dl_stream), handle, inverse=inverse)
        if axis != nd - 1:
            out = out.transpose(axis, nd - 1).contiguous()
    return out
