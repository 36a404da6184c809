"""palu_c.lowrank_factor / lowrank_factor_grouped (csrc/lowrank.c) against closed-form float64 optima.

The activation-aware objective ||X W^T - X down^T up^T||_F over rank-r products has the closed-form
optimum sqrt(sum of the squared discarded singular values of X W^T) (Eckart-Young applied to X W^T, since
X down^T up^T ranges over all rank-r matrices in the row space of X when X has full column rank).
Tolerances: relative 1e-9 in float64 and 2e-4 in float32 (the factors are computed in float64 and rounded
to float32 once; the objective's relative error is then ~ sqrt(in) * eps32 * cond).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import palu_c
from memory_growth import assert_no_growth

RTOL = {np.float32: 2e-4, np.float64: 1e-9}


def ref_tail(mat, rank):
    s = np.linalg.svd(np.asarray(mat, np.float64), compute_uv=False)
    return np.sqrt(np.sum(s[rank:] ** 2))


def anisotropic_inputs(rng, tokens, dim):
    """Calibration-like activations: channels of very different scales plus a few outlier channels."""
    scales = np.exp(rng.normal(0, 1.0, dim))
    scales[rng.choice(dim, size=max(1, dim // 16), replace=False)] *= 20
    return rng.standard_normal((tokens, dim)) * scales


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, rank", [((1, 1), 1), ((7, 19), 3), ((19, 7), 7), ((64, 127), 16), ((192, 64), 48)])
def test_plain_factor_is_optimal_and_balanced(rng, dtype, shape, rank):
    w = rng.standard_normal(shape).astype(dtype)
    down, up = palu_c.lowrank_factor(w, rank)
    assert down.shape == (rank, shape[1]) and up.shape == (shape[0], rank)
    assert down.dtype == dtype and up.dtype == dtype
    w64 = w.astype(np.float64)
    err = np.linalg.norm(w64 - up.astype(np.float64) @ down)
    assert err <= ref_tail(w64, rank) * (1 + RTOL[dtype]) + RTOL[dtype] * np.linalg.norm(w64) * 1e-2
    # sqrt(Sigma) split evenly: up^T up == down down^T == diag(S_r)
    s = np.linalg.svd(w64, compute_uv=False)[:rank]
    atol = RTOL[dtype] * s[0] * 10
    np.testing.assert_allclose(up.T.astype(np.float64) @ up, np.diag(s), atol=atol)
    np.testing.assert_allclose(down.astype(np.float64) @ down.T, np.diag(s), atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("out, inp, rank", [(48, 40, 8), (19, 33, 5), (128, 96, 32)])
def test_whitened_factor_reaches_closed_form_optimum(rng, dtype, out, inp, rank):
    x = anisotropic_inputs(rng, 4 * inp, inp)
    w = rng.standard_normal((out, inp)).astype(dtype)
    gram = x.T @ x
    down, up, info = palu_c.lowrank_factor(w, rank, gram=gram, return_info=True)
    assert info["shift"] == 0.0
    w64 = w.astype(np.float64)
    objective = np.linalg.norm(x @ w64.T - x @ down.T.astype(np.float64) @ up.T.astype(np.float64))
    optimum = ref_tail(x @ w64.T, rank)
    assert objective == pytest.approx(optimum, rel=RTOL[dtype])
    # and it beats the plain SVD on the activation-aware objective
    d0, u0 = palu_c.lowrank_factor(w, rank)
    plain = np.linalg.norm(x @ w64.T - x @ d0.T.astype(np.float64) @ u0.T.astype(np.float64))
    assert objective < plain


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_in_float32_is_accepted(rng, dtype):
    x = anisotropic_inputs(rng, 200, 24)
    w = rng.standard_normal((16, 24)).astype(dtype)
    gram32 = (x.T @ x).astype(np.float32)
    down, up = palu_c.lowrank_factor(w, 4, gram=gram32)
    objective = np.linalg.norm(x @ w.T.astype(np.float64) - x @ down.T.astype(np.float64) @ up.T)
    assert objective == pytest.approx(ref_tail(x @ w.T.astype(np.float64), 4), rel=1e-3)


def test_singular_gram_gets_a_reported_shift(rng):
    # fewer calibration tokens than input channels: X^T X is singular
    x = rng.standard_normal((10, 32))
    w = rng.standard_normal((24, 32))
    with pytest.warns(palu_c.WhiteningWarning, match="not positive definite"):
        down, up, info = palu_c.lowrank_factor(w, 6, gram=x.T @ x, return_info=True)
    assert info["shift"] > 0
    assert np.all(np.isfinite(down)) and np.all(np.isfinite(up))
    # still (nearly) optimal on the calibration inputs: the shift is tiny relative to the Gram
    objective = np.linalg.norm(x @ w.T - x @ down.T @ up.T)
    assert objective <= ref_tail(x @ w.T, 6) * 1.01 + 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_gram", [False, True])
def test_grouped_equals_per_group(rng, dtype, use_gram):
    groups, group_rows, inp = 3, 24, 40
    w = rng.standard_normal((groups * group_rows, inp)).astype(dtype)
    ranks = [int(r) for r in rng.integers(1, group_rows + 1, size=groups)]
    x = anisotropic_inputs(rng, 300, inp)
    gram = x.T @ x if use_gram else None
    down, ups = palu_c.lowrank_factor_grouped(w, ranks, group_rows, gram=gram)
    assert down.shape == (sum(ranks), inp) and [u.shape for u in ups] == [(group_rows, r) for r in ranks]
    offsets = np.cumsum([0] + ranks)
    for g in range(groups):
        d_g, u_g = palu_c.lowrank_factor(w[g * group_rows:(g + 1) * group_rows], ranks[g], gram=gram)
        np.testing.assert_allclose(down[offsets[g]:offsets[g + 1]], d_g, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-10)
        np.testing.assert_allclose(ups[g], u_g, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-10)


def test_non_contiguous_weight_and_numpy_ranks(rng):
    base = rng.standard_normal((80, 60))
    w = base.T[:, ::2]  # (60, 40), non-contiguous
    down, ups = palu_c.lowrank_factor_grouped(w, np.array([4, 5, 6]), 20)
    for g in range(3):
        rows = w[20 * g:20 * (g + 1)]
        err = np.linalg.norm(rows - ups[g] @ down[[0, 4, 9][g]:[4, 9, 15][g]])
        assert err == pytest.approx(ref_tail(rows, [4, 5, 6][g]), rel=1e-9)


class FakeCudaTensor:
    def __dlpack_device__(self):
        return (2, 1)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda w: palu_c.lowrank_factor(w, 0), ValueError, "rank"),
        (lambda w: palu_c.lowrank_factor(w, 9), ValueError, "rank"),
        (lambda w: palu_c.lowrank_factor(w, 2.0), TypeError, "rank"),
        (lambda w: palu_c.lowrank_factor(w.astype(np.int32), 2), TypeError, "float32 or float64"),
        (lambda w: palu_c.lowrank_factor(w[0], 2), ValueError, "2-dimensional"),
        (lambda w: palu_c.lowrank_factor(w * np.nan, 2), ValueError, "NaN"),
        (lambda w: palu_c.lowrank_factor(np.ones((0, 8)), 1), ValueError, "empty|rank|2-dimensional"),
        (lambda w: palu_c.lowrank_factor(FakeCudaTensor(), 1), ValueError, "cuda:1"),
        (lambda w: palu_c.lowrank_factor(w, 2, gram=np.eye(7)), ValueError, r"\(in, in\)"),
        (lambda w: palu_c.lowrank_factor(w, 2, gram=np.triu(np.ones((8, 8)))), ValueError, "symmetric"),
        (lambda w: palu_c.lowrank_factor(w, 2, gram=-np.eye(8)), ValueError, "negative diagonal"),
        (lambda w: palu_c.lowrank_factor(w, 2, gram=np.zeros((8, 8))), ValueError, "all zeros"),
        (lambda w: palu_c.lowrank_factor(w, 2, gram=np.full((8, 8), np.inf)), ValueError, "NaN/Inf"),
        (lambda w: palu_c.lowrank_factor(w, 2, gram=FakeCudaTensor()), ValueError, "cuda"),
        (lambda w: palu_c.lowrank_factor_grouped(w, [2, 2], 5), ValueError, "group_rows"),
        (lambda w: palu_c.lowrank_factor_grouped(w, [2, 2, 2], 4), ValueError, "group_rows"),
        (lambda w: palu_c.lowrank_factor_grouped(w, [], 8), ValueError, "empty"),
        (lambda w: palu_c.lowrank_factor_grouped(w, [2, 5], 4), ValueError, "rank 5"),
        (lambda w: palu_c.lowrank_factor_grouped(w, [2, "a"], 4), TypeError, "ranks"),
        (lambda w: palu_c.lowrank_factor_grouped(w, [2, True], 4), TypeError, "ranks"),
        (lambda w: palu_c.lowrank_factor_grouped(w, np.array([2.0, 2.0]), 4), TypeError, "ranks"),
        (lambda w: palu_c.lowrank_factor_grouped(w, 3, 8), TypeError, "ranks"),
    ],
)
def test_bad_input(rng, call, exc, match):
    w = rng.standard_normal((8, 8))
    with pytest.raises(exc, match=match):
        call(w)


def test_gram_that_no_shift_rescues_is_a_linalg_error(rng):
    # Symmetric with a hugely negative eigenvalue but a non-negative diagonal: not a Gram matrix; the
    # bounded shift retry must give up with LinAlgError instead of looping or returning garbage.
    g = np.array([[1.0, 1e6], [1e6, 1.0]])
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        palu_c.lowrank_factor(rng.standard_normal((3, 2)), 1, gram=g)


def test_no_memory_growth(rng):
    w = rng.standard_normal((12, 10)).astype(np.float32)
    x = rng.standard_normal((40, 10))
    gram = x.T @ x
    assert_no_growth(lambda: palu_c.lowrank_factor_grouped(w, [2, 3], 6, gram=gram))

    def failing():
        with pytest.raises(ValueError):
            palu_c.lowrank_factor(w, 2, gram=-np.eye(10))

    assert_no_growth(failing, calls=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", palu_c.WhiteningWarning)
        singular = x[:3].T @ x[:3]
        assert_no_growth(lambda: palu_c.lowrank_factor(w, 2, gram=singular), calls=2000)
