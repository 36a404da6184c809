"""Progressive low-rank decoding: schedule parsing, the active-rank rule, LowRankLinear prefixes, the decode
counter, and schedules inside generate (palu_c/progressive.py, palu_c/lowrank_linear.py).

References: float64 NumPy products of explicitly truncated factors (LowRankLinear), integer arithmetic on
dyadic fractions (active ranks, exact in binary), and the same model without a schedule (generation).
Tolerances: LowRankLinear in float64 against NumPy float64 of the same products: atol 0 + rtol 1e-12
(a handful of roundings of O(1) values, eps64 = 2.2e-16); schedule comparisons are exact (the full-rank path
runs the very same operations).
"""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from palu_c.lowrank_linear import LowRankLinear  # noqa: E402
from palu_c.progressive import (DEFAULT_SCHEDULE, DecodeCounter, active_rank, parse_schedule,  # noqa: E402
                                rank_steps)
from palu_c.weights import compress_weights, install_progressive, parameter_report  # noqa: E402
from palu_c.weights_config import PROJECTION_KINDS  # noqa: E402
from tiny_models import tiny_calib, tiny_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::palu_c.WhiteningWarning")


# ---------------------------------------------------------------- schedules
def test_parse_schedule_forms():
    assert parse_schedule(None) is None and parse_schedule(False) is None
    assert parse_schedule(True) == {k: DEFAULT_SCHEDULE for k in PROJECTION_KINDS}
    assert parse_schedule(True, ("q", "down")) == {"q": DEFAULT_SCHEDULE, "down": DEFAULT_SCHEDULE}
    steps = [(3, 1), (10, 0.5)]
    assert parse_schedule(steps, ("o",)) == {"o": ((3, 1.0), (10, 0.5))}
    assert parse_schedule({"up": [[0, 0.75]], "q": []}) == {"up": ((0, 0.75),)}
    assert parse_schedule([]) is None and parse_schedule({"q": []}) is None
    assert parse_schedule((np.int64(4), np.float32(0.5)) and [(np.int64(4), np.float32(0.5))], ("k",)) == \
        {"k": ((4, 0.5),)}


@pytest.mark.parametrize("bad, exc, match", [
    ([(-1, 0.5)], ValueError, ">= 0"),
    ([(1.0, 0.5)], TypeError, "must be an int"),
    ([(True, 0.5)], TypeError, "must be an int"),
    ([(1, 0.0)], ValueError, r"\(0, 1\]"),
    ([(1, 1.5)], ValueError, r"\(0, 1\]"),
    ([(1, float("nan"))], ValueError, r"\(0, 1\]"),
    ([(1, True)], TypeError, "keep_fraction must be a number"),
    ([(1, "0.5")], TypeError, "keep_fraction must be a number"),
    ([(5, 0.9), (5, 0.8)], ValueError, "strictly increasing"),
    ([(9, 0.9), (5, 0.8)], ValueError, "strictly increasing"),
    ([(1, 0.5), (5, 0.8)], ValueError, "must not increase"),
    ([(1, 0.5, 3)], TypeError, "pair"),
    ([0.5], TypeError, "pair"),
    ("0.5", TypeError, "list of"),
    (0.5, TypeError, "list of"),
    ({"attn": [(1, 0.5)]}, ValueError, "unknown projection class"),
])
def test_parse_schedule_refuses(bad, exc, match):
    with pytest.raises(exc, match=match):
        parse_schedule(bad)


def test_parse_schedule_refuses_untargeted_class():
    with pytest.raises(ValueError, match="not compressed here"):
        parse_schedule({"down": [(1, 0.5)]}, ("q", "k"))


