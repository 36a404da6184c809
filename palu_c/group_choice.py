"""The Palu group size that ``compress_kv(group_size=None)`` picks: accurate where it is cheap, fast where it is not.

Accuracy grows with the group size (joint decomposition of more heads fits better: ALGORITHMS.md, Llama-2-7B at
ratio 0.5 ppl 6.75 per head vs 5.62 joint), while the decode step rebuilds keys with G x D x r_g multiply-adds per
group and token, so larger groups cost more time per step. What a group size costs depends on the device:

- CPU (the C decode path): every group size is compute-bound and a compressed step is slower than an uncompressed
  one at any G (python/results/bench_cpu_decode.md); what the cache buys on a CPU is memory. So the default leans
  to accuracy: the largest divisor of the KV-head count that is <= ``CPU_MAX_GROUP`` (4; above it the rebuild
  work grows past what a long decode on the CPU tolerates).
- CUDA: the fused decode kernel's measured time per group size, from ``palu_c/data/decode_group_speed.json``
  (written by ``python/group_speed_table.py`` from ``python/bench_attention.py`` tables; one entry per GPU name).
  For the model's shape (rows with the same head_dim, and the same query heads per KV head when measured), each
  measured group size G gets a cost: the geometric mean over the measured (batch, context) points of
  time(G) / time(fastest G at that point). The pick is the LARGEST G dividing the KV-head count whose cost is
  within ``SPEED_TOLERANCE`` (10%) of the fastest: a bigger group is taken only when it is nearly free. Group
  sizes that were never measured are not picked (1 always is). A GPU without a table of its own uses the table
  of the GPU with the most rows (today only the H200's: there G = 2 takes 1.26x (GQA, v11 against v10 at G = 1)
  and 1.13x (MHA, v11 against v9) the time of G = 1, G = 4 20-26x (geometric means over the measured shapes; G 1
  and 2 with keys in the interpolative basis, what ``key_basis="auto"`` gives them), so CUDA models get G = 1).

:func:`choose_group_size` returns the choice and a one-line reason; ``compress_kv`` stores the reason in
``model.palu_config`` (not saved to files) and prints nothing.

A group size the caller GIVES is not second-guessed, but where the table says that decode attention at that group
size was slower than PyTorch SDPA over the full uncompressed cache at every measured point of the model's shape
(on the H200: G = 4, 0.05-0.18x; not G = 2, which runs v11 at 0.86-1.70x, faster than SDPA at most points),
:func:`slow_group_message` words it and ``compress_kv`` raises a :class:`palu_c.KernelSpeedWarning` on a CUDA
model: the cache still shrinks, but decoding gets slower, which is not what most users of a CUDA model compress
for.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

CPU_MAX_GROUP = 4
SPEED_TOLERANCE = 0.10
TABLE_PATH = os.path.join(os.path.dirname(__file__), "data", "decode_group_speed.json")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def load_speed_table(path: str = TABLE_PATH) -> dict:
    """The measured table: GPU name -> {"source", "command", "rows": [...]}; see the module docstring."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"palu_c: the group-size speed table {path} is missing; reinstall palu_c or pass "
                                f"group_size explicitly to compress_kv") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"palu_c: the group-size speed table {path} cannot be read ({exc}); reinstall palu_c or "
                         f"pass group_size explicitly to compress_kv") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) and isinstance(v.get("rows"), list)
                                              for v in table.values()):
        raise ValueError(f"palu_c: the group-size speed table {path} is malformed (expected GPU name -> "
                         f"{{'rows': [...]}}); reinstall palu_c or pass group_size explicitly")
    return table


