"""The core functions accept torch CPU tensors through DLPack (zero-copy) and refuse what NumPy cannot hold.

References: the same call on the NumPy view of the tensor (the functions must give identical results,
since the data is the same memory) and NumPy float64 for the math.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import palu_c  # noqa: E402


def test_svd_on_torch_tensor_matches_numpy(rng):
    t = torch.from_numpy(rng.standard_normal((20, 13)).astype(np.float32))
    for x, y in zip(palu_c.svd(t), palu_c.svd(t.numpy())):
        np.testing.assert_array_equal(x, y)


def test_non_contiguous_and_grad_tensors(rng):
    base = torch.tensor(rng.standard_normal((16, 30)), dtype=torch.float64, requires_grad=True)
    w = base.T[::2]  # (15, 16), non-contiguous, part of an autograd graph
    down, up = palu_c.lowrank_factor(w, 4)
    w_np = w.detach().numpy()
    s = np.linalg.svd(w_np, compute_uv=False)
    assert np.linalg.norm(w_np - up @ down) == pytest.approx(np.sqrt(np.sum(s[4:] ** 2)), rel=1e-9)


def test_whitened_factor_with_torch_gram(rng):
    x = torch.tensor(rng.standard_normal((200, 24)))
    w = torch.tensor(rng.standard_normal((12, 24)), dtype=torch.float32)
    gram = x.T @ x
    d1, u1 = palu_c.lowrank_factor(w, 5, gram=gram)
    d2, u2 = palu_c.lowrank_factor(w.numpy(), 5, gram=gram.numpy())
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(u1, u2)


def test_quantize_torch_tensor(rng):
    t = torch.from_numpy(rng.standard_normal((5, 64)).astype(np.float32))
    q1, q2 = palu_c.quantize(t, 4, group_size=16), palu_c.quantize(t.numpy(), 4, group_size=16)
    np.testing.assert_array_equal(q1.payload, q2.payload)
    np.testing.assert_array_equal(q1.dequantize(), q2.dequantize())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.int32, torch.complex64])
def test_unsupported_torch_dtypes_are_refused(dtype):
    t = torch.ones((4, 4), dtype=dtype)
    with pytest.raises(TypeError, match="float32|float64"):
        palu_c.svd(t)


def test_meta_tensor_is_refused():
    t = torch.empty((4, 4), device="meta")
    with pytest.raises((ValueError, TypeError)):
        palu_c.svd(t)
