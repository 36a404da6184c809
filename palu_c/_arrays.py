"""Host-array intake shared by the thin Python wrappers of the C core.

The C bindings take NumPy arrays (and validate dtype, rank, finiteness themselves). This module only
turns other producers into NumPy without copying: anything with ``__dlpack__`` living on the CPU
(torch CPU tensors, JAX CPU arrays ...) goes through ``np.from_dlpack``. A tensor on an accelerator is
refused with a message saying what to do, because CPU functions must never read device memory.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

# DLPack device types (dlpack.h DLDeviceType): only these hold host-readable memory.
_DLPACK_HOST_DEVICES = {1: "cpu", 3: "cuda_host"}
_DLPACK_DEVICE_NAMES = {2: "cuda", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi", 10: "rocm", 13: "cuda_managed",
                        14: "oneapi"}


def dlpack_device_name(obj: Any) -> str | None:
    """Return the DLPack device name of ``obj`` ("cpu", "cuda", ...) or None if it is no DLPack producer."""
    if isinstance(obj, np.ndarray) or not hasattr(obj, "__dlpack_device__"):
        return None
    kind, index = obj.__dlpack_device__()
    kind = int(kind)
    name = _DLPACK_HOST_DEVICES.get(kind) or _DLPACK_DEVICE_NAMES.get(kind, f"device_type_{kind}")
    return name if kind in _DLPACK_HOST_DEVICES else f"{name}:{int(index)}"


def as_host_array(obj: Any, name: str, func: str) -> Any:
    """Return ``obj`` as something the C bindings accept (a NumPy array when it came through DLPack).

    Objects that are neither arrays nor DLPack producers are passed on unchanged; the binding converts
    them (lists) or rejects them with a TypeError naming the argument.
    """
    if obj is None or isinstance(obj, np.ndarray):
        return obj
    device = dlpack_device_name(obj)
    if device is None:
        return obj
    if device not in ("cpu", "cuda_host"):
        raise ValueError(f"{func}: `{name}` is on {device}; this function runs on the CPU. "
                         f"Move it first (e.g. tensor.cpu()) or use the CUDA entry point where one exists.")
    if getattr(obj, "requires_grad", False):
        obj = obj.detach()
    try:
        return np.from_dlpack(obj)
    except (TypeError, BufferError, RuntimeError) as exc:
        # e.g. torch bfloat16 has no NumPy dtype: say which dtypes work instead of a DLPack error.
        dtype = getattr(obj, "dtype", "?")
        raise TypeError(f"{func}: `{name}` of dtype {dtype} cannot be read as a NumPy array ({exc}); "
                        f"convert it to float32 or float64 first") from exc


def as_int(value: Any, name: str, func: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int; bool, float and other types are a TypeError, out-of-range a ValueError.

    bool is refused although it is an int subclass (``rank=True`` is a bug, not a rank of 1), and floats are
    refused rather than truncated.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: `{name}` must be an int, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{func}: `{name}` must be an int, got {type(value).__name__}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{func}: `{name}` must be in {bounds}, got {value}")
    return value


def as_bool(value: Any, name: str, func: str) -> bool:
    """``value`` as a bool; anything but True/False (including 0/1) is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: `{name}` must be True or False, got {type(value).__name__}")
    return bool(value)
