"""Tests of palu_c.allocate_ranks (csrc/rank_alloc.c, csrc/py_rank_alloc.c, palu_c/ranks.py).

The file opens with independent pure-NumPy/Python references of both methods, written from the rules stated in
csrc/rank_alloc.h (not from the C code): the proportional water-filling solves for lambda by bisection (the C
code sweeps sorted breakpoints), and every budget test uses exact rational arithmetic (fractions.Fraction).

Exactness and ties: integer ranks are decided by comparisons (floor of a target, order of remainders, a unit
fitting the budget). The C code and the float64 references agree to ~1e-15 relative on every target and
remainder, so they can only disagree on a random draw where two of these quantities are closer than that; with
continuous random scores the chance is ~N^2 * 1e-15 per draw, which is why exact equality is asserted. Inputs
with deliberate ties (equal scores, integer spectra) are built so that every compared quantity is exact.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import os
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

import palu_c
from memory_growth import rss_bytes, under_asan
from palu_c import _C

SIZES_N = (1, 2, 7, 19, 127)
MULTIPLES = (1, 16, 32)


# ------------------------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------------------------
def ref_bounds(sizes, m, minimum):
    """Cap and floor of every item, in units of m ranks (floor = minimum rounded up, but never above the cap)."""
    cap = np.asarray(sizes, dtype=np.int64) // m
    lo = np.minimum(-(-minimum // m), cap)
    return cap, lo


def exact_cost(costs, ranks):
    return sum((Fraction(float(c)) * int(r) for c, r in zip(costs, ranks)), Fraction(0))


def ref_water_fill(sel, w, bs, c, lo, cap, m, t):
    """Targets t[sel] with sum clamp(lam * w, c lo m, c cap m) = bs, lam found by bisection."""
    a_cost = c[sel] * (lo[sel] * m)
    u_cost = c[sel] * (cap[sel] * m)
    if bs >= u_cost.sum():
        t[sel] = cap[sel] * m
        return
    if bs <= a_cost.sum():
        t[sel] = lo[sel] * m
        return
    ws = w[sel]
    lam_lo, lam_hi = 0.0, float(np.max(u_cost / ws))
    while True:
        mid = 0.5 * (lam_lo + lam_hi)
        if mid in (lam_lo, lam_hi):
            break
        if np.clip(mid * ws, a_cost, u_cost).sum() < bs:
            lam_lo = mid
        else:
            lam_hi = mid
    share = lam_hi * ws
    t[sel] = np.where(share >= u_cost, cap[sel] * m, np.where(share <= a_cost, lo[sel] * m, share / c[sel]))


def ref_proportional(scores, sizes, budget, m=1, minimum=0, costs=None):
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    c = np.ones(n) if costs is None else np.asarray(costs, dtype=np.float64)
    cap, lo = ref_bounds(sizes, m, minimum)
    bud = Fraction(float(budget))
    if exact_cost(c, lo * m) > bud:
        raise ValueError("budget too small")
    t = np.zeros(n)
    if scores.max() == 0:
        ref_water_fill(np.arange(n), np.ones(n), budget, c, lo, cap, m, t)
    else:
        w = scores / scores.max()
        pos, zero = np.flatnonzero(w > 0), np.flatnonzero(w == 0)
        pos_cap = float(np.sum(c[pos] * (cap[pos] * m)))
        zero_lo = float(np.sum(c[zero] * (lo[zero] * m)))
        if zero.size == 0 or budget - zero_lo < pos_cap:
            ref_water_fill(pos, w, budget - zero_lo, c, lo, cap, m, t)
            t[zero] = lo[zero] * m
        else:
            t[pos] = cap[pos] * m
            ref_water_fill(zero, np.ones(n), budget - pos_cap, c, lo, cap, m, t)
    f = t / m
    fl = np.floor(f)
    units = np.clip(fl, lo, cap).astype(np.int64)
    rem = np.where((fl < lo) | (units >= cap), 0.0, f - fl)
    order = sorted(range(n), key=lambda i: (-rem[i], i))
    unit_cost = [Fraction(float(ci)) * m for ci in c]
    spent = exact_cost(c, units * m)
    for i in reversed(order):  # only rounding of the targets can make the floors cost more than the budget
        while spent > bud and units[i] > lo[i]:
            units[i] -= 1
            spent -= unit_cost[i]
    while True:
        gave = False
        for i in order:
            if units[i] < cap[i] and spent + unit_cost[i] <= bud:
                units[i] += 1
                spent += unit_cost[i]
                gave = True
        if not gave:
            return units * m


def ref_greedy(scores, sizes, budget, m, minimum, costs, spectra):
    """Greedy by marginal gain per cost; exact for integer costs/spectra (all float64 quantities are integers)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    c = np.ones(n) if costs is None else np.asarray(costs, dtype=np.float64)
    cap, lo = ref_bounds(sizes, m, minimum)
    units = lo.copy()

    def gain(i):
        seg = np.asarray(spectra[i][units[i] * m:(units[i] + 1) * m], dtype=np.float64)
        return 0.0 if scores[i] == 0 else scores[i] * float(np.sum(seg * seg)) / (m * c[i])

    gains = np.array([gain(i) if units[i] < cap[i] else -np.inf for i in range(n)])
    spent = float(np.sum(c * units * m))
    while True:
        fits = (units < cap) & (spent + c * m <= budget)
        if not fits.any():
            return units * m
        i = int(np.argmax(np.where(fits, gains, -np.inf)))  # first maximum: ties to the lower index
        units[i] += 1
        spent += c[i] * m
        gains[i] = gain(i) if units[i] < cap[i] else -np.inf


