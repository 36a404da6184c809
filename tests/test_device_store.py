"""DeviceLatentStore (palu_c/device_store.py): the torch storage of the latent KV cache, here on CPU tensors.

References, written here and independent of the code under test:

* ``RefStore``: a plain NumPy model of docs/design/latent_cache.md sections 2-3. It keeps, per slot, the float64
  value attention must read (and, for sealed slots, the value that was quantized), grows by concatenation,
  seals with the sealing rule written out here, crops by re-opening blocks as the spec says (residual 0:
  re-quantize the kept part of a cut block at once) and quantizes with the C core ``palu_c.quantize``
  (layout v1) on the same rows; reads of sealed slots are the C core's float32 dequantization cast to the
  store's dtype.
* ``unpack_codes``: the layout-v1 bit stream read with ``np.unpackbits`` (stream bit k = bit k % 32 of word
  k // 32), independent of the store's gather tables.
* hand formulas for ``nbytes``, ``reserved_bytes`` and the capacity.

Comparisons and tolerances (stated, not tuned):

* unquantized reads: exact equality (the store only copies);
* packed codes: identical to the C core's, except where (x - zero) / scale lies within ``TIE_TOL`` of a
  half-integer and the codes are neighbours (docs/quant_format.md allows either); mismatches are counted and
  any other mismatch fails. ``TIE_TOL`` = 8 * 2^-24 * 2^b covers a float32 evaluation (a few roundings of
  quantities up to 2^b). Where a tie went the other way the reference adopts the store's code, so later
  reads and re-quantizations stay comparable;
* scales and zeros: equal up to one float32 rounding (rtol 2^-23);
* reads of a quantized store: equal to the reference (same codes, same float32 dequantization, same cast), and
  within ``scale / 2 + 2 * eps32 * max|x| + eps(dtype) / 2 * |x'|`` of the value that was quantized (the
  layout doc's bound: half a step, float32 rounding of scale and zero, rounding of x' to the dtype).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import palu_c  # noqa: E402
from palu_c.device_store import CHUNK, DeviceLatentStore  # noqa: E402

K_RANKS, V_RANKS, QGROUP = (6, 30), (18, 12), 6  # awkward: 3-bit rows of 18, 90, 54, 36 bits straddle words
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS32 = 2.0 ** -23


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # small tensors gain nothing from intra-op threads on a shared 2-core machine; restored afterwards
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- independent references ----------------------------------------------------------------------------------


def ref_sealed(length: int, residual: int, bits) -> int:
    if bits is None or length <= 0:
        return 0
    return length if residual == 0 else residual * ((length - 1) // residual)


def to_dtype64(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Round float64/float32 values to ``dtype`` (the store's element type), back as float64."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype).double().numpy()


def unpack_codes(words: np.ndarray, n: int, bits: int) -> np.ndarray:
    """(..., W) uint32 layout-v1 rows -> (..., n) codes; also checks that the padding bits are zero."""
    words = np.ascontiguousarray(words, dtype="<u4")
    stream = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    assert not stream[..., n * bits:].any(), "padding bits after the last code must be zero"
    chunks = stream[..., :n * bits].reshape(*words.shape[:-1], n, bits).astype(np.int64)
    return (chunks << np.arange(bits)).sum(-1)


def tie_tol(bits: int) -> float:
    return 8 * 2.0 ** -24 * 2 ** bits


class RefStore:
    """NumPy model of one layer's latent cache (spec sections 2-3), quantizing with the C core."""

    def __init__(self, k_ranks, v_ranks, bits, residual, quant_group, dtype):
        self.ranks = {"k": tuple(k_ranks), "v": tuple(v_ranks)}
        self.bits, self.residual, self.quant_group, self.dtype = bits, residual, quant_group, dtype
        self.B = 0
        self.length = self.sealed = 0
        self.pos = np.zeros((0, 0), np.int64)
        self.val = {s: np.zeros((0, 0, sum(r))) for s, r in self.ranks.items()}  # what attention reads
        self.src = {s: np.zeros((0, 0, sum(r))) for s, r in self.ranks.items()}  # what was quantized
        # per side and group: payload (B, L, W) uint32, scales / zeros (B, L, n_sub) float32 (sealed slots)
        self.q = {s: [None] * len(r) for s, r in self.ranks.items()}

    def groups(self, side):
        off = 0
        for g, r in enumerate(self.ranks[side]):
            yield g, off, r
            off += r

    def append(self, hk: np.ndarray, hv: np.ndarray, pos: np.ndarray) -> None:
        if self.length == 0:
            self.B = hk.shape[0]
            self.pos = np.zeros((self.B, 0), np.int64)
            for s, x in (("k", hk), ("v", hv)):
                self.val[s], self.src[s] = np.zeros((self.B, 0, x.shape[2])), np.zeros((self.B, 0, x.shape[2]))
                self.q[s] = [None] * len(self.ranks[s])
        self.pos = np.concatenate([self.pos, pos], 1)
        for s, x in (("k", hk), ("v", hv)):
            self.val[s] = np.concatenate([self.val[s], x], 1)
            self.src[s] = np.concatenate([self.src[s], x], 1)
        self.length += hk.shape[1]
        self.seal_to(ref_sealed(self.length, self.residual, self.bits))

    def seal_to(self, target: int) -> None:
        """Quantize slots [sealed, target) (rows are independent, so one C call covers every block)."""
        lo = self.sealed
        if target <= lo:
            return
        for s in ("k", "v"):
            self.src[s][:, lo:target] = self.val[s][:, lo:target]
            for g, off, r in self.groups(s):
                x = self.val[s][:, lo:target, off:off + r]
                qt = palu_c.quantize(x.astype(np.float32), self.bits, group_size=self.quant_group or r)
                payload = qt.payload.reshape(self.B, target - lo, -1)
                scales = qt.scales.reshape(self.B, target - lo, -1)
                zeros = qt.zeros.reshape(self.B, target - lo, -1)
                deq = qt.dequantize().reshape(x.shape)
                self.val[s][:, lo:target, off:off + r] = to_dtype64(deq, self.dtype)
                self._put(s, g, lo, target, payload, scales, zeros)
        self.sealed = target

    def _put(self, s, g, lo, hi, payload, scales, zeros):
        old = self.q[s][g]
        if old is None:
            self.q[s][g] = (payload, scales, zeros)
            return
        self.q[s][g] = tuple(np.concatenate([o[:, :lo], new], 1) for o, new in zip(old, (payload, scales, zeros)))

    def crop(self, keep: int) -> None:
        if keep >= self.length:
            return
        if self.bits is not None and ref_sealed(keep, self.residual, self.bits) < self.sealed:
            if self.residual:
                # blocks ending after sealed(keep) re-open: their kept slots keep their dequantized values
                self.sealed = ref_sealed(keep, self.residual, self.bits)
            else:
                # per-token quantization: every kept slot stays sealed as it is, nothing re-opens
                self.sealed = keep
        self.length = keep
        self.pos = self.pos[:, :keep]
        for s in ("k", "v"):
            self.val[s] = self.val[s][:, :keep].copy()
            self.src[s] = self.src[s][:, :keep].copy()
            self.q[s] = [None if q is None else tuple(a[:, :self.sealed] for a in q) for q in self.q[s]]
        if self.bits is not None and self.residual == 0:
            self.seal_to(keep)

    def select(self, index: np.ndarray) -> None:
        self.B = len(index)
        self.pos = self.pos[index]
        for s in ("k", "v"):
            self.val[s], self.src[s] = self.val[s][index], self.src[s][index]
            self.q[s] = [None if q is None else tuple(a[index] for a in q) for q in self.q[s]]

    def read(self, start: int):
        return self.val["k"][:, start:], self.val["v"][:, start:], self.pos[:, start:]


