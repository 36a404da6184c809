"""CUDA tests of DeviceLatentStore (palu_c/device_store.py): the store on CUDA tensors against the same store on
CPU tensors, plus what only a GPU shows: no host synchronization in the steady state, addresses and allocator
figures that stay fixed with ``max_tokens``, and a CUDA-graph capture of one decode step.

Reference: the same store on the CPU, fed the same inputs; it is itself checked against a NumPy model of the
spec and against the C core ``palu_c.quantize`` in tests/test_device_store.py. For the codes, the C core is
also called directly here on the appended rows.

Tolerances (stated, not tuned): both devices encode and decode in float64, so codes, scales, zeros and reads
are expected bit-identical; docs/quant_format.md still allows a neighbouring code where (x - zero) / scale lies
within rounding of a half-integer, so such mismatches (|t - half-integer| <= TIE_TOL = 8 * 2^-24 * 2^b, the
rounding of a float32 evaluation) are counted and allowed, any other is a failure. Scales and zeros: one
float32 rounding (rtol 2^-23). Reads: exact, except elements whose code went the other way at a tie, which may
move by one quantization step (their scale, + one dtype rounding); after such a tie the CPU store adopts the
CUDA store's buffers so later steps stay comparable. Unquantized storage only copies: exact.

Skips (module level, before torch is imported) unless palu_c was built with CUDA and torch sees a GPU; the
store itself is pure torch, but the sanitizer suite must never import torch (tests/gpu/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import palu_c

if not palu_c.build_info()["cuda_compiled"]:
    pytest.skip("palu_c was built without CUDA (PALU_C_CUDA=0 or no nvcc)", allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)

from palu_c.device_store import CHUNK, DeviceLatentStore  # noqa: E402

K_RANKS, V_RANKS, QGROUP = (6, 30), (18, 12), 6  # 3-bit rows of 18, 90, 54, 36 bits: codes straddle words
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS32 = 2.0 ** -23
CUDA = torch.device("cuda")


def tie_tol(bits: int) -> float:
    return 8 * 2.0 ** -24 * 2 ** bits


def unpack_codes(words: np.ndarray, n: int, bits: int) -> np.ndarray:
    """(..., W) uint32 layout-v1 rows -> (..., n) codes (stream bit k = bit k % 32 of word k // 32)."""
    words = np.ascontiguousarray(words, dtype="<u4")
    stream = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    chunks = stream[..., :n * bits].reshape(*words.shape[:-1], n, bits).astype(np.int64)
    return (chunks << np.arange(bits)).sum(-1)


def make_pair(bits, residual, quant_group, dtype, max_tokens=None):
    def one(device):
        return DeviceLatentStore(K_RANKS, V_RANKS, bits=bits, residual=residual, quant_group=quant_group,
                                 dtype=dtype, device=device, max_tokens=max_tokens)
    return one(CUDA), one(torch.device("cpu"))


def random_step(rng, B, T, dtype):
    """Host tensors hk (B, T, Rk), hv (B, T, Rv) in dtype (varied per-channel ranges), pos (B, T) int32."""
    out = []
    for R in (sum(K_RANKS), sum(V_RANKS)):
        x = rng.standard_normal((B, T, R)) * rng.uniform(0.1, 4.0, R) + rng.uniform(-2.0, 2.0, R)
        out.append(torch.from_numpy(x).to(dtype))
    out.append(torch.from_numpy(rng.integers(0, 2 ** 31 - 1, (B, T))).to(torch.int32))
    return out


def append_pair(gpu, cpu, step):
    gpu.append(*(t.to(CUDA) for t in step))
    cpu.append(*step)


def chunk_sizes(rng, total):
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.choice([1, 2, int(rng.integers(1, 70)), int(rng.integers(1, 70))])))
    sizes[-1] -= sum(sizes) - total
    return [t for t in sizes if t > 0]


def groups(ranks):
    off = 0
    for g, r in enumerate(ranks):
        yield g, off, r
        off += r


