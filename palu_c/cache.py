"""The latent KV cache of Palu attention layers and its transformers integration.

Spec: docs/design/latent_cache.md. Per layer and per token the cache holds the key latent ``hk`` (Rk values),
the value latent ``hv`` (Rv values) and the token's RoPE position (int32); keys and values are rebuilt from
them by the attention module (palu_c.attention.PaluAttention). Optionally the latents are quantized per token
and per head group (section 3 of the spec): sealed slots keep only packed codes plus float32 scales and zeros,
the newest 1..residual slots stay exact.

Layers: :class:`LatentLayer` is the transformers-facing cache layer (validation, mask sizes, crop / reorder
semantics); it keeps its tokens in a store picked from the latents' device and dtype: :class:`HostLatentStore`
(the C object ``palu_c._C.LatentCache``, CPU float32; the C decode attention reads it in place) or
``palu_c.device_store.DeviceLatentStore`` (torch buffers with a fixed, chunk-grown capacity: CUDA, fp16/bf16,
or a reserved ``max_tokens``).

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

Stores own their memory on the device of the latents they receive (CPU or CUDA).
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
from . import _C

CHUNK = 256  # capacity grows by whole chunks of slots (spec section 2)
_ALLOWED_BITS = (2, 3, 4, 8)
_REPLACEABLE = (DynamicLayer, DynamicSlidingWindowLayer)  # exact types a LatentLayer may take the place of


class HostLatentStore:
    """Storage of a layer's latents on the CPU in float32: a C :class:`palu_c._C.LatentCache` (csrc/latent_cache.c).

    Same interface as :class:`palu_c.device_store.DeviceLatentStore`; torch tensors in and out (reads are fresh
    tensors sharing memory with the NumPy arrays C allocated). The C object is also what the C decode attention
    reads directly (:attr:`c_cache`).
    """

    def __init__(self, k_ranks: Sequence[int], v_ranks: Sequence[int], *, bits: int | None, residual: int,
                 quant_group: int | None):
        self.c_cache = _C.LatentCache(list(k_ranks), list(v_ranks), bits=bits, residual=residual,
                                      quant_group=quant_group)

    batch = property(lambda self: self.c_cache.batch)
    length = property(lambda self: self.c_cache.length)
    sealed = property(lambda self: self.c_cache.sealed)
    capacity = property(lambda self: self.c_cache.capacity)
    nbytes = property(lambda self: self.c_cache.nbytes)
    reserved_bytes = property(lambda self: self.c_cache.reserved_bytes)

    def append(self, hk: torch.Tensor, hv: torch.Tensor, pos: torch.Tensor) -> None:
        as_np = lambda t: t.detach().contiguous().numpy()  # noqa: E731
        self.c_cache.append(as_np(hk), as_np(hv), as_np(pos))

    def read(self, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(x) for x in self.c_cache.read(start))

    def crop(self, keep: int) -> None:
        self.c_cache.crop(keep)

    def select(self, index: torch.Tensor) -> None:
        self.c_cache.select(index.to(torch.int64).cpu().numpy())

    def reset(self) -> None:
        self.c_cache.reset()


def _make_store(k_ranks, v_ranks, bits, residual, quant_group, dtype, device, max_tokens):
    """The C store for CPU float32 latents without a fixed capacity; the torch store for everything else
    (CUDA, other dtypes, or a reserved capacity: docs/design/latent_cache.md section 4)."""
    if torch.device(device).type == "cpu" and dtype == torch.float32 and max_tokens is None:
        return HostLatentStore(k_ranks, v_ranks, bits=bits, residual=residual, quant_group=quant_group)
    from .device_store import DeviceLatentStore

    return DeviceLatentStore(k_ranks, v_ranks, bits=bits, residual=residual, quant_group=quant_group, dtype=dtype,
                             device=device, max_tokens=max_tokens)


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
    max_tokens : int or None, optional
        Reserve a fixed capacity of this many slots at the first append (rounded up to 256); appending past it
        raises. Needed for CUDA graphs (fixed addresses) and honest peak-memory figures. None: grow in chunks.

    Notes
    -----
    Storage is a store object picked at the first append from the latents' device and dtype: CPU float32 ->
    :class:`HostLatentStore` (the C object ``palu_c._C.LatentCache``, also read directly by the C decode
    attention); anything else (CUDA, fp16/bf16, a reserved capacity) -> ``palu_c.device_store.DeviceLatentStore``
    (torch buffers in the spec's layout). Both keep quantized slots as packed codes + float32 scales and zeros,
    and the newest 1..residual slots exact.
    """

    is_compileable = False
    is_croppable = True
    supports_early_init = False  # Cache.early_initialization would pass full K/V shapes

    def __init__(self, k_ranks: Sequence[int], v_ranks: Sequence[int], *, bits: int | None = None,
                 residual: int = 128, quant_group: int | None = None, sliding_window: int | None = None,
                 max_tokens: int | None = None):
        super().__init__()
        func = "LatentLayer"
        self.k_ranks = self._check_ranks(k_ranks, "k_ranks")
        self.v_ranks = self._check_ranks(v_ranks, "v_ranks")
        if len(self.k_ranks) != len(self.v_ranks):
            raise ValueError(f"{func}: `k_ranks` ({len(self.k_ranks)} entries) and `v_ranks` ({len(self.v_ranks)}) "
                             f"must hold one rank per head group each")
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
        self.max_tokens = None if max_tokens is None else as_int(max_tokens, "max_tokens", func, low=1)
        self.is_sliding = self.sliding_window is not None
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None
        self._store = None

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
    def length(self) -> int:
        return 0 if self._store is None else self._store.length

    @property
    def sealed(self) -> int:
        """Slots [0, sealed) are quantized."""
        return 0 if self._store is None else self._store.sealed

    @property
    def capacity(self) -> int:
        """Slots allocated."""
        return 0 if self._store is None else self._store.capacity

    @property
    def nbytes(self) -> int:
        """True bytes held for the filled slots: latents (or codes + scales + zeros + window) + positions."""
        return 0 if self._store is None else self._store.nbytes

    @property
    def host_cache(self):
        """The C ``palu_c._C.LatentCache`` holding this layer's latents, or None (not on the CPU in float32)."""
        return getattr(self._store, "c_cache", None)

    # ---- transformers CacheLayerMixin interface ---------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Take dtype and device from the first latents appended (``key_states`` = hk, ``value_states`` = hv)."""
        self.dtype, self.device = key_states.dtype, key_states.device
        self._store = _make_store(self.k_ranks, self.v_ranks, self.bits, self.residual, self.quant_group, self.dtype,
                                  self.device, self.max_tokens)
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
        """Drop every token and buffer; the options stay (the next append may bring another dtype or device)."""
        self._store = None
        self.dtype = self.device = None
        self.is_initialized = False

    def offload(self) -> None:
        """No-op: latent layers stay on their device (transformers offloading applies to full K/V layers)."""

    def prefetch(self) -> None:
        """No-op (see :meth:`offload`)."""

    def crop(self, tokens_to_remove: int) -> None:
        """Remove ``-tokens_to_remove`` newest tokens (n < 0), or keep the first n tokens (n > 0, legacy form).

        Same semantics as ``DynamicLayer.crop``: a positive value not below the current length is a no-op.
        Quantized: slots past the new window boundary return to the window as their dequantized values, so
        attention reads exactly what it read before the crop.
        """
        if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, numbers.Integral):
            raise TypeError(f"LatentLayer.crop: `tokens_to_remove` must be an int, got {tokens_to_remove!r}")
        n = int(tokens_to_remove)
        if n == 0 or self._store is None or (n > 0 and n >= self.length):
            return
        self._store.crop(n if n > 0 else max(self.length + n, 0))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch (beam search): sequence i becomes the old sequence ``beam_idx[i]``."""
        self._batch_index(beam_idx, "beam_idx")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the sequences ``indices`` of the batch."""
        self._batch_index(indices, "indices")

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every sequence ``repeats`` times in place (sequence b becomes rows b*repeats ...)."""
        repeats = as_int(repeats, "repeats", "LatentLayer.batch_repeat_interleave", low=1)
        if self._store is None or self._store.batch == 0:
            return
        index = torch.arange(self._store.batch).repeat_interleave(repeats)
        self._batch_index(index, "repeats")

    def _batch_index(self, index: Any, name: str) -> None:
        if self._store is None or self._store.batch == 0:
            return
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1 or index.numel() == 0:
            raise ValueError(f"LatentLayer: `{name}` must be a non-empty 1-D index over the batch, got shape "
                             f"{tuple(index.shape)}")
        batch = self._store.batch
        host = index.cpu()
        if int(host.min()) < -batch or int(host.max()) >= batch:
            raise IndexError(f"LatentLayer: `{name}` indexes a batch of {batch} sequences, got values in "
                             f"[{int(host.min())}, {int(host.max())}]")
        self._store.select(index % batch)

    # ---- latents --------------------------------------------------------------------------------------------

    def append_latent(self, hk: torch.Tensor, hv: torch.Tensor, positions: torch.Tensor) -> None:
        """Append T tokens' latents (see :meth:`update_latent` for the arguments) without reading anything back."""
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
        if self.length > 0 and self._store.batch != batch:
            raise ValueError(f"{func}: the cache holds {self._store.batch} sequences, got a batch of {batch} "
                             f"(reorder/select the cache, or reset it for a new batch)")
        self._store.append(hk, hv, pos)

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
            slots (what ``get_mask_sizes`` announced). Valid until the next call that changes this layer.
        """
        old = self.length
        self.append_latent(hk, hv, positions)
        start = 0 if self.sliding_window is None else max(old - self.sliding_window + 1, 0)
        return self._store.read(start)

    def latents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All held tokens as attention reads them: ``(hk (B, L, Rk), hv (B, L, Rv), positions (B, L))``."""
        if self._store is None or self._store.batch == 0:
            raise ValueError("LatentLayer.latents: the layer holds no tokens yet")
        return self._store.read(0)

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
        When given, one layer is created per decoder layer right away: ``module.make_latent_layer(max_tokens)`` for every
        Palu attention module (found by that method and its ``layer_idx``), and for the others the layer
        ``DynamicCache(config=...)`` would create. Without it the list grows on first use (``DynamicLayer`` for
        uncompressed layers, a LatentLayer installed by each Palu layer).
    max_tokens : int, optional
        Reserve this many slots per Palu layer at the first append (fixed addresses for CUDA graphs, peak
        memory known up front); appending past it raises. Needs ``model``.

    Examples
    --------
    >>> cache = LatentCache(model)
    >>> out = model.generate(**inputs, past_key_values=cache, max_new_tokens=20)
    >>> palu_c.cache.kv_cache_bytes(cache)
    """

    def __init__(self, model: Any = None, *, max_tokens: int | None = None):
        if model is None:
            if max_tokens is not None:
                raise ValueError("LatentCache: `max_tokens` needs `model` (the layers are created from it)")
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
                layers[idx] = make(max_tokens=max_tokens)
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


__all__ = ["CHUNK", "HostLatentStore", "LatentLayer", "LatentCache", "install_latent_layer", "kv_cache_bytes"]
