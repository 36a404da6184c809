"""Palu rank search (palu_c.kv.search_ranks) and model checks, against the rules stated in ALGORITHMS.md.

The statistics object is a stand-in with known Fisher scores and Grams, so every rule can be checked exactly:
budget = ratio x all K+V dims, multiples of rank_multiple, caps, proportionality, and the greedy objective.
"""

from __future__ import annotations

import numpy as np
import pytest

from palu_c.kv import resolve_group_size, search_ranks


class FakeStats:
    def __init__(self, rng, n_layers, hidden, out_rows, group_rows, skew=1.0):
        self.group_rows = group_rows
        self.scores = [(rng.uniform(0.1, 1.0, out_rows // group_rows) * skew ** i,
                        rng.uniform(0.1, 1.0, out_rows // group_rows)) for i in range(n_layers)]
        xs = [rng.standard_normal((4 * hidden, hidden)) * np.exp(rng.normal(0, 1, hidden)) for _ in range(n_layers)]
        self.gram = [x.T @ x for x in xs]

    def fisher_blocks(self, layer, group_rows):
        assert group_rows == self.group_rows
        return self.scores[layer]


def make(rng, n_layers=3, kv_heads=4, head_dim=16, hidden=96, group_size=2, skew=1.0):
    rows = kv_heads * head_dim
    weights = [(rng.standard_normal((rows, hidden)), rng.standard_normal((rows, hidden))) for _ in range(n_layers)]
    return FakeStats(rng, n_layers, hidden, rows, group_size * head_dim, skew), weights


@pytest.mark.parametrize("search", ["fisher", "fisher_uniform", "uniform", "greedy"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("group_size, rank_multiple", [(1, 16), (2, 16), (4, 8), (2, 32)])
def test_budget_multiples_and_caps(rng, search, ratio, group_size, rank_multiple):
    kv_heads, head_dim, n_layers = 4, 16, 3
    stats, weights = make(rng, n_layers, kv_heads, head_dim, group_size=group_size)
    if ratio * group_size * head_dim < rank_multiple:
        with pytest.raises(ValueError, match="less than one rank_multiple"):
            search_ranks(stats, weights, ratio=ratio, group_size=group_size, head_dim=head_dim, search=search,
                         rank_multiple=rank_multiple)
        return
    ranks = search_ranks(stats, weights, ratio=ratio, group_size=group_size, head_dim=head_dim, search=search,
                         rank_multiple=rank_multiple)
    size = group_size * head_dim
    flat = [r for k, v in ranks for r in k + v]
    assert len(ranks) == n_layers and all(len(k) == len(v) == kv_heads // group_size for k, v in ranks)
    assert all(r % rank_multiple == 0 and rank_multiple <= r <= size for r in flat)
    budget = ratio * n_layers * 2 * kv_heads * head_dim
    if search == "uniform":
        assert len(set(flat)) == 1
        assert abs(flat[0] - ratio * size) <= rank_multiple / 2 or flat[0] in (rank_multiple, size)
    else:
        unit = rank_multiple * (kv_heads // group_size if search == "fisher_uniform" else 1)
        assert sum(flat) <= budget + 1e-9
        # spends the budget to within one unit unless every item is capped
        assert budget - sum(flat) < unit or all(r == size for r in flat)


def test_fisher_follows_importance(rng):
    stats, weights = make(rng, n_layers=4, group_size=1, skew=3.0)  # later layers' K far more important
    ranks = search_ranks(stats, weights, ratio=0.4, group_size=1, head_dim=16, search="fisher", rank_multiple=1)
    k_means = [np.mean(k) for k, _ in ranks]
    assert k_means[-1] > k_means[0]


def test_greedy_beats_proportional_on_weighted_energy(rng):
    stats, weights = make(rng, n_layers=2, group_size=2, head_dim=16)

    def objective(ranks):
        total = 0.0
        for i, (k, v) in enumerate(ranks):
            for w, rs, scores in ((weights[i][0], k, stats.scores[i][0]), (weights[i][1], v, stats.scores[i][1])):
                chol = np.linalg.cholesky(stats.gram[i])
                for g, r in enumerate(rs):
                    s = np.linalg.svd(w[g * 32:(g + 1) * 32] @ chol, compute_uv=False)
                    total += scores[g] * np.sum(s[:r] ** 2)
        return total

    kw = dict(ratio=0.5, group_size=2, head_dim=16, rank_multiple=4)
    assert objective(search_ranks(stats, weights, search="greedy", **kw)) >= \
        objective(search_ranks(stats, weights, search="fisher", **kw)) * (1 - 1e-12)


def test_bad_search_and_group_sizes(rng):
    stats, weights = make(rng)
    with pytest.raises(ValueError, match="search"):
        search_ranks(stats, weights, ratio=0.5, group_size=2, head_dim=16, search="svd", rank_multiple=16)
    with pytest.raises(ValueError, match="rank_multiple"):
        search_ranks(stats, weights, ratio=0.5, group_size=1, head_dim=16, search="fisher", rank_multiple=32)
    # group_size=None on the CPU: the largest divisor <= 4 (palu_c.group_choice); explicit sizes pass through
    assert [resolve_group_size(n, None)[0] for n in (3, 8, 32, 5)] == [3, 4, 4, 1]
    assert resolve_group_size(4, 2) == (2, "given")
    with pytest.raises(ValueError, match=r"does not divide the 3 KV heads; use one of \[1, 3\]"):
        resolve_group_size(3, 2)
    with pytest.raises(TypeError):
        resolve_group_size(4, 2.0)