def objective(scores, spectra, ranks):
    return sum(float(s) * float(np.sum(np.asarray(sp[:r]) ** 2)) for s, sp, r in zip(scores, spectra, ranks))


def check_properties(ranks, sizes, budget, m=1, minimum=0, costs=None):
    """The guarantees of rank_alloc.h, checked in exact arithmetic."""
    n = len(sizes)
    c = np.ones(n) if costs is None else np.asarray(costs, dtype=np.float64)
    cap, lo = ref_bounds(sizes, m, minimum)
    assert isinstance(ranks, np.ndarray) and ranks.dtype == np.int64 and ranks.shape == (n,)
    assert np.all(ranks % m == 0)
    assert np.all(ranks <= cap * m) and np.all(ranks <= np.asarray(sizes))
    assert np.all(ranks >= lo * m)
    left = Fraction(float(budget)) - exact_cost(c, ranks)
    assert left >= 0, "over budget"
    for i in np.flatnonzero(ranks < cap * m):
        assert left < Fraction(float(c[i])) * m, f"a unit of item {i} still fits"


# ------------------------------------------------------------------------------------------------------------------
# Random problem generator
# ------------------------------------------------------------------------------------------------------------------
def make_problem(rng, n, m, binding, cost_kind, minimum=0, zeros=False):
    """Scores, sizes, costs and a budget between the floors' and the caps' cost."""
    if binding:  # heavy-tailed scores and uneven sizes: the top items hit their caps
        scores = rng.lognormal(0.0, 2.5, n)
        sizes = rng.integers(1, 40 * m + 1, n)
    else:  # mild scores, equal sizes, moderate budget: no cap binds
        scores = rng.uniform(1.0, 2.0, n)
        sizes = np.full(n, 64 * m)
    if zeros and n > 1:
        scores[rng.random(n) < 0.3] = 0.0
    if cost_kind == "uniform":
        costs = None
    elif cost_kind == "mn":  # a weight (rows, cols) costs rows + cols parameters per rank
        dims = np.array([64, 96, 128, 256, 384, 512])
        costs = (rng.choice(dims, n) + rng.choice(dims, n)).astype(np.float64)
    else:  # arbitrary positive reals
        costs = rng.uniform(0.3, 3.0, n)
    c = np.ones(n) if costs is None else costs
    cap, lo = ref_bounds(sizes, m, minimum)
    lo_cost, cap_cost = float(np.sum(c * lo * m)), float(np.sum(c * cap * m))
    ratio = rng.uniform(0.2, 0.9) if binding else rng.uniform(0.1, 0.45)
    budget = lo_cost + ratio * (cap_cost - lo_cost)
    if cost_kind == "mn":
        budget = float(np.floor(budget))  # integer parameter budgets, as in practice
    # where every cap is its floor the budget is lo_cost, a float sum that can round below the floors' exact cost
    # (by 1.4e-14 for one CI seed): such a problem has no solution, so step up to the first budget that covers it
    floor_cost = exact_cost(c, lo * m)
    while Fraction(budget) < floor_cost:
        budget = math.nextafter(budget, math.inf)
    return scores, sizes, costs, budget


