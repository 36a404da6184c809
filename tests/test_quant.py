"""Tests of palu_c.quantize and QuantizedTensor (csrc/quant.c, csrc/py_quant.c, palu_c/quant.py).

The reference below is written from docs/quant_format.md alone, in NumPy float64: it computes scales, zero
points and codes, and `unpack_payload` decodes the packed payload bit by bit through np.unpackbits (no shared
code with the C packer). No torch here (this file runs under AddressSanitizer).
"""

from __future__ import annotations

import gc
import math
import sys
import tracemalloc

import numpy as np
import pytest

import palu_c
from memory_growth import rss_bytes, under_asan
from palu_c import QuantizedTensor, quantize

BITS = (2, 3, 4, 8)
DTYPES = (np.float32, np.float64)
EPS32 = float(np.finfo(np.float32).eps)

# (shape, group sizes to try); n = 4097 = 17 * 241, n = 96 has many divisors, 3-bit rows straddle words.
CASES = [
    ((1,), [None, 1]),
    ((7,), [None, 1, 7]),
    ((3, 19), [None, 1, 19]),
    ((2, 3, 127), [None, 1, 127]),
    ((5, 4097), [None, 17, 241]),
    ((4, 96), [None, 1, 2, 3, 8, 32, 96]),
    ((2, 2, 11), [None, 11]),
]


# ---- independent float64 reference -----------------------------------------------------------------

