"""Tests of palu_c.hadamard / palu_c.hadamard_matrix (csrc/hadamard.c, csrc/py_hadamard.c, palu_c/hadamard.py)
and of the DLPack capsule intake (csrc/py_dlpack.c) as far as it runs without a GPU.

The file opens with an independent NumPy float64 reference: the Sylvester matrix by repeated np.kron, the
Paley-I matrix from quadratic residues, the Householder block, the block choice, and H as their Kronecker
product. No torch here: this file runs under AddressSanitizer (tests/gpu covers the CUDA path).

Tolerances (stated, not tuned):
* transform vs reference, elementwise: atol = 2 * n * eps(float64) * (|x| @ |H|.T), the forward-error
  bound gamma_n of an n-term dot product, once for the reference product and once for the code (whose
  butterfly has fewer terms); plus rtol = eps(dtype) for float32, whose result is the float64 result rounded
  once (<= eps/2 relative) while the reference keeps float64.
* round trips / norms, per row: (2 * eps(dtype) + 4 * n * eps(float64)) * ||x_row||_2: one rounding to dtype
  per pass, which an orthonormal map keeps at <= eps/2 * ||x||_2 in the 2-norm, plus the float64 work.
"""

from __future__ import annotations

import gc
import math
import sys

import numpy as np
import pytest

import palu_c
from memory_growth import assert_no_growth

EPS64 = np.finfo(np.float64).eps
SIZES = [1, 2, 4, 8, 16, 48, 64, 80, 96, 112, 128, 160, 176, 192, 4096, 12, 20, 24, 7, 3]
DTYPES = [np.float32, np.float64]


# ---- independent reference ------------------------------------------------------------------------------


def ref_is_prime(v: int) -> bool:
    return v >= 2 and all(v % d for d in range(2, math.isqrt(v) + 1))


def ref_block(n: int) -> tuple[str, int]:
    """(kind, p) of the inner block for length n, following the construction stated in the brief/docs."""
    a = 0
    while n % 2 ** (a + 1) == 0:
        a += 1
    m = n // 2**a
    if m == 1:
        return "sylvester", 1
    for b in range(a + 1):
        p = m * 2**b
        if (p - 1) % 4 == 3 and ref_is_prime(p - 1):
            return "paley", p
    return "householder", m


def ref_sylvester(k: int) -> np.ndarray:
    """Unscaled Sylvester matrix of order k (a power of two)."""
    h = np.ones((1, 1))
    while h.shape[0] < k:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h


def ref_paley(p: int) -> np.ndarray:
    """Orthonormal Paley-I block of order p = q + 1: (I + C) / sqrt(p), C from quadratic residues mod q."""
    q = p - 1
    squares = {(v * v) % q for v in range(1, q)}

    def chi(d: int) -> float:
        d %= q
        return 0.0 if d == 0 else (1.0 if d in squares else -1.0)

    c = np.zeros((p, p))
    c[0, 1:] = 1.0
    c[1:, 0] = -1.0
    for i in range(q):
        for j in range(q):
            c[1 + i, 1 + j] = chi(j - i)
    return (np.eye(p) + c) / math.sqrt(p)


def ref_matrix(n: int) -> np.ndarray:
    """H with hadamard(x) == x @ H.T: kron(S_K / sqrt(K), P), channel i = i_outer * p + i_inner."""
    kind, p = ref_block(n)
    k = n // p
    if kind == "sylvester":
        block = np.ones((1, 1))
    elif kind == "paley":
        block = ref_paley(p)
    else:
        block = np.eye(p) - (2.0 / p) * np.ones((p, p))
    return np.kron(ref_sylvester(k) / math.sqrt(k), block)


_REF_CACHE: dict[int, np.ndarray] = {}


def href(n: int) -> np.ndarray:
    if n not in _REF_CACHE:
        _REF_CACHE[n] = ref_matrix(n)
    return _REF_CACHE[n]