def adopt(cpu: DeviceLatentStore, gpu: DeviceLatentStore) -> None:
    """Copy the CUDA store's filled slots into the CPU store (after a legal tie, keeps later steps comparable)."""
    for (dst, n), (src, _) in zip(cpu._filled(), gpu._filled()):
        if n:
            dst[:, :n] = src[:, :n].cpu()


def steps_of(store: DeviceLatentStore, side: str, lo: int, hi: int) -> np.ndarray:
    """(B, hi - lo, R) quantization step (scale) of every element of slots [lo, hi) (0 for window slots)."""
    ranks = store.k_ranks if side == "k" else store.v_ranks
    out = np.zeros((store.batch, hi - lo, sum(ranks)))
    top = min(hi, store.sealed)
    if store.bits is None or top <= lo:
        return out
    for g, off, r in groups(ranks):
        sub = store.quant_group or r
        sc = getattr(store, f"{side}_scales")[g][:, lo:top].cpu().double().numpy()
        out[:, :top - lo, off:off + r] = np.repeat(sc, sub, axis=-1)
    return out


def assert_stores_match(gpu: DeviceLatentStore, cpu: DeviceLatentStore, rng) -> int:
    """Counters, positions and reads of the CUDA store against the CPU store; returns the tie count."""
    assert (gpu.batch, gpu.length, gpu.sealed, gpu.capacity) == (cpu.batch, cpu.length, cpu.sealed, cpu.capacity)
    assert gpu.nbytes == cpu.nbytes and gpu.reserved_bytes == cpu.reserved_bytes
    ties = 0
    for start in {0, int(rng.integers(0, cpu.length + 1))}:
        got, want = gpu.read(start), cpu.read(start)
        assert all(x.device.type == "cuda" for x in got)
        assert torch.equal(got[2].cpu(), want[2])
        for side, x, y in (("k", got[0], want[0]), ("v", got[1], want[1])):
            assert x.dtype == y.dtype == cpu.dtype and x.shape == y.shape
            x, y = x.cpu().double().numpy(), y.double().numpy()
            diff = x != y
            if diff.any():
                step = steps_of(cpu, side, start, cpu.length)
                eps = torch.finfo(cpu.dtype).eps
                ok = np.abs(x - y) <= step * (1 + 2 * EPS32) + eps * np.abs(y)
                assert (ok & (step > 0))[diff].all(), f"{side}: reads differ by more than a tie's step"
                ties += int(diff.sum())
    if ties:
        assert ties <= 1e-3 * cpu.batch * cpu.length * (cpu.k_rank + cpu.v_rank)  # ties are rare on random data
        adopt(cpu, gpu)
    return ties


def check_codes_against_c_core(gpu: DeviceLatentStore, src: dict) -> int:
    """Sealed codes / scales / zeros of the CUDA store against palu_c.quantize on the appended rows."""
    S, bits = gpu.sealed, gpu.bits
    ties = 0
    for side, ranks in (("k", gpu.k_ranks), ("v", gpu.v_ranks)):
        for g, off, r in groups(ranks):
            x = src[side][:, :S, off:off + r]
            qt = palu_c.quantize(x.astype(np.float32), bits, group_size=gpu.quant_group or r)
            words = getattr(gpu, f"{side}_codes")[g][:, :S].cpu().numpy().view(np.uint32)
            scales = getattr(gpu, f"{side}_scales")[g][:, :S].cpu().numpy()
            zeros = getattr(gpu, f"{side}_zeros")[g][:, :S].cpu().numpy()
            np.testing.assert_allclose(scales.reshape(qt.scales.shape), qt.scales, rtol=EPS32, atol=0)
            np.testing.assert_allclose(zeros.reshape(qt.zeros.shape), qt.zeros, rtol=EPS32, atol=0)
            words = words.reshape(qt.payload.shape)
            if np.array_equal(words, qt.payload):
                continue
            mine, theirs = unpack_codes(words, r, bits), unpack_codes(qt.payload, r, bits)
            diff = mine != theirs
            sub = gpu.quant_group or r
            sc = np.repeat(qt.scales.astype(np.float64), sub, axis=-1)
            ze = np.repeat(qt.zeros.astype(np.float64), sub, axis=-1)
            t = (x.reshape(mine.shape) - ze) / np.where(sc > 0, sc, 1.0)
            near_tie = (np.abs(t - np.floor(t) - 0.5) <= tie_tol(bits)) & (np.abs(mine - theirs) == 1)
            assert near_tie[diff].all(), f"{int((diff & ~near_tie).sum())} codes differ away from a rounding tie"
            ties += int(diff.sum())
    return ties


