"""palu_c.bench (the engine of ``palu-c bench`` and python/bench_attention.py) on a CUDA device: the command checks
every kernel it times against the float64 reference first, then prints and writes (atomically) a table with an SDPA
row and one row per kernel auto resolves to."""

from __future__ import annotations

import pytest

import palu_c

if not palu_c.build_info()["cuda_compiled"]:
    pytest.skip("palu_c was built without CUDA (PALU_C_CUDA=0 or no nvcc)", allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)

from palu_c.__main__ import main  # noqa: E402


def test_cli_bench_checks_then_times(tmp_path, capsys):
    out = tmp_path / "table.md"
    # Llama-3-8B shapes: group size 1 (auto: v10 on an H200 at batch 8, v4 at batch 1 and 2K) and 2 (v4)
    assert main(["bench", "--shape", "llama3-8b", "--group-size", "1,2", "--batch", "1,8", "--tokens", "2048",
                 "--iters", "3", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out.strip("\n") + "\n"
    assert "FAIL" not in text and "Correctness (rel. error vs float64" in text
    rows = [line for line in text.splitlines() if line.startswith("| llama3-8b |")]
    assert sum("| SDPA |" in r for r in rows) == 2  # one per batch
    svd = [r for r in rows if " ib |" not in r]
    assert len(svd) == 2 + 2 * 2  # and one per (batch, group size): auto resolves to one kernel each
    # the default --key-basis both adds an interpolative-basis row wherever auto ran a kernel that reads k_pairs
    ib = [r for r in rows if " ib |" in r]
    assert ib and all(r.split("|")[5].strip() in ("v10 ib", "v11 ib") for r in ib), ib
    for r in rows:
        time_us = float(r.split("|")[6])
        assert 0 < time_us < 10_000, r
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_bench_records_a_cuda_error_and_keeps_the_rows(tmp_path, monkeypatch):
    """A CUDA error while timing (runs 73, 81 and 89 each lost a table to one) ends the report at that row: the
    table so far is written, the row says FAILED with the error's first line, the exit status is 1."""
    import palu_c.bench as bench

    real, calls = bench._time_ours, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second kernel row: after one SDPA row and one kernel row
            raise RuntimeError("CUDA error: unspecified launch failure\nCUDA kernel errors might be reported later")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "_time_ours", failing)
    out = tmp_path / "table.md"
    assert main(["bench", "--shape", "llama3-8b", "--group-size", "1,2", "--batch", "1", "--tokens", "2048",
                 "--iters", "3", "--out", str(out)]) == 1
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| llama3-8b |")]
    assert len(rows) == 3 and "| SDPA |" in rows[0] and "FAILED" not in rows[1]
    assert rows[2].startswith("| llama3-8b | 1 | 2K | 2 |") and "| FAILED: CUDA error: unspecified launch failure |" \
        in rows[2] and rows[2].count("|") == rows[0].count("|")
    assert "The run stopped at the row above: RuntimeError: CUDA error: unspecified launch failure" in text