def assert_transform_close(y: np.ndarray, x: np.ndarray, h: np.ndarray, dtype) -> None:
    """y (..., n) against x @ h.T with the module docstring's elementwise tolerance."""
    n = h.shape[0]
    x64 = x.astype(np.float64)
    ref = x64 @ h.T
    atol = 2 * n * EPS64 * (np.abs(x64) @ np.abs(h).T)
    rtol = np.finfo(dtype).eps if np.dtype(dtype) == np.float32 else 0.0
    err = np.abs(y.astype(np.float64) - ref)
    bad = err > atol + rtol * np.abs(ref)
    assert not bad.any(), f"{bad.sum()} entries off; worst error {err.max():.3e}"


def row_tol(x: np.ndarray, dtype) -> np.ndarray:
    n = x.shape[-1]
    norms = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    return (2 * np.finfo(dtype).eps + 4 * n * EPS64) * norms


# ---- the reference itself --------------------------------------------------------------------------------


def test_reference_block_choice():
    # From the construction: 12*2^j -> Paley 12 (q = 11), 20*2^j -> Paley 20 (q = 19), 176 = 4*44 -> 44
    # (q = 43); 112 = 16*7: 7, 14, 28, 56, 112 give q = 6, 13, 27, 55, 111, none prime = 3 mod 4.
    assert [ref_block(n)[1] for n in (12, 24, 48, 96, 192)] == [12] * 5
    assert [ref_block(n)[1] for n in (20, 80, 160)] == [20] * 3
    assert ref_block(176) == ("paley", 44)
    assert ref_block(112) == ("householder", 7)
    assert ref_block(3) == ("householder", 3) and ref_block(6) == ("householder", 3)
    assert ref_block(7) == ("householder", 7)
    assert ref_block(64) == ("sylvester", 1)


@pytest.mark.parametrize("p", [12, 20, 44])
def test_reference_paley_is_hadamard(p):
    unscaled = ref_paley(p) * math.sqrt(p)
    assert set(np.unique(np.round(unscaled)).tolist()) == {-1.0, 1.0}
    np.testing.assert_allclose(unscaled @ unscaled.T, p * np.eye(p), atol=0)


# ---- matrix --------------------------------------------------------------------------------------------


_MAT_CACHE: dict[int, np.ndarray] = {}


def hmat(n: int) -> np.ndarray:
    """palu_c.hadamard_matrix(n), computed once per session (n = 4096 is 128 MB)."""
    if n not in _MAT_CACHE:
        _MAT_CACHE[n] = palu_c.hadamard_matrix(n)
    return _MAT_CACHE[n]


def row_sample(n: int, rng) -> np.ndarray:
    """All rows for n <= 512, else 64 random rows (keeps the n = 4096 products at O(64 n^2))."""
    return np.arange(n) if n <= 512 else np.sort(rng.choice(n, 64, replace=False))


@pytest.mark.parametrize("n", SIZES)
def test_matrix_matches_reference(n):
    h = hmat(n)
    assert h.shape == (n, n) and h.dtype == np.float64 and h.flags.c_contiguous
    # Every entry is a product of one S and one P entry: a few roundings each.
    assert np.abs(h - href(n)).max() <= 8 * EPS64


@pytest.mark.parametrize("n", SIZES)
def test_matrix_orthonormal_and_dense(rng, n):
    h = hmat(n)
    rows = row_sample(n, rng)
    # gamma_n bound of the n-term products of unit rows: H H^T = I (on a row sample for n = 4096)
    assert np.abs(h[rows] @ h.T - np.eye(n)[rows]).max() <= 2 * n * EPS64
    # every output depends on every input: no zero entry (smallest possible is min|P| / sqrt(K) > 0)
    assert np.abs(h).min() >= 0.5 * np.abs(href(n)).min() > 0


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64, 128, 4096, 3, 7, 112])
def test_matrix_symmetric_self_inverse(rng, n):
    # powers of two (Sylvester) and Householder lengths
    h = hmat(n)
    assert np.abs(h - h.T).max() <= 8 * EPS64
    rows = row_sample(n, rng)
    assert np.abs(h[rows] @ h - np.eye(n)[rows]).max() <= 2 * n * EPS64