# ------------------------------------------------------------------------------------------------------------------
# Proportional
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES_N)
@pytest.mark.parametrize("m", MULTIPLES)
@pytest.mark.parametrize("binding", [False, True])
@pytest.mark.parametrize("cost_kind", ["uniform", "mn", "real"])
def test_proportional_matches_reference(rng, n, m, binding, cost_kind):
    for trial in range(3):
        minimum = int(rng.choice([0, 1, m, 3 * m - 1])) if trial else 0
        scores, sizes, costs, budget = make_problem(rng, n, m, binding, cost_kind, minimum, zeros=trial == 2)
        ranks = palu_c.allocate_ranks(scores, sizes, budget, multiple_of=m, minimum=minimum, costs=costs)
        check_properties(ranks, sizes, budget, m, minimum, costs)
        expected = ref_proportional(scores, sizes, budget, m, minimum, costs)
        np.testing.assert_array_equal(ranks, expected)


def test_proportional_caps_water_filling_by_hand():
    # scores 8:1:1, caps 10, 100, 100, budget 100 -> item 0 capped at 10, the other 90 split equally.
    ranks = palu_c.allocate_ranks([8.0, 1.0, 1.0], [10, 100, 100], 100)
    np.testing.assert_array_equal(ranks, [10, 45, 45])
    # the budget covers every cap -> every item at its cap (rounded down to the multiple)
    ranks = palu_c.allocate_ranks([1.0, 5.0, 0.0], [33, 40, 7], 1e6, multiple_of=16)
    np.testing.assert_array_equal(ranks, [32, 32, 0])


def test_proportional_palu_rule_without_caps(rng):
    # Palu: rank_g = floor(B F_g / sum F), leftover units by largest remainder (m = 1, uniform cost, no cap binds).
    for n in (2, 7, 19, 127):
        scores = rng.uniform(0.1, 1.0, n)
        budget = float(rng.integers(n, 50 * n))
        sizes = np.full(n, 10**6)
        ranks = palu_c.allocate_ranks(scores, sizes, budget)
        exact = budget * scores / scores.sum()
        base = np.floor(exact).astype(np.int64)
        extra = int(budget) - int(base.sum())
        top = np.argsort(-(exact - base), kind="stable")[:extra]
        expected = base.copy()
        expected[top] += 1
        np.testing.assert_array_equal(ranks, expected)


def test_palu_example_equal_scores_equal_ranks(rng):
    # Budget = ratio x total K+V dims; equal importance -> the same rank everywhere.
    layers, group_dim, m = 32, 256, 16
    n = 2 * layers
    for ratio in (0.25, 0.5, 0.75):
        score = float(rng.uniform(0.5, 2.0))
        budget = ratio * n * group_dim
        ranks = palu_c.allocate_ranks(np.full(n, score), np.full(n, group_dim), budget, multiple_of=m)
        np.testing.assert_array_equal(ranks, np.full(n, int(ratio * group_dim)))


def test_equal_scores_ties_go_to_lower_index():
    # 7 items, 10 units of budget: 1 unit each (7), the 3 left over go to items 0, 1, 2.
    ranks = palu_c.allocate_ranks(np.ones(7), np.full(7, 100), 10.0 * 16, multiple_of=16)
    np.testing.assert_array_equal(ranks, [32, 32, 32, 16, 16, 16, 16])


def test_all_zero_scores_equal_shares(rng):
    n = 19
    sizes = rng.integers(50, 200, n)
    budget = 0.3 * float(sizes.sum())
    ranks = palu_c.allocate_ranks(np.zeros(n), sizes, budget)
    check_properties(ranks, sizes, budget)
    np.testing.assert_array_equal(ranks, palu_c.allocate_ranks(np.full(n, 3.5), sizes, budget))


