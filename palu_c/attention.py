"""PaluAttention: a Llama / Mistral / Qwen2 attention module whose cache holds low-rank K/V latents.

PyTorch reference path of docs/design/latent_cache.md. The key and value projections ``W_k``, ``W_v``
(Hkv*D, hidden) are replaced by per-head-group factor pairs: down-projections stacked as ``k_down`` (Rk,
hidden) / ``v_down`` (Rv, hidden) and up-projections ``k_ups[g]`` (G*D, rk_g) / ``v_ups[g]`` (G*D, rv_g).
Per step the module

1. projects queries as the base module did and applies RoPE to them with the ``position_embeddings`` the
   model passes in;
2. computes the latents ``hk = x k_down^T`` (B, T, Rk) and ``hv = x v_down^T`` (B, T, Rv) and, with a cache,
   appends them with their positions to this layer's :class:`~palu_c.cache.LatentLayer` (installed in the
   transformers cache on first use) and gets back every cached latent and position;
3. rebuilds keys ``K = RoPE(up_k(hk) + b_k, positions)`` and values ``V = up_v(hv) + b_v`` for all cached
   tokens (heads of group g are the rows of ``k_ups[g]``; biases are applied after the up-projection and
   never cached, so they stay exact), with cos/sin of the CACHED positions from the model's rotary module;
4. calls the model's configured attention implementation (``ALL_ATTENTION_FUNCTIONS``, eager fallback)
   exactly as ``LlamaAttention`` does, so masks, GQA head repetition, sdpa and eager behave as upstream;
   then ``o_proj``.

Decode steps (one new token) on CPU float32 skip steps 3-4: the C core (``_C.latent_cache_decode_attention``)
reads the layer's C cache in place, rebuilds and rotates keys per KV head, and applies the value up-projection
once per query head to the probability-weighted latent, o_h = Uv_h (sum_t p_t hv_t) + bv_h, before the
original o_proj. That is the fold of the value up-projection into o_proj by associativity, evaluated as two
factors. Storing the fused o_proj x Uv instead (hidden x sum_h rv_g weights) only pays when rv_g < about D: on
SmolLM2 / Llama shapes at ratio 0.5 the fused epilogue took 0.48-0.66x the time of the factored one for group
size 1, tied for group 3 and took 1.6-1.9x for group 4, and rebuilding V per token was always slowest, 1.2-19x
(python/results/bench_value_fold.md). The factored fold is exact, adds no weights and leaves prefill on the
model's attention implementation, so it is the one used; prefill rebuilds K and V and calls that
implementation (SDPA/eager), whose BLAS-backed matmuls beat a scalar C loop over T x T scores.

Positions: ``position_ids`` from the decoder layer (transformers 5.18 always passes it; for left-padded
``generate`` batches it is cumsum(attention_mask) - 1). When it is missing, ``cache_position`` from the
keyword arguments is used if present, else ``arange(past, past + T)`` with ``past`` the cached length.

RoPE here is the half-rotation form of Llama, Mistral and Qwen2, ``x*cos + rotate_half(x)*sin``, evaluated
with the same operations as transformers' ``apply_rotary_pos_emb`` so that full-rank factors reproduce the
original module to float32 rounding.

Legend: B batch, T new tokens, S tokens attended, H query heads, Hkv KV heads, D head_dim, G KV heads per
group, NG = Hkv / G groups.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from . import _C
from ._factors import as_factor
from .cache import LatentLayer, install_latent_layer
from .errors import KernelSpeedWarning
from .kv_config import PaluLayerConfig


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, S, D), cos/sin (B, S, D): the operations of transformers' apply_rotary_pos_emb."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (_rotate_half(x) * sin)


class PaluAttention(nn.Module):
    """Drop-in replacement of a Llama / Mistral / Qwen2 attention module that caches K/V latents.

    Parameters
    ----------
    base_attn : nn.Module
        The attention module replaced; provides ``q_proj``, ``o_proj`` (reused, not copied), ``k_proj`` /
        ``v_proj`` (only their biases are kept, exact), ``config``, ``layer_idx``, ``head_dim``, ``scaling``,
        ``num_key_value_groups`` and optionally ``sliding_window`` / ``attention_dropout`` / ``is_causal``.
    layer_cfg : PaluLayerConfig
        Group size G and per-group ranks; ``layer_cfg.layer_idx`` must equal ``base_attn.layer_idx``.
    k_down : array_like (Rk, hidden)
    k_ups : sequence of array_like, ``k_ups[g]`` (G*D, rk_g)
    v_down : array_like (Rv, hidden)
    v_ups : sequence of array_like, ``v_ups[g]`` (G*D, rv_g)
        The factors, as ``palu_c.lowrank_factor_grouped(w, ranks, G*D)`` returns them for ``k_proj.weight``
        and ``v_proj.weight``; cast to the base module's dtype and device.
    rotary_emb : nn.Module
        The model's rotary embedding (``model.model.rotary_emb``), called as ``rotary_emb(x, position_ids)``
        for the cached positions. Held by reference, not registered (the model owns it and its state).
    bits, residual, quant_group : optional
        Latent quantization options of the layer's cache (see :class:`palu_c.cache.LatentLayer`).

    Notes
    -----
    ``forward`` has the signature and return value of ``LlamaAttention.forward``: ``(attn_output (B, T,
    hidden), attn_weights or None)``. Attention outputs are not recorded by transformers'
    ``output_attentions`` capture, which hooks the original attention classes.
    """

    def __init__(self, base_attn: nn.Module, layer_cfg: PaluLayerConfig, k_down: Any, k_ups: Sequence[Any],
                 v_down: Any, v_ups: Sequence[Any], rotary_emb: nn.Module, *, bits: int | None = None,
                 residual: int = 128, quant_group: int | None = None):
        super().__init__()
        if not isinstance(layer_cfg, PaluLayerConfig):
            raise TypeError(f"PaluAttention: `layer_cfg` must be a PaluLayerConfig, got {type(layer_cfg).__name__}")
        for attr in ("q_proj", "k_proj", "v_proj", "o_proj", "config", "layer_idx", "head_dim", "scaling",
                     "num_key_value_groups"):
            if not hasattr(base_attn, attr):
                raise TypeError(f"PaluAttention: `base_attn` must be a Llama-style attention module; "
                                f"{type(base_attn).__name__} has no `{attr}`")
        if not callable(rotary_emb):
            raise TypeError(f"PaluAttention: `rotary_emb` must be the model's rotary embedding module, got "
                            f"{type(rotary_emb).__name__}")
        self.config = base_attn.config
        self.layer_idx = int(base_attn.layer_idx)
        self.head_dim = int(base_attn.head_dim)
        self.num_key_value_groups = int(base_attn.num_key_value_groups)
        self.scaling = base_attn.scaling
        self.attention_dropout = getattr(base_attn, "attention_dropout", 0.0)
        self.is_causal = getattr(base_attn, "is_causal", True)
        # Qwen2 keeps the window on the module (None on full-attention layers); Mistral passes the config's.
        self.sliding_window = getattr(base_attn, "sliding_window", getattr(self.config, "sliding_window", None))
        if layer_cfg.layer_idx != self.layer_idx:
            raise ValueError(f"PaluAttention: `layer_cfg` is for layer {layer_cfg.layer_idx}, `base_attn` is layer "
                             f"{self.layer_idx}")

        weight = base_attn.k_proj.weight
        hidden = int(weight.shape[1])
        kv_rows = int(weight.shape[0])
        D, G = self.head_dim, int(layer_cfg.group_size)
        if G < 1 or kv_rows % (G * D):
            raise ValueError(f"PaluAttention: group_size {G} does not divide the {kv_rows // D} KV heads of layer "
                             f"{self.layer_idx}")
        groups = kv_rows // (G * D)
        for name, ranks, ups in (("k", layer_cfg.k_ranks, k_ups), ("v", layer_cfg.v_ranks, v_ups)):
            if len(ranks) != groups:
                raise ValueError(f"PaluAttention: layer_cfg.{name}_ranks has {len(ranks)} entries, the layer has "
                                 f"{groups} head groups of {G} KV heads")
            if len(ups) != groups:
                raise ValueError(f"PaluAttention: `{name}_ups` has {len(ups)} factors, expected {groups}")
        self.layer_cfg = layer_cfg
        self.k_ranks = tuple(int(r) for r in layer_cfg.k_ranks)
        self.v_ranks = tuple(int(r) for r in layer_cfg.v_ranks)

        self.q_proj = base_attn.q_proj
        self.o_proj = base_attn.o_proj
        self.k_down = nn.Linear(hidden, sum(self.k_ranks), bias=False, dtype=weight.dtype, device=weight.device)
        self.v_down = nn.Linear(hidden, sum(self.v_ranks), bias=False, dtype=weight.dtype, device=weight.device)
        factor = lambda x, shape, name: as_factor(x, shape, name, "PaluAttention", weight.dtype, weight.device)  # noqa: E731
        with torch.no_grad():
            self.k_down.weight.copy_(factor(k_down, (sum(self.k_ranks), hidden), "k_down"))
            self.v_down.weight.copy_(factor(v_down, (sum(self.v_ranks), hidden), "v_down"))
        self.k_ups = nn.ParameterList(
            [nn.Parameter(factor(u, (G * D, r), f"k_ups[{g}]")) for g, (u, r) in enumerate(zip(k_ups, self.k_ranks))])
        self.v_ups = nn.ParameterList(
            [nn.Parameter(factor(u, (G * D, r), f"v_ups[{g}]")) for g, (u, r) in enumerate(zip(v_ups, self.v_ranks))])
        for name, proj in (("k_bias", base_attn.k_proj), ("v_bias", base_attn.v_proj)):
            bias = getattr(proj, "bias", None)
            self.register_parameter(name, None if bias is None else nn.Parameter(bias.detach().clone()))
        self._rotary = (rotary_emb,)  # a tuple: not registered as a submodule, not in state_dict
        # "auto": one-token decode steps on CPU float32 run in C (csrc/latent_attention.c); "torch": always the
        # PyTorch reference path (kept selectable: it is the reference the C and CUDA paths are tested against)
        self.decode_backend = "auto"
        self._cuda_unsupported = False  # the fused CUDA kernel refused this layer's shapes once: do not retry
        self._k_up_packed: torch.Tensor | None = None  # k_ups packed for the CUDA kernel (per dtype/device)
        self._k_pairs: torch.Tensor | None = None  # latent_kernels.key_pairs of k_ups (interpolative basis) or None
        self._cuda_impl: str | None = None  # the CUDA kernel version that covers this layer, once known

        self.bits, self.residual, self.quant_group = bits, residual, quant_group
        self.make_latent_layer()  # validates the cache options now rather than at the first forward

    @property
    def rotary_emb(self) -> nn.Module:
        return self._rotary[0]

    def make_latent_layer(self, max_tokens: int | None = None) -> LatentLayer:
        """A fresh, empty cache layer with this module's ranks, quantization options and sliding window
        (``max_tokens``: a reserved fixed capacity, see :class:`palu_c.cache.LatentLayer`)."""
        return LatentLayer(self.k_ranks, self.v_ranks, bits=self.bits, residual=self.residual,
                           quant_group=self.quant_group, sliding_window=self.sliding_window, max_tokens=max_tokens)

    def _up(self, h: torch.Tensor, ups: nn.ParameterList, ranks: tuple[int, ...],
            bias: torch.Tensor | None) -> torch.Tensor:
        """Latents (B, S, R) -> (B, Hkv, S, D): group g's columns through ups[g], then the exact bias."""
        outs, off = [], 0
        for u, r in zip(ups, ranks):
            outs.append(F.linear(h[..., off:off + r], u))
            off += r
        x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        if bias is not None:
            x = x + bias
        return x.view(*h.shape[:2], -1, self.head_dim).transpose(1, 2)

    def _positions(self, position_ids: torch.Tensor | None, past_key_values: Any, batch: int, tokens: int,
                   device: torch.device, kwargs: dict) -> torch.Tensor:
        pos = position_ids if position_ids is not None else kwargs.get("cache_position")
        if pos is None:
            past = past_key_values.get_seq_length(self.layer_idx) if past_key_values is not None else 0
            pos = torch.arange(past, past + tokens, device=device)
        if pos.dim() == 1:
            pos = pos[None]
        if pos.dim() != 2 or pos.shape[-1] != tokens or pos.shape[0] not in (1, batch):
            raise ValueError(f"PaluAttention: position_ids must have shape ({batch}, {tokens}) or (1, {tokens}), "
                             f"got {tuple(pos.shape)} (multi-axis RoPE position ids are not supported)")
        return pos.expand(batch, tokens)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, past_key_values: Any = None,
                position_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (B, T, hidden) -> (attn_output (B, T, hidden), attn_weights (B, H, T, S) or None)."""
        batch, tokens = hidden_states.shape[:2]
        query = self.q_proj(hidden_states).view(batch, tokens, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query = _rope(query, cos, sin)

        hk = self.k_down(hidden_states)
        hv = self.v_down(hidden_states)
        pos = self._positions(position_ids, past_key_values, batch, tokens, hidden_states.device, kwargs)
        c_step = tokens == 1 and self._c_decode_applies(query, kwargs)
        if past_key_values is not None:
            layer = install_latent_layer(past_key_values, self.layer_idx, self.make_latent_layer)
            if c_step and layer.host_cache is not None:
                layer.append_latent(hk, hv, pos)
                pad_start = _left_padding(attention_mask, batch, layer.length)
                if pad_start is not None:
                    out = self._c_decode(query, pad_start, cache=layer.host_cache)
                    return self.o_proj(out.reshape(batch, 1, -1)), None
                hk, hv, pos = layer.latents()  # a mask the C path does not cover: PyTorch path below
            elif tokens == 1 and self._cuda_decode_applies(query, kwargs, layer):
                layer.append_latent(hk, hv, pos)
                out = self._cuda_decode(query, layer, attention_mask)
                if out is not None:
                    return self.o_proj(out.reshape(batch, 1, -1)), None
                hk, hv, pos = layer.latents()  # the kernel does not cover this shape: PyTorch path below
            else:
                hk, hv, pos = layer.update_latent(hk, hv, pos)
        elif c_step:
            pad_start = _left_padding(attention_mask, batch, 1)
            if pad_start is not None:
                out = self._c_decode(query, pad_start, latents=(hk, hv, pos))
                return self.o_proj(out.reshape(batch, 1, -1)), None

        key = self._up(hk, self.k_ups, self.k_ranks, self.k_bias)
        k_cos, k_sin = self.rotary_emb(key, pos)
        key = _rope(key, k_cos, k_sin)
        value = self._up(hv, self.v_ups, self.v_ranks, self.v_bias)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward)
        extra = {} if self.sliding_window is None else {"sliding_window": self.sliding_window}
        if position_ids is not None:
            extra["position_ids"] = position_ids  # LlamaAttention forwards it to the interface in **kwargs
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling, **extra, **kwargs)
        attn_output = attn_output.reshape(batch, tokens, -1).contiguous()
        return self.o_proj(attn_output), attn_weights

    def _c_decode_applies(self, query: torch.Tensor, kwargs: dict) -> bool:
        """Whether a one-token step may run in C (csrc/latent_attention.c): CPU float32, no autograd, no sliding
        window, no attention weights requested, plain-RoPE inverse frequencies of the right size."""
        if self.decode_backend == "torch" or kwargs.get("output_attentions"):
            return False
        if (query.device.type != "cpu" or query.dtype != torch.float32 or self.sliding_window is not None
                or (torch.is_grad_enabled() and (self.training or query.requires_grad))):
            return False
        inv_freq = getattr(self.rotary_emb, "inv_freq", None)
        return inv_freq is not None and inv_freq.numel() * 2 == self.head_dim

    def _c_decode(self, query: torch.Tensor, pad_start, *, cache=None, latents=None) -> torch.Tensor:
        """One decode step in C: keys rebuilt and rotated per KV head, the value up-projection applied once to the
        probability-weighted latent (never per token). Reads the layer's C cache in place (``cache``) or dense
        ``latents`` = (hk, hv, positions). Returns (B, H, D)."""
        to_np = lambda t: t.detach().contiguous().numpy()  # noqa: E731
        rotary = self.rotary_emb
        common = dict(
            k_ups=[to_np(u) for u in self.k_ups], v_ups=[to_np(u) for u in self.v_ups],
            group_size=self.layer_cfg.group_size, inv_freq=to_np(rotary.inv_freq.float()),
            attention_scaling=float(getattr(rotary, "attention_scaling", 1.0)), scaling=float(self.scaling),
            k_bias=None if self.k_bias is None else to_np(self.k_bias),
            v_bias=None if self.v_bias is None else to_np(self.v_bias))
        q = to_np(query[:, :, 0])
        if cache is not None:
            out = _C.latent_cache_decode_attention(cache, q, pad_start, **common)
        else:
            hk, hv, pos = latents
            out = _C.latent_decode_attention(q, to_np(hk), to_np(hv), to_np(pos.to(torch.int32)), pad_start, **common)
        return torch.from_numpy(out)

    def _cuda_decode_applies(self, query: torch.Tensor, kwargs: dict, layer: LatentLayer) -> bool:
        """Whether a one-token step may run the fused CUDA kernel (kernels/latent_decode.cu): fp16/bf16 on CUDA,
        unquantized latents in a torch store that already holds the prompt, no autograd, no sliding window, no
        attention weights requested, plain-RoPE inverse frequencies, and the kernel not found unsupported for
        this layer before."""
        if self.decode_backend == "torch" or kwargs.get("output_attentions") or self._cuda_unsupported:
            return False
        if (query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16) or layer.bits is not None
                or self.sliding_window is not None or layer.length == 0
                or (torch.is_grad_enabled() and (self.training or query.requires_grad))):
            return False
        if not _cuda_compiled():
            return False
        inv_freq = getattr(self.rotary_emb, "inv_freq", None)
        return inv_freq is not None and inv_freq.numel() * 2 == self.head_dim

    def _cuda_decode(self, query: torch.Tensor, layer: LatentLayer, attention_mask: torch.Tensor | None):
        """One decode step through the fused CUDA kernel (tensor-core key rebuild, RoPE, online softmax over the
        latent cache, split along the sequence), then the value up-projection per head. Returns (B, H, D) in the
        query's dtype, or None when the kernel does not cover this layer's shapes (remembered; the PyTorch path
        runs from then on). Never synchronizes with the host."""
        from . import latent_kernels

        store = layer._store
        packed = self._k_up_packed
        if packed is None or packed.dtype != query.dtype or packed.device != query.device:
            packed = self._k_up_packed = latent_kernels.pack_k_up([u.to(query.dtype) for u in self.k_ups])
            # the interpolative key basis (compress_kv(key_basis="interpolative")): v10 rebuilds half of each key
            self._k_pairs = latent_kernels.key_pairs(list(self.k_ups), self.head_dim)
        pad_start = _device_left_padding(attention_mask, query.shape[0], store.length, query.device)
        rotary = self.rotary_emb
        # the fastest tensor-core kernel that covers this layer (v9: MHA, group 1, head_dim 128, ranks 64, no key
        # bias, on the H200; v10: the same for 2-8 query heads per KV head; v11: group size 2 at ranks 128; v4, then
        # v3: equal ranks 32/64/128; v2: the general tensor-core one), found once per module; v1 (CUDA cores) is
        # slower than the PyTorch path, never used here; v5 (wgmma) is slower than v4
        # (docs/design/latent_decode_notes.md)
        for impl in ((self._cuda_impl,) if self._cuda_impl else ("v9", "v10", "v11", "v4", "v3", "v2")):
            try:
                z = latent_kernels.latent_decode_attention_cuda(
                    query[:, :, 0].contiguous(), store.k_latent, store.v_latent, store.positions, pad_start,
                    store.length, packed, self.k_ranks, self.v_ranks, self.layer_cfg.group_size,
                    rotary.inv_freq.float(), k_bias=self.k_bias, scaling=float(self.scaling),
                    attention_scaling=float(getattr(rotary, "attention_scaling", 1.0)), impl=impl,
                    k_pairs=self._k_pairs)
            except NotImplementedError:
                continue
            if impl == "v2" and self._cuda_impl is None:  # found now: say it once, not at every step
                warn_general_kernel()
            # v9, v10 and v11 are remembered as auto, which takes them wherever they can run (v10, v11: on calls
            # long enough to pay for their prologues) and v4 where one call cannot (a CUDA-graph capture, where v9's
            # copies are slower than v4's and v10 and v11 have none; latents that lost the 16-byte alignment): a
            # remembered "v9", "v10" or "v11" would raise there and leave the layer on the PyTorch path for good
            self._cuda_impl = "auto" if impl in ("v9", "v10", "v11") else impl
            break
        else:
            self._cuda_unsupported = True
            return None
        o = latent_kernels.value_up(z, self.v_ups, self.layer_cfg.group_size, self.num_key_value_groups, self.v_bias)
        return o.to(query.dtype)

    def extra_repr(self) -> str:
        quant = "" if self.bits is None else f", bits={self.bits}, residual={self.residual}"
        return (f"layer_idx={self.layer_idx}, group_size={self.layer_cfg.group_size}, k_ranks={list(self.k_ranks)}, "
                f"v_ranks={list(self.v_ranks)}{quant}")


def warn_general_kernel() -> None:
    """Say that a layer decodes on the general kernel v2, and how to get a fast one: on an H200, v2 runs at ~0.6x
    full-cache SDPA at long context, the specialized kernels at 1.1-1.9x (docs/design/latent_decode_notes.md). The
    text is the same for every layer, so Python's default filter shows it once, not once per layer."""
    warnings.warn(
        "palu_c: decode attention over this compressed cache runs the general CUDA kernel (v2), which is slower than "
        "uncompressed attention at long context: the fast kernels need, in each layer, one rank for all head groups "
        "and for keys and values alike, of 32, 64 or 128 (the ranks are in each attention module's repr). "
        "compress_kv(..., search=\"uniform\") gives such ranks where ratio x group_size x head_dim is one of them "
        "(e.g. 64 at ratio 0.5, group size 1, head_dim 128). Whether the default search=\"fisher\" buys accuracy "
        "for that speed depends on the model and group size (SmolLM2-135M at ratio 0.5: better than uniform at group "
        "size 3, worse at group size 1; python/results/eval_ppl_smollm2.md in the palu_c repository).",
        KernelSpeedWarning, stacklevel=2)