def check_codes(store: DeviceLatentStore, ref: RefStore) -> int:
    """Compare sealed codes, scales and zeros with the C core's; return the count of near-tie mismatches."""
    S = ref.sealed
    ties = 0
    if store.bits is None or S == 0:
        return 0
    bits = store.bits
    for s in ("k", "v"):
        codes_buf, scales_buf, zeros_buf = (getattr(store, f"{s}_{n}") for n in ("codes", "scales", "zeros"))
        for g, off, r in ref.groups(s):
            payload, scales, zeros = ref.q[s][g]
            mine_words = codes_buf[g][:, :S].numpy().view(np.uint32)
            mine_scales, mine_zeros = scales_buf[g][:, :S].numpy(), zeros_buf[g][:, :S].numpy()
            if np.array_equal(mine_words, payload):  # the C core's padding bits are zero, so are ours
                if not (np.array_equal(mine_scales, scales) and np.array_equal(mine_zeros, zeros)):
                    np.testing.assert_allclose(mine_scales, scales, rtol=EPS32, atol=0)
                    np.testing.assert_allclose(mine_zeros, zeros, rtol=EPS32, atol=0)
                continue
            np.testing.assert_allclose(mine_scales, scales, rtol=EPS32, atol=0)
            np.testing.assert_allclose(mine_zeros, zeros, rtol=EPS32, atol=0)
            mine, theirs = unpack_codes(mine_words, r, bits), unpack_codes(payload, r, bits)
            diff = mine != theirs
            sub = ref.quant_group or r
            x = ref.src[s][:, :S, off:off + r]
            sc = np.repeat(scales.astype(np.float64), sub, axis=-1)
            ze = np.repeat(zeros.astype(np.float64), sub, axis=-1)
            t = (x - ze) / np.where(sc > 0, sc, 1.0)
            near_tie = (np.abs(t - np.floor(t) - 0.5) <= tie_tol(bits)) & (np.abs(mine - theirs) == 1)
            assert near_tie[diff].all(), f"{int((diff & ~near_tie).sum())} codes differ away from a rounding tie"
            ties += int(diff.sum())
            # either neighbour is valid at a tie: adopt the store's choice (value by the layout formula)
            msc = np.repeat(mine_scales.astype(np.float64), sub, axis=-1)
            mze = np.repeat(mine_zeros.astype(np.float64), sub, axis=-1)
            ref.val[s][:, :S, off:off + r] = to_dtype64((mine * msc + mze).astype(np.float32), ref.dtype)
            ref.q[s][g] = (mine_words.copy(), mine_scales.copy(), mine_zeros.copy())
    return ties