def test_active_rank_matches_integer_reference(rng):
    for _ in range(300):
        multiple = int(rng.choice([1, 4, 8, 16]))
        stored = multiple * int(rng.integers(1, 40))
        floor = multiple * int(rng.integers(1, 4))
        frac = Fraction(int(rng.integers(1, 65)), 64)  # dyadic: exact in binary, no rounding question
        expected = min(stored, max(min(floor, stored), (frac.numerator * stored // frac.denominator) // multiple
                                   * multiple))
        assert active_rank(stored, float(frac), multiple, floor) == expected
    # decimal fractions mean their decimal value: 0.7 * 160 is 112, not 111.99999999999999 -> 96
    assert active_rank(160, 0.7, 16, 16) == 112
    assert rank_steps(64, ((2, 0.5), (7, 0.1)), 16, 16) == ((2, 32), (7, 16))


# ---------------------------------------------------------------- LowRankLinear
@pytest.mark.parametrize("n, m, r", [(19, 7, 5), (7, 19, 7), (64, 33, 16), (1, 3, 1)])
def test_lowrank_linear_prefix_matches_numpy(rng, n, m, r):
    down, up = rng.standard_normal((r, n)), rng.standard_normal((m, r))
    bias = rng.standard_normal(m)
    mod = LowRankLinear.from_factors(down, up, torch.from_numpy(bias))
    assert mod.down.dtype == torch.float64 and mod.rank == r
    x = rng.standard_normal((3, 5, 2 * n))[..., ::2]  # non-contiguous input
    counter = DecodeCounter()
    k = max(1, r // 2)
    mod.set_schedule([(2, k)], counter)
    for generated, rank in ((0, r), (1, r), (2, k), (9, k)):
        counter.generated = generated
        assert mod.active_rank == rank == mod.rank_at(generated)
        got = mod(torch.from_numpy(x)).detach().numpy()
        ref = (x @ down[:rank].T) @ up[:, :rank].T + bias
        # float64 in another summation order: the error scales with the sum of |terms|, not with |result|
        # (an output that cancels to ~1e-4 of its terms would fail a pure rtol); 64 eps of that scale
        scale = (np.abs(x) @ np.abs(down[:rank]).T) @ np.abs(up[:, :rank]).T + np.abs(bias)
        np.testing.assert_array_less(np.abs(got - ref), 64 * np.finfo(np.float64).eps * scale + 1e-300)


def test_lowrank_linear_validation(rng):
    with pytest.raises(ValueError, match="rank 5 exceeds"):
        LowRankLinear(4, 8, 5)
    with pytest.raises(ValueError, match="positive int"):
        LowRankLinear(4, 8, 0)
    with pytest.raises(ValueError, match="columns"):
        LowRankLinear.from_factors(np.zeros((3, 4)), np.zeros((5, 2)))
    bad = np.zeros((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LowRankLinear.from_factors(bad, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="bias"):
        LowRankLinear.from_factors(np.zeros((3, 4)), np.zeros((5, 3)), torch.zeros(4))
    mod = LowRankLinear.from_factors(rng.standard_normal((4, 6)), rng.standard_normal((5, 4)))
    with pytest.raises(ValueError, match="outside"):
        mod.set_schedule([(1, 8)], DecodeCounter())
    with pytest.raises(ValueError, match="must not"):
        mod.set_schedule([(1, 2), (3, 4)], DecodeCounter())
    with pytest.raises(TypeError, match="DecodeCounter"):
        mod.set_schedule([(1, 2)], None)


# ---------------------------------------------------------------- the counter
def test_decode_counter_rules():
    from transformers import DynamicCache

    c = DecodeCounter()
    filled = DynamicCache()
    filled.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2), 0)
    c(None, (), {"input_ids": torch.zeros(2, 5, dtype=torch.long), "past_key_values": DynamicCache()})
    assert c.generated == 0  # prefill
    for step in range(1, 4):
        c(None, (), {"input_ids": torch.zeros(2, 1, dtype=torch.long), "past_key_values": filled})
        assert c.generated == step
    c(None, (), {"input_ids": torch.zeros(2, 1, dtype=torch.long), "past_key_values": DynamicCache()})
    assert c.generated == 0  # one-token prompt on an empty cache: a prefill
    c.generated = 7
    c(None, (torch.zeros(1, 1, dtype=torch.long),), {})
    assert c.generated == 0  # no cache at all: a prefill
    c.generated = 7
    c(None, (), {"inputs_embeds": torch.zeros(1, 4, 8), "past_key_values": filled})
    assert c.generated == 0  # multi-token step: reset


# ---------------------------------------------------------------- inside generate
def _model(rng, **kw):
    base = tiny_model("llama", layers=2, seed=int(rng.integers(1 << 30)), bias=True)
    calib = tiny_calib(rng, 6, 32)
    return base, calib


def _record_ranks(model):
    """{module name: [active rank at each forward]} through forward pre-hooks."""
    seen, handles = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, LowRankLinear):
            seen[name] = []
            handles.append(mod.register_forward_pre_hook(lambda m, a, name=name: seen[name].append(m.active_rank)))
    return seen, handles


def test_schedule_changes_ranks_exactly_at_configured_counts(rng):
    base, calib = _model(rng)
    sched = {"q": [(3, 0.5)], "down": [(2, 0.75), (5, 0.25)], "up": [(0, 0.5)]}
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.9, rank_multiple=4, progressive=sched,
                             progress=False)
    seen, _ = _record_ranks(model)
    ids = torch.as_tensor(rng.integers(0, 128, (3, 6)))
    new = 8
    with torch.no_grad():
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    cfg = model.flrc_config
    n_low = 0
    for p in cfg.projections:
        if p.rank is None:
            continue
        n_low += 1
        steps = sched.get(p.kind, [])
        expected = []
        for g in range(new):  # forward g consumes generated token g (g = 0: the prefill)
            frac = 1.0
            for start, f in steps:
                if g >= 1 and g >= start:
                    frac = f
            k = int(Fraction(frac) * p.rank) // 4 * 4  # all fractions here are dyadic
            expected.append(p.rank if frac == 1.0 else max(min(4, p.rank), k))
        assert seen[p.name] == expected, p.name
    assert n_low > 0