# ---- tests ---------------------------------------------------------------------------------------------------


CONFIGS = [(None, 0, None)] + [(b, r, q) for r in (0, 5, 128) for b in (2, 3, 4, 8) for q in (None, QGROUP)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits,residual,quant_group", CONFIGS)
def test_appends_match_cpu_store_and_c_core(rng, bits, residual, quant_group, dtype):
    gpu, cpu = make_pair(bits, residual, quant_group, dtype)
    B = int(rng.integers(1, 5))
    src = {"k": np.zeros((B, 0, sum(K_RANKS))), "v": np.zeros((B, 0, sum(V_RANKS)))}
    ties = 0
    for T in chunk_sizes(rng, 300):  # past the 256-slot chunk and two 128-slot blocks
        step = random_step(rng, B, T, dtype)
        append_pair(gpu, cpu, step)
        src = {"k": np.concatenate([src["k"], step[0].double().numpy()], 1),
               "v": np.concatenate([src["v"], step[1].double().numpy()], 1)}
        ties += assert_stores_match(gpu, cpu, rng)
        if bits is not None and gpu.sealed:
            ties += check_codes_against_c_core(gpu, src)
        assert gpu.capacity == -(-gpu.length // CHUNK) * CHUNK
    assert ties <= 1e-3 * B * gpu.length * (sum(K_RANKS) + sum(V_RANKS))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits,residual,max_tokens", [(None, 0, None), (3, 0, None), (4, 5, 700), (2, 128, None),
                                                      (8, 1, 700)])
def test_crop_select_match_cpu_store(rng, bits, residual, max_tokens, dtype):
    gpu, cpu = make_pair(bits, residual, QGROUP, dtype, max_tokens)
    B = 4
    for T in chunk_sizes(rng, 280):
        append_pair(gpu, cpu, random_step(rng, B, T, dtype))
    assert_stores_match(gpu, cpu, rng)
    for _ in range(6):
        L = cpu.length
        op = rng.choice(["crop", "select"])
        if op == "crop":
            keep = int(rng.choice([int(rng.integers(0, max(cpu.sealed, 1))), cpu.sealed, L - 1, 0]))
            gpu.crop(keep)
            cpu.crop(keep)
        else:  # beam reorder (a permutation or with repeats), or repeat_interleave then a subset (batch 5)
            kind = rng.choice(["perm", "beam", "repeat"])
            index = {"perm": lambda: rng.permutation(cpu.batch),
                     "beam": lambda: rng.integers(0, cpu.batch, cpu.batch),
                     "repeat": lambda: np.arange(cpu.batch).repeat(2)[:5]}[kind]()
            gpu.select(torch.from_numpy(index).long().to(CUDA))
            cpu.select(torch.from_numpy(index).long())
        assert_stores_match(gpu, cpu, rng)
        for T in chunk_sizes(rng, int(rng.integers(1, 60))):
            if max_tokens is not None and cpu.length + T > cpu.capacity:
                break
            append_pair(gpu, cpu, random_step(rng, cpu.batch, T, dtype))
            assert_stores_match(gpu, cpu, rng)