def test_zero_scores_get_budget_only_after_positive_caps():
    # positive items cap at 10 + 10; the zero-score items share the remaining 30 equally.
    ranks = palu_c.allocate_ranks([1.0, 0.0, 2.0, 0.0], [10, 100, 10, 100], 50)
    np.testing.assert_array_equal(ranks, [10, 15, 10, 15])
    # while the positive items are not capped, zero-score items stay at the minimum
    ranks = palu_c.allocate_ranks([1.0, 0.0, 2.0, 0.0], [100, 100, 100, 100], 48, multiple_of=4, minimum=3)
    np.testing.assert_array_equal(ranks, [12, 4, 28, 4])


def test_minimum_and_cap_wins():
    # minimum 20 rounds up to 32; item 1 (size 20) has cap 16 < 32, so it keeps 16.
    ranks = palu_c.allocate_ranks([1.0, 1.0, 100.0], [256, 20, 256], 32 + 16 + 200, multiple_of=16, minimum=20)
    assert ranks[0] == 32 and ranks[1] == 16
    check_properties(ranks, [256, 20, 256], 248, 16, 20)


def test_budget_too_small_for_minimum_says_by_how_much():
    with pytest.raises(ValueError, match=r"budget.*too small.*minimum.*\b14\b"):
        palu_c.allocate_ranks([1.0, 1.0], [64, 64], 50, minimum=32)
    with pytest.raises(ValueError, match="too small"):
        palu_c.allocate_ranks([1.0], [64], 63, method="greedy", spectra=[np.ones(64)], minimum=64)


@pytest.mark.parametrize("method", ["proportional", "greedy"])
def test_budget_never_exceeded_by_float_rounding(rng, method):
    # Costs where float64 says "fits" but the exact sum is over the budget by less than an ulp:
    # fl(k * c) == budget < k * c (one item), and fl(c0 + c1) == budget < c0 + c1 (two items).
    found = 0
    while found < 20:
        c = float(rng.uniform(0.3, 3.0))
        k = int(rng.integers(2, 9))
        budget = c * k
        if Fraction(c) * k > Fraction(budget):
            spec = [np.ones(16)] if method == "greedy" else None
            ranks = palu_c.allocate_ranks([1.0], [16], budget, costs=[c], method=method, spectra=spec)
            assert ranks[0] == k - 1
            found += 1
        c0, c1 = float(rng.uniform(0.3, 3.0)), float(rng.uniform(0.3, 3.0))
        budget = c0 + c1
        if Fraction(c0) + Fraction(c1) > Fraction(budget):
            spec = [np.ones(1), np.ones(1)] if method == "greedy" else None
            ranks = palu_c.allocate_ranks([1.0, 1.0], [1, 1], budget, costs=[c0, c1], method=method, spectra=spec)
            check_properties(ranks, [1, 1], budget, costs=[c0, c1])
            assert ranks.sum() == 1
            found += 1


