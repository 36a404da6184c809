"""palu_c._C.LatentCache (csrc/latent_cache.c, csrc/py_latent_cache.c) and latent_cache_decode_attention.

Reference: a plain NumPy model of the spec (docs/design/latent_cache.md): a float64 list of every slot's
latents, a `sealed` counter that follows sealed = residual * floor((length - 1) / residual), and a NumPy
quantizer written from docs/quant_format.md (asymmetric, float64 arithmetic, float32 scale and zero). Sealing
slot t replaces its value by dequant(quant(value)); crop re-opens slots by keeping their dequantized values, so
they are quantized a second time when they leave the window again. Decode attention over the cache is checked
against the float64 attention reference of test_latent_attention.py on the latents the model says attention
must read.

No torch here: this file runs under AddressSanitizer.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from palu_c import _C
from memory_growth import assert_no_growth
from test_latent_attention import check_close, hf_inv_freq, ref_decode_attention

F32_EPS = float(np.finfo(np.float32).eps)


# ---- reference ------------------------------------------------------------------------------------------


def ref_quant_roundtrip(x: np.ndarray, bits: int, group: int) -> np.ndarray:
    """dequant(quant(x)) per docs/quant_format.md for the rows of x (..., n), groups of `group` channels."""
    x = np.asarray(x, dtype=np.float64)
    shape = x.shape
    g = x.reshape(-1, shape[-1] // group, group)
    lo, hi = g.min(axis=-1, keepdims=True), g.max(axis=-1, keepdims=True)
    q = 2 ** bits - 1
    scale = ((hi - lo) / q).astype(np.float32).astype(np.float64)
    zero = lo.astype(np.float32).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        code = np.where(scale > 0, np.clip(np.rint((g - zero) / np.where(scale > 0, scale, 1)), 0, q), 0)
    return (code * scale + zero).astype(np.float32).astype(np.float64).reshape(shape)


class RefCache:
    """The spec as a few lines of NumPy (float64 values of every slot; sealed slots hold dequantized values)."""

    def __init__(self, k_ranks, v_ranks, bits=None, residual=128, quant_group=None):
        self.k_ranks, self.v_ranks = list(k_ranks), list(v_ranks)
        self.bits, self.residual, self.quant_group = bits, residual, quant_group
        self.k = self.v = self.pos = None
        self.sealed = 0

    @property
    def length(self):
        return 0 if self.pos is None else self.pos.shape[1]

    def target(self, length):
        if not self.bits or length <= 0:
            return 0
        return length if self.residual == 0 else self.residual * ((length - 1) // self.residual)

    def _seal(self, arr, ranks, lo, hi):
        off = 0
        for r in ranks:
            part = arr[:, lo:hi, off:off + r]
            arr[:, lo:hi, off:off + r] = ref_quant_roundtrip(part, self.bits, self.quant_group or r)
            off += r

    def append(self, hk, hv, pos):
        if self.pos is None or self.length == 0:
            self.k, self.v, self.pos = (np.asarray(a, dtype=np.float64) for a in (hk, hv, pos))
            self.sealed = 0
        else:
            self.k = np.concatenate([self.k, hk.astype(np.float64)], axis=1)
            self.v = np.concatenate([self.v, hv.astype(np.float64)], axis=1)
            self.pos = np.concatenate([self.pos, pos.astype(np.float64)], axis=1)
        t = self.target(self.length)
        if t > self.sealed:
            self._seal(self.k, self.k_ranks, self.sealed, t)
            self._seal(self.v, self.v_ranks, self.sealed, t)
            self.sealed = t

    def crop(self, keep):
        self.k, self.v, self.pos = self.k[:, :keep], self.v[:, :keep], self.pos[:, :keep]
        self.sealed = min(self.sealed, self.target(keep))

    def select(self, index):
        self.k, self.v, self.pos = self.k[index], self.v[index], self.pos[index]


def check_matches(cache, ref, start=0):
    hk, hv, pos = cache.read(start)
    assert cache.length == ref.length and cache.sealed == ref.sealed
    assert hk.dtype == np.float32 and pos.dtype == np.int32
    np.testing.assert_array_equal(pos, ref.pos[:, start:].astype(np.int32))
    for got, want in ((hk, ref.k[:, start:]), (hv, ref.v[:, start:])):
        # the C core quantizes float32 window values with the same float64 formulas: equal up to the final
        # float32 rounding of a value that was itself rounded (2 ulps of the row's magnitude)
        tol = 2 * F32_EPS * (np.abs(want).max() if want.size else 0.0)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=tol)


def random_ranks(rng, groups, multiple=16):
    return [int(multiple * rng.integers(1, 4)) for _ in range(groups)]


def feed(rng, cache, ref, batch, tokens, next_pos):
    hk = rng.standard_normal((batch, tokens, sum(ref.k_ranks))).astype(np.float32)
    hv = rng.standard_normal((batch, tokens, sum(ref.v_ranks))).astype(np.float32)
    hk[..., 0] *= 8.0  # an outlier channel, as SVD ordering produces
    pos = (next_pos + np.arange(tokens, dtype=np.int32))[None].repeat(batch, 0)
    cache.append(hk, hv, pos)
    ref.append(hk, hv, pos)
    return next_pos + tokens


# ---- behaviour ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_unquantized_append_read_capacity_and_bytes(rng, batch):
    k_ranks, v_ranks = random_ranks(rng, 3), random_ranks(rng, 3)
    cache, ref = _C.LatentCache(k_ranks, v_ranks), RefCache(k_ranks, v_ranks)
    assert cache.length == 0 and cache.batch == 0 and cache.nbytes == 0 and cache.bits is None
    nxt = 0
    for tokens in (1, 7, 19, 255, 1, 127):
        nxt = feed(rng, cache, ref, batch, tokens, nxt)
        check_matches(cache, ref)
        assert cache.capacity % _C.LATENT_CACHE_CHUNK == 0 and cache.capacity >= cache.length
        assert cache.capacity - cache.length < _C.LATENT_CACHE_CHUNK
        assert cache.nbytes == batch * cache.length * (4 + 4 * (sum(k_ranks) + sum(v_ranks)))
        assert cache.reserved_bytes == batch * cache.capacity * (4 + 4 * (sum(k_ranks) + sum(v_ranks)))
    check_matches(cache, ref, start=cache.length - 5)
    hk, hv, pos = cache.read(cache.length)
    assert hk.shape == (batch, 0, sum(k_ranks)) and pos.shape == (batch, 0)


@pytest.mark.parametrize("quant_group", [None, 8])
@pytest.mark.parametrize("residual", [0, 1, 5, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantized_window_and_sealing(rng, bits, residual, quant_group):
    k_ranks, v_ranks = random_ranks(rng, 2), random_ranks(rng, 2)
    cache = _C.LatentCache(k_ranks, v_ranks, bits=bits, residual=residual, quant_group=quant_group)
    ref = RefCache(k_ranks, v_ranks, bits, residual, quant_group)
    nxt = 0
    for tokens in rng.integers(1, 40, size=8):
        nxt = feed(rng, cache, ref, 2, int(tokens), nxt)
        check_matches(cache, ref)
    # bytes: codes + float32 scale and zero per (sub)group for sealed slots, float32 window, int32 positions
    q = lambda r: (quant_group or r)  # noqa: E731
    per_sealed = sum(4 * -(-r * bits // 32) + 8 * (r // q(r)) for r in k_ranks + v_ranks)
    per_exact = 4 * (sum(k_ranks) + sum(v_ranks))
    want = 2 * (4 * cache.length + cache.sealed * per_sealed + (cache.length - cache.sealed) * per_exact)
    assert cache.nbytes == want


def test_quantized_storage_matches_layout_v1(rng):
    """Codes, scales and zeros of a sealed slot are those of palu_c.quantize's layout (docs/quant_format.md)."""
    import palu_c

    k_ranks, v_ranks = [32, 16], [16, 16]
    cache = _C.LatentCache(k_ranks, v_ranks, bits=3, residual=0, quant_group=16)
    hk = rng.standard_normal((2, 5, 48)).astype(np.float32)
    hv = rng.standard_normal((2, 5, 32)).astype(np.float32)
    cache.append(hk, hv, np.zeros((2, 5), np.int32))
    codes = np.asarray(cache.buffer("k_codes"))
    scales = np.asarray(cache.buffer("k_scales"))
    zeros = np.asarray(cache.buffer("k_zeros"))
    assert codes.dtype == np.uint32 and codes.shape[:2] == (2, cache.capacity) and not codes.flags.writeable
    word, sub = 0, 0
    for r in k_ranks:
        qt = palu_c.quantize(hk[:, :, sum(k_ranks[:k_ranks.index(r)]):][..., :r].reshape(-1, r), 3, group_size=16)
        words, subs = -(-r * 3 // 32), r // 16
        np.testing.assert_array_equal(codes[:, :5, word:word + words].reshape(-1, words), qt.payload)
        np.testing.assert_array_equal(scales[:, :5, sub:sub + subs].reshape(-1, subs), qt.scales)
        np.testing.assert_array_equal(zeros[:, :5, sub:sub + subs].reshape(-1, subs), qt.zeros)
        word, sub = word + words, sub + subs
    assert codes.shape[2] == word and scales.shape[2] == sub
    assert not codes[:, 5:].any()  # slots past length are zero-filled, never stale bytes
    del codes, scales, zeros


@pytest.mark.parametrize("residual", [0, 4, 128])
def test_crop_then_append(rng, residual):
    k_ranks, v_ranks = [16, 32], [32, 16]
    cache, ref = _C.LatentCache(k_ranks, v_ranks, bits=4, residual=residual), RefCache(k_ranks, v_ranks, 4, residual)
    nxt = 0
    for _ in range(6):
        nxt = feed(rng, cache, ref, 3, int(rng.integers(1, 30)), nxt)
    for keep_of in (lambda L: L - 1, lambda L: L // 2, lambda L: 1, lambda L: 0):
        before = cache.read()
        keep = keep_of(cache.length)
        cache.crop(keep)
        ref.crop(keep)
        check_matches(cache, ref)
        for got, old in zip(cache.read(), before):  # attention reads exactly what it read before the crop
            np.testing.assert_array_equal(got, old[:, :keep])
        nxt = int(ref.pos[0, -1]) + 1 if ref.length else 0
        for _ in range(3):
            nxt = feed(rng, cache, ref, 3, int(rng.integers(1, 30)), nxt)
            check_matches(cache, ref)


@pytest.mark.parametrize("bits", [None, 3])
def test_select_reorders_repeats_and_shrinks(rng, bits):
    k_ranks, v_ranks = [16], [48]
    cache, ref = _C.LatentCache(k_ranks, v_ranks, bits=bits, residual=3), RefCache(k_ranks, v_ranks, bits, 3)
    nxt = feed(rng, cache, ref, 4, 10, 0)
    for index in (rng.permutation(4), np.array([2, 2, 0, 1, 3, 3]), np.array([5, 0]), np.array([1])):
        cache.select(index.astype(np.int64))
        ref.select(index)
        check_matches(cache, ref)
        nxt = feed(rng, cache, ref, len(index), 3, nxt)
        check_matches(cache, ref)


def test_new_batch_on_empty_cache_and_mismatch_error(rng):
    cache = _C.LatentCache([16], [16])
    cache.append(np.ones((2, 3, 16), np.float32), np.ones((2, 3, 16), np.float32), np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="holds 2 sequences, got a batch of 5"):
        cache.append(np.ones((5, 1, 16), np.float32), np.ones((5, 1, 16), np.float32), np.zeros((5, 1), np.int32))
    assert cache.length == 3
    cache.crop(0)
    cache.append(np.full((5, 1, 16), 2, np.float32), np.ones((5, 1, 16), np.float32), np.zeros((5, 1), np.int32))
    assert cache.batch == 5 and cache.length == 1 and np.all(cache.read()[0] == 2)
    cache.reset()
    assert cache.batch == 0 and cache.length == 0 and cache.capacity == 0 and cache.nbytes == 0


# ---- decode attention over the cache ------------------------------------------------------------------------


@pytest.mark.parametrize("bits,residual", [(None, 0), (4, 0), (3, 5), (2, 128)])
@pytest.mark.parametrize("Hkv,G,n_rep", [(2, 1, 3), (3, 3, 1), (4, 2, 2)])
def test_decode_attention_reads_what_the_cache_holds(rng, bits, residual, Hkv, G, n_rep):
    D, B, NG = 32, 3, Hkv // G
    k_ranks, v_ranks = random_ranks(rng, NG), random_ranks(rng, NG)
    cache, ref = _C.LatentCache(k_ranks, v_ranks, bits=bits, residual=residual), RefCache(k_ranks, v_ranks, bits, residual)
    nxt = 0
    for tokens in (13, 1, 1, 9, 1):
        nxt = feed(rng, cache, ref, B, tokens, nxt)
    T = cache.length
    k_ups = [(rng.standard_normal((G * D, r)) / np.sqrt(r)).astype(np.float32) for r in k_ranks]
    v_ups = [(rng.standard_normal((G * D, r)) / np.sqrt(r)).astype(np.float32) for r in v_ranks]
    pad_start = np.array([0, 4, T - 1], np.int32)
    args = dict(q=rng.standard_normal((B, Hkv * n_rep, D)).astype(np.float32), pad_start=pad_start, k_ups=k_ups,
                v_ups=v_ups, group_size=G, inv_freq=hf_inv_freq(D), attention_scaling=1.0, scaling=D ** -0.5,
                k_bias=(0.3 * rng.standard_normal(Hkv * D)).astype(np.float32), v_bias=None)
    out = _C.latent_cache_decode_attention(cache, **args)
    want = ref_decode_attention(k_latent=ref.k, v_latent=ref.v, positions=ref.pos, **args)
    check_close(out, want)
    # bit for bit the dense entry point on the latents the cache hands out
    hk, hv, pos = cache.read()
    dense = _C.latent_decode_attention(args["q"], hk, hv, pos, pad_start, k_ups, v_ups, G, args["inv_freq"], 1.0,
                                       D ** -0.5, k_bias=args["k_bias"])
    np.testing.assert_array_equal(out, dense)


def test_decode_attention_checks_its_cache(rng):
    cache = _C.LatentCache([16], [16])
    ups = [np.ones((32, 16), np.float32)]
    call = lambda c, B=1, ups_k=ups: _C.latent_cache_decode_attention(  # noqa: E731
        c, np.ones((B, 2, 32), np.float32), np.zeros(B, np.int32), ups_k, ups, 1, hf_inv_freq(32), 1.0, 0.1)
    with pytest.raises(ValueError, match="holds no token"):
        call(cache)
    with pytest.raises(TypeError, match="must be a palu_c._C.LatentCache"):
        call(object())
    cache.append(np.ones((1, 2, 16), np.float32), np.ones((1, 2, 16), np.float32), np.zeros((1, 2), np.int32))
    with pytest.raises(ValueError, match="batch 2"):
        call(cache, B=2)
    with pytest.raises(ValueError, match="ranks"):
        call(cache, ups_k=[np.ones((32, 32), np.float32)])
    with pytest.raises(ValueError, match="pad_start"):
        _C.latent_cache_decode_attention(cache, np.ones((1, 2, 32), np.float32), np.array([2], np.int32), ups, ups, 1,
                                         hf_inv_freq(32), 1.0, 0.1)
    assert call(cache).shape == (1, 2, 32)


# ---- buffers ----------------------------------------------------------------------------------------------


def test_buffers_are_zero_copy_read_only_and_pin_the_storage(rng):
    cache = _C.LatentCache([16, 16], [16, 16], bits=None)
    hk = rng.standard_normal((2, 3, 32)).astype(np.float32)
    cache.append(hk, rng.standard_normal((2, 3, 32)).astype(np.float32), np.arange(6, dtype=np.int32).reshape(2, 3))
    view = np.asarray(cache.buffer("k_latent"))
    assert view.shape == (2, cache.capacity, 32) and not view.flags.writeable
    np.testing.assert_array_equal(view[:, :3], hk)
    pos = memoryview(cache.buffer("positions"))
    assert pos.format == "i" and pos.shape == (2, cache.capacity) and pos.readonly
    with pytest.raises(BufferError, match="buffer view"):
        cache.append(hk, hk, np.zeros((2, 3), np.int32))
    for method, arg in (("crop", 1), ("select", np.array([0], np.int64)), ("reset", None)):
        with pytest.raises(BufferError):
            getattr(cache, method)(*(() if arg is None else (arg,)))
    assert cache.length == 3
    del view
    pos.release()
    del pos
    cache.append(hk, hk, np.zeros((2, 3), np.int32))  # views gone: changes allowed again
    assert cache.length == 6
    with pytest.raises(ValueError, match="unknown buffer"):
        cache.buffer("k_nothing")
    with pytest.raises(ValueError, match="only in quantized caches"):
        cache.buffer("k_codes")
    with pytest.raises(TypeError, match="must be a str"):
        cache.buffer(3)
    with pytest.raises(TypeError, match="directly"):
        type(cache.buffer("positions"))()
    with pytest.raises(TypeError, match="read-only"):
        memoryview(cache.buffer("positions")).cast("B")[0] = 1


# ---- bad input ----------------------------------------------------------------------------------------------


def test_constructor_validation():
    cases = [
        (([], [16]), {}, ValueError, "empty"),
        (([16], [16, 16]), {}, ValueError, "groups"),
        (([0], [16]), {}, ValueError, r"k_ranks\[0\]"),
        (([True], [16]), {}, TypeError, "must be an int"),
        ((16, [16]), {}, TypeError, "sequence of ints"),
        (([16], [16]), {"bits": 5}, ValueError, "bits"),
        (([16], [16]), {"bits": 0}, ValueError, "bits"),
        (([16], [16]), {"bits": 4.0}, TypeError, "bits"),
        (([16], [16]), {"residual": -1}, ValueError, "residual"),
        (([16], [24]), {"bits": 4, "quant_group": 16}, ValueError, "quant_group"),
        (([16], [16]), {"quant_group": 0}, ValueError, "quant_group"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            _C.LatentCache(*args, **kwargs)


def test_append_validation(rng):
    cache = _C.LatentCache([16], [32], bits=4, residual=2)
    good = (np.ones((2, 3, 16), np.float32), np.ones((2, 3, 32), np.float32), np.zeros((2, 3), np.int32))
    nan = good[0].copy()
    nan[1, 2, 3] = np.nan
    inf = good[1].copy()
    inf[0, 0, 0] = -np.inf
    bad = [
        ((good[0].astype(np.float64), good[1], good[2]), TypeError, "float32"),
        ((good[0], good[1], good[2].astype(np.int64)), TypeError, "int32"),
        ((good[0][0], good[1], good[2]), ValueError, "3-dimensional"),
        ((good[0][:, :, :8], good[1], good[2]), ValueError, "expected hk"),
        ((good[0], good[1][:1], good[2]), ValueError, "expected hk"),
        ((good[0], good[1], good[2][:, :2]), ValueError, "expected hk"),
        ((good[0][:, :0], good[1][:, :0], good[2][:, :0]), ValueError, "empty"),
        ((nan, good[1], good[2]), ValueError, "NaN or Inf"),
        ((good[0], inf, good[2]), ValueError, "NaN or Inf"),
        ((good[0], good[1], -np.ones((2, 3), np.int32)), ValueError, ">= 0"),
        (("hk", good[1], good[2]), TypeError, "float32"),
    ]
    for args, exc, match in bad:
        with pytest.raises(exc, match=match):
            cache.append(*args)
        assert cache.length == 0  # a refused append changes nothing
    cache.append(good[0][:, :, :].transpose(0, 1, 2).copy(), good[1], good[2])
    # non-contiguous input is accepted (copied)
    hk = np.ones((3, 2, 16), np.float32).transpose(1, 0, 2)
    cache.append(hk, np.ones((2, 3, 32), np.float32), np.zeros((2, 3), np.int32))
    assert cache.length == 6
    with pytest.raises(ValueError, match="keep"):
        cache.crop(7)
    with pytest.raises(ValueError, match="keep"):
        cache.crop(-1)
    with pytest.raises(TypeError, match="keep"):
        cache.crop(2.0)
    with pytest.raises(ValueError, match="outside the batch"):
        cache.select(np.array([0, 2], np.int64))
    with pytest.raises(TypeError, match="int64"):
        cache.select(np.array([0], np.int32))
    with pytest.raises(ValueError, match="start"):
        cache.read(7)
    assert cache.length == 6 and cache.batch == 2


def test_threads_share_a_cache_one_at_a_time(rng):
    """Appends from several threads (each holding the GIL for its argument checks) never corrupt the cache."""
    cache = _C.LatentCache([16], [16], bits=4, residual=8)
    errors = []

    def work(seed):
        r = np.random.default_rng(seed)
        for _ in range(50):
            x = r.standard_normal((1, 2, 16)).astype(np.float32)
            try:
                cache.append(x, x, np.zeros((1, 2), np.int32))
            except RuntimeError as exc:  # busy: allowed, never a crash
                errors.append(exc)
    threads = [threading.Thread(target=work, args=(int(s),)) for s in rng.integers(0, 2**31, size=4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.length == 2 * (200 - len(errors))
    assert all("in use by another thread" in str(e) for e in errors)


def test_no_memory_growth_over_10000_cycles(rng):
    hk = rng.standard_normal((2, 3, 32)).astype(np.float32)
    pos = np.zeros((2, 3), np.int32)
    index = np.array([1, 0, 1], np.int64)

    def cycle():
        cache = _C.LatentCache([16, 16], [16, 16], bits=3, residual=2)
        cache.append(hk, hk, pos)
        cache.append(hk, hk, pos)
        cache.crop(3)
        cache.select(index)
        cache.read()
        np.asarray(cache.buffer("k_codes"))

    assert_no_growth(cycle)
