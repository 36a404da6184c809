"""Group-wise quantization to 2, 3, 4 or 8 bits with bit-packed storage (C core: csrc/quant.c).

The packed layout is documented in docs/quant_format.md (version ``QuantizedTensor.layout_version``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _C
from ._arrays import as_host_array

QuantizedTensor = _C.QuantizedTensor

_ALLOWED_BITS = (2, 3, 4, 8)


def _check_bits(bits: Any) -> int:
    # bool is an int subclass and floats like 4.0 would silently truncate: both are refused.
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, numbers.Integral) or int(bits) not in _ALLOWED_BITS:
        raise ValueError(f"quantize: `bits` must be one of {{2, 3, 4, 8}} (an int), got {bits!r}")
    return int(bits)


def _check_group_size(group_size: Any) -> int | None:
    if group_size is None:
        return None
    if isinstance(group_size, (bool, np.bool_)) or not isinstance(group_size, numbers.Integral):
        raise TypeError(f"quantize: `group_size` must be a positive int or None, got {group_size!r}")
    if int(group_size) < 1:
        raise ValueError(f"quantize: `group_size` must be >= 1 (or None for one group per row), got {group_size}")
    return int(group_size)


def _check_clip(clip: Any) -> float:
    if isinstance(clip, (bool, np.bool_)) or not isinstance(clip, numbers.Real):
        raise TypeError(f"quantize: `clip` must be a real number in (0, 1], got {clip!r}")
    clip = float(clip)
    if not (math.isfinite(clip) and 0.0 < clip <= 1.0):
        raise ValueError(f"quantize: `clip` must be finite with 0 < clip <= 1, got {clip!r}")
    return clip


def quantize(x: Any, bits: int, *, group_size: int | None = None, symmetric: bool = False,
             clip: float = 1.0) -> QuantizedTensor:
    """Quantize ``x`` group-wise along its last axis (round to nearest, bit-packed codes).

    Parameters
    ----------
    x : array_like, shape (..., n)
        float32 or float64 NumPy array or CPU DLPack producer (e.g. a torch CPU tensor), ndim >= 1,
        non-empty, all finite. Any layout (non-contiguous input is copied once).
    bits : int
        Bits per code, one of 2, 3, 4, 8.
    group_size : int or None, optional
        Elements per group along the last axis; must divide ``n``. None (default): one group per row.
    symmetric : bool, optional
        False (default): per group ``scale = clip*(max - min) / (2**bits - 1)`` and a float32 zero point
        ``clip*min``. True: ``scale = clip*absmax / L`` with ``L = 2**(bits-1) - 1`` levels each side of
        zero, no zero point stored.
    clip : float, optional
        Factor in (0, 1] applied to each group's range (or absmax); values outside the clipped range
        saturate to the extreme code. Default 1.0 (no clipping).

    Returns
    -------
    QuantizedTensor
        ``payload`` (rows, ceil(n*bits/32)) uint32, ``scales`` (rows, n // group_size) float32,
        ``zeros`` (same shape, asymmetric only, else None), where rows = x.size // n; ``dequantize()``
        returns an array of ``x``'s shape and dtype; ``nbytes`` counts payload + scales + zeros.

    Raises
    ------
    ValueError
        Bad ``bits``, ``group_size`` or ``clip``; empty, 0-d or non-finite ``x``; ``x`` on a device.
    TypeError
        ``x`` not float32/float64 (integers, complex, float16 ...); wrong argument types.

    Notes
    -----
    Scales and zero points are rounded to float32 before the codes are computed from them, so with
    ``clip=1`` every element is reconstructed within half its group's stored scale (plus float32 rounding
    of scale and zero). Constant groups get scale 0 and are reconstructed exactly (for float64 input: up
    to float32 rounding of the constant, the stored zero point). Layout: docs/quant_format.md.
    """
    bits = _check_bits(bits)
    group = _check_group_size(group_size)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"quantize: `symmetric` must be a bool, got {symmetric!r}")
    clip = _check_clip(clip)
    x = as_host_array(x, "x", "quantize")
    return _C.quantize(x, bits, group, bool(symmetric), clip)


__all__ = ["quantize", "QuantizedTensor"]
