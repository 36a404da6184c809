"""The latent KV cache of Palu attention layers (PyTorch reference path) and its transformers integration.

Spec: docs/design/latent_cache.md. Per layer and per token the cache holds the key latent ``hk`` (Rk values),
the value latent ``hv`` (Rv values) and the token's RoPE position (int32); keys and values are rebuilt from
them by the attention module (palu_c.attention.PaluAttention). Optionally the latents are quantized per token
and per head group (section 3 of the spec) into sealed blocks held as :class:`palu_c.QuantizedTensor`
objects from the C core, so that stored latents really occupy only their packed codes, scales and zeros.

Legend: B batch, T tokens appended, L tokens held (``length``), C capacity (slots), NG head groups,
r_g rank of group g, Rk = sum_g rk_g, Rv = sum_g rv_g.

Facts about transformers 5.18 this module relies on (read in cache_utils.py, masking_utils.py,
generation/utils.py and models/llama/modeling_llama.py of 5.18.0):

1. ``Cache`` keeps a plain list ``cache.layers`` of ``CacheLayerMixin`` objects. ``get_seq_length(i)``,
   ``get_mask_sizes(q, i)``, ``get_query_offset(i)`` (= ``get_seq_length(i)``) forward to ``layers[i]``;
   ``crop``, ``reorder_cache``, ``batch_repeat_interleave``, ``batch_select_indices`` and ``reset`` loop over
   every entry. A :class:`LatentLayer` put into that list therefore answers all of them.
2. ``Cache.update(k, v, i)`` is the only method that appends missing layers (``layer_class_to_replicate``)
   and the only one that offloads. Palu layers never call it: :class:`~palu_c.attention.PaluAttention`
   calls :func:`install_latent_layer` and then :meth:`LatentLayer.update_latent`.
3. ``generate`` without a user cache builds ``DynamicCache(config=text_config)``
   (``_prepare_cache_for_generation``). With a config, ``DynamicCache`` pre-creates one layer per decoder
   layer: ``DynamicLayer``, or ``DynamicSlidingWindowLayer`` when ``config.sliding_window`` is set (Mistral)
   or the layer type says so (Qwen2 ``layer_types``). Without a config (``DynamicCache()``) the list starts
   empty and grows in ``Cache.update``. ``cache_implementation="static"`` builds ``StaticLayer`` objects whose
   mask sizes are the static capacity: those are refused here.
4. The model builds the attention mask once per forward, before any decoder layer runs, from
   ``get_mask_sizes`` of the first layer whose ``is_sliding`` is False (for a sliding-window mask: True),
   layer 0 when there is none. On the first forward the layer about to be replaced is empty, so its mask sizes ``(q, 0)`` are those
   of a fresh LatentLayer. :meth:`LatentLayer.get_mask_sizes` reproduces ``DynamicLayer`` (full attention)
   and ``DynamicSlidingWindowLayer`` (sliding window) exactly, so masks stay consistent in mixed caches.
5. Beam search calls ``cache.reorder_cache(beam_idx)`` after every step; assisted decoding calls
   ``cache.crop(-n)``. ``generate`` itself never calls ``batch_repeat_interleave`` / ``batch_select_indices``
   in 5.18 (users and some model files do). ``crop(n)`` with n > 0 is the deprecated "keep n tokens" form,
   n < 0 removes -n tokens.
6. ``LlamaModel`` computes ``position_ids`` (``arange(past, past + T)``, past = ``cache.get_seq_length()``) when
   none are given and passes them to every decoder layer, which forwards them to its attention module;
   ``generate`` computes them from the attention mask. ``cache_position`` is gone from 5.18 model code.

Layer objects own torch tensors on the device of the latents they receive (CPU or CUDA). Quantized latents
run on CPU only for now (the C core); on another device ``bits`` raises NotImplementedError.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import torch
from transformers.cache_utils import (
    Cache,
    CacheLayerMixin,
    DynamicCache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    EncoderDecoderCache,
)

from ._arrays import as_int
from .quant import quantize

CHUNK = 256  # capacity grows by whole chunks of slots (spec section 2)
_ALLOWED_BITS = (2, 3, 4, 8)
_REPLACEABLE = (DynamicLayer, DynamicSlidingWindowLayer)  # exact types a LatentLayer may take the place of


def check_quant_device(device: torch.device, bits: int | None) -> None:
    """Refuse quantized latents on a device other than the CPU (the C core is host-only for now).

    Raises
    ------
    NotImplementedError
        ``bits`` is set and ``device`` is not the CPU.
    """
    if bits is not None and torch.device(device).type != "cpu":
        raise NotImplementedError(
            f"LatentLayer: quantized latents (bits={bits}) live on the CPU only for now; the latents are on "
            f"{torch.device(device)}. Quantized latents on CUDA arrive with the CUDA kernels; until then use "
            f"bits=None on this device or run the model on the CPU")


class _Block:
    """One sealed block: slots [start, start + size) of every sequence, quantized per head group.

    ``k[g]`` / ``v[g]`` are QuantizedTensor objects of shape (B0, size, r_g), B0 the batch size when the block
    was sealed. ``rows`` maps the current sequences to rows of that B0 axis (None: identity), so that beam
    reordering, selection and repetition never requantize: they only compose this index.
    """

    __slots__ = ("start", "size", "k", "v", "rows")

    def __init__(self, start: int, size: int, k: list, v: list):
        self.start, self.size, self.k, self.v = start, size, k, v
        self.rows: torch.Tensor | None = None

    def select_rows(self, index: torch.Tensor) -> None:
        self.rows = index.clone() if self.rows is None else self.rows[index]


class LatentLayer(CacheLayerMixin):
    """Latent cache of one Palu attention layer (a transformers cache layer that never holds full K/V).

    Parameters
    ----------
    k_ranks, v_ranks : sequence of int
        Ranks of the key / value latent of each head group (``PaluLayerConfig.k_ranks`` / ``v_ranks``);
        Rk = sum(k_ranks), Rv = sum(v_ranks).
    bits : {2, 3, 4, 8} or None, optional
        Quantize the latents (spec section 3). None (default): keep them in the model dtype.
    residual : int, optional
        Newest tokens kept in full precision (the window, 1..residual tokens when quantized); 0 quantizes every
        token on arrival. Default 128. Ignored without ``bits``.
    quant_group : int or None, optional
        Channels per scale inside a group's latent; must divide every rank. None: one scale per group.
    sliding_window : int or None, optional
        The layer's attention window (Mistral, Qwen2 sliding layers). Mask sizes and the latents returned by
        :meth:`update_latent` follow ``DynamicSlidingWindowLayer``; every token is still kept (no eviction).

    Notes
    -----
    Storage. Unquantized: ``k_latent`` (B, C, Rk), ``v_latent`` (B, C, Rv) and ``positions`` (B, C) int32 with C
    a multiple of 256, slots [0, length) filled. Quantized: slots [0, sealed) are sealed blocks (``residual``
    slots each; with residual 0 one block per append), ``k_latent`` / ``v_latent`` hold only the window, slots
    [sealed, length), as exact-size (B, length - sealed, R) tensors; sealed = residual * floor((length-1) /
    residual). Reading dequantizes the blocks (float32, then the model dtype) every time.

    ``crop`` into a sealed block re-opens it: the kept slots of every block past the new ``sealed`` are
    dequantized back into the window (they keep exactly the values attention read before the crop); with
    residual 0 they are sealed again right away, so those tokens are quantized a second time.
    """

    is_compileable = False
    is_croppable = True
    supports_early_init = False  # Cache.early_initialization would pass full K/V shapes

    def __init__(self, k_ranks: Sequence[int], v_ranks: Sequence[int], *, bits: int | None = None,
                 residual: int = 128, quant_group: int | None = None, sliding_window: int | None = None):
        super().__init__()
        func = "LatentLayer"
        self.k_ranks = self._check_ranks(k_ranks, "k_ranks")
        self.v_ranks = self._check_ranks(v_ranks, "v_ranks")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, numbers.Integral)
                                 or int(bits) not in _ALLOWED_BITS):
            raise ValueError(f"{func}: `bits` must be one of {{2, 3, 4, 8}} or None, got {bits!r}")
        self.bits = None if bits is None else int(bits)
        self.residual = as_int(residual, "residual", func, low=0)
        self.quant_group = None if quant_group is None else as_int(quant_group, "quant_group", func, low=1)
        if self.quant_group is not None:
            bad = [r for r in self.k_ranks + self.v_ranks if r % self.quant_group]
            if bad:
                raise ValueError(f"{func}: `quant_group` ({self.quant_group}) must divide every group rank; it "
                                 f"does not divide {sorted(set(bad))} (ranks k={list(self.k_ranks)}, "
                                 f"v={list(self.v_ranks)})")
        self.sliding_window = None if sliding_window is None else as_int(sliding_window, "sliding_window",
                                                                            func, low=1)
        self.is_sliding = self.sliding_window is not None
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None
        self._clear()

    @staticmethod
    def _check_ranks(ranks: Sequence[int], name: str) -> tuple[int, ...]:
        try:
            out = tuple(as_int(r, f"{name}[{i}]", "LatentLayer", low=1) for i, r in enumerate(ranks))
        except TypeError as exc:
            if "must be an int" in str(exc):
                raise
            raise TypeError(f"LatentLayer: `{name}` must be a sequence of ints, got {ranks!r}") from None
        if not out:
            raise ValueError(f"LatentLayer: `{name}` must hold one rank per head group, got an empty sequence")
        return out

    def _clear(self) -> None:
        self.k_latent: torch.Tensor | None = None
        self.v_latent: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.length = 0
        self.sealed = 0
        self._blocks: list[_Block] = []

    # ---- properties -------------------------------------------------------------------------------------

    @property
    def k_rank(self) -> int:
        return sum(self.k_ranks)

    @property
    def v_rank(self) -> int:
        return sum(self.v_ranks)

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def capacity(self) -> int:
        """Slots allocated in ``positions`` (and, unquantized, in ``k_latent`` / ``v_latent``)."""
        return 0 if self.positions is None else int(self.positions.shape[1])

    @property
    def nbytes(self) -> int:
        """True bytes held for the filled slots: latents (or codes + scales + zeros + window) + positions.

        Quantized: every sealed block's ``QuantizedTensor.nbytes`` (payload + scales + zeros), the batch row
        maps left by beam reordering (int64, if any), the full-precision window and the int32 positions.
        """
        if self.positions is None:
            return 0
        batch = self.positions.shape[0]
        total = batch * self.length * self.positions.element_size()
        if not self.quantized:
            return total + batch * self.length * (self.k_rank + self.v_rank) * self.k_latent.element_size()
        total += self.k_latent.numel() * self.k_latent.element_size()
        total += self.v_latent.numel() * self.v_latent.element_size()
        for block in self._blocks:
            total += sum(q.nbytes for q in block.k) + sum(q.nbytes for q in block.v)
            if block.rows is not None:
                total += block.rows.numel() * block.rows.element_size()
        return total

    # ---- transformers CacheLayerMixin interface ---------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Take dtype and device from the first latents appended (``key_states`` = hk, ``value_states`` = hv)."""
        check_quant_device(key_states.device, self.bits)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Always raises: a latent layer never holds full keys/values (see :meth:`update_latent`)."""
        raise TypeError(
            "LatentLayer.update: this cache layer belongs to a Palu-compressed attention layer and stores key/value "
            "latents, never full keys/values; only palu_c's PaluAttention may write to it (update_latent). A model "
            "whose attention calls cache.update() on this layer was not built with palu_c, or the cache was "
            "created for another model: pass a fresh cache")

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` of the mask, as ``DynamicLayer`` (or ``DynamicSlidingWindowLayer``)."""
        if self.sliding_window is None:
            return self.length + query_length, 0
        kv_offset = max(self.length - self.sliding_window + 1, 0)
        return min(self.length, self.sliding_window - 1) + query_length, kv_offset

    def reset(self) -> None:
        """Drop every token (buffers released); the options stay."""
        self._clear()
        self.is_initialized = False

    def offload(self) -> None:
        """No-op: latent layers stay on their device (transformers offloading applies to full K/V layers)."""

    def prefetch(self) -> None:
        """No-op (see :meth:`offload`)."""

    def crop(self, tokens_to_remove: int) -> None:
        """Remove ``-tokens_to_remove`` newest tokens (n < 0), or keep the first n tokens (n > 0, legacy form).

        Same semantics as ``DynamicLayer.crop``: a positive value not below the current length is a no-op.
        Quantized: blocks past the new sealed boundary are re-opened (see the class notes).
        """
        if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, numbers.Integral):
            raise TypeError(f"LatentLayer.crop: `tokens_to_remove` must be an int, got {tokens_to_remove!r}")
        n = int(tokens_to_remove)
        if n > 0:
            if n >= self.length:
                return
            keep = n
        elif n == 0:
            return
        else:
            keep = max(self.length + n, 0)
        if self.quantized and self.positions is not None:
            self._crop_quantized(keep)
        self.length = keep

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch (beam search): sequence i becomes the old sequence ``beam_idx[i]``."""
        self._batch_index(beam_idx, "beam_idx")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the sequences ``indices`` of the batch."""
        self._batch_index(indices, "indices")

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every sequence ``repeats`` times in place (sequence b becomes rows b*repeats ...)."""
        repeats = as_int(repeats, "repeats", "LatentLayer.batch_repeat_interleave", low=1)
        if self.positions is None:
            return
        index = torch.arange(self.positions.shape[0]).repeat_interleave(repeats)
        self._batch_index(index, "repeats")

    def _batch_index(self, index: Any, name: str) -> None:
        if self.positions is None:
            return
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1:
            raise ValueError(f"LatentLayer: `{name}` must be a 1-D index over the batch, got shape "
                             f"{tuple(index.shape)}")
        batch = self.positions.shape[0]
        if index.numel() and (int(index.min()) < -batch or int(index.max()) >= batch):
            raise IndexError(f"LatentLayer: `{name}` indexes a batch of {batch} sequences, got values in "
                             f"[{int(index.min())}, {int(index.max())}]")
        dev = self.positions.device
        self.positions = self.positions.index_select(0, index.to(dev) % batch)
        self.k_latent = self.k_latent.index_select(0, index.to(dev) % batch)
        self.v_latent = self.v_latent.index_select(0, index.to(dev) % batch)
        for block in self._blocks:
            block.select_rows(index.cpu() % batch)

    # ---- latents --------------------------------------------------------------------------------------------

    def update_latent(self, hk: torch.Tensor, hv: torch.Tensor, positions: torch.Tensor):
        """Append T tokens and return the latents attention must read.

        Parameters
        ----------
        hk : Tensor (B, T, Rk)
        hv : Tensor (B, T, Rv)
            New key / value latents, floating point, same dtype and device (fixed by the first call).
        positions : Tensor (B, T), (1, T) or (T,), integer
            RoPE positions of the new tokens (stored as int32).

        Returns
        -------
        hk_all : Tensor (B, S, Rk)
        hv_all : Tensor (B, S, Rv)
        positions_all : Tensor (B, S) int32
            S = length for full attention; with a sliding window the last ``min(old length, window - 1) + T``
            slots (what ``get_mask_sizes`` announced). Unquantized results are views of the buffers, valid
            until the next call that changes this layer.
        """
        func = "LatentLayer.update_latent"
        for name, x, r in (("hk", hk, self.k_rank), ("hv", hv, self.v_rank)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{func}: `{name}` must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 3 or x.shape[2] != r:
                raise ValueError(f"{func}: `{name}` must have shape (batch, tokens, {r}), got {tuple(x.shape)}")
            if not x.is_floating_point():
                raise TypeError(f"{func}: `{name}` must be floating point, got {x.dtype}")
        if hk.shape[:2] != hv.shape[:2] or hk.dtype != hv.dtype or hk.device != hv.device:
            raise ValueError(f"{func}: `hk` {tuple(hk.shape)} {hk.dtype} {hk.device} and `hv` {tuple(hv.shape)} "
                             f"{hv.dtype} {hv.device} must agree in batch, tokens, dtype and device")
        if not self.is_initialized:
            self.lazy_initialization(hk, hv)
        if hk.dtype != self.dtype or hk.device != self.device:
            raise ValueError(f"{func}: this layer holds {self.dtype} latents on {self.device}; got {hk.dtype} on "
                             f"{hk.device} (reset the cache to change either)")
        batch, tokens = hk.shape[:2]
        pos = self._check_positions(positions, batch, tokens, func)
        if self.positions is not None and self.length > 0 and self.positions.shape[0] != batch:
            raise ValueError(f"{func}: the cache holds {self.positions.shape[0]} sequences, got a batch of {batch} "
                             f"(reorder/select the cache, or reset it for a new batch)")
        old = self.length
        self._append(hk, hv, pos)
        start = 0 if self.sliding_window is None else max(old - self.sliding_window + 1, 0)
        return self._read(start)

    def latents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All held tokens as attention reads them: ``(hk (B, L, Rk), hv (B, L, Rv), positions (B, L))``."""
        if self.positions is None:
            raise ValueError("LatentLayer.latents: the layer holds no tokens yet")
        return self._read(0)

    def _check_positions(self, positions: Any, batch: int, tokens: int, func: str) -> torch.Tensor:
        if not isinstance(positions, torch.Tensor):
            raise TypeError(f"{func}: `positions` must be a torch.Tensor, got {type(positions).__name__}")
        if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
            raise TypeError(f"{func}: `positions` must hold integers, got {positions.dtype}")
        pos = positions[None] if positions.dim() == 1 else positions
        if pos.dim() != 2 or pos.shape[1] != tokens or pos.shape[0] not in (1, batch):
            raise ValueError(f"{func}: `positions` must have shape ({batch}, {tokens}), (1, {tokens}) or "
                             f"({tokens},), got {tuple(positions.shape)}")
        # range check on host tensors only: on a device it would synchronize every step
        on_host = pos.device.type == "cpu" and pos.numel() > 0
        if on_host and (int(pos.min()) < 0 or int(pos.max()) > torch.iinfo(torch.int32).max):
            raise ValueError(f"{func}: `positions` must lie in [0, 2**31 - 1], got values in "
                             f"[{int(pos.min())}, {int(pos.max())}]")
        return pos.to(device=self.device, dtype=torch.int32).expand(batch, tokens)

    def _grow(self, batch: int, need: int, dense: bool) -> None:
        """Make room for ``need`` slots (positions, and latents when unquantized), keeping filled slots."""
        fresh = self.positions is None or self.positions.shape[0] != batch
        if not fresh and need <= self.capacity:
            return
        cap = -(-need // CHUNK) * CHUNK
        keep = 0 if fresh else self.length
        pos = torch.zeros((batch, cap), dtype=torch.int32, device=self.device)
        if keep:
            pos[:, :keep] = self.positions[:, :keep]
        self.positions = pos
        if dense:
            for name, r in (("k_latent", self.k_rank), ("v_latent", self.v_rank)):
                buf = torch.zeros((batch, cap, r), dtype=self.dtype, device=self.device)
                if keep:
                    buf[:, :keep] = getattr(self, name)[:, :keep]
                setattr(self, name, buf)

    def _append(self, hk: torch.Tensor, hv: torch.Tensor, pos: torch.Tensor) -> None:
        batch, tokens = hk.shape[:2]
        if self.length == 0 and self.positions is not None and self.positions.shape[0] != batch:
            self._clear()  # empty layer, new batch size: start over
        end = self.length + tokens
        self._grow(batch, end, dense=not self.quantized)
        self.positions[:, self.length:end] = pos
        if not self.quantized:
            self.k_latent[:, self.length:end] = hk
            self.v_latent[:, self.length:end] = hv
        else:
            if self.k_latent is None:
                self.k_latent = hk.new_zeros((batch, 0, self.k_rank))
                self.v_latent = hv.new_zeros((batch, 0, self.v_rank))
            self.k_latent = torch.cat([self.k_latent, hk], dim=1)
            self.v_latent = torch.cat([self.v_latent, hv], dim=1)
            self._seal_to(self._sealed_target(end))
        self.length = end

    # ---- quantization ---------------------------------------------------------------------------------------

    def _sealed_target(self, length: int) -> int:
        """Spec section 3: slots [0, sealed) quantized, 1..residual newest in full precision (residual 0: none)."""
        if length <= 0:
            return 0
        if self.residual == 0:
            return length
        return self.residual * ((length - 1) // self.residual)

    def _quantize_cols(self, x: torch.Tensor, ranks: tuple[int, ...]) -> list:
        out, off = [], 0
        for r in ranks:
            part = x[:, :, off:off + r].to(torch.float32).contiguous()
            out.append(quantize(part, self.bits, group_size=self.quant_group or r))
            off += r
        return out

    def _seal_to(self, target: int) -> None:
        """Quantize window slots [sealed, target) into blocks of ``residual`` slots (residual 0: one block)."""
        count = target - self.sealed
        if count <= 0:
            return
        step = self.residual if self.residual > 0 else count
        for off in range(0, count, step):
            size = min(step, count - off)
            k = self._quantize_cols(self.k_latent[:, off:off + size], self.k_ranks)
            v = self._quantize_cols(self.v_latent[:, off:off + size], self.v_ranks)
            self._blocks.append(_Block(self.sealed + off, size, k, v))
        # clone: the sealed slots' full-precision copies are really released
        self.k_latent = self.k_latent[:, count:].clone()
        self.v_latent = self.v_latent[:, count:].clone()
        self.sealed = target

    def _dequantize_block(self, block: _Block, parts: list, ranks: tuple[int, ...], lo: int, hi: int) -> torch.Tensor:
        """Block slots [lo, hi) (block-relative), every group, current batch order: (B, hi - lo, R)."""
        cols = []
        for q in parts:
            x = torch.from_numpy(q.dequantize())[:, lo:hi]
            if block.rows is not None:
                x = x.index_select(0, block.rows)
            cols.append(x)
        x = torch.cat(cols, dim=2) if len(cols) > 1 else cols[0]
        return x.to(device=self.device, dtype=self.dtype)

    def _read(self, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = self.positions[:, start:self.length]
        if not self.quantized:
            return self.k_latent[:, start:self.length], self.v_latent[:, start:self.length], pos
        batch = self.positions.shape[0]
        hk = torch.empty((batch, self.length - start, self.k_rank), dtype=self.dtype, device=self.device)
        hv = torch.empty((batch, self.length - start, self.v_rank), dtype=self.dtype, device=self.device)
        for block in self._blocks:
            lo, hi = max(start, block.start), min(self.length, block.start + block.size)
            if lo >= hi:
                continue
            a, b = lo - block.start, hi - block.start
            hk[:, lo - start:hi - start] = self._dequantize_block(block, block.k, self.k_ranks, a, b)
            hv[:, lo - start:hi - start] = self._dequantize_block(block, block.v, self.v_ranks, a, b)
        w0 = max(start, self.sealed)
        hk[:, w0 - start:] = self.k_latent[:, w0 - self.sealed:self.length - self.sealed]
        hv[:, w0 - start:] = self.v_latent[:, w0 - self.sealed:self.length - self.sealed]
        return hk, hv, pos

    def _crop_quantized(self, keep: int) -> None:
        target = self._sealed_target(keep)
        if target >= self.sealed:  # the cut falls inside the window
            self.k_latent = self.k_latent[:, :keep - self.sealed].clone()
            self.v_latent = self.v_latent[:, :keep - self.sealed].clone()
            return
        reopened_k, reopened_v, kept = [], [], []
        for block in self._blocks:
            if block.start + block.size <= target:
                kept.append(block)
            elif block.start < keep:
                hi = min(block.size, keep - block.start)
                reopened_k.append(self._dequantize_block(block, block.k, self.k_ranks, 0, hi))
                reopened_v.append(self._dequantize_block(block, block.v, self.v_ranks, 0, hi))
        batch = self.positions.shape[0]
        self._blocks = kept
        self.sealed = kept[-1].start + kept[-1].size if kept else 0
        self.k_latent = torch.cat(reopened_k, 1) if reopened_k else self.k_latent.new_zeros((batch, 0, self.k_rank))
        self.v_latent = torch.cat(reopened_v, 1) if reopened_v else self.v_latent.new_zeros((batch, 0, self.v_rank))
        self._seal_to(target)  # residual 0 only: re-seal what was re-opened

    def __repr__(self) -> str:
        quant = "" if self.bits is None else f", bits={self.bits}, residual={self.residual}, sealed={self.sealed}"
        return (f"LatentLayer(k_ranks={list(self.k_ranks)}, v_ranks={list(self.v_ranks)}, length={self.length}"
                f"{quant})")


# ---- transformers Cache integration -----------------------------------------------------------------------------


def install_latent_layer(cache: Cache, layer_idx: int, make_layer: Callable[[], LatentLayer]) -> LatentLayer:
    """Return the LatentLayer of ``cache.layers[layer_idx]``, putting a fresh one there first if needed.

    Called by PaluAttention on every forward with a cache. A missing entry (lazily grown caches) is created;
    an empty ``DynamicLayer`` / ``DynamicSlidingWindowLayer`` (what ``generate`` pre-creates) is replaced.
    Missing entries below ``layer_idx`` get ``cache.layer_class_to_replicate()`` (DynamicLayer when None).

    Raises
    ------
    TypeError
        ``cache`` is not a transformers Cache with a ``layers`` list, or the entry is another kind of layer
        (static, quantized, linear attention ...): Palu layers support the dynamic cache and LatentCache.
    ValueError
        The entry already holds full keys/values (the cache was filled by a non-Palu model).
    """
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        raise TypeError(f"PaluAttention: past_key_values must be a transformers Cache (DynamicCache, "
                        f"palu_c.cache.LatentCache), got {type(cache).__name__}")
    while len(layers) < layer_idx:
        factory = getattr(cache, "layer_class_to_replicate", None) or DynamicLayer
        layers.append(factory())
    if len(layers) == layer_idx:
        layers.append(make_layer())
        return layers[layer_idx]
    layer = layers[layer_idx]
    if isinstance(layer, LatentLayer):
        return layer
    if type(layer) not in _REPLACEABLE:
        raise TypeError(f"PaluAttention: layer {layer_idx} of the cache is a {type(layer).__name__}; Palu layers "
                        f"work with the default dynamic cache or palu_c.cache.LatentCache, not with static or "
                        f"transformers-quantized caches (drop cache_implementation= from generate)")
    if layer.get_seq_length() > 0:
        raise ValueError(f"PaluAttention: layer {layer_idx} of the cache already holds {layer.get_seq_length()} "
                         f"tokens of full keys/values (filled by a model without Palu layers); pass a fresh cache")
    layers[layer_idx] = make_layer()
    return layers[layer_idx]


class LatentCache(Cache):
    """A transformers Cache for a Palu-compressed model, for users who create the cache themselves.

    Parameters
    ----------
    model : transformers PreTrainedModel, optional
        When given, one layer is created per decoder layer right away: ``module.make_latent_layer()`` for every
        Palu attention module (found by that method and its ``layer_idx``), and for the others the layer
        ``DynamicCache(config=...)`` would create. Without it the list grows on first use (``DynamicLayer`` for
        uncompressed layers, a LatentLayer installed by each Palu layer).

    Examples
    --------
    >>> cache = LatentCache(model)
    >>> out = model.generate(**inputs, past_key_values=cache, max_new_tokens=20)
    >>> palu_c.cache.kv_cache_bytes(cache)
    """

    def __init__(self, model: Any = None):
        if model is None:
            super().__init__(layer_class_to_replicate=DynamicLayer)
            return
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "modules"):
            raise TypeError(f"LatentCache: `model` must be a transformers model, got {type(model).__name__}")
        layers = DynamicCache(config=config.get_text_config(decoder=True)).layers
        for module in model.modules():
            make = getattr(module, "make_latent_layer", None)
            if callable(make):
                idx = int(module.layer_idx)
                while len(layers) <= idx:
                    layers.append(DynamicLayer())
                layers[idx] = make()
        super().__init__(layers=layers)


def _layer_bytes(layer: Any, seen: set) -> int:
    if isinstance(layer, LatentLayer):
        return layer.nbytes
    total = 0
    for value in vars(layer).values():
        if not isinstance(value, torch.Tensor) or value.device.type == "meta":
            continue
        try:
            storage = value.untyped_storage()
            key = (str(value.device), storage.data_ptr())
            size = storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError):  # tensor subclasses without a plain storage
            key, size = (str(value.device), id(value)), value.numel() * value.element_size()
        if key not in seen:
            seen.add(key)
            total += size
    return total


def kv_cache_bytes(cache: Any) -> int:
    """Total bytes a transformers cache really holds.

    Parameters
    ----------
    cache : transformers Cache (DynamicCache, LatentCache, EncoderDecoderCache ...) or None
        LatentLayer entries count :attr:`LatentLayer.nbytes`; any other layer counts the storage of every
        tensor attribute it holds (keys and values, plus small metadata tensors), each storage once (a
        sliding-window view keeps its whole storage alive, so the whole storage is counted).

    Returns
    -------
    int
        Bytes; 0 for None or an empty cache.
    """
    if cache is None:
        return 0
    if isinstance(cache, EncoderDecoderCache):
        return kv_cache_bytes(cache.self_attention_cache) + kv_cache_bytes(cache.cross_attention_cache)
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        raise TypeError(f"kv_cache_bytes: `cache` must be a transformers Cache, got {type(cache).__name__}")
    seen: set = set()
    return sum(_layer_bytes(layer, seen) for layer in layers)


__all__ = ["CHUNK", "LatentLayer", "LatentCache", "install_latent_layer", "kv_cache_bytes", "check_quant_device"]