@pytest.mark.parametrize("n", [12, 20, 24, 48, 176])
def test_matrix_paley_not_symmetric(n):
    h = hmat(n)
    assert np.abs(h - h.T).max() > 0.5 / math.sqrt(n)  # documented: the inverse is H.T, not H


def test_matrix_float32():
    h32 = palu_c.hadamard_matrix(20, dtype=np.float32)
    assert h32.dtype == np.float32
    np.testing.assert_allclose(h32, href(20), rtol=np.finfo(np.float32).eps, atol=0)
    assert palu_c.hadamard_matrix(np.int64(4), "float32").dtype == np.float32


def test_n1_is_identity(rng):
    x = rng.standard_normal((5, 1))
    np.testing.assert_array_equal(palu_c.hadamard(x), x)
    np.testing.assert_array_equal(palu_c.hadamard_matrix(1), [[1.0]])


# ---- transform -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_transform_matches_reference(rng, n, dtype):
    x = rng.standard_normal((7, n)).astype(dtype)
    x_before = x.copy()
    y = palu_c.hadamard(x)
    assert y.dtype == dtype and y.shape == x.shape and y.flags.c_contiguous
    assert not np.shares_memory(x, y)
    np.testing.assert_array_equal(x, x_before)  # input untouched
    assert_transform_close(y, x, href(n), dtype)
    assert_transform_close(palu_c.hadamard(x, inverse=True), x, href(n).T, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_inverse_undoes(rng, n, dtype):
    x = rng.standard_normal((19, n)).astype(dtype)
    back = palu_c.hadamard(palu_c.hadamard(x), inverse=True)
    assert np.all(np.abs(back.astype(np.float64) - x) <= row_tol(x, dtype))
    there = palu_c.hadamard(palu_c.hadamard(x, inverse=True))
    assert np.all(np.abs(there.astype(np.float64) - x) <= row_tol(x, dtype))


@pytest.mark.parametrize("n", [1, 2, 16, 128, 4096, 3, 7, 112])
def test_symmetric_lengths_self_inverse(rng, n):
    x = rng.standard_normal((4, n))
    twice = palu_c.hadamard(palu_c.hadamard(x))
    assert np.all(np.abs(twice - x) <= row_tol(x, np.float64))
    np.testing.assert_allclose(palu_c.hadamard(x, inverse=True), palu_c.hadamard(x), rtol=0,
                               atol=4 * n * EPS64 * np.abs(x).max())


@pytest.mark.parametrize("n", [12, 48, 176])
def test_paley_lengths_are_not_self_inverse(rng, n):
    x = rng.standard_normal((3, n))
    assert np.abs(palu_c.hadamard(palu_c.hadamard(x)) - x).max() > 0.1


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_preserved(rng, dtype):
    for n in (4096, 4097, 4099, 127, 19):
        x = rng.standard_normal((3, n)).astype(dtype)
        y = palu_c.hadamard(x)
        nx = np.linalg.norm(x.astype(np.float64), axis=1)
        ny = np.linalg.norm(y.astype(np.float64), axis=1)
        np.testing.assert_allclose(ny, nx, rtol=2 * np.finfo(dtype).eps + 4 * n * EPS64)


@pytest.mark.parametrize("n", [12, 20, 7, 112, 64, 3])
def test_every_output_depends_on_every_input(n):
    # row j of hadamard(I) is the response to input j alone: no output may be zero
    resp = palu_c.hadamard(np.eye(n))
    assert np.abs(resp).min() >= 0.5 * np.abs(href(n)).min() > 0
    resp_inv = palu_c.hadamard(np.eye(n), inverse=True)
    assert np.abs(resp_inv).min() > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_every_axis_of_3d(rng, axis, dtype):
    x = rng.standard_normal((5, 12, 7)).astype(dtype)
    y = palu_c.hadamard(x, axis=axis)
    assert y.shape == x.shape and y.dtype == dtype and y.flags.c_contiguous
    n = x.shape[axis]
    moved = np.moveaxis(x, axis, -1)
    assert_transform_close(np.moveaxis(y, axis, -1), moved, href(n), dtype)
    back = palu_c.hadamard(y, axis=axis, inverse=True)
    assert np.all(np.abs(np.moveaxis(back, axis, -1).astype(np.float64) - moved) <= row_tol(moved, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous_inputs(rng, dtype):
    base = rng.standard_normal((14, 3 * 20)).astype(dtype)
    views = [
        base[::2, ::3],  # strided both ways, n = 20
        base[:, 1::3][:, ::-1],  # negative stride
        np.asfortranarray(base[:, :48]),  # column-major
        base[3:4, :12],  # one row slice
    ]
    for v in views:
        y = palu_c.hadamard(v)
        assert_transform_close(y, np.ascontiguousarray(v), href(v.shape[-1]), dtype)
    y0 = palu_c.hadamard(base[::2, ::3], axis=0)  # non-last axis of a strided view (n = 7)
    assert_transform_close(np.moveaxis(y0, 0, -1), np.moveaxis(base[::2, ::3], 0, -1), href(7), dtype)


def test_1d_list_and_scalar_int_axis(rng):
    x = rng.standard_normal(12)
    assert_transform_close(palu_c.hadamard(x.tolist(), axis=np.int64(0)), x, href(12), np.float64)


class _CpuProducer:
    """A torch-free CPU DLPack producer (not an ndarray)."""

    def __init__(self, arr: np.ndarray):
        self._arr = arr

    def __dlpack__(self, **kwargs):
        return self._arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._arr.__dlpack_device__()


def test_cpu_dlpack_producer(rng):
    x = rng.standard_normal((3, 20)).astype(np.float32)
    y = palu_c.hadamard(_CpuProducer(x))
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert_transform_close(y, x, href(20), np.float32)


# ---- bad input -----------------------------------------------------------------------------------------


class _FakeDevice:
    def __init__(self, kind: int):
        self._kind = kind

    def __dlpack_device__(self):
        return (self._kind, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("device data must never be read on the CPU path")


@pytest.mark.parametrize(
    "x, kwargs, exc, match",
    [
        (np.zeros((3, 0)), {}, ValueError, "empty"),
        (np.zeros((0, 4)), {}, ValueError, "empty"),
        (np.zeros(0), {}, ValueError, "empty"),
        (np.array(1.0), {}, ValueError, "dimensions"),
        (np.array([[1.0, np.nan]]), {}, ValueError, "NaN"),
        (np.array([[1.0, np.inf]]), {}, ValueError, "NaN/Inf"),
        (np.ones((2, 4), dtype=np.int64), {}, TypeError, "float32 or float64"),
        (np.ones((2, 4), dtype=np.float16), {}, TypeError, "float32 or float64"),
        (np.ones((2, 4), dtype=np.complex128), {}, TypeError, "float32 or float64"),
        (np.ones((2, 4), dtype=bool), {}, TypeError, "float32 or float64"),
        (None, {}, TypeError, "None"),
        ("abc", {}, TypeError, "float32 or float64"),
        (np.ones((2, 4)), {"axis": 2}, ValueError, "axis"),
        (np.ones((2, 4)), {"axis": -3}, ValueError, "axis"),
        (np.ones((2, 4)), {"axis": 1.0}, TypeError, "axis"),
        (np.ones((2, 4)), {"axis": True}, TypeError, "axis"),
        (np.ones((2, 4)), {"axis": None}, TypeError, "axis"),
        (np.ones((2, 4)), {"inverse": 1}, TypeError, "inverse"),
        (_FakeDevice(2), {}, TypeError, "torch"),  # a CUDA object that is not a torch tensor
        (_FakeDevice(10), {}, ValueError, "rocm"),
        (_FakeDevice(13), {}, ValueError, "cuda_managed"),
    ],
)
def test_bad_inputs(x, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        palu_c.hadamard(x, **kwargs)
    assert "hadamard" in str(info.value)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((0,), ValueError, "n"),
        ((-3,), ValueError, "n"),
        ((2.0,), TypeError, "n"),
        ((True,), TypeError, "n"),
        (("4",), TypeError, "n"),
        ((4, np.int32), TypeError, "dtype"),
        ((4, np.float16), TypeError, "dtype"),
        ((4, "no-such-dtype"), TypeError, "dtype"),
    ],
)
def test_bad_matrix_args(args, exc, match):
    with pytest.raises(exc, match=match):
        palu_c.hadamard_matrix(*args)


def test_c_entry_points_validate_too():
    with pytest.raises(ValueError, match="n"):
        palu_c._C.hadamard_matrix(0)
    with pytest.raises(TypeError, match="dtype"):
        palu_c._C.hadamard_matrix(4, np.dtype(np.int8))
    with pytest.raises(ValueError, match="axis"):
        palu_c._C.hadamard(np.ones(4), 1)


# ---- DLPack intake without a GPU (csrc/py_dlpack.c) -------------------------------------------------------


def _cuda_compiled() -> bool:
    return bool(palu_c.build_info()["cuda_compiled"])


def test_hadamard_cuda_without_cuda_build_says_so():
    if _cuda_compiled():
        pytest.skip("this build has CUDA; tests/gpu covers hadamard_cuda")
    a = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(RuntimeError, match="built without CUDA"):
        palu_c._C.hadamard_cuda(a.__dlpack__(), a.__dlpack__(), 0)


@pytest.mark.parametrize("versioned", [False, True])
def test_dlpack_intake_refuses_cpu_and_releases(versioned):
    if not _cuda_compiled():
        pytest.skip("hadamard_cuda's DLPack intake exists only in CUDA builds")
    a = np.ones((2, 4), dtype=np.float32)
    b = np.empty_like(a)
    kw = {"max_version": (1, 0)} if versioned else {}
    before = (sys.getrefcount(a), sys.getrefcount(b))
    cap_a, cap_b = a.__dlpack__(**kw), b.__dlpack__(**kw)
    assert sys.getrefcount(a) == before[0] + 1  # the export holds a reference until its deleter runs
    with pytest.raises(ValueError, match="is on cpu"):
        palu_c._C.hadamard_cuda(cap_a, cap_b, 0)
    # both capsules were taken (renamed "used_...") and both deleters called on the error path
    with pytest.raises(ValueError, match="already consumed"):
        palu_c._C.hadamard_cuda(cap_a, cap_b, 0)
    del cap_a, cap_b
    gc.collect()
    assert (sys.getrefcount(a), sys.getrefcount(b)) == before
    with pytest.raises(TypeError, match="DLPack capsule"):
        palu_c._C.hadamard_cuda(a, b, 0)
    with pytest.raises(TypeError, match="stream"):
        palu_c._C.hadamard_cuda(a.__dlpack__(), b.__dlpack__(), "0")


# ---- memory --------------------------------------------------------------------------------------------


def test_no_memory_growth_over_10000_calls(rng):
    x = rng.standard_normal((4, 1024))  # 32 KB per output: a leak of one array per call is 320 MB
    x3 = rng.standard_normal((3, 12, 5)).astype(np.float32)
    bad = x.copy()
    bad[1, 2] = np.nan

    def once(i: int) -> None:
        palu_c.hadamard(x)
        palu_c.hadamard(x3, axis=1, inverse=True)
        if i % 10 == 0:
            palu_c.hadamard_matrix(20)
            with pytest.raises(ValueError):
                palu_c.hadamard(bad)
            with pytest.raises(ValueError):
                palu_c.hadamard(x, axis=5)

    calls = iter(range(10**9))
    assert_no_growth(lambda: once(next(calls)), rss_slack=32 * 1024 * 1024)