def check(store: DeviceLatentStore, ref: RefStore, rng) -> int:
    """Counters, codes and reads (at 0 and at a random start) against the reference; returns tie count."""
    assert store.length == ref.length
    assert store.sealed == ref.sealed == ref_sealed(ref.length, store.residual, store.bits)
    if ref.length == 0:
        return 0
    assert store.batch == ref.B
    ties = check_codes(store, ref)
    for start in {0, int(rng.integers(0, ref.length + 1))}:
        got = store.read(start)
        want = ref.read(start)
        for name, x, y in zip(("hk", "hv", "pos"), got, want):
            assert x.shape == y.shape, name
            assert x.dtype == (torch.int32 if name == "pos" else store.dtype), name
            np.testing.assert_array_equal(x.double().numpy(), y, err_msg=f"{name} read from slot {start}")
    if store.bits is not None:
        check_error_bound(store, ref)
    return ties


def check_error_bound(store, ref) -> None:
    """Sealed slots read within the layout doc's bound of the values that were quantized."""
    S = ref.sealed
    if S == 0:
        return
    eps = torch.finfo(store.dtype).eps
    for s in ("k", "v"):
        for g, off, r in ref.groups(s):
            sub = ref.quant_group or r
            _, scales, _ = ref.q[s][g]
            x = ref.src[s][:, :S, off:off + r]
            got = ref.val[s][:, :S, off:off + r]
            xs = x.reshape(*x.shape[:-1], r // sub, sub)
            amax = np.abs(xs).max(-1, keepdims=True)
            bound = scales[..., None] / 2 + 2 * EPS32 * amax + eps / 2 * np.abs(got.reshape(xs.shape))
            assert (np.abs(got.reshape(xs.shape) - xs) <= bound).all()


def random_latents(rng, B, T, dtype):
    """(B, T, Rk), (B, T, Rv) in dtype with per-channel scales and offsets (groups of varied ranges)."""
    out = []
    for R in (sum(K_RANKS), sum(V_RANKS)):
        x = rng.standard_normal((B, T, R)) * rng.uniform(0.1, 4.0, R) + rng.uniform(-2.0, 2.0, R)
        out.append(torch.from_numpy(x).to(dtype))
    return out


def append_both(store, ref, rng, B, T, dtype):
    hk, hv = random_latents(rng, B, T, dtype)
    pos = torch.from_numpy(rng.integers(0, 2 ** 31 - 1, (B, T))).to(torch.int32)
    store.append(hk, hv, pos)
    ref.append(hk.double().numpy(), hv.double().numpy(), pos.numpy().astype(np.int64))


def chunk_sizes(rng, total):
    """Random chunk sizes summing to ``total``: prefill-like chunks mixed with single-token decode steps."""
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.choice([1, 2, int(rng.integers(1, 70)), int(rng.integers(1, 70))])))
    sizes[-1] -= sum(sizes) - total
    return [t for t in sizes if t > 0]


