"""palu_c.svd (csrc/svd.c) against NumPy float64 references.

Tolerances: singular values agree with float64 LAPACK to atol = 30 * eps(dtype) * max(m, n) * S[0]
(backward-stable SVD error grows like eps * ||A|| * a modest factor of the size); orthonormality to
30 * eps(dtype) * max(m, n).
"""

from __future__ import annotations

import numpy as np
import pytest

import palu_c
from memory_growth import assert_no_growth


def ref_svd(a):
    """Independent reference: NumPy's float64 LAPACK SVD."""
    return np.linalg.svd(np.asarray(a, dtype=np.float64), full_matrices=False)


def decaying_matrix(rng, m, n, power, dtype):
    """A random matrix whose singular values fall like 1 / (1 + i) ** power (as LLM weights' do)."""
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = 1.0 / (1.0 + np.arange(k)) ** power
    return ((u * s) @ v.T).astype(dtype), s


def tol(dtype, m, n):
    return 30 * np.finfo(dtype).eps * max(m, n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (7, 19), (19, 7), (127, 64), (33, 4097)])
def test_exact_matches_reference(rng, dtype, shape):
    m, n = shape
    a = rng.standard_normal(shape).astype(dtype)
    u, s, vt = palu_c.svd(a, method="exact")
    k = min(m, n)
    assert u.shape == (m, k) and s.shape == (k,) and vt.shape == (k, n)
    assert u.dtype == dtype and s.dtype == dtype and vt.dtype == dtype
    _, s_ref, _ = ref_svd(a)
    t = tol(dtype, m, n)
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=t * s_ref[0])
    assert np.all(np.diff(s.astype(np.float64)) <= t * s_ref[0])
    np.testing.assert_allclose(u.T.astype(np.float64) @ u, np.eye(k), atol=t)
    np.testing.assert_allclose(vt.astype(np.float64) @ vt.T, np.eye(k), atol=t)
    np.testing.assert_allclose((u.astype(np.float64) * s) @ vt, a, atol=t * s_ref[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank", [1, 5, 17])
def test_truncation_error_is_the_tail(rng, dtype, rank):
    """Eckart-Young: the rank-k error in Frobenius norm equals the norm of the discarded singular values."""
    a = rng.standard_normal((60, 45)).astype(dtype)
    u, s, vt = palu_c.svd(a, rank, method="exact")
    _, s_ref, _ = ref_svd(a)
    err = np.linalg.norm(a.astype(np.float64) - (u.astype(np.float64) * s) @ vt)
    optimum = np.sqrt(np.sum(s_ref[rank:] ** 2))
    assert abs(err - optimum) <= tol(dtype, 60, 45) * s_ref[0] * 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("power", [0.5, 1.0])
def test_randomized_within_one_percent_of_optimal(rng, dtype, power):
    m, n, rank = 400, 300, 30
    a, s_true = decaying_matrix(rng, m, n, power, dtype)
    u, s, vt = palu_c.svd(a, rank, method="randomized", seed=int(rng.integers(2**63)))
    err = np.linalg.norm(a.astype(np.float64) - (u.astype(np.float64) * s) @ vt)
    optimum = np.sqrt(np.sum(s_true[rank:] ** 2))
    assert err <= 1.01 * optimum
    t = tol(dtype, m, n)
    np.testing.assert_allclose(u.T.astype(np.float64) @ u, np.eye(rank), atol=t)
    np.testing.assert_allclose(vt.astype(np.float64) @ vt.T, np.eye(rank), atol=t)
    # leading singular values are captured accurately on a decaying spectrum
    np.testing.assert_allclose(s[:5], s_true[:5], rtol=1e-2)


def canonical_signs(u, vt):
    """The sign convention of csrc/svd.h, applied to a reference: each column of U has its largest-magnitude entry
    positive."""
    flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    return u * flip, vt * flip[:, None]


@pytest.mark.parametrize("method", ["exact", "randomized"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signs_are_canonical(rng, method, dtype):
    """The signs follow a fixed rule, not LAPACK's rounding: the vectors equal NumPy's after the same rule, and
    negating A flips Vt only."""
    m, n, rank = 90, 70, 8
    a, _ = decaying_matrix(rng, m, n, 1.0, dtype)  # well separated singular values: vectors are well defined
    u, s, vt = palu_c.svd(a, rank, method=method, seed=int(rng.integers(2**63)))
    u_ref, _, vt_ref = ref_svd(a)
    u_ref, vt_ref = canonical_signs(u_ref[:, :rank], vt_ref[:rank])
    # randomized vectors are accurate to ~2e-3 here; a wrong sign would miss by twice the largest entry, >= 0.2
    atol = 2e-2 if method == "randomized" else 1e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(u, u_ref, rtol=0, atol=atol)
    np.testing.assert_allclose(vt, vt_ref, rtol=0, atol=atol)
    u_neg, _, vt_neg = palu_c.svd(-a, rank, method=method, seed=int(rng.integers(2**63)))
    np.testing.assert_allclose(u_neg, u, rtol=0, atol=atol)
    np.testing.assert_allclose(vt_neg, -vt, rtol=0, atol=atol)


def test_randomized_is_deterministic_per_seed(rng):
    a = rng.standard_normal((120, 90))
    r1 = palu_c.svd(a, 10, method="randomized", seed=7)
    r2 = palu_c.svd(a, 10, method="randomized", seed=7)
    r3 = palu_c.svd(a, 10, method="randomized", seed=8)
    for x, y in zip(r1, r2):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(r1[0], r3[0])


def test_auto_picks_randomized_for_small_ranks(rng):
    a = rng.standard_normal((80, 64))
    small = 64 // 4
    for x, y in zip(palu_c.svd(a, small, seed=3), palu_c.svd(a, small, method="randomized", seed=3)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(palu_c.svd(a, small + 1), palu_c.svd(a, small + 1, method="exact")):
        np.testing.assert_array_equal(x, y)


def test_default_rank_is_thin_svd(rng):
    u, s, vt = palu_c.svd(rng.standard_normal((9, 5)))
    assert u.shape == (9, 5) and s.shape == (5,) and vt.shape == (5, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_inputs(rng, dtype):
    base = rng.standard_normal((50, 80)).astype(dtype)
    for a in (base.T, base[::2, ::3], np.asfortranarray(base)):
        _, s, _ = palu_c.svd(a, method="exact")
        np.testing.assert_allclose(s, ref_svd(a)[1], atol=tol(dtype, *a.shape) * ref_svd(a)[1][0])


def test_rank_deficient_matrix(rng):
    a = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 20))
    _, s, _ = palu_c.svd(a, method="exact")
    assert np.all(s[4:] <= 1e-12 * s[0])


class FakeCudaTensor:
    """Stands for a tensor on a GPU: a DLPack producer whose device is CUDA."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        raise AssertionError("a CPU function must not try to read device memory")


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((np.ones((4, 4), np.int64),), {}, TypeError, "float32 or float64"),
        ((np.ones((4, 4), np.complex128),), {}, TypeError, "float32 or float64"),
        ((np.ones((4, 4), np.float16),), {}, TypeError, "float32 or float64"),
        ((np.ones(4),), {}, ValueError, "2-dimensional"),
        ((np.ones((2, 2, 2)),), {}, ValueError, "2-dimensional"),
        ((np.ones((0, 4)),), {}, ValueError, "empty|rank"),
        ((np.array([[1.0, np.nan], [0, 1]]),), {}, ValueError, "NaN/Inf"),
        ((np.array([[1.0, np.inf], [0, 1]]),), {}, ValueError, "NaN/Inf"),
        ((np.ones((4, 3)), 0), {}, ValueError, "rank"),
        ((np.ones((4, 3)), 4), {}, ValueError, "rank"),
        ((np.ones((4, 3)), 2.5), {}, TypeError, "rank"),
        ((np.ones((4, 3)), True), {}, TypeError, "rank"),
        ((np.ones((4, 3)), 1), {"method": "qr"}, ValueError, "method"),
        ((np.ones((4, 3)), 1), {"oversample": -1}, ValueError, "oversample"),
        ((np.ones((4, 3)), 1), {"seed": -1}, ValueError, "seed"),
        ((FakeCudaTensor(),), {}, ValueError, "cuda:0"),
        (("not an array",), {}, (TypeError, ValueError), "a"),
        ((None,), {}, (TypeError, ValueError), "None|2-dimensional"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        palu_c.svd(*args, **kwargs)


def test_no_memory_growth(rng):
    a = rng.standard_normal((12, 9)).astype(np.float32)
    assert_no_growth(lambda: palu_c.svd(a, 3, method="randomized"))
    assert_no_growth(lambda: palu_c.svd(a, method="exact"), calls=2000)

    def failing():
        with pytest.raises(ValueError):
            palu_c.svd(a, 99)

    assert_no_growth(failing, calls=2000)
