"""compress_kv(group_size=None): the device-aware group-size rule of palu_c.group_choice.

The CUDA rule is checked against a brute-force restatement over synthetic speed tables (random times, random
shapes): the pick must be the largest divisor whose geometric-mean slowdown is within the tolerance, computed
here directly from the rows. The shipped table is checked for shape and readability (its numbers are
measurements, not something to assert)."""

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from palu_c import group_choice
from palu_c.group_choice import SPEED_TOLERANCE, choose_group_size, load_speed_table


def _table(rng, kv_heads, head_dim, heads, groups):
    rows = []
    for batch, tokens in itertools.product((1, 8), (4096, 65536)):
        for g in groups:
            rows.append(dict(model="m", heads=heads, kv_heads=kv_heads, head_dim=head_dim, batch=batch,
                             tokens=tokens, group=g, us=float(rng.uniform(10, 30)), sdpa_us=20.0))
    return {"FakeGPU": {"source": "synthetic", "command": "", "rows": rows}}


def _expected(table, kv_heads):
    rows = table["FakeGPU"]["rows"]
    ratios = {}
    for (b, t), grp in itertools.groupby(sorted(rows, key=lambda r: (r["batch"], r["tokens"])),
                                         key=lambda r: (r["batch"], r["tokens"])):
        grp = list(grp)
        best = min(r["us"] for r in grp)
        for r in grp:
            ratios.setdefault(r["group"], []).append(r["us"] / best)
    cost = {g: float(np.exp(np.mean(np.log(v)))) for g, v in ratios.items()}
    ok = [g for g in cost if kv_heads % g == 0 and cost[g] <= 1 + SPEED_TOLERANCE]
    return max(ok) if ok else 1


@pytest.fixture
def fake_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "FakeGPU")
    return SimpleNamespace(type="cuda")


def test_cpu_rule_leans_to_accuracy():
    for kv in (1, 2, 3, 4, 5, 6, 8, 12, 32):
        g, why = choose_group_size(kv, 4 * kv, 128, None)
        assert g == max(d for d in range(1, 5) if kv % d == 0)
        assert kv % g == 0 and "cpu" in why


def test_cuda_rule_matches_brute_force(rng, fake_cuda):
    for _ in range(40):
        kv = int(rng.choice([2, 4, 8, 16, 32]))
        groups = sorted({1} | {int(g) for g in rng.choice([1, 2, 4, 8], size=3) if kv % g == 0})
        table = _table(rng, kv, 128, 4 * kv, groups)
        g, why = choose_group_size(kv, 4 * kv, 128, fake_cuda, table=table)
        assert g == _expected(table, kv), why
        assert "FakeGPU" in why


def test_cuda_rule_prefers_larger_group_when_nearly_free(fake_cuda):
    rows = [dict(model="m", heads=32, kv_heads=8, head_dim=128, batch=1, tokens=65536, group=g, us=us, sdpa_us=1.0)
            for g, us in ((1, 100.0), (2, 105.0), (4, 180.0))]
    table = {"FakeGPU": {"rows": rows}}
    assert choose_group_size(8, 32, 128, fake_cuda, table=table)[0] == 2
    # a model whose KV heads are not divisible by the measured sizes falls back to what divides
    assert choose_group_size(3, 9, 128, fake_cuda, table=table)[0] == 1


def test_unknown_gpu_uses_largest_table(fake_cuda):
    rows = [dict(model="m", heads=8, kv_heads=8, head_dim=64, batch=1, tokens=4096, group=g, us=us, sdpa_us=1.0)
            for g, us in ((1, 50.0), (2, 51.0))]
    table = {"OtherGPU": {"rows": rows}}
    g, why = choose_group_size(8, 8, 64, fake_cuda, table=table)
    assert g == 2 and "no table for FakeGPU" in why


def test_shipped_table_is_readable():
    table = load_speed_table()
    assert table, "the shipped table is empty"
    for gpu, entry in table.items():
        assert entry["rows"], gpu
        for r in entry["rows"]:
            assert r["kv_heads"] % r["group"] == 0 and r["us"] > 0 and math.isfinite(r["us"])
            assert r["head_dim"] in (64, 128)
        assert 1 in {r["group"] for r in entry["rows"]}