def test_zero_budget_and_single_item(rng):
    np.testing.assert_array_equal(palu_c.allocate_ranks([1.0, 2.0], [5, 5], 0), [0, 0])
    size = int(rng.integers(1, 1000))
    budget = float(rng.uniform(0, 2 * size))
    ranks = palu_c.allocate_ranks([float(rng.uniform())], [size], budget, multiple_of=8)
    assert ranks[0] == min(size // 8, int(budget // 8)) * 8


# ------------------------------------------------------------------------------------------------------------------
# Greedy
# ------------------------------------------------------------------------------------------------------------------
def integer_spectra(rng, sizes, sort):
    out = []
    for s in sizes:
        v = rng.integers(0, 30, int(s) + int(rng.integers(0, 3))).astype(np.float64)
        out.append(np.sort(v)[::-1] if sort else v)
    return out


@pytest.mark.parametrize("n", SIZES_N)
@pytest.mark.parametrize("m", MULTIPLES)
@pytest.mark.parametrize("binding", [False, True])
@pytest.mark.parametrize("cost_kind", ["uniform", "mn"])
def test_greedy_matches_reference(rng, n, m, binding, cost_kind):
    # integer scores, spectra, costs and budget: every gain is one correctly rounded division of integers and
    # every budget sum is exact, so C and reference see identical numbers (ties included).
    for trial in range(2):
        minimum = int(rng.choice([0, 1, m, 2 * m + 1])) if trial else 0
        _, sizes, costs, budget = make_problem(rng, n, m, binding, cost_kind, minimum)
        scores = rng.integers(0, 20, n).astype(np.float64)
        spectra = integer_spectra(rng, sizes, sort=bool(trial))
        budget = float(np.floor(budget)) + (0.5 if trial else 0.0)
        ranks = palu_c.allocate_ranks(scores, sizes, budget, method="greedy", spectra=spectra, multiple_of=m,
                                      minimum=minimum, costs=costs)
        check_properties(ranks, sizes, budget, m, minimum, costs)
        np.testing.assert_array_equal(ranks, ref_greedy(scores, sizes, budget, m, minimum, costs, spectra))


@pytest.mark.parametrize("n", (7, 127))
def test_greedy_real_inputs_properties(rng, n):
    for m in MULTIPLES:
        scores, sizes, costs, budget = make_problem(rng, n, m, True, "real", minimum=m)
        spectra = [rng.exponential(1.0, int(s)) for s in sizes]
        ranks = palu_c.allocate_ranks(scores, sizes, budget, method="greedy", spectra=spectra, multiple_of=m,
                                      minimum=m, costs=costs)
        check_properties(ranks, sizes, budget, m, m, costs)


def test_greedy_is_optimal_on_tiny_instances(rng):
    # Uniform costs + non-increasing spectra: the objective is concave per item, so greedy must reach the
    # brute-force optimum. Integer data make every objective value an exact integer.
    for _ in range(150):
        n = int(rng.integers(1, 4))
        m = int(rng.choice([1, 2]))
        minimum = int(rng.integers(0, 3))
        cost = float(rng.integers(1, 4))
        sizes = rng.integers(1, 6 * m + 1, n)
        cap, lo = ref_bounds(sizes, m, minimum)
        budget = float(rng.integers(int(cost * m * lo.sum()), int(cost * m * cap.sum()) + 2))
        scores = rng.integers(0, 6, n).astype(np.float64)
        spectra = integer_spectra(rng, sizes, sort=True)
        ranks = palu_c.allocate_ranks(scores, sizes, budget, method="greedy", spectra=spectra, multiple_of=m,
                                      minimum=minimum, costs=np.full(n, cost))
        best = max(objective(scores, spectra, np.array(u) * m)
                   for u in itertools.product(*[range(a, b + 1) for a, b in zip(lo, cap)])
                   if cost * m * sum(u) <= budget)
        assert objective(scores, spectra, ranks) == best


def test_greedy_at_least_proportional_on_weighted_energy(rng):
    # Both allocations satisfy the same constraints and greedy is optimal for this objective (uniform costs,
    # non-increasing spectra), so it can never lose. Slack: 1e-12 relative for float64 summation rounding of
    # at most a few thousand non-negative terms (each sum is accurate to ~n * 1.1e-16).
    for _ in range(200):
        n = int(rng.choice([2, 7, 19]))
        m = int(rng.choice(MULTIPLES))
        sizes = rng.integers(1, 16 * m + 1, n)
        scores = rng.lognormal(0.0, 1.5, n)
        spectra = [np.sort(rng.lognormal(0.0, 1.0, int(s)))[::-1] for s in sizes]
        cap, _ = ref_bounds(sizes, m, 0)
        budget = float(rng.uniform(0.1, 1.0)) * float(cap.sum() * m)
        g = palu_c.allocate_ranks(scores, sizes, budget, method="greedy", spectra=spectra, multiple_of=m)
        p = palu_c.allocate_ranks(scores, sizes, budget, multiple_of=m)
        og, op = objective(scores, spectra, g), objective(scores, spectra, p)
        assert og >= op * (1.0 - 1e-12)


def test_greedy_zero_gain_units_still_fill_the_budget():
    # item 0's spectrum is all zeros and item 1 has score 0: they only get units once item 2 is full.
    spectra = [np.zeros(8), np.ones(8), np.full(8, 3.0)]
    ranks = palu_c.allocate_ranks([1.0, 0.0, 1.0], [8, 8, 8], 12, method="greedy", spectra=spectra, multiple_of=2)
    np.testing.assert_array_equal(ranks, [4, 0, 8])


# ------------------------------------------------------------------------------------------------------------------
# Inputs: dtypes, layouts, determinism, threads
# ------------------------------------------------------------------------------------------------------------------
def test_input_dtypes_and_layouts(rng):
    n = 19
    scores64 = rng.uniform(0.0, 1.0, 2 * n)
    sizes = rng.integers(1, 300, 2 * n)
    costs = rng.uniform(1.0, 2.0, 2 * n)
    spectra = [rng.uniform(0, 1, 300) for _ in range(n)]
    budget = 0.4 * float(np.sum(costs[::2] * sizes[::2]))
    base = palu_c.allocate_ranks(scores64[::2].copy(), sizes[::2].copy(), budget, costs=costs[::2].copy())
    # non-contiguous views, lists, float32 scores (exactly representable values), other integer dtypes
    np.testing.assert_array_equal(palu_c.allocate_ranks(scores64[::2], sizes[::2], budget, costs=costs[::2]), base)
    np.testing.assert_array_equal(
        palu_c.allocate_ranks(list(scores64[::2]), list(map(int, sizes[::2])), budget, costs=list(costs[::2])), base)
    for dt in (np.int32, np.uint16, np.uint64, np.float64):
        np.testing.assert_array_equal(
            palu_c.allocate_ranks(scores64[::2], sizes[::2].astype(dt), budget, costs=costs[::2]), base)
    s32 = scores64[::2].astype(np.float32)
    np.testing.assert_array_equal(palu_c.allocate_ranks(s32, sizes[::2], budget, costs=costs[::2]),
                                  palu_c.allocate_ranks(s32.astype(np.float64), sizes[::2], budget, costs=costs[::2]))
    g1 = palu_c.allocate_ranks(scores64[::2], sizes[::2], budget, method="greedy", costs=costs[::2],
                               spectra=[s[::-1] for s in spectra])
    g2 = palu_c.allocate_ranks(scores64[::2], sizes[::2], budget, method="greedy", costs=costs[::2],
                               spectra=tuple(np.ascontiguousarray(s[::-1]) for s in spectra))
    np.testing.assert_array_equal(g1, g2)
    # numpy integer scalars for the integer arguments
    np.testing.assert_array_equal(
        palu_c.allocate_ranks(scores64[::2], sizes[::2], np.float32(budget), multiple_of=np.int64(1),
                              minimum=np.int16(0), costs=costs[::2]),
        palu_c.allocate_ranks(scores64[::2], sizes[::2], float(np.float32(budget)), costs=costs[::2]))


def test_deterministic(rng):
    scores, sizes, costs, budget = make_problem(rng, 127, 16, True, "mn", 16, zeros=True)
    spectra = [rng.uniform(0, 1, int(s)) for s in sizes]
    for method, spec in (("proportional", None), ("greedy", spectra)):
        a = palu_c.allocate_ranks(scores, sizes, budget, method=method, spectra=spec, multiple_of=16, costs=costs)
        b = palu_c.allocate_ranks(scores.copy(), sizes.copy(), budget, method=method, spectra=spec, multiple_of=16,
                                  costs=costs.copy())
        np.testing.assert_array_equal(a, b)


def test_threads_give_the_serial_result(rng):
    scores, sizes, costs, budget = make_problem(rng, 127, 1, True, "real")
    spectra = [rng.uniform(0, 1, int(s)) for s in sizes]
    serial = [palu_c.allocate_ranks(scores, sizes, budget, costs=costs),
              palu_c.allocate_ranks(scores, sizes, budget, costs=costs, method="greedy", spectra=spectra)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(palu_c.allocate_ranks, scores, sizes, budget, costs=costs, method=meth,
                            spectra=spec) for _ in range(25)
                for meth, spec in (("proportional", None), ("greedy", spectra))]
        results = [f.result() for f in futs]
    for k, r in enumerate(results):
        np.testing.assert_array_equal(r, serial[k % 2])


# ------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------------------
class FakeCudaTensor:
    """Stands for a CUDA tensor: a DLPack producer whose memory lives on device type 2 (cuda)."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, *args, **kwargs):
        raise AssertionError("a device tensor must be refused before it is read")


GOOD = dict(scores=[1.0, 2.0, 3.0], sizes=[8, 8, 8], budget=12.0)
SPEC3 = [np.ones(8), np.ones(8), np.ones(8)]

BAD_INPUTS = [
    (dict(scores=[1.0, 2.0]), ValueError, "sizes"),
    (dict(costs=[1.0, 1.0]), ValueError, "costs"),
    (dict(scores=[], sizes=[]), ValueError, "scores"),
    (dict(scores=[1.0, np.nan, 1.0]), ValueError, "scores"),
    (dict(scores=[1.0, np.inf, 1.0]), ValueError, "scores"),
    (dict(scores=[1.0, -0.5, 1.0]), ValueError, "scores"),
    (dict(scores=[[1.0, 2.0, 3.0]]), ValueError, "scores"),
    (dict(scores=[True, False, True]), TypeError, "scores"),
    (dict(scores=[1j, 2.0, 3.0]), TypeError, "scores"),
    (dict(scores=["a", "b", "c"]), TypeError, "scores"),
    (dict(scores=None), TypeError, "scores"),
    (dict(sizes=[8, 0, 8]), ValueError, "sizes"),
    (dict(sizes=[8, -3, 8]), ValueError, "sizes"),
    (dict(sizes=[8, 3.5, 8]), ValueError, "sizes"),
    (dict(sizes=[8.0, np.nan, 8.0]), ValueError, "sizes"),
    (dict(sizes=[True, True, True]), TypeError, "sizes"),
    (dict(sizes=[2**60, 8, 8]), ValueError, "sizes"),
    (dict(sizes=np.array([2**64 - 1, 8, 8], dtype=np.uint64)), ValueError, "sizes"),
    (dict(budget=-1.0), ValueError, "budget"),
    (dict(budget=float("nan")), ValueError, "budget"),
    (dict(budget=float("inf")), ValueError, "budget"),
    (dict(budget=True), TypeError, "budget"),
    (dict(budget="12"), TypeError, "budget"),
    (dict(method="fisher"), ValueError, "proportional.*greedy"),
    (dict(method=3), TypeError, "method"),
    (dict(multiple_of=0), ValueError, "multiple_of"),
    (dict(multiple_of=-16), ValueError, "multiple_of"),
    (dict(multiple_of=1.5), TypeError, "multiple_of"),
    (dict(multiple_of=True), TypeError, "multiple_of"),
    (dict(minimum=-1), ValueError, "minimum"),
    (dict(minimum=2.0), TypeError, "minimum"),
    (dict(costs=[1.0, 0.0, 1.0]), ValueError, "costs"),
    (dict(costs=[1.0, -2.0, 1.0]), ValueError, "costs"),
    (dict(costs=[1.0, np.nan, 1.0]), ValueError, "costs"),
    (dict(costs=[1.0, 1e308, 1.0]), ValueError, "costs"),
    (dict(spectra=SPEC3), ValueError, "only used by method='greedy'"),
    (dict(method="greedy"), ValueError, "spectra"),
    (dict(method="greedy", spectra=SPEC3[:2]), ValueError, "spectra"),
    (dict(method="greedy", spectra=[np.ones(8), np.ones(7), np.ones(8)]), ValueError, r"spectra`\[1\]"),
    (dict(method="greedy", spectra=[np.ones(8), [1.0] * 7 + [np.nan], np.ones(8)]), ValueError, r"spectra\[1\]"),
    (dict(method="greedy", spectra=[np.ones(8), np.ones(8), -np.ones(8)]), ValueError, r"spectra`\[2\]"),
    (dict(method="greedy", spectra=[np.ones(8), np.ones(8), np.ones((2, 8))]), ValueError, r"spectra\[2\]"),
    (dict(method="greedy", spectra=[np.ones(8), np.ones(8), np.ones(8) * 1j]), TypeError, r"spectra\[2\]"),
    (dict(method="greedy", spectra=3.0), TypeError, "spectra"),
    (dict(scores=FakeCudaTensor()), ValueError, "scores.*cuda"),
    (dict(sizes=FakeCudaTensor()), ValueError, "sizes.*cuda"),
    (dict(costs=FakeCudaTensor()), ValueError, "costs.*cuda"),
    (dict(method="greedy", spectra=[np.ones(8), FakeCudaTensor(), np.ones(8)]), ValueError, r"spectra\[1\].*cuda"),
]


@pytest.mark.parametrize("override, exc, pattern", BAD_INPUTS)
def test_bad_inputs(override, exc, pattern):
    kwargs = {**GOOD, **override}
    with pytest.raises(exc, match=pattern):
        palu_c.allocate_ranks(kwargs.pop("scores"), kwargs.pop("sizes"), kwargs.pop("budget"), **kwargs)


def test_low_level_binding_validates_too():
    s, z = np.ones(3), np.full(3, 8, dtype=np.int64)
    with pytest.raises(TypeError, match="sizes"):
        _C.allocate_ranks(s, z.astype(np.float64), 12.0, "proportional", 1, 0, None, None)
    with pytest.raises(ValueError, match="method"):
        _C.allocate_ranks(s, z, 12.0, "fisher", 1, 0, None, None)
    with pytest.raises(TypeError, match="scores"):
        _C.allocate_ranks(s.astype(np.int64), z, 12.0, "proportional", 1, 0, None, None)
    with pytest.raises(ValueError, match="multiple_of"):
        _C.allocate_ranks(s, z, 12.0, "proportional", 0, 0, None, None)
    with pytest.raises(ValueError, match="spectra"):
        _C.allocate_ranks(s, z, 12.0, "greedy", 1, 0, None, None)
    with pytest.raises(TypeError, match="spectra"):
        _C.allocate_ranks(s, z, 12.0, "greedy", 1, 0, np.ones((3, 8)), None)
    with pytest.raises(ValueError, match="spectra"):
        _C.allocate_ranks(s, z, 12.0, "proportional", 1, 0, [np.ones(8)] * 3, None)
    np.testing.assert_array_equal(_C.allocate_ranks(s, z, 12.0, "proportional", 1, 0, None, None), [4, 4, 4])


# ------------------------------------------------------------------------------------------------------------------
# Memory: 10,000 calls, success and error paths
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
def test_no_memory_growth(rng):
    # N = 1024 for the proportional calls makes every C scratch array >= 8 KiB; greedy (one 1-D array per item
    # to convert) uses N = 127, its heap is 2 KiB.
    big = make_problem(rng, 1024, 1, True, "mn")
    scores, sizes, costs, budget = make_problem(rng, 127, 1, True, "mn")
    spectra = [rng.uniform(0, 1, int(s)) for s in sizes]
    bad_spectra = spectra[:-1] + [np.full(int(sizes[-1]), np.nan)]

    def calls(k):
        # plain try/except: pytest.raises itself keeps ~16 bytes per use (measured), which is not ours to count
        errors = 0
        for j in range(k):
            if j % 4 == 0:
                palu_c.allocate_ranks(big[0], big[1], big[3], costs=big[2], multiple_of=2)
            elif j % 4 == 1:
                palu_c.allocate_ranks(scores, sizes, budget, costs=costs, method="greedy", spectra=spectra)
            else:
                try:
                    if j % 4 == 2:
                        palu_c.allocate_ranks(scores, sizes, budget, method="greedy", spectra=bad_spectra)
                    else:
                        palu_c.allocate_ranks(scores, sizes, -1.0)
                except ValueError:
                    errors += 1
        assert errors == k // 2

    calls(400)  # warm up caches, allocator pools and lazily created objects
    tracemalloc.start()
    try:
        calls(200)
        traced0 = tracemalloc.get_traced_memory()[0]
        rss0 = rss_bytes()
        calls(10_000)
        traced1 = tracemalloc.get_traced_memory()[0]
        rss1 = rss_bytes()
    finally:
        tracemalloc.stop()
    # Slack: 64 KiB of Python-visible memory (a leak of >= 7 bytes per call would exceed it; one leaked object
    # or array is >= 56 bytes) and 4 MiB of RSS for allocator/page noise (leaking any one C scratch array per
    # call adds >= 2,500 x 2 KiB = 5 MiB, most of them >= 20 MiB).
    assert traced1 - traced0 < 64 * 1024, f"Python heap grew by {traced1 - traced0} bytes"
    if not under_asan():  # ASan's quarantine keeps freed memory resident (256 MiB by default): RSS says nothing
        assert rss1 - rss0 < 4 * 1024 * 1024, f"RSS grew by {rss1 - rss0} bytes"