@pytest.mark.parametrize("bits,residual", [(None, 0), (3, 0), (4, 8), (2, 128)])
def test_steady_state_never_synchronizes(rng, bits, residual):
    gpu, _ = make_pair(bits, residual, QGROUP, torch.float16, max_tokens=512)
    B = 3
    hk, hv, pos = (t.to(CUDA) for t in random_step(rng, B, 40, torch.float16))
    gpu.append(hk, hv, pos)  # first append: allocates and builds the index tables (host-to-device copies)
    steps = [tuple(t.to(CUDA) for t in random_step(rng, B, T, torch.float16)) for T in [1] * 20 + [7, 1]]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing call below raises
    try:
        for step in steps:  # single-token decode steps, some of them sealing a block, then a chunk
            gpu.append(*step)
            gpu.read(0)
            gpu.read(gpu.length - 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("bits,residual", [(None, 0), (3, 0), (4, 8)])
def test_fixed_capacity_addresses_and_allocator_figures(rng, bits, residual):
    gpu, cpu = make_pair(bits, residual, None, torch.bfloat16, max_tokens=300)
    B = 2
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    append_pair(gpu, cpu, random_step(rng, B, 5, torch.bfloat16))
    torch.cuda.synchronize()
    after_first = torch.cuda.memory_allocated()
    assert gpu.capacity == 512 and after_first - before >= gpu.reserved_bytes  # the reservation is visible
    ptrs = [b.data_ptr() for b in gpu._buffers()]
    for T in chunk_sizes(rng, 400):
        append_pair(gpu, cpu, random_step(rng, B, T, torch.bfloat16))
        gpu.crop(gpu.length - 1)
        cpu.crop(cpu.length - 1)
        gpu.select(torch.tensor([1, 0], device=CUDA))
        cpu.select(torch.tensor([1, 0]))
        assert [b.data_ptr() for b in gpu._buffers()] == ptrs
    assert_stores_match(gpu, cpu, rng)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == after_first  # temporaries freed, nothing grew
    room = gpu.capacity - gpu.length
    hk, hv, pos = (t.to(CUDA) for t in random_step(rng, B, room + 1, torch.bfloat16))
    with pytest.raises(ValueError, match=r"max_tokens=300"):
        gpu.append(hk, hv, pos)
    assert gpu.length == cpu.length and [b.data_ptr() for b in gpu._buffers()] == ptrs
    gpu.reset()
    assert gpu.capacity == 512 and [b.data_ptr() for b in gpu._buffers()] == ptrs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("bits,residual,prefill", [
    (None, 0, 37),   # unquantized: one slot written, views read
    (4, 8, 20),      # window 4 of 8: the step only writes the window
    (4, 8, 24),      # window full: the step seals a block of 8 (quantize kernels inside the graph)
    (3, 0, 37),      # residual 0: the step quantizes its own token
])
def test_cuda_graph_capture_of_one_step_replays(rng, bits, residual, prefill, dtype):
    B = 3
    gpu, cpu = make_pair(bits, residual, QGROUP, dtype, max_tokens=64)
    append_pair(gpu, cpu, random_step(rng, B, prefill, dtype))
    # warm up the same op sequence on a throwaway store, on a side stream (torch.cuda.graph's recipe)
    warm, _ = make_pair(bits, residual, QGROUP, dtype, max_tokens=64)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm.append(*(t.to(CUDA) for t in random_step(rng, B, prefill, dtype)))
        warm.append(*(t.to(CUDA) for t in random_step(rng, B, 1, dtype)))
        warm.read(0)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    static = [torch.zeros_like(t, device=CUDA) for t in random_step(rng, B, 1, dtype)]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gpu.append(*static)
        out = gpu.read(0)
    assert gpu.length == prefill + 1  # the counters moved at capture; the kernels run at replay

    # a step that seals the window reads window slots it then overwrites: valid once, from the captured state;
    # any other step rewrites the same slots from its inputs, so a second replay (new inputs) is valid too
    seals_window = bits is not None and residual > 0 and prefill - residual * ((prefill - 1) // residual) == residual
    for i in range(1 if seals_window else 2):
        step = random_step(rng, B, 1, dtype)
        for s, t in zip(static, step):
            s.copy_(t)
        graph.replay()
        torch.cuda.synchronize()
        for x, y in zip(out, gpu.read(0)):  # the graph's outputs are what an eager read gives now
            assert torch.equal(x, y)
        if i:
            cpu.crop(prefill)
        cpu.append(*step)
        assert_stores_match(gpu, cpu, rng)
