"""python/group_speed_table.py: a bench_attention table becomes the group-size speed table compress_kv reads.

The table below is written here by hand (no GPU needed); the expected rows are worked out in the test from the
table's own numbers: per (shape, batch, context, group) the fastest of the kernels auto can run, and SDPA's time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
    spec = importlib.util.spec_from_file_location("group_speed_table", os.path.join(ROOT, "python",
                                                                                     "group_speed_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TABLE = """# bench_attention: one decode step, latent kernel vs SDPA (float16)

GPU: {gpu}, 132 SMs, 140 GiB; torch 2.11.0+cu130; median of 25 CUDA-event timings

| model | B | T | G | kernel | time us (eager) | vs SDPA | MB moved | GFLOP | GB/s | floor us | floor % | bound |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
| llama3-8b | 1 | 16K | - | SDPA | {sdpa} | 1.00x | 67 | 0.1 | 1 | 1 | 1% | memory |
| llama3-8b | 1 | 16K | 1 | v4 | {v4} | 1.00x | 34 | 1 | 1 | 1 | 1% | memory |
| llama3-8b | 1 | 16K | 1 | v10 | {v10} | 1.00x | 34 | 1 | 1 | 1 | 1% | memory |
| llama3-8b | 1 | 16K | 1 | v1 | {v1} | 1.00x | 34 | 1 | 1 | 1 | 1% | memory |
| llama3-8b | 1 | 16K | 2 | v4 | {g2} | 1.00x | 34 | 1 | 1 | 1 | 1% | memory |
| llama3-8b | 1 | 16K | 2 | v11 ib | {g2ib} | 1.00x | 34 | 1 | 1 | 1 | 1% | memory |

Command: python python/bench_attention.py --dtype float16 --impls auto,v4,v1 (2026-11-30)
"""


@pytest.mark.parametrize("gpu_line", ["NVIDIA H200", "NVIDIA H200 (GPU-cf3852d0)"])
def test_table_rows_and_gpu_name_without_uuid(tmp_path, gpu_line):
    rng = __import__("random").Random(os.getpid())
    t = {k: round(rng.uniform(5, 100), 1) for k in ("sdpa", "v4", "v10", "v1", "g2")}
    t["g2ib"] = round(t["g2"] * rng.uniform(0.5, 0.95), 1)  # faster, as on the H200: it must be the one taken
    src = tmp_path / "bench.md"
    src.write_text(TABLE.format(gpu=gpu_line, **t), encoding="utf-8")
    out = tmp_path / "speed.json"
    out.write_text(json.dumps({"Other GPU": {"rows": []}}), encoding="utf-8")
    mod = load_script()
    argv = sys.argv
    sys.argv = ["group_speed_table.py", str(src), "--out", str(out)]
    try:
        mod.main()
    finally:
        sys.argv = argv
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data) == {"Other GPU", "NVIDIA H200"}  # merged, keyed by the name alone
    rows = {r["group"]: r for r in data["NVIDIA H200"]["rows"]}
    # v1 runs only on request: the G1 time is the faster of v4 and v10; an interpolative-basis row ("v11 ib", what
    # compress_kv's default key_basis="auto" gives group size 2) counts like the others
    assert rows[1]["us"] == min(t["v4"], t["v10"]) and rows[2]["us"] == t["g2ib"]
    assert rows[1]["sdpa_us"] == rows[2]["sdpa_us"] == t["sdpa"]
    assert (rows[1]["heads"], rows[1]["kv_heads"], rows[1]["head_dim"], rows[1]["tokens"]) == (32, 8, 128, 16384)
    assert data["NVIDIA H200"]["command"].startswith("python python/bench_attention.py")