_CUDA_COMPILED: bool | None = None


def _cuda_compiled() -> bool:
    global _CUDA_COMPILED
    if _CUDA_COMPILED is None:
        _CUDA_COMPILED = bool(_C.build_info()["cuda_compiled"])
    return _CUDA_COMPILED


def _device_left_padding(mask: torch.Tensor | None, batch: int, slots: int, device: torch.device) -> torch.Tensor:
    """Leading masked slots per sequence as an int32 tensor on ``device``, computed without a host sync. A row
    that is not plain left padding gets ``slots`` (out of range), which makes the kernel return NaN for that
    sequence: loud, never a silently wrong attention (use ``decode_backend="torch"`` for custom masks)."""
    if mask is None:
        return torch.zeros(batch, dtype=torch.int32, device=device)
    row = mask[:, 0, -1, :] if mask.dim() == 4 else mask
    keep = row if row.dtype == torch.bool else row == 0
    start = (~keep).to(torch.int32).cumprod(dim=1).sum(dim=1)
    expected = torch.arange(keep.shape[-1], device=keep.device)[None, :] >= start[:, None]
    plain = (keep == expected).all(dim=1) & (start < slots) & (keep.shape[-1] == slots)
    return torch.where(plain, start, torch.full_like(start, slots)).to(device=device, dtype=torch.int32)


def _left_padding(mask: torch.Tensor | None, batch: int, slots: int):
    """Leading masked slots per sequence (int32 NumPy array) for a one-query decode mask, or None when the mask
    is anything but plain left padding (then the caller falls back to the mask-driven PyTorch path)."""
    import numpy as np

    if mask is None:
        return np.zeros(batch, dtype=np.int32)
    if mask.dim() != 4 or mask.shape[0] != batch or mask.shape[-1] != slots or mask.shape[-2] != 1:
        return None
    row = mask[:, 0, -1, :]
    keep = row if row.dtype == torch.bool else row == 0
    start = (~keep).to(torch.int32).cumprod(dim=1).sum(dim=1)  # length of the masked prefix
    expected = torch.arange(slots, device=row.device)[None, :] >= start[:, None]
    if not torch.equal(keep, expected) or bool((start >= slots).any()):
        return None
    return start.cpu().numpy().astype(np.int32)


__all__ = ["PaluAttention"]