def _shape_rows(rows: list[dict], head_dim: int, n_rep: int) -> list[dict]:
    """The rows closest to this shape: the same head_dim, and the same query heads per KV head when measured."""
    same_dim = [r for r in rows if r["head_dim"] == head_dim] or rows
    return [r for r in same_dim if r["heads"] // r["kv_heads"] == n_rep] or same_dim


def _gpu_rows(table: dict, device: Any) -> tuple[str, str, list[dict]]:
    """(table entry used, a note when it is not this GPU's own, its rows) for a CUDA ``device``."""
    import torch

    name = torch.cuda.get_device_name(device)
    gpu = name if name in table else max(table, key=lambda k: len(table[k]["rows"]))
    return gpu, "" if gpu == name else f" (no table for {name}; using {gpu}'s)", table[gpu]["rows"]


def group_costs(rows: list[dict], head_dim: int, n_rep: int) -> dict[int, float]:
    """Group size -> geometric-mean slowdown against the fastest measured group, over the rows of this shape."""
    points: dict = {}
    for r in _shape_rows(rows, head_dim, n_rep):
        points.setdefault((r["model"], r["batch"], r["tokens"]), {})[int(r["group"])] = float(r["us"])
    logs: dict = {}
    for times in points.values():
        fastest = min(times.values())
        for g, us in times.items():
            logs.setdefault(g, []).append(math.log(us / fastest))
    return {g: math.exp(sum(v) / len(v)) for g, v in logs.items()}


def choose_group_size(kv_heads: int, num_heads: int, head_dim: int, device: Any = None, *,
                      table: dict | None = None) -> tuple[int, str]:
    """(group size, reason) for a model with these head counts on ``device`` (None or CPU: the CPU rule).

    ``table`` overrides the shipped speed table (tests, or a table measured on your own GPU).
    """
    dev_type = getattr(device, "type", None) if device is not None else "cpu"
    if dev_type is None:
        dev_type = str(device).split(":")[0]
    if dev_type != "cuda":
        g = max(d for d in divisors(kv_heads) if d <= CPU_MAX_GROUP)
        return g, (f"{dev_type}: largest divisor of {kv_heads} KV heads <= {CPU_MAX_GROUP} (on a CPU decode is "
                   f"compute-bound at every group size; the default leans to accuracy)")
    table = load_speed_table() if table is None else table
    if not table:
        return 1, "cuda: no measured speed table; group size 1 does the least key-rebuild work"
    gpu, via, rows = _gpu_rows(table, device)
    costs = group_costs(rows, head_dim, max(1, num_heads // kv_heads))
    ok = [g for g in divisors(kv_heads) if costs.get(g, math.inf) <= 1.0 + SPEED_TOLERANCE]
    g = max(ok) if ok else 1
    measured = ", ".join(f"G{k} {v:.2f}x" for k, v in sorted(costs.items()))
    return g, (f"cuda {gpu}{via}: decode time vs the fastest group, {measured}; the largest divisor of {kv_heads} "
               f"KV heads within {SPEED_TOLERANCE:.0%} of the fastest")


def slow_group_message(kv_heads: int, num_heads: int, head_dim: int, group: int, device: Any, *,
                       table: dict | None = None) -> str | None:
    """Why group size ``group`` will decode slower than uncompressed attention on CUDA ``device``, or None.

    None unless the table has rows of this shape at this group size and every one of them is slower than SDPA over
    the full cache (``sdpa_us`` < ``us``); the message gives the measured range and that of the fastest group. A
    CPU ``device`` gets None (there every group size is slower, and the cache is for memory: see the module
    docstring).
    """
    dev_type = getattr(device, "type", None) if device is not None else "cpu"
    if (dev_type or str(device).split(":")[0]) != "cuda":
        return None
    table = load_speed_table() if table is None else table
    if not table:
        return None
    gpu, via, rows = _gpu_rows(table, device)
    rows = _shape_rows(rows, head_dim, max(1, num_heads // kv_heads))

    def speedups(g: int) -> list[float]:
        return [r["sdpa_us"] / r["us"] for r in rows if int(r["group"]) == g and r.get("sdpa_us")]

    def span(key: str, unit: int = 1, suffix: str = "") -> str:
        vals = sorted({int(r[key]) // unit for r in rows})
        return f"{vals[0]}{suffix}" if len(vals) == 1 else f"{vals[0]}{suffix}-{vals[-1]}{suffix}"

    mine = speedups(group)
    if not mine or max(mine) >= 1.0:
        return None
    best_g = min(group_costs(rows, head_dim, max(1, num_heads // kv_heads)).items(), key=lambda kv: kv[1])[0]
    best = speedups(best_g)
    other = (f"; group size {best_g} measured {min(best):.2f}-{max(best):.2f}x" if best and best_g != group
             and kv_heads % best_g == 0 else "")
    return (f"palu_c.compress_kv: on {gpu}{via}, decode attention at group size {group} measured "
            f"{min(mine):.2f}-{max(mine):.2f}x the speed of PyTorch SDPA over the full uncompressed cache (shapes "
            f"like this model's, batch {span('batch')}, {span('tokens', 1024, 'K')} tokens){other}. The cache still shrinks by the ratio, but "
            f"decoding gets slower; group_size=None picks the fastest group size for this GPU. (Larger groups fit "
            f"the keys better: see the palu_c README.)")


__all__ = ["choose_group_size", "slow_group_message", "load_speed_table", "group_costs", "CPU_MAX_GROUP",
           "SPEED_TOLERANCE"]