def make(bits=None, residual=0, quant_group=None, dtype=torch.float32, max_tokens=None, k=K_RANKS, v=V_RANKS):
    store = DeviceLatentStore(k, v, bits=bits, residual=residual, quant_group=quant_group, dtype=dtype,
                              device=torch.device("cpu"), max_tokens=max_tokens)
    return store, RefStore(k, v, bits, residual, quant_group, dtype)


def ref_nbytes(B, L, bits, residual, quant_group, dtype, k=K_RANKS, v=V_RANKS) -> int:
    item = torch.finfo(dtype).bits // 8
    total = B * L * 4
    if bits is None:
        return total + B * L * (sum(k) + sum(v)) * item
    S = ref_sealed(L, residual, bits)
    total += B * (L - S) * (sum(k) + sum(v)) * item
    for r in k + v:
        total += B * S * (math.ceil(r * bits / 32) * 4 + 2 * (r // (quant_group or r)) * 4)
    return total


def ref_reserved(B, C, bits, residual, quant_group, dtype, k=K_RANKS, v=V_RANKS) -> int:
    item = torch.finfo(dtype).bits // 8
    total = B * C * 4
    if bits is None:
        return total + B * C * (sum(k) + sum(v)) * item
    total += B * residual * (sum(k) + sum(v)) * item
    for r in k + v:
        total += B * C * (math.ceil(r * bits / 32) * 4 + 2 * (r // (quant_group or r)) * 4)
    return total


# ---- tests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_unquantized_appends_read_views_and_chunk_growth(rng, dtype):
    store, ref = make(dtype=dtype)
    B = int(rng.integers(1, 5))
    assert store.capacity == store.batch == store.length == store.nbytes == store.reserved_bytes == 0
    for T in chunk_sizes(rng, 600):
        append_both(store, ref, rng, B, T, dtype)
        check(store, ref, rng)
        assert store.capacity == -(-ref.length // CHUNK) * CHUNK  # whole chunks, no more than needed
        assert store.nbytes == ref_nbytes(B, ref.length, None, 0, None, dtype)
        assert store.reserved_bytes == ref_reserved(B, store.capacity, None, 0, None, dtype)
    hk, hv, pos = store.read(5)
    # views of the buffers (no copy on the hot path)
    assert hk.data_ptr() == store.k_latent[:, 5:].data_ptr() and hv.data_ptr() == store.v_latent[:, 5:].data_ptr()
    assert pos.data_ptr() == store.positions[:, 5:].data_ptr()


def test_non_contiguous_inputs(rng):
    store, ref = make(bits=3, residual=5, quant_group=QGROUP)
    for T in (9, 1, 6):
        hk, hv = random_latents(rng, 4, T, torch.float32)
        hk_t = hk.transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch-minor strides
        hv_s = torch.cat([hv, hv], 2)[:, :, ::2]
        hv_s[...] = hv
        pos = torch.from_numpy(rng.integers(0, 1000, (T, 4))).to(torch.int32).t()
        store.append(hk_t, hv_s, pos)
        ref.append(hk.double().numpy(), hv.double().numpy(), pos.numpy().astype(np.int64))
        check(store, ref, rng)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_group", [None, QGROUP])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("residual", [0, 1, 5, 128])
def test_quantized_appends_match_c_core(rng, residual, bits, quant_group, dtype):
    store, ref = make(bits, residual, quant_group, dtype)
    B = int(rng.integers(1, 4))
    ties = 0
    for T in chunk_sizes(rng, 300):  # past the 256-slot chunk and two 128-slot blocks
        append_both(store, ref, rng, B, T, dtype)
        ties += check(store, ref, rng)
        assert store.capacity == -(-ref.length // CHUNK) * CHUNK
        assert store.nbytes == ref_nbytes(B, ref.length, bits, residual, quant_group, dtype)
        assert store.reserved_bytes == ref_reserved(B, store.capacity, bits, residual, quant_group, dtype)
    # every one of ~300 * B * (Rk + Rv) codes was compared; near-tie mismatches are allowed, and rare
    assert ties <= 1e-3 * B * ref.length * (sum(K_RANKS) + sum(V_RANKS))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("residual", [0, 1, 5, 128])
def test_crop_into_sealed_blocks_then_append(rng, residual, bits, dtype):
    store, ref = make(bits, residual, QGROUP if bits == 3 else None, dtype)
    B = 3
    for T in chunk_sizes(rng, 290):
        append_both(store, ref, rng, B, T, dtype)
    check(store, ref, rng)
    for _ in range(4):
        L = ref.length
        # into a sealed block, exactly on a block boundary, inside the window, everything
        choices = [int(rng.integers(0, max(ref.sealed, 1))), ref_sealed(L, residual, bits), L - 1, 0]
        keep = int(rng.choice([c for c in choices if 0 <= c <= L]))
        before = [x.clone() for x in store.read(0)]
        store.crop(keep)
        ref.crop(keep)
        check(store, ref, rng)
        if residual:  # re-opened slots read exactly what attention read before the crop
            for x, y in zip(store.read(0), before):
                assert torch.equal(x, y[:, :keep])
        for T in chunk_sizes(rng, int(rng.integers(1, 140))):
            append_both(store, ref, rng, B, T, dtype)
            check(store, ref, rng)


def test_crop_residual_zero_reopens_nothing(rng):
    # appends of 7 and 5 slots, all sealed at once; crop(4) keeps slots 0..3 exactly as they were sealed
    store, ref = make(4, 0, None)
    append_both(store, ref, rng, 2, 7, torch.float32)
    append_both(store, ref, rng, 2, 5, torch.float32)
    before = [x.clone() for x in store.read(0)]
    store.crop(4)
    ref.crop(4)
    check(store, ref, rng)
    assert store.sealed == 4
    for x, y in zip(store.read(0), before):
        assert torch.equal(x, y[:, :4])
    store.crop(4)  # no-op
    check(store, ref, rng)
    store.crop(0)
    ref.crop(0)
    check(store, ref, rng)


@pytest.mark.parametrize("max_tokens", [None, 700])
@pytest.mark.parametrize("bits,residual", [(None, 0), (3, 0), (2, 5), (8, 128)])
def test_select_permutations_repeats_and_subsets(rng, bits, residual, max_tokens):
    store, ref = make(bits, residual, QGROUP, max_tokens=max_tokens)
    B = 4
    for T in chunk_sizes(rng, 270):
        append_both(store, ref, rng, B, T, torch.float32)
    cap = store.capacity
    ptrs = [b.data_ptr() for b in store._buffers()]
    for kind in ("perm", "beam", "subset", "repeat_interleave", "perm"):
        if kind == "perm":
            index = rng.permutation(ref.B)
        elif kind == "beam":
            index = rng.integers(0, ref.B, ref.B)
        elif kind == "subset":
            index = np.sort(rng.choice(ref.B, max(ref.B - 1, 1), replace=False))
        else:
            index = np.arange(ref.B).repeat(3)
        same_batch = len(index) == ref.B
        store.select(torch.from_numpy(index).long())
        ref.select(index)
        check(store, ref, rng)
        assert store.capacity == cap and store.batch == len(index)
        if max_tokens is not None and same_batch:  # fixed capacity, same batch: rewritten in place
            assert [b.data_ptr() for b in store._buffers()] == ptrs
        ptrs = [b.data_ptr() for b in store._buffers()]
        for T in (1, int(rng.integers(1, 20))):
            append_both(store, ref, rng, ref.B, T, torch.float32)
            check(store, ref, rng)


@pytest.mark.parametrize("bits,residual", [(None, 0), (4, 0), (3, 16)])
def test_fixed_capacity_never_moves_and_overflow_raises(rng, bits, residual):
    store, ref = make(bits, residual, None, max_tokens=300)
    assert store.capacity == 0 and store.reserved_bytes == 0  # allocated at the first append (batch known)
    B = 2
    append_both(store, ref, rng, B, 5, torch.float32)
    assert store.capacity == 512  # 300 rounded up to whole chunks
    ptrs = [b.data_ptr() for b in store._buffers()]
    reserved = store.reserved_bytes
    assert reserved == ref_reserved(B, 512, bits, residual, None, torch.float32)
    for T in chunk_sizes(rng, 400):
        append_both(store, ref, rng, B, T, torch.float32)
        check(store, ref, rng)
        store.crop(ref.length - 1)
        ref.crop(ref.length - 1)
        store.select(torch.tensor([1, 0]))
        ref.select(np.array([1, 0]))
        assert [b.data_ptr() for b in store._buffers()] == ptrs and store.reserved_bytes == reserved
    check(store, ref, rng)
    room = 512 - ref.length
    hk, hv = random_latents(rng, B, room + 1, torch.float32)
    before = [x.clone() for x in store.read(0)]
    with pytest.raises(ValueError, match=r"max_tokens=300"):
        store.append(hk, hv, torch.zeros((B, room + 1), dtype=torch.int32))
    # nothing was written: same counters, same reads, same buffers
    assert store.length == ref.length
    for x, y in zip(store.read(0), before):
        assert torch.equal(x, y)
    append_both(store, ref, rng, B, room, torch.float32)  # exactly full is fine
    check(store, ref, rng)
    assert [b.data_ptr() for b in store._buffers()] == ptrs
    # reset keeps a fixed reservation (captured graphs keep their addresses)
    store.reset()
    assert store.length == store.sealed == store.nbytes == 0 and store.capacity == 512
    assert [b.data_ptr() for b in store._buffers()] == ptrs
    ref = RefStore(K_RANKS, V_RANKS, bits, residual, None, torch.float32)
    append_both(store, ref, rng, B, 7, torch.float32)
    check(store, ref, rng)


def test_batch_change_on_empty_store_recreates_buffers(rng):
    for max_tokens in (None, 10):
        store, ref = make(4, 3, None, max_tokens=max_tokens)
        append_both(store, ref, rng, 3, 8, torch.float32)
        hk, hv = random_latents(rng, 5, 2, torch.float32)
        with pytest.raises(ValueError, match="batch of 5"):
            store.append(hk, hv, torch.zeros((5, 2), dtype=torch.int32))
        store.crop(0)
        ref = RefStore(K_RANKS, V_RANKS, 4, 3, None, torch.float32)
        append_both(store, ref, rng, 5, 9, torch.float32)
        check(store, ref, rng)
        assert store.batch == 5 and store.capacity == 256 and store.positions.shape == (5, 256)


def test_reset_releases_a_growable_store(rng):
    store, ref = make(3, 5, QGROUP)
    append_both(store, ref, rng, 2, 30, torch.float32)
    store.reset()
    assert (store.batch, store.length, store.sealed, store.capacity, store.nbytes, store.reserved_bytes) == (0,) * 6
    assert store.positions is None and store.k_codes == [] and store.k_window is None
    hk, hv, pos = store.read(0)
    assert hk.shape == (0, 0, sum(K_RANKS)) and hv.shape == (0, 0, sum(V_RANKS)) and pos.shape == (0, 0)
    ref = RefStore(K_RANKS, V_RANKS, 3, 5, QGROUP, torch.float32)
    append_both(store, ref, rng, 3, 11, torch.float32)
    check(store, ref, rng)


def test_constant_groups_and_non_finite_values(rng):
    store, ref = make(2, 0, QGROUP)
    hk, hv = random_latents(rng, 2, 4, torch.float32)
    hk[0, 1, :6] = 3.25  # a constant group: scale 0, code 0, read back exactly
    hk[1, 2, :6] = 0.0
    pos = torch.zeros((2, 4), dtype=torch.int32)
    store.append(hk, hv, pos)
    ref.append(hk.double().numpy(), hv.double().numpy(), pos.numpy().astype(np.int64))
    check(store, ref, rng)
    got = store.read(0)[0]
    assert (got[0, 1, :6] == 3.25).all() and (got[1, 2, :6] == 0).all()
    assert (store.k_scales[0][0, 1] == 0).all()
    # not validated here (it would synchronize a device): a NaN or Inf makes its own group read non-finite,
    # never finite garbage, and leaves the other groups alone
    bad = hk.clone()
    bad[0, 0, 2] = float("nan")
    bad[1, 3, 20] = float("inf")  # key group 1 (channels 6..35), sub-group of channels 18..23
    store.append(bad, hv, pos)
    got = store.read(4)[0]
    assert not torch.isfinite(got[0, 0, :6]).any() and not torch.isfinite(got[1, 3, 18:24]).any()
    ok = torch.ones_like(got, dtype=torch.bool)
    ok[0, 0, :6] = False
    ok[1, 3, 18:24] = False
    assert torch.isfinite(got[ok]).all()


def test_float64_quantized_matches_c_core(rng):
    store, ref = make(3, 5, QGROUP, torch.float64)
    for T in chunk_sizes(rng, 40):
        append_both(store, ref, rng, 2, T, torch.float64)
        check(store, ref, rng)


def test_nbytes_hand_formula_small_case():
    # one key group of rank 10 (3 bits: 30 bits -> 1 word), one value group of rank 20 (2 words), B = 2,
    # residual 4, 11 tokens: sealed = 8, window 3
    store = DeviceLatentStore([10], [20], bits=3, residual=4, quant_group=None, dtype=torch.float16,
                              device="cpu")
    store.append(torch.zeros(2, 11, 10, dtype=torch.float16), torch.zeros(2, 11, 20, dtype=torch.float16),
                 torch.zeros(2, 11, dtype=torch.int32))
    positions = 2 * 11 * 4
    sealed = 2 * 8 * ((1 * 4 + 4 + 4) + (2 * 4 + 4 + 4))
    window = 2 * 3 * (10 + 20) * 2
    assert store.sealed == 8 and store.nbytes == positions + sealed + window
    reserved = 2 * 256 * 4 + 2 * 256 * ((4 + 8) + (8 + 8)) + 2 * 4 * 30 * 2
    assert store.reserved_bytes == reserved


BAD_ARGS = [
    (dict(k_ranks=[]), ValueError, "k_ranks"),
    (dict(v_ranks=[16, 0]), ValueError, r"v_ranks\[1\]"),
    (dict(k_ranks=[16.0]), TypeError, r"k_ranks\[0\]"),
    (dict(k_ranks=16), TypeError, "k_ranks"),
    (dict(bits=5), ValueError, "bits"),
    (dict(bits=True), ValueError, "bits"),
    (dict(bits=4.0), ValueError, "bits"),
    (dict(residual=-1), ValueError, "residual"),
    (dict(residual=2.5), TypeError, "residual"),
    (dict(quant_group=0), ValueError, "quant_group"),
    (dict(quant_group=5), ValueError, r"quant_group.*does not divide \[16, 32\]"),
    (dict(dtype=torch.int32), TypeError, "dtype"),
    (dict(dtype="float32"), TypeError, "dtype"),
    (dict(device="nonsense"), TypeError, "device"),
    (dict(max_tokens=0), ValueError, "max_tokens"),
    (dict(max_tokens=True), TypeError, "max_tokens"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_ARGS)
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(k_ranks=[16, 32], v_ranks=[16], bits=4, residual=8, quant_group=8, dtype=torch.float16,
                device="cpu", max_tokens=None)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        DeviceLatentStore(args.pop("k_ranks"), args.pop("v_ranks"), **args)
