"""palu_c.bench's table engine (``_time_rows`` and ``_timed_table``, the part of ``palu-c bench`` after the
correctness checks) without a GPU: the timers, the latent case, the kernel planner and the CUDA cache are replaced
by fakes, so what is checked is the table itself: which rows, their 13 columns, the times and "vs SDPA" ratios
from the fake times, and what an out-of-memory error (row skipped, sweep goes on) or any other RuntimeError (row
FAILED, run stops) does to it. The timing on a real device is tests/gpu/test_bench_cuda.py's.

Fake times are fresh random draws each run (the `rng` fixture; the seed is printed on failure).
"""

from __future__ import annotations

import weakref

import pytest

torch = pytest.importorskip("torch")

import palu_c.bench as bench  # noqa: E402

MODEL, SHAPE = "m", (8, 4, 64)  # H, Hkv, D: GQA, 2 query heads per KV head
GROUPS = (1, 2, 3)  # 3 does not divide Hkv = 4: no rows for it
BATCHES, CONTEXTS = (1, 8), (4096, 16384)
IMPLS = ("auto", "v2")
SKIPPED = "skipped: out of GPU memory"
OOM_TEXT = "CUDA out of memory. Tried to allocate 8.00 GiB. GPU 0 has a total capacity of 139.81 GiB"


def expected_rows() -> list[tuple[int, int, str, str]]:
    """(B, T, G, kernel) of every row, in table order: per (B, T) SDPA, then per dividing group size the kernels.
    The fake planner resolves auto to v2 at batch 1 (so only one row: auto's kernel is not timed twice) and to v4
    at batch 8."""
    rows = []
    for B in BATCHES:
        for T in CONTEXTS:
            rows.append((B, T, "-", "SDPA"))
            for G in (1, 2):
                rows += [(B, T, str(G), "v2")] if B == 1 else [(B, T, str(G), "v4"), (B, T, str(G), "v2")]
    return rows


class _Held:
    """Stands for the tensors a failed timing call held (weakly referable, unlike an int)."""


