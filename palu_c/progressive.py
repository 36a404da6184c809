"""Progressive low-rank decoding (FLRC's PLRD): schedules, the active-rank rule and the decode-step counter.

A schedule lowers the ACTIVE rank of a low-rank projection as generated tokens accumulate. The stored factors
are ordered by singular value (``down`` rows, ``up`` columns), so every lower rank is a prefix of them: one copy
of the weights serves the whole schedule (:class:`palu_c.lowrank_linear.LowRankLinear` slices views).

Schedule format (``compress_weights(progressive=...)``):

- ``None`` / ``False``: off.
- ``True``: :data:`DEFAULT_SCHEDULE` for every projection class (conservative: full rank for the first 64
  generated tokens, 7/8 of the stored rank from 64, 3/4 from 256).
- a list of ``(tokens_generated_from, keep_fraction)`` steps: the same schedule for every class.
- a dict ``class -> list of steps`` (classes ``q k v o gate up down``); classes not named keep full rank.

Steps: ``tokens_generated_from`` an int >= 0, strictly increasing; ``keep_fraction`` in (0, 1], non-increasing
(a schedule only ever lowers the rank). Before the first step the rank is the stored rank.

Active rank of a projection with stored rank R at keep fraction f: ``max(min(floor, R), m * floor(f * R / m))``
with m = ``rank_multiple`` and ``floor`` the per-projection floor (``min_rank``): rounded DOWN to a multiple,
never below the floor, never above R.

Counting generated tokens (:class:`DecodeCounter`): a forward pre-hook on the decoder stack
(``model.model``, so calls through the causal-LM head and direct calls of the decoder both pass it) sees
every forward. A forward over more than one token, or over one token with no cache or an empty cache, is a
PREFILL: the counter resets to 0 and every projection runs at its full stored rank. A one-token forward with
a non-empty cache is a DECODE step: the counter goes up by one, so the forward that consumes the g-th
generated token (and produces token g + 1) sees ``generated == g``, and the step ``(g0, f)`` applies from
that forward on when g >= g0. Batched generation advances all rows together, so one counter per model is
exact. Limits: a forward without a cache (``generate(use_cache=False)`` re-runs the whole sequence) counts
as a prefill, so progressive decoding only acts on cached decoding; multi-token steps on a filled cache
(assisted/speculative decoding, chunked prefill) reset the counter and run at full rank.
"""

from __future__ import annotations

import bisect
import math
import numbers
from typing import Any, Mapping, Sequence

from .weights_config import PROJECTION_KINDS

# Conservative default: nothing changes for short answers; long generations drop to 7/8, then 3/4 of the rank.
DEFAULT_SCHEDULE: tuple[tuple[int, float], ...] = ((64, 0.875), (256, 0.75))

_FUNC = "compress_weights"