def test_full_rank_schedule_equals_no_schedule(rng):
    base, calib = _model(rng)
    plain = compress_weights(copy.deepcopy(base), calib, ratio=0.7, rank_multiple=8, progress=False)
    full = compress_weights(copy.deepcopy(base), calib, ratio=0.7, rank_multiple=8, progress=False,
                            progressive=[(1, 1.0), (4, 1.0)])
    ids = torch.as_tensor(rng.integers(1, 128, (3, 7)))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, output_logits=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        a, b = plain.generate(ids, **kw), full.generate(ids, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(torch.stack(a.logits), torch.stack(b.logits))


def _teacher_forced(model, seq, prompt):
    """Logits of the prefill and of every one-token cached step over the given sequence."""
    out = model(seq[:, :prompt], use_cache=True)
    logits, past = [out.logits[:, -1]], out.past_key_values
    for t in range(prompt, seq.shape[1]):
        out = model(seq[:, t:t + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits.append(out.logits[:, -1])
    return torch.stack(logits)


def test_lower_schedule_changes_only_later_steps(rng):
    base, calib = _model(rng)
    plain = compress_weights(copy.deepcopy(base), calib, ratio=0.8, rank_multiple=4, progress=False)
    low = copy.deepcopy(plain)
    install_progressive(low, [(3, 0.25)])
    seq = torch.as_tensor(rng.integers(1, 128, (2, 11)))
    with torch.no_grad():
        ref, got = _teacher_forced(plain, seq, 5), _teacher_forced(low, seq, 5)
    assert torch.equal(got[:3], ref[:3])  # prefill, decode steps 1 and 2: full rank, the same operations
    for step in range(3, got.shape[0]):  # from step 3 on: a quarter of the rank
        assert not torch.allclose(got[step], ref[step], rtol=0, atol=1e-6), step
    assert low._flrc_counter.generated == 6


def test_deepcopy_gets_its_own_counter_and_report_counts_active(rng):
    base, calib = _model(rng)
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.8, rank_multiple=4, progress=False,
                             progressive=[(2, 0.5)])
    twin = copy.deepcopy(model)
    assert twin._flrc_counter is not model._flrc_counter
    ids = torch.as_tensor(rng.integers(1, 128, (1, 4)))
    with torch.no_grad():
        twin.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert twin._flrc_counter.generated == 3 and model._flrc_counter.generated == 0
    g = 9
    rep = parameter_report(model, generated_tokens=g)
    expected = 0.0
    for p in model.flrc_config.projections:
        if p.rank is None:
            expected += p.out_features * p.in_features
            continue
        half = max(4, p.rank // 2 // 4 * 4)
        ranks = [p.rank, p.rank] + [half] * (g - 2)  # forwards 0 (prefill) and 1 at full rank
        expected += sum(ranks) / g * (p.out_features + p.in_features)
    assert rep["active"] == pytest.approx(expected, rel=1e-12)
    assert rep["active"] < rep["stored"] <= rep["budget"]
    install_progressive(model, None)
    assert parameter_report(model, generated_tokens=g)["active"] == pytest.approx(rep["stored"], rel=1e-12)
    assert model.flrc_config.progressive is None


def test_progressive_generate_batch_sampling(rng):
    base, calib = _model(rng)
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.7, rank_multiple=4, progress=False,
                             progressive=True)
    ids = torch.as_tensor(rng.integers(1, 128, (4, 6)))
    mask = torch.ones_like(ids)
    mask[2, :4] = 0
    torch.manual_seed(int(rng.integers(1 << 30)))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=70, do_sample=True, top_k=20)
    assert out.shape[0] == 4 and out.shape[1] <= 6 + 70
    assert int(out.min()) >= 0 and int(out.max()) < 128
