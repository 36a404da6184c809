"""CUDA kernels of the latent KV cache: fused decode attention over latents and the latent append.

Thin wrappers of ``palu_c._C.latent_decode_cuda`` / ``latent_append_cuda`` (kernels/latent_decode.cu,
kernels/latent_append.cu): they validate torch CUDA tensors, allocate the outputs and the split workspace with
torch (so the caching allocator and CUDA graphs see them), and launch on the current torch stream (DLPack
capsules made with that stream; 1 names the legacy default stream). Nothing here synchronizes.

Design
------
* Contract of the decode kernel: it returns ``z`` (B, Z), the softmax-weighted VALUE LATENT of every query head
  (weights summing to 1), not the attention output. Head h of KV group g occupies ``rv_g`` consecutive columns
  (:func:`z_layout`); with equal ranks z is simply (B, H, rv). The caller finishes with the value up-projection,
  ``o[b, h] = Uv_head @ z[b, h] + bv_head`` (:func:`value_up`), or folds Uv into o_proj once per layer
  (o_proj_weight[:, head h] @ Uv_head, a (hidden, Z) matrix), which makes the whole value path one matmul per
  step. The C twin ``palu_c._C.latent_decode_attention`` returns that ``o`` in float32.
* Keys are rebuilt from the latents per head (Uk_head hk + bk), rotated (RoPE, positions per slot), scored
  against q (already rotated), and the online softmax runs over slots [pad_start[b], length) split along the
  sequence; a second kernel merges the splits. The kernel docs (kernels/latent_decode.cuh) give the layouts and
  the implementations (v1 CUDA cores; v2 tensor cores; v3 v2 specialized to equal ranks 32/64/128; v3w, v3 with
  one-stage warps, on request; v4, v3 in 16-token warp tiles with 8-12 warps per CTA; v5, v4 with the key rebuild
  on Hopper warpgroup MMA (wgmma), compute capability 9.0 only, on request; v9, absorbed RoPE: no key is rebuilt,
  R(64 tau) is folded into Uk and the query is rotated to each row's anchor, for one query head per KV head, group
  size 1, head_dim 128, ranks 64, no key bias, compute capability 9.0; v10, for 2-8 query heads per KV head with
  v9's other conditions: the keys rebuilt on wgmma from R(64 tau) Uk, RoPE split between the query (rotated to a
  block's anchor) and each key row (its offset from the anchor), the scores of all query heads of a KV head in one
  mma.sync; it loads by TMA only, so ``impl="v10"`` raises inside a CUDA-graph capture, and it copies q and
  inv_freq in 16-byte pieces, so it raises for tensors that do not start on a 16-byte boundary; auto then runs v4;
  v11, v10's step for group size 2: two KV heads per CTA, one warpgroup each, ranks 128, 1-8 query heads per KV
  head, head_dim 128, no key bias, compute capability 9.0, TMA only and 16-byte aligned q and inv_freq as v10).
  ``impl="auto"`` picks v9 where it applies, else v10 where it applies and each CTA walks >= 1024 slots (v10
  builds R(64 tau) Uk in every CTA, which shorter slices do not repay), else v11 where it applies and the call walks
  >= 8K (sequence, group, slot) triples (the shortest calls measured; shorter ones keep v4), else v4, else v3, else
  v2, else v1; under CUDA-graph capture it runs v4 where it planned v9, v10 or v11. v4 loads its tiles with the Hopper tensor-memory accelerator (TMA) at ranks
  <= 64 on compute capability 9.0+, except inside CUDA-graph capture (there, and with ``PALU_C_V4_TMA=0`` in the
  environment, by cp.async; the results are bit for bit the same).
* ``pad_start`` stays on the device (no host sync): a value outside [0, length - 1] turns that sequence's z
  into NaN, loud rather than silent. Positions must be below 2**24 in magnitude.

Shape legend: B batch, C capacity (slots), T = length (slots filled), S new tokens, H query heads, Hkv KV heads,
n_rep = H / Hkv, D head_dim, G group size, NG = Hkv / G groups, rk_g / rv_g group ranks, Rk / Rv their sums,
Z = n_rep * G * Rv.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from . import _C
from ._arrays import as_int

__all__ = ["KERNEL_NAMES", "latent_decode_attention_cuda", "latent_decode_workspace_size", "latent_append_cuda", "pack_k_up",
           "value_up", "z_layout"]

_IMPLS = {"auto": 0, "v1": 1, "v2": 2, "v3": 3, "v3w": 4, "v4": 5, "v5": 6, "v9": 9, "v10": 10, "v11": 11}
#: implementation number (the second value of :func:`latent_decode_workspace_size`) -> kernel name
KERNEL_NAMES = {number: name for name, number in _IMPLS.items() if number}
_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _dlpack(t: torch.Tensor, stream: int) -> Any:
    """``t.__dlpack__`` for a consumer on ``stream`` (versioned capsule where torch offers one)."""
    try:
        return t.__dlpack__(stream=stream, max_version=(1, 3))
    except TypeError:
        return t.__dlpack__(stream=stream)


def _stream_handles(device: torch.device) -> tuple[int, int]:
    handle = torch.cuda.current_stream(device).cuda_stream
    return handle, (handle if handle != 0 else 1)  # DLPack: 0 is ambiguous, 1 is the legacy default stream


def _cuda_tensor(x: Any, name: str, func: str, dtypes: Sequence[torch.dtype], ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{func}: `{name}` must be a torch.Tensor on a CUDA device, got {type(x).__name__}")
    if x.device.type != "cuda":
        raise ValueError(f"{func}: `{name}` is on {x.device}; the CUDA kernel needs CUDA tensors (use the CPU path "
                         f"for CPU tensors)")
    if x.dtype not in dtypes:
        raise TypeError(f"{func}: `{name}` must be {' or '.join(str(d) for d in dtypes)}, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{func}: `{name}` must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x.detach()


def _ranks(ranks: Sequence[int], name: str, func: str) -> list[int]:
    if isinstance(ranks, (str, bytes)) or not hasattr(ranks, "__iter__"):
        raise TypeError(f"{func}: `{name}` must be a sequence of ints (one rank per head group), got {ranks!r}")
    out = [as_int(r, f"{name}[{i}]", func, low=1) for i, r in enumerate(ranks)]
    if not out:
        raise ValueError(f"{func}: `{name}` is empty; give one rank per head group")
    return out


def z_layout(v_ranks: Sequence[int], group_size: int, n_rep: int) -> list[tuple[int, int]]:
    """(first column, width) of every query head's block in z, heads in order (see the module docstring)."""
    v_ranks = _ranks(v_ranks, "v_ranks", "z_layout")
    group_size = as_int(group_size, "group_size", "z_layout", low=1)
    n_rep = as_int(n_rep, "n_rep", "z_layout", low=1)
    out, col = [], 0
    for rv in v_ranks:
        for _ in range(group_size * n_rep):
            out.append((col, rv))
            col += rv
    return out