def _steps(steps: Any, where: str) -> tuple[tuple[int, float], ...]:
    """One validated, normalized list of (from, fraction) steps."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
        raise TypeError(f"{_FUNC}: progressive{where} must be a list of (tokens_generated_from, keep_fraction) "
                        f"pairs, got {type(steps).__name__}")
    out: list[tuple[int, float]] = []
    for i, step in enumerate(steps):
        if isinstance(step, (str, bytes)) or not isinstance(step, Sequence) or len(step) != 2:
            raise TypeError(f"{_FUNC}: progressive{where}[{i}] must be a pair (tokens_generated_from, "
                            f"keep_fraction), got {step!r}")
        start, frac = step
        if isinstance(start, bool) or not isinstance(start, numbers.Integral):
            raise TypeError(f"{_FUNC}: progressive{where}[{i}]: tokens_generated_from must be an int, "
                            f"got {type(start).__name__}")
        if start < 0:
            raise ValueError(f"{_FUNC}: progressive{where}[{i}]: tokens_generated_from must be >= 0, got {start}")
        if isinstance(frac, bool) or not isinstance(frac, numbers.Real):
            raise TypeError(f"{_FUNC}: progressive{where}[{i}]: keep_fraction must be a number, "
                            f"got {type(frac).__name__}")
        frac = float(frac)
        if not (math.isfinite(frac) and 0.0 < frac <= 1.0):
            raise ValueError(f"{_FUNC}: progressive{where}[{i}]: keep_fraction must be in (0, 1], got {frac}")
        if out and int(start) <= out[-1][0]:
            raise ValueError(f"{_FUNC}: progressive{where}: steps must be sorted by strictly increasing "
                             f"tokens_generated_from; step {i} starts at {int(start)} after {out[-1][0]}")
        if out and frac > out[-1][1]:
            raise ValueError(f"{_FUNC}: progressive{where}: keep_fraction must not increase (a schedule only "
                             f"lowers the rank); step {i} has {frac} after {out[-1][1]}")
        out.append((int(start), frac))
    return tuple(out)


def parse_schedule(progressive: Any, kinds: Sequence[str] = PROJECTION_KINDS
                   ) -> dict[str, tuple[tuple[int, float], ...]] | None:
    """Validate and normalize a ``progressive`` argument into ``{class: ((from, fraction), ...)}`` or None.

    Parameters
    ----------
    progressive : None, bool, list of pairs, or dict class -> list of pairs
        See the module docstring.
    kinds : sequence of str
        The projection classes being compressed; a dict naming another class is an error, a list or ``True``
        applies to all of them.

    Returns
    -------
    dict or None
        Only classes with a non-empty schedule appear; None when nothing is scheduled.
    """
    if progressive is None or progressive is False:
        return None
    if progressive is True:
        return {k: DEFAULT_SCHEDULE for k in kinds}
    if isinstance(progressive, Mapping):
        out = {}
        for kind, steps in progressive.items():
            if kind not in PROJECTION_KINDS:
                raise ValueError(f"{_FUNC}: progressive names an unknown projection class {kind!r}; classes are "
                                 f"{', '.join(PROJECTION_KINDS)}")
            if kind not in kinds:
                raise ValueError(f"{_FUNC}: progressive schedules class {kind!r}, which is not compressed here "
                                 f"(targets: {', '.join(kinds)})")
            parsed = _steps(steps, f"[{kind!r}]")
            if parsed:
                out[kind] = parsed
        return out or None
    parsed = _steps(progressive, "")
    return {k: parsed for k in kinds} if parsed else None


def active_rank(stored: int, fraction: float, multiple: int, floor: int) -> int:
    """Rank kept at ``fraction`` of ``stored``: rounded down to ``multiple``, at least ``min(floor, stored)``."""
    # The tiny slack absorbs binary rounding of products such as 0.7 * 160 = 111.99999999999999.
    units = math.floor(fraction * stored / multiple + 1e-9)
    return int(min(stored, max(min(floor, stored), units * multiple)))


def rank_steps(stored: int, steps: Sequence[tuple[int, float]], multiple: int,
               floor: int) -> tuple[tuple[int, int], ...]:
    """The schedule of one projection as ``((from, rank), ...)`` (steps that leave the rank unchanged kept)."""
    return tuple((start, active_rank(stored, frac, multiple, floor)) for start, frac in steps)


class DecodeCounter:
    """Counts one-token decode steps since the last prefill (see the module docstring).

    Installed as a forward pre-hook (``with_kwargs=True``) on the decoder stack; every
    :class:`~palu_c.lowrank_linear.LowRankLinear` with a schedule holds a reference and reads ``generated``.
    A plain object (not a closure), so ``copy.deepcopy(model)`` gives the copy its own counter, shared by
    the copy's modules.
    """

    def __init__(self) -> None:
        self.generated = 0

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        tokens = int(ids.shape[1]) if ids is not None and ids.dim() >= 2 else 0
        past = kwargs.get("past_key_values")
        if past is None and len(args) > 3:
            past = args[3]  # LlamaModel.forward(input_ids, attention_mask, position_ids, past_key_values, ...)
        if tokens == 1 and past is not None and _cached_length(past) > 0:
            self.generated += 1
        else:
            self.generated = 0
        return None

    def reset(self) -> None:
        self.generated = 0


def _cached_length(past: Any) -> int:
    try:
        return int(past.get_seq_length())
    except Exception:  # an exotic cache object: treat it as filled (a one-token step with a cache is decoding)
        return 1


def install_counter(model: Any) -> DecodeCounter:
    """The model's DecodeCounter, registered on ``model.model`` (the decoder stack) on first use."""
    counter = getattr(model, "_flrc_counter", None)
    if isinstance(counter, DecodeCounter):
        return counter
    decoder = getattr(model, "model", None)
    if decoder is None or not hasattr(decoder, "register_forward_pre_hook"):
        raise ValueError(f"{_FUNC}: progressive decoding needs the decoder stack at model.model; "
                         f"{type(model).__name__} has none")
    counter = DecodeCounter()
    decoder.register_forward_pre_hook(counter, with_kwargs=True)
    model._flrc_counter = counter
    return counter


def rank_at(steps: tuple[tuple[int, int], ...], starts: tuple[int, ...], stored: int, generated: int) -> int:
    """Active rank after ``generated`` decode steps (0: prefill, always the stored rank)."""
    if generated <= 0 or not steps:
        return stored
    i = bisect.bisect_right(starts, generated) - 1
    return stored if i < 0 else steps[i][1]


__all__ = ["DEFAULT_SCHEDULE", "DecodeCounter", "parse_schedule", "active_rank", "rank_steps", "install_counter",
           "rank_at"]