def ref_quantize(x, bits, group_size, symmetric, clip):
    """Return (codes (rows, n) int64, scales (rows, G) float32, zeros or None, dequantized float64 x.shape)."""
    x64 = np.asarray(x, dtype=np.float64)
    n = x64.shape[-1]
    rows = x64.size // n
    g = n if group_size is None else group_size
    xg = x64.reshape(rows, n // g, g)
    if symmetric:
        levels = 2 ** (bits - 1) - 1
        scales = (clip * np.abs(xg).max(axis=-1) / levels).astype(np.float32)
        zeros = None
        s = scales.astype(np.float64)[..., None]
        safe = np.where(s > 0, s, 1.0)
        q = np.where(s > 0, np.clip(np.rint(xg / safe), -levels, levels), 0.0)
        codes = q + levels
        deq = q * s
    else:
        top = 2 ** bits - 1
        lo = clip * xg.min(axis=-1)
        hi = clip * xg.max(axis=-1)
        scales = ((hi - lo) / top).astype(np.float32)
        zeros = lo.astype(np.float32)
        s = scales.astype(np.float64)[..., None]
        z = zeros.astype(np.float64)[..., None]
        safe = np.where(s > 0, s, 1.0)
        codes = np.where(s > 0, np.clip(np.rint((xg - z) / safe), 0, top), 0.0)
        deq = codes * s + z
    return codes.reshape(rows, n).astype(np.int64), scales, zeros, deq.reshape(x64.shape)


def unpack_payload(payload, n, bits):
    """Decode codes (rows, n) and the padding bits from a (rows, W) uint32 payload, per the documented layout."""
    rows, words = payload.shape
    as_bytes = np.ascontiguousarray(payload.astype("<u4")).view(np.uint8).reshape(rows, 4 * words)
    stream = np.unpackbits(as_bytes, axis=1, bitorder="little")  # stream bit k = bit k%32 of word k//32
    positions = np.arange(n)[:, None] * bits + np.arange(bits)[None, :]  # (n, bits), LSB first
    codes = (stream[:, positions].astype(np.int64) << np.arange(bits)).sum(axis=-1)
    return codes, stream[:, n * bits:]


def random_input(rng, shape, dtype, contiguous):
    """Values of random magnitude and offset; non-contiguous variants stride the last axis."""
    mag = 10.0 ** rng.uniform(-3, 3)
    offset = rng.uniform(-2, 2) * mag
    if contiguous:
        x = rng.standard_normal(shape) * mag + offset
        return x.astype(dtype)
    big = (rng.standard_normal(shape[:-1] + (2 * shape[-1],)) * mag + offset).astype(dtype)
    x = big[..., ::2]
    assert not x.flags.c_contiguous or x.size == 1
    return x


def group_view(a, group_size):
    """(rows, G, g) view of a (..., n) array."""
    n = a.shape[-1]
    g = n if group_size is None else group_size
    return np.asarray(a, dtype=np.float64).reshape(-1, n // g, g)


def error_tolerance(scales, xg, dtype):
    """Per-element bound on |x - x'| for clip = 1, shape (rows, G, 1).

    scale/2 from rounding to the nearest code, computed against the STORED scale; plus 2 float32 ulps of the
    group's absmax for the float32 rounding of scale and zero point (at the end codes the clamp turns that
    rounding into error: |(hi - lo)*d_scale + lo*d_zero| <= 1.5 ulps of absmax); plus 4 ulps of the output
    dtype times absmax for the float64 arithmetic and the final rounding of x' to the dtype.
    """
    absmax = np.abs(xg).max(axis=-1, keepdims=True)
    eps = float(np.finfo(dtype).eps)
    return scales.astype(np.float64)[..., None] / 2 + 2 * EPS32 * absmax + 4 * eps * absmax


# ---- correctness sweep ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_matches_reference(rng, bits, symmetric, dtype):
    for shape, groups in CASES:
        for group_size in groups:
            for contiguous in (True, False):
                x = random_input(rng, shape, dtype, contiguous)
                qt = quantize(x, bits, group_size=group_size, symmetric=symmetric)
                codes, scales, zeros, deq_ref = ref_quantize(x, bits, group_size, symmetric, 1.0)
                n = shape[-1]
                rows = x.size // n
                g = n if group_size is None else group_size
                ctx = f"shape={shape} g={group_size} contiguous={contiguous}"

                # (4) metadata, shapes and exact byte count.
                assert qt.shape == shape and qt.dtype == np.dtype(dtype), ctx
                assert (qt.bits, qt.group_size, qt.symmetric, qt.clip) == (bits, g, symmetric, 1.0), ctx
                assert qt.payload.shape == (rows, math.ceil(n * bits / 32)) and qt.payload.dtype == np.uint32, ctx
                assert qt.scales.shape == (rows, n // g) and qt.scales.dtype == np.float32, ctx
                expected_nbytes = qt.payload.nbytes + qt.scales.nbytes
                if symmetric:
                    assert qt.zeros is None, ctx
                else:
                    assert qt.zeros.shape == (rows, n // g) and qt.zeros.dtype == np.float32, ctx
                    expected_nbytes += qt.zeros.nbytes
                assert qt.nbytes == expected_nbytes == 4 * rows * math.ceil(n * bits / 32) + (
                    (1 if symmetric else 2) * 4 * rows * (n // g)), ctx

                # (2) scales and zeros: the same correctly rounded float64 operations, then one rounding
                # to float32, so they must be bit-identical.
                np.testing.assert_array_equal(qt.scales, scales, err_msg=ctx)
                if not symmetric:
                    np.testing.assert_array_equal(qt.zeros, zeros, err_msg=ctx)

                # (3) codes through the independent unpacker: exact; padding bits zero.
                got_codes, padding = unpack_payload(qt.payload, n, bits)
                np.testing.assert_array_equal(got_codes, codes, err_msg=ctx)
                assert not padding.any(), ctx

                # (1) reconstruction within half the stored scale (tolerance: see error_tolerance).
                out = qt.dequantize()
                assert out.shape == shape and out.dtype == np.dtype(dtype), ctx
                err = np.abs(group_view(out, group_size) - group_view(x, group_size))
                tol = error_tolerance(qt.scales, group_view(x, group_size), dtype)
                assert np.all(err <= tol), f"{ctx}: worst excess {np.max(err - tol)}"
                # Same float64 expression as the reference, one rounding to dtype: within 1 ulp of absmax.
                absmax = float(np.abs(np.asarray(x, np.float64)).max())
                np.testing.assert_allclose(out, deq_ref, rtol=0, atol=float(np.finfo(dtype).eps) * absmax,
                                           err_msg=ctx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_constant_groups_exact(rng, bits, symmetric, dtype):
    rows, g, groups = 5, 7, 4
    x = rng.standard_normal((rows, groups * g)).astype(dtype)
    xg = x.reshape(rows, groups, g)
    # float32-representable constants so float64 input is exact too (zero points are float32).
    consts = rng.standard_normal(rows).astype(np.float32).astype(dtype)
    xg[:, 1, :] = 0.0
    if not symmetric:
        xg[:, 2, :] = consts[:, None]
    qt = quantize(x, bits, group_size=g, symmetric=symmetric)
    out = qt.dequantize().reshape(rows, groups, g)
    codes, _ = unpack_payload(qt.payload, groups * g, bits)
    codes = codes.reshape(rows, groups, g)
    levels = 2 ** (bits - 1) - 1
    constant_groups = [1] if symmetric else [1, 2]
    for j in constant_groups:
        np.testing.assert_array_equal(out[:, j, :], xg[:, j, :])
        assert np.all(qt.scales[:, j] == 0)
        assert np.all(codes[:, j, :] == (levels if symmetric else 0))
    if not symmetric:
        np.testing.assert_array_equal(qt.zeros[:, 2], consts.astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_round_half_to_even(dtype):
    # Group [0, 3] at 2 bits: scale 1, zero 0, so (x - zero)/scale is exactly 0.5, 1.5, 2.5 for these values.
    x = np.array([0.0, 0.5, 1.5, 2.5, 3.0], dtype=dtype)
    qt = quantize(x, 2)
    assert qt.scales[0, 0] == 1 and qt.zeros[0, 0] == 0
    codes = unpack_payload(qt.payload, x.size, 2)[0]
    np.testing.assert_array_equal(codes, ref_quantize(x, 2, None, False, 1.0)[0])
    np.testing.assert_array_equal(codes[0], [0, 0, 2, 2, 3])
    # Symmetric, 3 bits: L = 3, absmax 3 -> scale 1; x/scale = -2.5, -0.5, 0.5, 1.5 -> -2, 0, 0, 2 (+3).
    y = np.array([-2.5, -0.5, 0.5, 1.5, 3.0], dtype=dtype)
    codes = unpack_payload(quantize(y, 3, symmetric=True).payload, y.size, 3)[0]
    np.testing.assert_array_equal(codes[0], [1, 3, 3, 5, 6])


def test_constant_float64_not_float32_representable():
    # Documented: a float64 constant comes back as its float32 rounding (the stored zero point).
    x = np.full((2, 6), 0.1, dtype=np.float64)
    qt = quantize(x, 4)
    np.testing.assert_array_equal(qt.scales, 0)
    np.testing.assert_array_equal(qt.dequantize(), np.float64(np.float32(0.1)))


# ---- clipping --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_clip(rng, bits, symmetric, dtype):
    clip = float(rng.uniform(0.3, 0.95))
    shape, g = (6, 40), 8
    x = random_input(rng, shape, dtype, contiguous=True)
    qt = quantize(x, bits, group_size=g, symmetric=symmetric, clip=clip)
    assert qt.clip == clip
    codes, scales, zeros, _ = ref_quantize(x, bits, g, symmetric, clip)
    np.testing.assert_array_equal(qt.scales, scales)
    if not symmetric:
        np.testing.assert_array_equal(qt.zeros, zeros)
    np.testing.assert_array_equal(unpack_payload(qt.payload, shape[-1], bits)[0], codes)

    xg = group_view(x, g)
    out = group_view(qt.dequantize(), g)
    s = qt.scales.astype(np.float64)[..., None]
    eps = float(np.finfo(dtype).eps)
    absmax = np.abs(xg).max(axis=-1, keepdims=True)
    slack = 2 * EPS32 * absmax + 4 * eps * absmax  # as in error_tolerance
    if symmetric:
        levels = 2 ** (bits - 1) - 1
        lo, hi = -levels * s, levels * s
    else:
        z = qt.zeros.astype(np.float64)[..., None]
        lo, hi = z, z + (2 ** bits - 1) * s
    # Values beyond the clipped range saturate to the end levels; values inside keep the scale/2 bound.
    above, below = xg > hi + slack, xg < lo - slack
    inside = ~(above | below)
    assert (above | below).any(), "clip < 1 must clip something for this input"
    np.testing.assert_allclose(out[above], np.broadcast_to(hi, xg.shape)[above], rtol=0, atol=4 * eps * absmax.max())
    np.testing.assert_allclose(out[below], np.broadcast_to(lo, xg.shape)[below], rtol=0, atol=4 * eps * absmax.max())
    err = np.abs(out - xg)
    assert np.all((err <= s / 2 + slack)[inside])


# ---- storage: views, read-only, DLPack --------------------------------------------------------------

@pytest.mark.parametrize("symmetric", [False, True])
def test_arrays_are_readonly_views(rng, symmetric):
    x = rng.standard_normal((3, 24))
    qt = quantize(x, 3, group_size=8, symmetric=symmetric)
    names = ["payload", "scales"] + ([] if symmetric else ["zeros"])
    for name in names:
        first, second = getattr(qt, name), getattr(qt, name)
        assert np.shares_memory(first, second), name
        assert not first.flags.writeable, name
        with pytest.raises(ValueError):
            first[0, 0] = 0
        via_dlpack = np.from_dlpack(first)
        assert np.shares_memory(via_dlpack, first), name
        np.testing.assert_array_equal(via_dlpack, first)
    for attr in ["bits", "group_size", "symmetric", "clip", "shape", "dtype", "nbytes", "layout_version",
                 "payload", "scales", "zeros"]:
        with pytest.raises(AttributeError):
            setattr(qt, attr, getattr(qt, attr))


def test_storage_resized_in_place_is_refused(rng):
    # NumPy lets a caller resize an owning array in place even when read-only; decoding must refuse, not misread.
    qt = quantize(rng.standard_normal((4, 32)), 4, group_size=8)
    qt.payload.shape = (-1,)  # a reshape keeps size and order: still decodable
    assert qt.dequantize().shape == (4, 32)
    qt.scales.resize(3, refcheck=False)
    with pytest.raises(RuntimeError, match="resized"):
        qt.dequantize()


def test_object_basics(rng):
    x = rng.standard_normal((2, 3, 10)).astype(np.float32)
    qt = quantize(x, 4, group_size=5)
    assert isinstance(qt, QuantizedTensor) and QuantizedTensor is palu_c._C.QuantizedTensor
    assert qt.layout_version == palu_c._C.QUANT_LAYOUT_VERSION == 1
    text = repr(qt)
    for part in ["(2, 3, 10)", "bits=4", "group_size=5", f"nbytes={qt.nbytes}"]:
        assert part in text, text
    assert gc.is_tracked(qt)
    # The object owns its storage: the input can go away.
    expected = qt.dequantize()
    del x
    gc.collect()
    np.testing.assert_array_equal(qt.dequantize(), expected)
    # Non-native byte order input is read by value.
    y = np.arange(12, dtype=">f8").reshape(2, 6)
    np.testing.assert_array_equal(quantize(y, 8).scales, quantize(y.astype("<f8"), 8).scales)


def test_cpu_dlpack_producer(rng):
    class Producer:  # a non-NumPy CPU DLPack producer
        def __init__(self, a):
            self._a = a

        def __dlpack__(self, **kwargs):
            return self._a.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    x = rng.standard_normal((4, 9)).astype(np.float32)
    qt = quantize(Producer(x), 3)
    np.testing.assert_array_equal(qt.scales, quantize(x, 3).scales)


# ---- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 5, 16, 0, -4, 2.0, 4.5, True, "4", None])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match=r"\{2, 3, 4, 8\}"):
        quantize(np.ones((2, 4)), bits)


def test_numpy_integer_bits():
    assert quantize(np.arange(8.0), np.int64(4)).bits == 4


@pytest.mark.parametrize("group_size, exc, pattern", [
    (0, ValueError, "group_size"), (-2, ValueError, "group_size"), (5, ValueError, "divisor"),
    (24, ValueError, "divisor"), (2.0, TypeError, "group_size"), (True, TypeError, "group_size"),
])
def test_bad_group_size(group_size, exc, pattern):
    with pytest.raises(exc, match=pattern):
        quantize(np.ones((2, 12)), 4, group_size=group_size)


@pytest.mark.parametrize("clip, exc", [(0.0, ValueError), (-0.5, ValueError), (1.5, ValueError),
                                       (float("nan"), ValueError), (float("inf"), ValueError),
                                       ("1", TypeError), (None, TypeError)])
def test_bad_clip(clip, exc):
    with pytest.raises(exc, match="clip"):
        quantize(np.ones((2, 4)), 4, clip=clip)


def test_bad_symmetric():
    with pytest.raises(TypeError, match="symmetric"):
        quantize(np.ones((2, 4)), 4, symmetric="yes")


@pytest.mark.parametrize("x, exc, pattern", [
    (np.arange(8, dtype=np.int64), TypeError, "float32 or float64"),
    (np.ones(8, dtype=np.complex128), TypeError, "float32 or float64"),
    (np.ones(8, dtype=np.float16), TypeError, "float32 or float64"),
    (np.ones(8, dtype=bool), TypeError, "float32 or float64"),
    (np.array([1.0, np.nan, 2.0]), ValueError, "NaN/Inf"),
    (np.array([[1.0, 2.0], [np.inf, 0.0]], dtype=np.float32), ValueError, "NaN/Inf"),
    (np.zeros((0, 4)), ValueError, "empty"),
    (np.zeros((3, 0)), ValueError, "empty"),
    (np.array(1.5), ValueError, "dimensions"),
    (np.array([1.0, 1e39]), ValueError, "float32 range"),
    ("abc", TypeError, "x"),
])
def test_bad_x(x, exc, pattern):
    with pytest.raises(exc, match=pattern):
        quantize(x, 4)


def test_wrong_device():
    class FakeCuda:
        def __dlpack_device__(self):
            return (2, 0)

        def __dlpack__(self, **kwargs):
            raise AssertionError("a device tensor must not be read")

    with pytest.raises(ValueError, match="cuda"):
        quantize(FakeCuda(), 4)


def test_not_constructible():
    with pytest.raises(TypeError, match="palu_c.quantize"):
        QuantizedTensor()
    with pytest.raises(TypeError):
        QuantizedTensor.__new__(QuantizedTensor)


def test_c_entry_point_validates():
    # palu_c._C.quantize is reachable directly; it must refuse what the wrapper refuses.
    x = np.ones((2, 8))
    with pytest.raises(ValueError, match=r"\{2, 3, 4, 8\}"):
        palu_c._C.quantize(x, 5, None, False, 1.0)
    with pytest.raises(ValueError, match="group_size"):
        palu_c._C.quantize(x, 4, 0, False, 1.0)
    with pytest.raises(ValueError, match="group_size"):
        palu_c._C.quantize(x, 4, 3, False, 1.0)
    with pytest.raises(ValueError, match="clip"):
        palu_c._C.quantize(x, 4, None, False, float("nan"))
    with pytest.raises(ValueError, match="clip"):
        palu_c._C.quantize(x, 4, None, False, 2.0)


# ---- leaks ------------------------------------------------------------------------------------------

def test_no_memory_growth(rng):
    x = rng.standard_normal((4, 24)).astype(np.float32)
    strided = rng.standard_normal((4, 48))[:, ::2]  # float64, non-contiguous: converted (copied) in C
    inputs = [x, strided]

    def churn(count):
        for i in range(count):
            qt = quantize(inputs[(i >> 1) & 1], 3, group_size=8, symmetric=bool(i & 1))
            qt.dequantize()
            qt.payload, qt.scales, qt.zeros, qt.shape, repr(qt)  # touch every reference-returning path

    churn(500)  # warm-up: caches, free lists, interned objects
    gc.collect()
    watched = inputs + [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint32), QuantizedTensor]
    refs_before = [sys.getrefcount(a) for a in watched]
    rss_before = rss_bytes()
    tracemalloc.start()
    try:
        churn(200)
        gc.collect()
        traced_before = tracemalloc.get_traced_memory()[0]
        churn(10_000)
        gc.collect()
        traced_after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # No reference to the inputs, the dtypes or the type is kept (those are shared, so a leaked
    # reference costs no memory and only shows in the count).
    assert [sys.getrefcount(a) for a in watched] == refs_before
    # Slack 64 KiB: leaking even one 16-byte object per call would add 160 KB over 10,000 calls.
    assert traced_after - traced_before < 64 * 1024, (traced_before, traced_after)
    if not under_asan():  # ASan's quarantine holds freed memory, so RSS grows there without a leak
        # Slack 2 MiB for allocator noise; one leaked QuantizedTensor with its arrays (> 400 bytes) per call
        # would add > 4 MB.
        assert rss_bytes() - rss_before < 2 * 1024 * 1024
