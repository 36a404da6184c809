"""Intake of low-rank factors (NumPy arrays or tensors) by the modules that hold them (PaluAttention,
LowRankLinear): one shape, dtype and finiteness check with messages naming the module and the argument."""

from __future__ import annotations

from typing import Any

import torch


def as_factor(x: Any, shape: tuple[int, int], name: str, owner: str, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """``x`` checked (floating point, exactly ``shape``, finite) and copied into a fresh contiguous tensor of
    ``dtype`` on ``device``. Errors name ``owner`` (the module) and ``name`` (the argument)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{owner}: `{name}` must be a 2-D array or tensor, got {type(x).__name__}") from exc
    if not t.is_floating_point():
        raise TypeError(f"{owner}: `{name}` must be floating point, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{owner}: `{name}` must have shape {shape}, got {tuple(t.shape)}")
    if t.device.type != "meta" and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{owner}: `{name}` holds NaN or Inf")
    return t.to(dtype=dtype, device=device).clone().contiguous()