class FakeEngine:
    """Fake collaborators of ``_time_rows``; `sdpa_us` and `ours_us` are the times they report, `fail` maps a row
    key ((B, T, G, kernel) as in :func:`expected_rows`, or (B, T, G, "case") for the latent case) to the exception
    to raise there (a fresh copy each time, so that no traceback outlives its handling), and `events` records the
    calls in order."""

    def __init__(self, monkeypatch, rng):
        self.sdpa_us = {(B, T): float(rng.uniform(20.0, 2000.0)) for B in BATCHES for T in CONTEXTS}
        self.ours_us = {(B, T, str(G), k): float(rng.uniform(5.0, 900.0))
                        for B in BATCHES for T in CONTEXTS for G in (1, 2) for k in ("v2", "v4")}
        self.fail: dict[tuple, BaseException] = {}
        self.events: list[str] = []
        self.held: list[weakref.ref] = []
        monkeypatch.setattr(bench, "_time_sdpa", self.time_sdpa)
        monkeypatch.setattr(bench, "_time_ours", self.time_ours)
        monkeypatch.setattr(bench, "latent_case", self.latent_case)
        monkeypatch.setattr(bench.lk, "latent_decode_workspace_size", self.workspace_size)
        monkeypatch.setattr(torch.cuda, "empty_cache", self.empty_cache)

    def _maybe_fail(self, key):
        if key in self.fail:
            held = _Held()  # a local of the failing call, as k and v are in the real _time_sdpa
            self.held.append(weakref.ref(held))
            self.events.append(f"raise {key}")
            raise type(self.fail[key])(*self.fail[key].args)

    def time_sdpa(self, B, H, Hkv, D, T, dtype, gen, timing):
        assert (H, Hkv, D) == SHAPE and isinstance(timing, bench._Timing)
        self._maybe_fail((B, T, "-", "SDPA"))
        self.events.append(f"sdpa {B} {T}")
        return self.sdpa_us[(B, T)]

    def latent_case(self, B, H, Hkv, D, G, T, dtype, gen, ratio=0.5, pad_max=0, key_basis="svd"):
        self._maybe_fail((B, T, str(G), "case"))
        r = bench.group_rank(ratio, G, D)
        self.events.append(f"case {B} {T} {G} {key_basis}")
        return dict(B=B, T=T, G=G, kr=[r] * (Hkv // G), vr=[r] * (Hkv // G))

    def workspace_size(self, B, H, Hkv, D, G, T, kr, vr, dtype, device, impl):
        assert kr == vr == [bench.group_rank(0.5, G, D)] * (Hkv // G)
        number = {"v2": 2, "v4": 5}[impl] if impl != "auto" else (2 if B == 1 else 5)
        return 100 + number, number  # the workspace size tells the fake timer which kernel it runs

    def time_ours(self, c, impl, floats, timing):
        kernel = bench.LABEL[floats - 100]
        key = (c["B"], c["T"], str(c["G"]), kernel)
        self._maybe_fail(key)
        self.events.append(f"ours {key}")
        return self.ours_us[key]

    def empty_cache(self):
        # no gc.collect(): neither does the real code, so the failed call's locals must be gone by reference count
        freed = all(ref() is None for ref in self.held)
        self.events.append("empty_cache" + ("" if freed else " (a failed call's locals still referenced)"))


@pytest.fixture
def engine(monkeypatch, rng):
    return FakeEngine(monkeypatch, rng)


def run_table(timing_graphs: bool = False, key_bases=("svd",)) -> tuple[list[str], bool, list[str]]:
    """(lines, ok, log) of ``_timed_table`` over the module's sweep, every kernel's check passed."""
    lines, log = ["Correctness (rel. error vs float64 at 2K slots): ...", ""], []
    sweep = bench._Sweep({MODEL: SHAPE}, GROUPS, BATCHES, CONTEXTS, torch.float16, IMPLS, key_bases=key_bases)
    timing = bench._Timing(3, 1, timing_graphs, "clean", torch.empty(0))
    ok_impls = {(MODEL, G, k): True for G in (1, 2) for k in ("v2", "v4", "v10", "v4 ib")}
    ok = bench._timed_table(lines, sweep, timing, gen=None, ok_impls=ok_impls, log=log.append)
    return lines, ok, log


def cells(row: str) -> list[str]:
    assert row.startswith("| ") and row.endswith(" |"), row
    return [c.strip() for c in row[1:-1].split("|")]


def table_rows(lines: list[str]) -> list[list[str]]:
    """The data rows (after the header and the separator), split into cells; each must have 13."""
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |")) + 2
    rows = [cells(line) for line in lines[start:] if line.startswith("| ")]
    for r in rows:
        assert len(r) == 13, r
    return rows


def key_of(r: list[str]) -> tuple[int, int, str, str]:
    return int(r[1]), int(r[2].rstrip("K")) * 1024, r[3], r[4]


def assert_ratio(cell: str, sdpa_us: float, ours_us: float) -> None:
    """`cell` is SDPA time / kernel time with two decimals and an x: within half a unit of the last digit."""
    assert cell.endswith("x") and len(cell.split(".")[1]) == 3, cell
    assert float(cell[:-1]) == pytest.approx(sdpa_us / ours_us, abs=0.005 + 1e-12), (cell, sdpa_us, ours_us)


def test_sweep_has_one_row_per_point_and_kernel_with_ratios_from_the_times(engine):
    lines, ok, log = run_table()
    assert ok
    rows = table_rows(lines)
    assert [key_of(r) for r in rows] == expected_rows()
    assert all(r[0] == MODEL for r in rows)
    assert not any("skipped" in line for line in lines)
    for r in rows:
        B, T, G, kernel = key_of(r)
        sdpa_us = engine.sdpa_us[(B, T)]
        if kernel == "SDPA":
            assert float(r[5]) == pytest.approx(sdpa_us, abs=0.05) and r[6] == "1.00x"
            continue
        ours_us = engine.ours_us[(B, T, G, kernel)]
        assert float(r[5]) == pytest.approx(ours_us, abs=0.05)
        assert_ratio(r[6], sdpa_us, ours_us)
    # every row is logged as it is made
    assert log == [line for line in lines if line.startswith(f"| {MODEL} |")]


def test_out_of_memory_in_one_kernel_row_skips_that_row_only(engine):
    oom_key = (8, 4096, "1", "v4")
    engine.fail[oom_key] = torch.cuda.OutOfMemoryError(OOM_TEXT)
    lines, ok, log = run_table()
    assert ok  # a row skipped for memory does not fail the run
    rows = table_rows(lines)
    assert [key_of(r) for r in rows] == expected_rows()  # the rows after it are all there
    skipped = [r for r in rows if r[5] == SKIPPED]
    assert [key_of(r) for r in skipped] == [oom_key] and skipped[0][6:] == [""] * 7
    after = expected_rows().index(oom_key) + 1
    for r in rows[after:]:
        B, T, G, kernel = key_of(r)
        want = engine.sdpa_us[(B, T)] if kernel == "SDPA" else engine.ours_us[(B, T, G, kernel)]
        assert float(r[5]) == pytest.approx(want, abs=0.05)
    # the note above the table counts it; the failing call's memory was handed back right after it, with nothing of
    # that call still referenced
    assert lines.index("1 row skipped: out of GPU memory (marked in the table).") < lines.index(
        next(line for line in lines if line.startswith("| model |")))
    i = engine.events.index(f"raise {oom_key}")
    assert engine.events[i + 1] == "empty_cache"
    assert any(OOM_TEXT.split(".")[0] in line for line in log)


def test_out_of_memory_in_an_sdpa_row_gives_no_ratio_for_that_point(engine):
    engine.fail[(8, 16384, "-", "SDPA")] = torch.cuda.OutOfMemoryError(OOM_TEXT)
    engine.fail[(1, 4096, "2", "v2")] = torch.cuda.OutOfMemoryError(OOM_TEXT)
    lines, ok, _ = run_table()
    assert ok
    assert "2 rows skipped: out of GPU memory (marked in the table)." in lines
    rows = table_rows(lines)
    assert [key_of(r) for r in rows] == expected_rows()
    for r in rows:
        B, T, G, kernel = key_of(r)
        if (B, T, G, kernel) in engine.fail:
            assert r[5] == SKIPPED and r[6:] == [""] * 7, r
        elif kernel == "SDPA":
            assert r[6] == "1.00x"
        elif (B, T) == (8, 16384):  # its SDPA row was skipped: the kernel is timed, the ratio is not made up
            assert float(r[5]) == pytest.approx(engine.ours_us[(B, T, G, kernel)], abs=0.05) and r[6] == "n/a"
        else:
            assert_ratio(r[6], engine.sdpa_us[(B, T)], engine.ours_us[(B, T, G, kernel)])


def test_out_of_memory_for_the_latent_case_skips_that_group_size_rows(engine):
    engine.fail[(8, 4096, "2", "case")] = torch.cuda.OutOfMemoryError(OOM_TEXT)
    lines, ok, _ = run_table()
    assert ok and "2 rows skipped: out of GPU memory (marked in the table)." in lines
    rows = table_rows(lines)
    assert [key_of(r) for r in rows] == expected_rows()
    assert [key_of(r) for r in rows if r[5] == SKIPPED] == [(8, 4096, "2", "v4"), (8, 4096, "2", "v2")]
    assert not any(e.startswith("ours (8, 4096, '2'") for e in engine.events)


def test_other_runtime_error_stops_the_run_at_that_row(engine):
    engine.fail[(1, 4096, "1", "v2")] = torch.cuda.OutOfMemoryError(OOM_TEXT)  # skipped, still counted
    stop = (8, 4096, "2", "v4")
    engine.fail[stop] = RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with "
                                     "`TORCH_USE_CUDA_DSA` | to enable device-side assertions.")
    lines, ok, log = run_table()
    assert not ok
    rows = table_rows(lines)
    want = expected_rows()
    assert [key_of(r) for r in rows] == want[:want.index(stop) + 1]  # nothing timed after the error
    assert rows[-1][:6] == [MODEL, "8", "4K", "2", "v4", "FAILED: CUDA error: an illegal memory access was encountered"]
    assert rows[-1][6:] == [""] * 7
    assert lines[-2:] == ["", "The run stopped at the row above: RuntimeError: CUDA error: an illegal memory access "
                              "was encountered"]
    assert lines[-1] in log
    assert "1 row skipped: out of GPU memory (marked in the table)." in lines
    assert not any(e.startswith("ours") and "(8, 4096, '2', 'v2')" in e for e in engine.events)


def test_graph_mode_names_auto_captured_and_the_header_says_graph(engine, monkeypatch):
    # auto planning v10 at batch 8: inside a capture it runs v4, and the row says so
    real = engine.workspace_size

    def plan_v10(B, H, Hkv, D, G, T, kr, vr, dtype, device, impl):
        floats, number = real(B, H, Hkv, D, G, T, kr, vr, dtype, device, impl)
        return (110, 10) if number == 5 else (floats, number)

    engine.ours_us.update({(B, T, str(G), "v10"): 50.0 for B in BATCHES for T in CONTEXTS for G in (1, 2)})
    monkeypatch.setattr(bench.lk, "latent_decode_workspace_size", plan_v10)
    lines, ok, _ = run_table(timing_graphs=True)
    assert ok and any(line.startswith("| model | B | T | G | kernel | time us (graph) |") for line in lines)
    kernels = [r[4] for r in table_rows(lines) if r[1] == "8" and r[4] != "SDPA"]
    assert kernels == ["v4 (auto, captured)", "v2"] * 4


@pytest.mark.parametrize("tma_env", [None, "1", "0"])
def test_runs_as_names_the_kernel_auto_really_runs(monkeypatch, tma_env):
    if tma_env is None:
        monkeypatch.delenv("PALU_C_V4_TMA", raising=False)
    else:
        monkeypatch.setenv("PALU_C_V4_TMA", tma_env)
    for planned in ("v2", "v3", "v4"):  # no TMA needed: always themselves
        assert bench.runs_as(planned, captured=False) == bench.runs_as(planned, captured=True) == planned
    for planned in ("v9", "v10", "v11"):  # inside a capture: v4, whatever the environment says
        assert bench.runs_as(planned, captured=True) == "v4"
    assert bench.runs_as("v9", captured=False) == "v9"  # its cp.async copies need no TMA
    for planned in ("v10", "v11"):  # TMA only: v4 where the environment turns TMA off
        assert bench.runs_as(planned, captured=False) == ("v4" if tma_env == "0" else planned)


@pytest.mark.parametrize("tma_off", [False, True])
def test_eager_rows_name_v4_where_tma_is_off(engine, monkeypatch, tma_off):
    # auto planning v11 at batch 8: with PALU_C_V4_TMA=0 it runs v4, and the row says so; v4's own check stands for it
    real = engine.workspace_size

    def plan_v11(B, H, Hkv, D, G, T, kr, vr, dtype, device, impl):
        floats, number = real(B, H, Hkv, D, G, T, kr, vr, dtype, device, impl)
        return (111, 11) if number == 5 else (floats, number)

    if tma_off:
        monkeypatch.setenv("PALU_C_V4_TMA", "0")
    else:
        monkeypatch.delenv("PALU_C_V4_TMA", raising=False)
    engine.ours_us.update({(B, T, str(G), "v11"): 50.0 for B in BATCHES for T in CONTEXTS for G in (1, 2)})
    monkeypatch.setattr(bench.lk, "latent_decode_workspace_size", plan_v11)
    lines, ok, _ = run_table()  # its checks: v2, v4, v10 passed; v11's never ran
    rows = [r for r in table_rows(lines) if r[1] == "8" and r[4] != "SDPA"]
    if tma_off:
        assert ok and [r[4] for r in rows] == ["v4 (auto, PALU_C_V4_TMA=0)", "v2"] * 4
        assert all(r[5] == "50.0" for r in rows[::2])  # the fake timer ran the planned call (workspace 111)
    else:  # v11 itself would run, and its check did not pass: not timed
        assert not ok and [r[4:6] for r in rows[::2]] == [["v11", "FAILED correctness"]] * 4


def test_interpolative_rows_only_for_the_kernels_that_use_it(engine, monkeypatch):
    """With both key bases, each point gets a "<kernel> ib" row right after the SVD rows of its group size, for the
    kernels in IB_KERNELS only (here v4, which the fake planner runs for auto at batch 8), with the rebuild's FLOPs
    halved and the same bytes; the SVD rows are as before."""
    monkeypatch.setattr(bench, "IB_KERNELS", frozenset({"v4"}))
    lines, ok, _ = run_table(key_bases=("svd", "interpolative"))
    assert ok
    rows = table_rows(lines)
    ib = [r for r in rows if r[4].endswith(" ib")]
    assert [key_of(r) for r in ib] == [(8, T, str(G), "v4 ib") for T in CONTEXTS for G in (1, 2)]
    assert [key_of(r) for r in rows if not r[4].endswith(" ib")] == expected_rows()
    for r in ib:
        svd = next(s for s in rows if key_of(s) == key_of(r)[:3] + ("v4",))
        assert r[7] == svd[7] and float(r[8]) < float(svd[8])  # MB moved equal, GFLOP fewer
    assert all(e.endswith(" svd") or e.endswith(" interpolative") for e in engine.events if e.startswith("case"))
