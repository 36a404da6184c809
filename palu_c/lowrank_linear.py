"""LowRankLinear: the module that replaces an ``nn.Linear`` after FLRC weight compression.

Shape legend: B... any leading dims, n = in_features, m = out_features, R = stored rank, r = active rank.

``y = (x down[:r]^T) up[:, :r]^T + bias`` with ``down`` (R, n) and ``up`` (m, R) as
``palu_c.lowrank_factor`` returns them (whitened factorization: rows of ``down`` / columns of ``up`` ordered
by singular value, so the first r of them are the best rank-r pair). The active rank r is the stored rank
R except during progressive decoding, where the model's :class:`palu_c.progressive.DecodeCounter` and this
module's schedule pick a prefix: slices are views, never a second copy of the weights (``up[:, :r]`` is a
strided view that BLAS reads with a leading dimension of R). The bias, when the original had one, is kept
exactly as it was. Two plain matmuls (``F.linear``), so any device and dtype torch supports works.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._factors import as_factor
from .progressive import DecodeCounter, rank_at


class LowRankLinear(nn.Module):
    """A rank-R factorized linear layer with an optional progressive (prefix) active rank.

    Parameters
    ----------
    in_features, out_features : int
        n and m of the replaced ``nn.Linear``.
    rank : int
        Stored rank R, 1 <= R <= min(m, n).
    bias : bool
        Whether the layer has a bias (m,).
    dtype, device : optional
        Of the (zero-initialized) parameters; fill them with :meth:`from_factors` or ``load_state_dict``.

    Attributes
    ----------
    down : nn.Parameter (R, n)
    up : nn.Parameter (m, R)
    bias : nn.Parameter (m,) or None
    """

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool = False,
                 dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LowRankLinear: `{name}` must be a positive int, got {value!r}")
        if rank > min(in_features, out_features):
            raise ValueError(f"LowRankLinear: rank {rank} exceeds min(out_features, in_features) = "
                             f"{min(in_features, out_features)}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        kw = {"dtype": dtype, "device": device}
        self.down = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.up = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self._counter: DecodeCounter | None = None
        self._steps: tuple[tuple[int, int], ...] = ()
        self._starts: tuple[int, ...] = ()

    @classmethod
    def from_factors(cls, down: Any, up: Any, bias: Any = None, *, dtype: torch.dtype | None = None,
                     device: Any = None) -> "LowRankLinear":
        """Build from ``down`` (R, n) and ``up`` (m, R) (NumPy or torch) and an optional bias (m,).

        ``dtype``/``device`` default to the bias's when it is a tensor, else float32 on the CPU.
        """
        if isinstance(bias, torch.Tensor):
            dtype = dtype or bias.dtype
            device = device if device is not None else bias.device
        dtype = dtype or torch.float32
        try:
            r, n = (int(s) for s in down.shape)
            m, r2 = (int(s) for s in up.shape)
        except (AttributeError, ValueError) as exc:
            raise ValueError("LowRankLinear.from_factors: `down` must be (R, in) and `up` (out, R), both 2-D") from exc
        if r != r2:
            raise ValueError(f"LowRankLinear.from_factors: `down` has {r} rows but `up` has {r2} columns")
        module = cls(n, m, r, bias=bias is not None, dtype=dtype, device=device)
        with torch.no_grad():
            module.down.copy_(as_factor(down, (r, n), "down", "LowRankLinear", dtype, device))
            module.up.copy_(as_factor(up, (m, r), "up", "LowRankLinear", dtype, device))
            if bias is not None:
                b = bias.detach() if isinstance(bias, torch.Tensor) else torch.as_tensor(bias)
                if tuple(b.shape) != (m,):
                    raise ValueError(f"LowRankLinear.from_factors: `bias` must have shape ({m},), got {tuple(b.shape)}")
                module.bias.copy_(b.to(dtype=dtype, device=device))
        return module

    def set_schedule(self, steps: Sequence[tuple[int, int]], counter: DecodeCounter | None) -> None:
        """Install a progressive schedule ``((tokens_generated_from, rank), ...)`` read against ``counter``.

        Ranks must be in [1, R] and non-increasing, starts strictly increasing (``palu_c.progressive``
        builds them); an empty schedule or no counter means: always the stored rank.
        """
        steps = tuple((int(s), int(r)) for s, r in steps)
        for i, (start, rank) in enumerate(steps):
            if not 1 <= rank <= self.rank:
                raise ValueError(f"LowRankLinear.set_schedule: step {i} rank {rank} is outside [1, {self.rank}]")
            if i and (start <= steps[i - 1][0] or rank > steps[i - 1][1]):
                raise ValueError("LowRankLinear.set_schedule: starts must increase and ranks must not")
        if steps and not isinstance(counter, DecodeCounter):
            raise TypeError("LowRankLinear.set_schedule: a schedule needs the model's DecodeCounter")
        self._steps = steps
        self._starts = tuple(s for s, _ in steps)
        self._counter = counter if steps else None

    @property
    def schedule(self) -> tuple[tuple[int, int], ...]:
        """The installed ``((tokens_generated_from, rank), ...)`` steps (empty: none)."""
        return self._steps

    @property
    def active_rank(self) -> int:
        """The rank the next forward uses: the stored rank, or the schedule's rank at the current decode step."""
        if self._counter is None:
            return self.rank
        return rank_at(self._steps, self._starts, self.rank, self._counter.generated)

    def rank_at(self, generated: int) -> int:
        """The active rank at decode step ``generated`` (0 = prefill)."""
        return rank_at(self._steps, self._starts, self.rank, int(generated))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B..., n) -> (B..., m)."""
        r = self.active_rank
        if r == self.rank:
            return F.linear(F.linear(x, self.down), self.up, self.bias)
        return F.linear(F.linear(x, self.down[:r]), self.up[:, :r], self.bias)

    def extra_repr(self) -> str:
        sched = f", schedule={list(self._steps)}" if self._steps else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}{sched}")


__all__ = ["LowRankLinear"]