def pack_k_up(k_ups: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-group key up-projections (G*D, rk_g) into the flat layout the kernel reads.

    Do this once per layer (not per step) and pass the result as ``k_up``.
    """
    if isinstance(k_ups, torch.Tensor) or not hasattr(k_ups, "__iter__"):
        raise TypeError("pack_k_up: `k_ups` must be a sequence of 2-D tensors, one (G*D, rk_g) per head group")
    parts = []
    for i, u in enumerate(k_ups):
        if not isinstance(u, torch.Tensor) or u.dim() != 2:
            raise TypeError(f"pack_k_up: `k_ups[{i}]` must be a 2-D torch.Tensor (G*D, rk_g)")
        parts.append(u.detach().reshape(-1))
    if not parts:
        raise ValueError("pack_k_up: `k_ups` is empty")
    return torch.cat(parts).contiguous()


def key_pairs(k_ups: Sequence[torch.Tensor], head_dim: int) -> torch.Tensor | None:
    """The kernels' ``k_pairs`` for key up-projections in the interpolative basis (:mod:`palu_c.key_basis`), or None.

    Row g lists group g's RoPE pairs (head j, frequency f) as ``j * D/2 + f``: first the rebuilt ones ascending,
    then the ``rk_g / 2`` stored ones in latent order. None unless EVERY group's up-projection has the exact layout
    (:func:`palu_c.key_basis.pair_layout`) with as many stored pairs from each head, head after head in latent order
    (compress_kv's balanced selection; v11 serves one head per warpgroup); a kernel then rebuilds the keys from the
    dense up-projection as usual.
    Call once per layer (it copies the factors to the host), on the device the kernel will read it from.
    """
    import numpy as np

    from .key_basis import pair_layout

    rows = []
    for u in k_ups:
        host = u.detach().to("cpu", torch.float64).numpy()
        stored = pair_layout(host, head_dim)
        heads = host.shape[0] // head_dim
        if stored is None or len(stored) % heads:
            return None
        head_of = stored // (head_dim // 2)
        if np.any(head_of != np.repeat(np.arange(heads), len(stored) // heads)):  # balanced, head after head
            return None
        rebuilt = np.setdiff1d(np.arange(host.shape[0] // 2), stored)
        rows.append(np.concatenate([rebuilt, stored]))
    if not rows or len({len(r) for r in rows}) != 1:
        return None
    return torch.as_tensor(np.stack(rows), dtype=torch.int32, device=k_ups[0].device).contiguous()


def value_up(z: torch.Tensor, v_ups: Sequence[torch.Tensor], group_size: int, n_rep: int,
             v_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention output from z: ``o[b, h] = Uv_head @ z[b, h] + bv_head`` (torch, any device and dtype).

    Parameters
    ----------
    z : Tensor (B, Z)
        Output of :func:`latent_decode_attention_cuda`.
    v_ups : sequence of Tensor (G*D, rv_g)
        Value up-projection of every group (row j*D + d = dimension d of the group's KV head j).
    group_size, n_rep : int
        G and H / Hkv.
    v_bias : Tensor (Hkv*D,) or None

    Returns
    -------
    Tensor (B, H, D) in z's dtype (float32 products when z is float32).
    """
    B = z.shape[0]
    outs, col = [], 0
    for u in v_ups:
        rows, rv = u.shape
        D = rows // group_size
        width = group_size * n_rep * rv
        zg = z[:, col:col + width].reshape(B, group_size, n_rep, rv)
        ug = u.to(z.dtype).reshape(group_size, D, rv)
        outs.append(torch.einsum("bjnr,jdr->bjnd", zg, ug).reshape(B, group_size * n_rep, D))
        col += width
    if col != z.shape[1]:
        raise ValueError(f"value_up: z has {z.shape[1]} columns, the up-projections account for {col}")
    o = torch.cat(outs, dim=1)
    if v_bias is not None:
        D = o.shape[2]
        o = o + v_bias.to(o.dtype).reshape(-1, D).repeat_interleave(n_rep, dim=0)
    return o


def latent_decode_workspace_size(batch: int, heads: int, kv_heads: int, head_dim: int, group_size: int, length: int,
                                 k_ranks: Sequence[int], v_ranks: Sequence[int], dtype: torch.dtype,
                                 device: torch.device | str | int, impl: str = "auto") -> tuple[int, int]:
    """(float32 workspace elements, implementation number) of one decode call with these sizes (1-6, 9).

    The size is non-decreasing in ``length``: size a reusable workspace (CUDA graphs) with the largest length.
    """
    func = "latent_decode_workspace_size"
    if dtype not in _DTYPES:
        raise TypeError(f"{func}: `dtype` must be torch.float16 or torch.bfloat16, got {dtype!r}")
    if impl not in _IMPLS:
        raise ValueError(f"{func}: `impl` must be one of {sorted(_IMPLS)}, got {impl!r}")
    dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return _C.latent_decode_cuda_workspace(
        as_int(batch, "batch", func, low=1), as_int(heads, "heads", func, low=1),
        as_int(kv_heads, "kv_heads", func, low=1), as_int(head_dim, "head_dim", func, low=2),
        as_int(group_size, "group_size", func, low=1), as_int(length, "length", func, low=1),
        _ranks(k_ranks, "k_ranks", func), _ranks(v_ranks, "v_ranks", func), _DTYPES[dtype], index, _IMPLS[impl])


def latent_decode_attention_cuda(q: torch.Tensor, k_latent: torch.Tensor, v_latent: torch.Tensor,
                                 positions: torch.Tensor, pad_start: torch.Tensor, length: int,
                                 k_up: torch.Tensor | Sequence[torch.Tensor], k_ranks: Sequence[int],
                                 v_ranks: Sequence[int], group_size: int, inv_freq: torch.Tensor, *,
                                 k_bias: torch.Tensor | None = None, scaling: float | None = None,
                                 attention_scaling: float = 1.0, out_dtype: torch.dtype = torch.float32,
                                 impl: str = "auto", out: torch.Tensor | None = None,
                                 workspace: torch.Tensor | None = None,
                                 k_pairs: torch.Tensor | None = None) -> torch.Tensor:
    """One decode step of attention over latent keys/values on CUDA; returns z (B, Z), the weighted value latents.

    Parameters
    ----------
    q : Tensor (B, H, D), float16 or bfloat16
        The step's queries, RoPE already applied.
    k_latent, v_latent : Tensor (B, C, Rk), (B, C, Rv), q's dtype
        The cache (palu_c.device_store layout); slots [0, length) are read. Last axis contiguous.
    positions : Tensor (B, C) int32
        RoPE position of every slot.
    pad_start : Tensor (B,) int32, on the device
        Leading pad slots of every sequence (attended slots: [pad_start[b], length)).
    length : int
        T, the slots filled (the same for all sequences).
    k_up : Tensor (sum_g G*D*rk_g,) in q's dtype, or a sequence of (G*D, rk_g) tensors
        Key up-projections (packed by :func:`pack_k_up`; pass the packed tensor on hot paths).
    k_ranks, v_ranks : sequence of int
        Group ranks (rk_g, rv_g).
    group_size : int
        G; kv_heads = len(k_ranks) * G.
    inv_freq : Tensor (D/2,) float32
        RoPE inverse frequencies.
    k_bias : Tensor (Hkv*D,) or None
        Key bias (added before RoPE), converted to float32.
    scaling : float, optional
        Softmax scale, default D**-0.5.
    attention_scaling : float
        Multiplies RoPE's cos and sin (1 for plain RoPE).
    out_dtype : torch.float32 or q's dtype
    impl : {"auto", "v1", "v2", "v3", "v3w", "v4", "v5", "v9", "v10", "v11"}
        Kernel choice; a named kernel raises NotImplementedError (naming the value) where it does not apply.
    out, workspace : Tensor, optional
        Preallocated z (B, Z) of out_dtype and float32 workspace (>= :func:`latent_decode_workspace_size`).
    k_pairs : Tensor (NG, G*D/2) int32, optional
        For keys in the interpolative basis: :func:`key_pairs` of the same up-projections (computed once per layer).
        v10 and v11 then rebuild only half of every key and read the other half from the latent; other kernels
        ignore it.
        It is read on the device only, so it is trusted: a table that does not describe ``k_up`` gives wrong scores
        (never an out-of-bounds access).

    Returns
    -------
    Tensor (B, Z)
        z; see :func:`z_layout` and :func:`value_up`.
    """
    func = "latent_decode_attention_cuda"
    q = _cuda_tensor(q, "q", func, tuple(_DTYPES), 3)
    B, H, D = q.shape
    k_latent = _cuda_tensor(k_latent, "k_latent", func, (q.dtype,), 3)
    v_latent = _cuda_tensor(v_latent, "v_latent", func, (q.dtype,), 3)
    positions = _cuda_tensor(positions, "positions", func, (torch.int32,), 2)
    pad_start = _cuda_tensor(pad_start, "pad_start", func, (torch.int32,), 1).contiguous()
    inv_freq = _cuda_tensor(inv_freq, "inv_freq", func, (torch.float32, torch.float64, torch.float16,
                                                          torch.bfloat16), 1).to(torch.float32).contiguous()
    if not isinstance(k_up, torch.Tensor):
        k_up = pack_k_up(k_up)
    k_up = _cuda_tensor(k_up, "k_up", func, (q.dtype,), 1).contiguous()
    k_ranks = _ranks(k_ranks, "k_ranks", func)
    v_ranks = _ranks(v_ranks, "v_ranks", func)
    group_size = as_int(group_size, "group_size", func, low=1)
    length = as_int(length, "length", func, low=1)
    if impl not in _IMPLS:
        raise ValueError(f"{func}: `impl` must be one of {sorted(_IMPLS)}, got {impl!r}")
    if len(k_ranks) != len(v_ranks):
        raise ValueError(f"{func}: {len(k_ranks)} k ranks but {len(v_ranks)} v ranks; give one of each per group")
    Hkv = len(k_ranks) * group_size
    if H % Hkv:
        raise ValueError(f"{func}: q has {H} heads, not a multiple of kv_heads = len(k_ranks) x group_size = {Hkv}")
    n_rep = H // Hkv
    if scaling is None:
        scaling = D ** -0.5
    for name, v in (("scaling", scaling), ("attention_scaling", attention_scaling)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{func}: `{name}` must be a finite float, got {v!r}")
    if out_dtype not in (torch.float32, q.dtype):
        raise TypeError(f"{func}: `out_dtype` must be torch.float32 or q's dtype {q.dtype}, got {out_dtype!r}")
    if k_bias is not None:
        k_bias = _cuda_tensor(k_bias, "k_bias", func, (torch.float32, torch.float16, torch.bfloat16, torch.float64),
                              1).to(torch.float32).contiguous()
    if k_pairs is not None:
        k_pairs = _cuda_tensor(k_pairs, "k_pairs", func, (torch.int32,), 2).contiguous()
        if k_pairs.shape != (len(k_ranks), group_size * D // 2):
            raise ValueError(f"{func}: `k_pairs` must be ({len(k_ranks)}, {group_size * D // 2}) = (groups, "
                             f"group_size * head_dim / 2) as key_pairs() makes it, got {tuple(k_pairs.shape)}")
    if q.stride(-1) != 1 or not q.is_contiguous():
        q = q.contiguous()
    Z = n_rep * group_size * sum(v_ranks)
    with torch.cuda.device(q.device):
        floats, _ = latent_decode_workspace_size(B, H, Hkv, D, group_size, length, k_ranks, v_ranks, q.dtype,
                                                 q.device, impl)
        if workspace is None:
            workspace = torch.empty(max(floats, 1), dtype=torch.float32, device=q.device)
        if out is None:
            out = torch.empty((B, Z), dtype=out_dtype, device=q.device)
        elif out.shape != (B, Z) or out.dtype != out_dtype or out.device != q.device:
            raise ValueError(f"{func}: `out` must be a ({B}, {Z}) {out_dtype} tensor on {q.device}, got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        handle, dl = _stream_handles(q.device)
        _C.latent_decode_cuda(
            _dlpack(q, dl), _dlpack(k_latent, dl), _dlpack(v_latent, dl), _dlpack(positions, dl),
            _dlpack(pad_start, dl), _dlpack(k_up, dl), _dlpack(inv_freq, dl),
            None if k_bias is None else _dlpack(k_bias, dl), _dlpack(out, dl), _dlpack(workspace, dl),
            length=length, k_ranks=k_ranks, v_ranks=v_ranks, group_size=group_size,
            attention_scaling=float(attention_scaling), scaling=float(scaling), stream=handle, impl=_IMPLS[impl],
            k_pairs=None if k_pairs is None else _dlpack(k_pairs, dl))
    return out


def latent_append_cuda(k_cache: torch.Tensor, v_cache: torch.Tensor, pos_cache: torch.Tensor, k_new: torch.Tensor,
                       v_new: torch.Tensor, pos_new: torch.Tensor, start: int) -> None:
    """Write S new tokens into cache slots [start, start + S) with one kernel (bitwise copy, no conversion).

    Parameters
    ----------
    k_cache, v_cache : Tensor (B, C, Rk), (B, C, Rv)
        The cache buffers (any floating dtype, last axis contiguous), written in place.
    pos_cache : Tensor (B, C) int32
    k_new, v_new : Tensor (B, S, Rk), (B, S, Rv) in the cache's dtype (last axis contiguous; other strides free)
    pos_new : Tensor (B, S), int32 (int64 is converted)
    start : int
        First slot written; start + S <= C.
    """
    func = "latent_append_cuda"
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    k_cache = _cuda_tensor(k_cache, "k_cache", func, floats, 3)
    v_cache = _cuda_tensor(v_cache, "v_cache", func, (k_cache.dtype,), 3)
    pos_cache = _cuda_tensor(pos_cache, "pos_cache", func, (torch.int32,), 2)
    k_new = _cuda_tensor(k_new, "k_new", func, (k_cache.dtype,), 3)
    v_new = _cuda_tensor(v_new, "v_new", func, (k_cache.dtype,), 3)
    pos_new = _cuda_tensor(pos_new, "pos_new", func, (torch.int32, torch.int64), 2).to(torch.int32)
    start = as_int(start, "start", func, low=0)
    with torch.cuda.device(k_cache.device):
        handle, dl = _stream_handles(k_cache.device)
        _C.latent_append_cuda(_dlpack(k_cache, dl), _dlpack(v_cache, dl), _dlpack(pos_cache, dl),
                              _dlpack(k_new, dl), _dlpack(v_new, dl), _dlpack(pos_new, dl), start, handle)