def test_missing_or_corrupt_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="group_size explicitly"):
        load_speed_table(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        load_speed_table(str(bad))
    bad.write_text(json.dumps({"GPU": {"rows": 3}}))
    with pytest.raises(ValueError, match="malformed"):
        load_speed_table(str(bad))


def test_compress_kv_records_the_reason(rng):
    import palu_c
    from tiny_models import tiny_calib, tiny_model

    model = tiny_model("llama", kv_heads=2)
    palu_c.compress_kv(model, tiny_calib(rng, 2, 16), ratio=0.5, progress=False)
    assert model.palu_config.group_size == 2 and "cpu" in model.palu_config.group_size_reason
    assert group_choice.CPU_MAX_GROUP == 4


def _speed_rows(kv_heads, heads, points):
    """rows of one shape: points = {(group, batch, tokens): (us, sdpa_us)}"""
    return [dict(model="m", heads=heads, kv_heads=kv_heads, head_dim=128, batch=b, tokens=t, group=g, us=us,
                 sdpa_us=sdpa) for (g, b, t), (us, sdpa) in points.items()]


def test_slow_group_message_only_where_every_point_is_slower(rng, fake_cuda):
    for _ in range(30):
        sdpa = {(b, t): float(rng.uniform(20, 200)) for b in (1, 8) for t in (4096, 65536)}
        # group 1 faster everywhere; group 2 slower everywhere, or slower at all but one point
        mixed = bool(rng.integers(0, 2))
        points = {}
        for i, ((b, t), s) in enumerate(sdpa.items()):
            points[(1, b, t)] = (s / rng.uniform(1.1, 1.9), s)
            slow = not (mixed and i == 0)
            points[(2, b, t)] = (s * rng.uniform(1.05, 1.5) if slow else s / 1.2, s)
        table = {"FakeGPU": {"rows": _speed_rows(8, 32, points)}}
        msg = group_choice.slow_group_message(8, 32, 128, 2, fake_cuda, table=table)
        if mixed:
            assert msg is None
            continue
        lo = min(s / points[(2, b, t)][0] for (b, t), s in sdpa.items())
        hi = max(s / points[(2, b, t)][0] for (b, t), s in sdpa.items())
        assert f"group size 2 measured {lo:.2f}-{hi:.2f}x" in msg, msg
        assert "group size 1 measured" in msg and "FakeGPU" in msg and "batch 1-8, 4K-64K" in msg
        assert group_choice.slow_group_message(8, 32, 128, 1, fake_cuda, table=table) is None


def test_slow_group_message_silent_off_cuda_and_unmeasured(fake_cuda):
    points = {(g, 1, 4096): (us, 10.0) for g, us in ((1, 5.0), (2, 20.0))}
    table = {"FakeGPU": {"rows": _speed_rows(8, 32, points)}}
    assert group_choice.slow_group_message(8, 32, 128, 2, None, table=table) is None  # CPU
    assert group_choice.slow_group_message(8, 32, 128, 4, fake_cuda, table=table) is None  # never measured
    assert group_choice.slow_group_message(8, 32, 128, 2, fake_cuda, table={}) is None


def test_compress_kv_warns_for_a_given_slow_group_on_cuda(rng, monkeypatch):
    """compress_kv's wiring: the warning for a given group size comes from slow_group_message on the model's
    device; the tiny model stays on the CPU (no CUDA here), so the message function is stood in for."""
    import warnings

    import palu_c
    from palu_c import kv as kv_mod
    from tiny_models import tiny_calib, tiny_model

    seen = []

    def fake(kv_heads, heads, head_dim, group, device):
        seen.append((kv_heads, heads, head_dim, group, str(device)))
        return "slow here" if group == 2 else None

    monkeypatch.setattr(kv_mod, "slow_group_message", fake)
    model = tiny_model("llama", kv_heads=2)
    cfg = model.config
    with pytest.warns(palu_c.KernelSpeedWarning, match="slow here"):
        palu_c.compress_kv(model, tiny_calib(rng, 2, 16), ratio=0.5, group_size=2, rank_multiple=8, progress=False)
    assert seen == [(2, cfg.num_attention_heads, cfg.head_dim, 2, "cpu")]
    for group_size, bits in ((1, None), (None, None), (2, 4)):  # fast, picked, quantized: no speed warning
        seen.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error", palu_c.KernelSpeedWarning)
            palu_c.compress_kv(tiny_model("llama", kv_heads=2), tiny_calib(rng, 2, 16), ratio=0.5,
                               group_size=group_size, bits=bits, rank_multiple=8, progress=False)
        assert len(seen) == (1 if (group_size, bits) == (1, None) else 0)
