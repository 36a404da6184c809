"""CUDA tests of palu_c.hadamard on torch tensors (kernels/hadamard.cu, hadamard_cuda in csrc/py_hadamard.c,
the DLPack intake in csrc/py_dlpack.c).

Reference: the CPU path in float64 (palu_c.hadamard on the same, already quantized, inputs upcast to
float64): the `_ref` twin of the kernel, itself checked against an independent NumPy construction in
tests/test_hadamard.py; one test also checks x @ hadamard_matrix(n).T directly.

Tolerances (stated, not tuned), elementwise and relative to the row's 2-norm, because |y_i| <= ||x_row||
for an orthonormal map and the kernel's error is a few roundings of that size: |y - ref| <= RTOL * ||x_row||
with RTOL 1e-5 for float32 (fp32 arithmetic over log2(n) + p terms), 2e-3 for float16 (one final rounding,
eps/2 = 4.9e-4, plus the fp32 work), 1e-2 for bfloat16 (eps/2 = 3.9e-3). NaN never passes.

Skips (module level, before torch is imported) unless palu_c was built with CUDA and torch sees a GPU.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import palu_c

if not palu_c.build_info()["cuda_compiled"]:
    pytest.skip("palu_c was built without CUDA (PALU_C_CUDA=0 or no nvcc)", allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
POW2 = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 8192, 16384]
OTHER = [3, 7, 12, 19, 20, 24, 48, 80, 96, 112, 127, 160, 176, 192, 4097, 10240, 11264, 12288, 14336]
ROWS = [1, 7, 19, 4097]
# rows x n pairs, capped at 2^22 elements so the float64 CPU reference stays fast
CASES = [(r, n) for n in POW2 + OTHER for r in ROWS if r * n <= 1 << 22]


def cpu_reference(x: "torch.Tensor", inverse: bool = False) -> np.ndarray:
    x64 = x.detach().to("cpu", torch.float64).numpy()
    return palu_c.hadamard(x64, inverse=inverse)


def assert_matches(y: "torch.Tensor", x: "torch.Tensor", inverse: bool = False) -> None:
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    got = y.to("cpu", torch.float64).numpy()
    assert np.isfinite(got).all(), "non-finite output (unwritten element or overflow)"
    ref = cpu_reference(x, inverse)
    x64 = x.detach().to("cpu", torch.float64).numpy()
    tol = RTOL[x.dtype] * np.linalg.norm(x64, axis=-1, keepdims=True)
    err = np.abs(got - ref)
    assert (err <= tol).all(), f"max error {err.max():.3e} vs tol {tol.min():.3e}"


def run_direct(x, out, inverse=False, versioned=True):
    """Call the C entry point the way palu_c.hadamard does, on the current stream (CPU tensors: no stream)."""
    handle = torch.cuda.current_stream().cuda_stream
    dl = handle if handle != 0 else 1
    kw = {"max_version": (1, 3)} if versioned else {}

    def capsule(t):
        return t.__dlpack__(stream=dl if t.is_cuda else None, **kw)

    palu_c._C.hadamard_cuda(capsule(x), capsule(out), handle, inverse=inverse)


def randn(shape, dtype, gen):
    return torch.randn(shape, generator=gen, device="cuda", dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, n", CASES)
def test_matches_cpu_reference_poisoned_output(torch_gen, rows, n, dtype):
    x = randn((rows, n), dtype, torch_gen)
    out = torch.full_like(x, float("nan"))  # every element must be written
    run_direct(x, out)
    torch.cuda.synchronize()
    assert_matches(out, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [12, 20, 64, 112, 176, 4096, 12288])
def test_wrapper_forward_and_inverse(torch_gen, n, dtype):
    x = randn((19, n), dtype, torch_gen)
    y = palu_c.hadamard(x)
    assert isinstance(y, torch.Tensor) and y.is_contiguous()
    assert_matches(y, x)
    assert_matches(palu_c.hadamard(x, inverse=True), x, inverse=True)


@pytest.mark.parametrize("n", [12, 20, 7, 128])
def test_against_matrix(torch_gen, n):
    x = randn((5, n), torch.float32, torch_gen)
    h = palu_c.hadamard_matrix(n)
    ref = x.double().cpu().numpy() @ h.T
    got = palu_c.hadamard(x).double().cpu().numpy()
    tol = RTOL[torch.float32] * np.linalg.norm(x.double().cpu().numpy(), axis=-1, keepdims=True)
    assert (np.abs(got - ref) <= tol).all()


@pytest.mark.parametrize("versioned", [True, False], ids=["dltensor_versioned", "dltensor"])
def test_both_capsule_kinds(torch_gen, versioned):
    x = randn((7, 48), torch.float16, torch_gen)
    out = torch.full_like(x, float("nan"))
    run_direct(x, out, versioned=versioned)
    assert_matches(out, x)


def test_strided_rows_and_untouched_padding(torch_gen):
    n, rows = 160, 19
    wide = randn((rows, n + 9), torch.float32, torch_gen)
    x = wide[:, 3:3 + n]  # row stride n + 9, byte offset 12: read in place, no copy
    big = torch.full((rows, n + 5), float("nan"), device="cuda")
    out = big[:, 2:2 + n]
    run_direct(x, out)
    torch.cuda.synchronize()
    assert_matches(out, x)
    assert torch.isnan(big[:, :2]).all() and torch.isnan(big[:, 2 + n:]).all()  # nothing written outside


def test_repeated_rows_and_in_place(torch_gen):
    v = randn((1, 96), torch.float32, torch_gen)
    x = v.expand(7, 96)  # row stride 0
    out = torch.empty(7, 96, device="cuda")
    run_direct(x, out)
    assert_matches(out, x.contiguous())
    y = randn((19, 96), torch.float32, torch_gen)
    expect = palu_c.hadamard(y)
    run_direct(y, y)  # out == x: each block reads its rows before writing them
    torch.testing.assert_close(y, expect, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noncontiguous_and_other_axes(torch_gen, dtype):
    x = randn((24, 40), dtype, torch_gen)
    assert_matches(palu_c.hadamard(x.t()), x.t().contiguous())  # last axis strided: copied first
    assert_matches(palu_c.hadamard(x[:, ::2]), x[:, ::2].contiguous())
    x3 = randn((5, 12, 7), dtype, torch_gen)
    for axis in (0, 1, -2):
        y = palu_c.hadamard(x3, axis=axis)
        assert y.shape == x3.shape and y.is_contiguous()
        assert_matches(y.movedim(axis, -1), x3.movedim(axis, -1).contiguous())
    with pytest.raises(ValueError, match="contiguous along its last axis"):
        run_direct(x.t(), torch.empty(40, 24, device="cuda", dtype=dtype))


def test_requires_grad_input(torch_gen):
    x = randn((3, 64), torch.float32, torch_gen).requires_grad_()
    y = palu_c.hadamard(x)
    assert not y.requires_grad
    assert_matches(y, x)


def test_side_stream_ordering(torch_gen):
    # x is produced late on a side stream (after a sleep); a launch on any other stream would read it early.
    n, rows = 4096, 64
    src = randn((rows, n), torch.float32, torch_gen)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x = torch.zeros(rows, n, device="cuda")
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time on the side stream
        x.copy_(src)
        y = palu_c.hadamard(x)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_matches(y, src)


@pytest.mark.parametrize("n", [128, 12288, 16384])
def test_cuda_graph_capture_and_replay(torch_gen, n):
    x = randn((19, n), torch.float32, torch_gen)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside capture, as torch recommends
        palu_c.hadamard(x)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = palu_c.hadamard(x)
    for _ in range(2):
        fresh = randn((19, n), torch.float32, torch_gen)
        x.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(y, fresh)


def test_other_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x = torch.randn(7, 48, device="cuda:1")
    with torch.cuda.device(0):
        y = palu_c.hadamard(x)
    assert y.device == x.device
    assert_matches(y, x)


def test_capsules_released(torch_gen):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    x = randn((256, 4096), torch.float32, torch_gen)  # 4 MB each
    out = torch.empty_like(x)
    run_direct(x, out)
    bad = torch.empty(256, 2048, device="cuda")
    with pytest.raises(ValueError, match="same shape"):
        run_direct(x, bad)  # error path must release both capsules too
    del x, out, bad
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == base


def test_capsule_reuse_refused():
    x = torch.randn(4, 8, device="cuda")
    cap_x, cap_o = x.__dlpack__(stream=1), torch.empty_like(x).__dlpack__(stream=1)
    palu_c._C.hadamard_cuda(cap_x, cap_o, 0)
    with pytest.raises(ValueError, match="already consumed"):
        palu_c._C.hadamard_cuda(cap_x, cap_o, 0)


def test_errors():
    x = torch.randn(4, 12, device="cuda")
    with pytest.raises(ValueError, match="is on cpu"):
        run_direct(x.cpu(), torch.empty(4, 12))
    with pytest.raises(ValueError, match="is on cpu"):
        run_direct(x, torch.empty(4, 12))
    with pytest.raises(ValueError, match="same shape"):
        run_direct(x, torch.empty(4, 13, device="cuda"))
    with pytest.raises(ValueError, match="same shape"):
        run_direct(x, torch.empty(48, device="cuda"))
    with pytest.raises(TypeError, match="same dtype"):
        run_direct(x, torch.empty(4, 12, device="cuda", dtype=torch.float16))
    with pytest.raises(NotImplementedError, match="float64"):
        palu_c.hadamard(x.double())
    with pytest.raises(TypeError, match="DLPack dtype"):
        palu_c.hadamard(torch.ones(4, 12, device="cuda", dtype=torch.int32))
    with pytest.raises(ValueError, match="empty"):
        palu_c.hadamard(torch.empty(0, 12, device="cuda"))
    with pytest.raises(ValueError, match="dimension"):
        palu_c.hadamard(torch.tensor(1.0, device="cuda"))
    with pytest.raises(ValueError, match="axis"):
        palu_c.hadamard(x, axis=2)
    with pytest.raises(NotImplementedError, match="shared memory"):
        palu_c.hadamard(torch.randn(1, 1 << 16, device="cuda"))
    with pytest.raises(TypeError, match="stream"):
        palu_c._C.hadamard_cuda(x.__dlpack__(stream=1), x.__dlpack__(stream=1), None)
    # a CPU tensor through the public function takes the CPU path and returns NumPy
    assert isinstance(palu_c.hadamard(x.cpu()), np.ndarray)
