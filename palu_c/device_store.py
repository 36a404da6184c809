"""Latent KV storage of one Palu layer in plain torch tensors, for any device and dtype (CUDA above all).

Spec: docs/design/latent_cache.md, sections 2-4; bit layout: docs/quant_format.md (layout v1). The CPU float32
case has a C object with the same interface; :class:`DeviceLatentStore` is the storage for every other case
and LatentLayer (palu_c/cache.py) holds either one.

Design
------
* Fixed-capacity buffers. Every buffer has C slots (C a multiple of ``CHUNK`` = 256) and is written in place;
  the store grows by whole chunks (reallocate + copy) unless ``max_tokens`` was given, in which case C is
  allocated once, at the first append, and never moves: CUDA graphs keep valid addresses and
  ``torch.cuda.max_memory_allocated`` sees the reservation. Appending past a fixed capacity is an error.
* Quantized latents in torch. Sealed slots hold layout-v1 codes (the uint32 words kept as int32 bit patterns,
  since torch has no uint32 arithmetic on every device), float32 scales and zero points; packing and unpacking
  are gathers and shifts over small static index tables, so they run on any device with no atomics.
* Same numbers as the C core. Encoding and decoding are evaluated in float64 where the device has it, exactly
  as csrc/quant.c does: the codes, scales, zeros and dequantized float32 values are then bit for bit those of
  ``palu_c.quantize`` (one code times a float32 scale is exact in float64, so fused or unfused multiply-add
  round the same). MPS has no float64 and gets float32 (untested there): the layout doc's allowance then
  applies (a neighbouring code within rounding of a half-integer).
* No host synchronization in :meth:`append` / :meth:`read`: every decision (seal or not, which slots) depends on
  Python integer counters only, never on tensor values, so a decode step can be captured in a CUDA graph.
  Allocation happens at the first append, on growth and on a batch change, never in the steady state.
* Non-finite latents are not checked here (that would synchronize): NaN/Inf are stored as they are in the
  unquantized buffers, and a quantized group holding one reads back as non-finite (never as finite garbage).

Legend: B batch, T tokens appended, S slots read, C capacity (slots), NG head groups, r_g rank of group g,
Rk = sum_g rk_g, Rv = sum_g rv_g, b bits, W_g = ceil(r_g * b / 32) words per row, n_sub_g scales per row.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

from ._arrays import as_int

CHUNK = 256  # capacity grows by whole chunks of slots (spec section 2)
_ALLOWED_BITS = (2, 3, 4, 8)
_MASK32 = 0xFFFFFFFF


def _compute_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (matches the C core bit for bit), float32 on MPS (no float64 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _to_int32_bits(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 tensors holding the same 32-bit patterns (two's complement)."""
    return (words - ((words >> 31) << 32)).to(torch.int32)


class _GroupCodec:
    """Quantize / dequantize rows of one head group (n channels, ``sub`` channels per scale) in layout v1.

    Packing gathers, for each of the W output words, the K codes that overlap it and shifts them into place
    (a code straddling two words is gathered by both, shifted right for the second); bits never overlap, so
    the sum over K is the bitwise OR. The index tables live on the store's device, built at its first allocation.
    """

    def __init__(self, n: int, bits: int, sub: int, device: torch.device):
        self.n, self.bits, self.sub = n, bits, sub
        self.levels = (1 << bits) - 1
        self.words = (n * bits + 31) // 32
        self.n_sub = n // sub
        self.cdtype = _compute_dtype(device)
        W, b = self.words, bits
        # word j holds bits [32j, 32j + 32) of the row stream; code i holds [i*b, i*b + b)
        spans = [range(32 * j // b, min(n, -(-32 * (j + 1) // b))) for j in range(W)]
        K = max(len(s) for s in spans)
        idx = [[0] * K for _ in range(W)]
        lsh = [[0] * K for _ in range(W)]
        rsh = [[63] * K for _ in range(W)]  # unused entries: a code >> 63 is 0 (codes are >= 0)
        for j, span in enumerate(spans):
            for k, i in enumerate(span):
                off = i * b - 32 * j
                idx[j][k] = i
                lsh[j][k], rsh[j][k] = (off, 0) if off >= 0 else (0, -off)
        self.pack_idx = torch.tensor(idx, dtype=torch.long, device=device).flatten()
        self.pack_lsh = torch.tensor(lsh, dtype=torch.long, device=device)
        self.pack_rsh = torch.tensor(rsh, dtype=torch.long, device=device)
        # unpacking: with 32 % b == 0 no code straddles a word, and word w holds codes w*32/b .. as fields at
        # shifts 0, b, 2b ...: a broadcast shift of every word (int32; the arithmetic shift's sign bits land at
        # positions >= 32 - shift >= b and are masked off). Otherwise (3 bits) each code gathers its first word
        # and the next one as an int64 pair and shifts.
        self.straddles = 32 % b != 0
        if self.straddles:
            first = [i * b // 32 for i in range(n)]
            self.unpack_lo = torch.tensor(first, dtype=torch.long, device=device)
            self.unpack_hi = torch.tensor([min(w + 1, W - 1) for w in first], dtype=torch.long, device=device)
            self.unpack_shift = torch.tensor([i * b % 32 for i in range(n)], dtype=torch.long, device=device)
        else:
            self.unpack_shift = torch.arange(0, 32, b, dtype=torch.int32, device=device)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, S, n) floating -> codes (B, S, W) int32, scales (B, S, n_sub) float32, zeros (B, S, n_sub)."""
        lead = x.shape[:-1]
        if x.dtype == torch.float64:  # quantize the float32 rounding, as the CPU path does (spec section 3)
            x = x.to(torch.float32)
        xs = x.to(self.cdtype).reshape(*lead, self.n_sub, self.sub)
        lo, hi = xs.amin(-1), xs.amax(-1)
        scale = ((hi - lo) / self.levels).to(torch.float32)  # f32((max - min) / Q) in float64, as the C core
        zero = lo.to(torch.float32)
        s = scale.to(self.cdtype).unsqueeze(-1)
        z = zero.to(self.cdtype).unsqueeze(-1)
        positive = s > 0
        # codes come from the STORED scale and zero (layout doc); a zero scale stores code 0
        q = torch.round((xs - z) / torch.where(positive, s, 1.0)).clamp_(0, self.levels)
        q = torch.where(positive, q, 0.0).nan_to_num_(nan=0.0)  # non-finite group: code 0, reads non-finite
        codes = q.to(torch.int64).reshape(*lead, self.n)
        parts = codes.index_select(-1, self.pack_idx).view(*lead, self.words, -1)
        words = (((parts << self.pack_lsh) >> self.pack_rsh) & _MASK32).sum(-1)
        return _to_int32_bits(words), scale, zero

    def dequantize_into(self, out: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                        zeros: torch.Tensor) -> None:
        """codes (B, S, W) int32, scales / zeros (B, S, n_sub) float32 -> out (B, S, n), any dtype / strides.

        x' = code * scale + zero in the compute dtype, rounded to float32 (the C core's output), then to
        ``out``'s dtype.
        """
        lead = codes.shape[:-1]
        if self.straddles:
            words = codes.to(torch.int64) & _MASK32
            pair = words.index_select(-1, self.unpack_lo) | (words.index_select(-1, self.unpack_hi) << 32)
            q = (pair >> self.unpack_shift) & self.levels
        else:
            q = ((codes.unsqueeze(-1) >> self.unpack_shift) & self.levels).view(*lead, -1)[..., :self.n]
        q = q.to(self.cdtype).reshape(*lead, self.n_sub, self.sub)
        x = torch.addcmul(zeros.to(self.cdtype).unsqueeze(-1), q, scales.to(self.cdtype).unsqueeze(-1))
        x = x.view(*lead, self.n)
        out.copy_(x if out.dtype == torch.float32 else x.to(torch.float32))


class DeviceLatentStore:
    """Latent cache storage of one layer: fixed-capacity torch buffers on one device (spec sections 2-3).

    Parameters
    ----------
    k_ranks, v_ranks : sequence of int
        Rank of the key / value latent of each head group, each >= 1; Rk = sum(k_ranks), Rv = sum(v_ranks).
    bits : {2, 3, 4, 8} or None
        Quantize the latents (layout v1, asymmetric round-to-nearest per token and group). None: keep them
        in ``dtype``.
    residual : int
        Newest tokens kept in full precision (1..residual of them when quantized); 0 quantizes every token on
        arrival. Unused without ``bits``.
    quant_group : int or None
        Channels per scale inside a group's latent; must divide every rank. None: one scale per group.
    dtype : torch.dtype
        Floating dtype of the latents (float16, bfloat16, float32, float64).
    device : torch.device or str
        Device of every buffer.
    max_tokens : int or None, optional
        Reserve a fixed capacity of ``max_tokens`` rounded up to a multiple of ``CHUNK`` slots, allocated at the
        first append; the buffers then never move (CUDA graphs) and appending past :attr:`capacity` raises.
        None (default): grow by chunks of 256 slots.

    Attributes
    ----------
    positions : Tensor (B, C) int32 or None
    k_latent, v_latent : Tensor (B, C, Rk), (B, C, Rv) in ``dtype`` (unquantized only, else None)
    k_codes, v_codes : list of Tensor (B, C, W_g) int32, one per group (quantized only, else empty)
        The uint32 words of layout v1 as int32 bit patterns (``.view(torch.uint32)`` or ``& 0xFFFFFFFF``).
    k_scales, k_zeros, v_scales, v_zeros : list of Tensor (B, C, n_sub_g) float32 (quantized only)
    k_window, v_window : Tensor (B, residual, Rk), (B, residual, Rv) in ``dtype`` (quantized, residual > 0)
        Window slot i holds slot ``sealed + i``.

    Notes
    -----
    Slots [0, sealed) are quantized and slots [sealed, length) sit in the window, with
    ``sealed = residual * floor((length - 1) / residual)`` (residual 0: sealed = length). Unquantized stores
    have sealed = 0. Quantization is per token, so a slot's codes never depend on when it was sealed; with
    residual 0 a crop re-opens nothing (spec section 3).
    """

    def __init__(self, k_ranks: Sequence[int], v_ranks: Sequence[int], *, bits: int | None, residual: int,
                 quant_group: int | None, dtype: torch.dtype, device: torch.device,
                 max_tokens: int | None = None):
        func = "DeviceLatentStore"
        self.k_ranks = self._check_ranks(k_ranks, "k_ranks")
        self.v_ranks = self._check_ranks(v_ranks, "v_ranks")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, numbers.Integral)
                                 or int(bits) not in _ALLOWED_BITS):
            raise ValueError(f"{func}: `bits` must be one of {{2, 3, 4, 8}} or None, got {bits!r}")
        self.bits = None if bits is None else int(bits)
        self.residual = as_int(residual, "residual", func, low=0)
        self.quant_group = None if quant_group is None else as_int(quant_group, "quant_group", func, low=1)
        if self.quant_group is not None:
            bad = sorted({r for r in self.k_ranks + self.v_ranks if r % self.quant_group})
            if bad:
                raise ValueError(f"{func}: `quant_group` ({self.quant_group}) must divide every group rank; it does "
                                 f"not divide {bad} (k_ranks={list(self.k_ranks)}, v_ranks={list(self.v_ranks)})")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"{func}: `dtype` must be a floating torch.dtype (float16, bfloat16, float32, float64), "
                            f"got {dtype!r}")
        self.dtype = dtype
        try:
            self.device = torch.device(device)
        except (TypeError, RuntimeError, ValueError):
            raise TypeError(f"{func}: `device` must be a torch.device or a device string like 'cuda:0', "
                            f"got {device!r}") from None
        self.max_tokens = None if max_tokens is None else as_int(max_tokens, "max_tokens", func, low=1)
        self._fixed_capacity = None if max_tokens is None else -(-self.max_tokens // CHUNK) * CHUNK
        self._k_codecs: list[_GroupCodec] = []
        self._v_codecs: list[_GroupCodec] = []
        self._release()

    @staticmethod
    def _check_ranks(ranks: Sequence[int], name: str) -> tuple[int, ...]:
        if isinstance(ranks, (str, bytes)) or not hasattr(ranks, "__iter__"):
            raise TypeError(f"DeviceLatentStore: `{name}` must be a sequence of ints (one rank per head group), "
                            f"got {ranks!r}")
        out = tuple(as_int(r, f"{name}[{i}]", "DeviceLatentStore", low=1) for i, r in enumerate(ranks))
        if not out:
            raise ValueError(f"DeviceLatentStore: `{name}` must hold one rank per head group, got an empty sequence")
        return out

    def _release(self) -> None:
        self.positions: torch.Tensor | None = None
        self.k_latent: torch.Tensor | None = None
        self.v_latent: torch.Tensor | None = None
        self.k_codes: list[torch.Tensor] = []
        self.k_scales: list[torch.Tensor] = []
        self.k_zeros: list[torch.Tensor] = []
        self.v_codes: list[torch.Tensor] = []
        self.v_scales: list[torch.Tensor] = []
        self.v_zeros: list[torch.Tensor] = []
        self.k_window: torch.Tensor | None = None
        self.v_window: torch.Tensor | None = None
        self._length = 0
        self._sealed = 0

    # ---- metadata ---------------------------------------------------------------------------------------------

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def k_rank(self) -> int:
        return sum(self.k_ranks)

    @property
    def v_rank(self) -> int:
        return sum(self.v_ranks)

    @property
    def batch(self) -> int:
        """Sequences the buffers hold (0 before the first append and after :meth:`reset` of a growable store)."""
        return 0 if self.positions is None else int(self.positions.shape[0])

    @property
    def length(self) -> int:
        """Slots filled, the same for every sequence."""
        return self._length

    @property
    def sealed(self) -> int:
        """Slots [0, sealed) are quantized (0 when ``bits`` is None)."""
        return self._sealed

    @property
    def capacity(self) -> int:
        """Slots allocated in ``positions`` and the latent / code buffers (a multiple of 256; 0 when none)."""
        return 0 if self.positions is None else int(self.positions.shape[1])

    def _buffers(self) -> list[torch.Tensor]:
        bufs = [self.positions, self.k_latent, self.v_latent, self.k_window, self.v_window]
        bufs += self.k_codes + self.k_scales + self.k_zeros + self.v_codes + self.v_scales + self.v_zeros
        return [b for b in bufs if b is not None]

    @property
    def nbytes(self) -> int:
        """True bytes of the filled slots (spec section 3 accounting), each buffer at its element size.

        positions: B * length * 4; unquantized: + B * length * (Rk + Rv) * itemsize; quantized:
        + B * sealed * sum_g (4 * W_g + 8 * n_sub_g) over key and value groups (codes + scales + zeros)
        + B * (length - sealed) * (Rk + Rv) * itemsize (the window).
        """
        if self.positions is None:
            return 0
        B, L = self.batch, self._length
        item = torch.finfo(self.dtype).bits // 8
        total = B * L * 4
        if not self.quantized:
            return total + B * L * (self.k_rank + self.v_rank) * item
        per_slot = sum(4 * c.words + 8 * c.n_sub for c in self._k_codecs + self._v_codecs)
        return total + B * self._sealed * per_slot + B * (L - self._sealed) * (self.k_rank + self.v_rank) * item

    @property
    def reserved_bytes(self) -> int:
        """Bytes of the allocated buffers (whole capacity and window): what the device allocator holds."""
        return sum(b.numel() * b.element_size() for b in self._buffers())

    def _sealed_target(self, length: int) -> int:
        if not self.quantized or length <= 0:
            return 0
        if self.residual == 0:
            return length
        return self.residual * ((length - 1) // self.residual)

    # ---- allocation -------------------------------------------------------------------------------------------

    def _codecs(self) -> None:
        if self._k_codecs or not self.quantized:
            return
        def make(ranks):
            return [_GroupCodec(r, self.bits, self.quant_group or r, self.device) for r in ranks]
        self._k_codecs, self._v_codecs = make(self.k_ranks), make(self.v_ranks)

    def _allocate(self, batch: int, capacity: int) -> None:
        """Fresh zeroed buffers for ``batch`` sequences and ``capacity`` slots (counters untouched)."""
        def zeros(shape, dtype):
            return torch.zeros(shape, dtype=dtype, device=self.device)

        self.positions = zeros((batch, capacity), torch.int32)
        if not self.quantized:
            self.k_latent = zeros((batch, capacity, self.k_rank), self.dtype)
            self.v_latent = zeros((batch, capacity, self.v_rank), self.dtype)
            return
        self._codecs()
        for side, codecs in (("k", self._k_codecs), ("v", self._v_codecs)):
            setattr(self, f"{side}_codes", [zeros((batch, capacity, c.words), torch.int32) for c in codecs])
            setattr(self, f"{side}_scales", [zeros((batch, capacity, c.n_sub), torch.float32) for c in codecs])
            setattr(self, f"{side}_zeros", [zeros((batch, capacity, c.n_sub), torch.float32) for c in codecs])
        if self.residual:
            self.k_window = zeros((batch, self.residual, self.k_rank), self.dtype)
            self.v_window = zeros((batch, self.residual, self.v_rank), self.dtype)

    def _filled(self) -> list[tuple[torch.Tensor, int]]:
        """(buffer, filled slots along dim 1) for every buffer, in a fixed order."""
        L, S = self._length, self._sealed
        out = [(self.positions, L)]
        if not self.quantized:
            return out + [(self.k_latent, L), (self.v_latent, L)]
        out += [(b, S) for b in self.k_codes + self.k_scales + self.k_zeros + self.v_codes + self.v_scales
                + self.v_zeros]
        if self.residual:
            out += [(self.k_window, L - S), (self.v_window, L - S)]
        return out

    def _rebuild(self, batch: int, capacity: int, index: torch.Tensor | None = None) -> None:
        """Reallocate every buffer, copying only the filled slots (rows ``index`` of the old batch if given)."""
        old = self._filled()
        self._allocate(batch, capacity)
        for (src, n), (dst, _) in zip(old, self._filled()):
            if n:
                dst[:, :n] = src[:, :n] if index is None else src[:, :n].index_select(0, index)

    # ---- interface --------------------------------------------------------------------------------------------

    def append(self, hk: torch.Tensor, hv: torch.Tensor, pos: torch.Tensor) -> None:
        """Append T slots to every sequence; seal (quantize) the window blocks that overflow.

        Parameters
        ----------
        hk : Tensor (B, T, Rk), hv : Tensor (B, T, Rv)
            Latents in ``dtype`` on ``device`` (validated by the caller).
        pos : Tensor (B, T) int32 on ``device``
            RoPE positions of the new slots.

        Raises
        ------
        ValueError
            The store holds tokens of another batch size, or the slots would pass a fixed capacity
            (``max_tokens``); nothing is written then.
        """
        B, T = int(hk.shape[0]), int(hk.shape[1])
        if T == 0:
            return
        hk, hv = hk.detach(), hv.detach()  # a cache never joins the autograd graph
        L0 = self._length
        L1 = L0 + T
        if self.positions is not None and B != self.batch:
            if L0 > 0:
                raise ValueError(f"DeviceLatentStore.append: the store holds {L0} tokens of {self.batch} sequences, "
                                 f"got a batch of {B} (select or reset first)")
            self._release()  # empty store, new batch size: buffers re-created below (same fixed capacity)
        if self._fixed_capacity is not None:
            if L1 > self._fixed_capacity:
                raise ValueError(f"DeviceLatentStore.append: {L0} + {T} tokens exceed the fixed capacity of "
                                 f"{self._fixed_capacity} slots reserved by max_tokens={self.max_tokens}; create "
                                 f"the cache with a larger max_tokens (buffers never move with a fixed capacity)")
            if self.positions is None:
                self._allocate(B, self._fixed_capacity)
        elif self.positions is None:
            self._allocate(B, -(-L1 // CHUNK) * CHUNK)
        elif L1 > self.capacity:
            self._rebuild(B, -(-L1 // CHUNK) * CHUNK)
        self.positions[:, L0:L1] = pos
        if not self.quantized:
            self.k_latent[:, L0:L1] = hk
            self.v_latent[:, L0:L1] = hv
            self._length = L1
            return
        s0, s1 = self._sealed, self._sealed_target(L1)
        if s1 > s0:
            # slots [s0, s1): the old window part first, then new tokens; row-wise quantization makes the
            # split invisible. With residual > 0, sealing implies the whole old window goes (s1 >= L0).
            w = min(L0, s1) - s0
            if w > 0:
                self._seal(self.k_window[:, :w], self.v_window[:, :w], s0)
            if s1 > L0:
                self._seal(hk[:, :s1 - L0], hv[:, :s1 - L0], L0)
        if self.residual:
            if s1 > s0:
                self.k_window[:, :L1 - s1] = hk[:, s1 - L0:]
                self.v_window[:, :L1 - s1] = hv[:, s1 - L0:]
            else:
                self.k_window[:, L0 - s0:L1 - s0] = hk
                self.v_window[:, L0 - s0:L1 - s0] = hv
        self._sealed, self._length = s1, L1

    def _seal(self, hk: torch.Tensor, hv: torch.Tensor, start: int) -> None:
        """Quantize hk (B, n, Rk) / hv (B, n, Rv) into code slots [start, start + n), group by group."""
        end = start + int(hk.shape[1])
        for x, codecs, codes, scales, zeros in ((hk, self._k_codecs, self.k_codes, self.k_scales, self.k_zeros),
                                                (hv, self._v_codecs, self.v_codes, self.v_scales, self.v_zeros)):
            off = 0
            for g, c in enumerate(codecs):
                words, scale, zero = c.quantize(x[:, :, off:off + c.n])
                codes[g][:, start:end] = words
                scales[g][:, start:end] = scale
                zeros[g][:, start:end] = zero
                off += c.n

    def _dequantize_into(self, hk: torch.Tensor, hv: torch.Tensor, lo: int, hi: int) -> None:
        """Write sealed slots [lo, hi) into hk (B, hi - lo, Rk) / hv (B, hi - lo, Rv) (views allowed)."""
        for out, codecs, codes, scales, zeros in (
                (hk, self._k_codecs, self.k_codes, self.k_scales, self.k_zeros),
                (hv, self._v_codecs, self.v_codes, self.v_scales, self.v_zeros)):
            off = 0
            for g, c in enumerate(codecs):
                c.dequantize_into(out[:, :, off:off + c.n], codes[g][:, lo:hi], scales[g][:, lo:hi],
                                  zeros[g][:, lo:hi])
                off += c.n

    def _dequantize(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sealed slots [lo, hi) as fresh (B, hi - lo, R) tensors in ``dtype``."""
        hk = torch.empty((self.batch, hi - lo, self.k_rank), dtype=self.dtype, device=self.device)
        hv = torch.empty((self.batch, hi - lo, self.v_rank), dtype=self.dtype, device=self.device)
        self._dequantize_into(hk, hv, lo, hi)
        return hk, hv

    def read(self, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slots [start, length) as attention reads them.

        Parameters
        ----------
        start : int
            First slot, 0 <= start <= length (validated by the caller).

        Returns
        -------
        hk : Tensor (B, S, Rk) in ``dtype``
        hv : Tensor (B, S, Rv) in ``dtype``
        pos : Tensor (B, S) int32
            S = length - start. ``pos`` and, unquantized, ``hk`` / ``hv`` are views of the buffers (valid until
            the next call that changes the store); quantized latents are fresh tensors (sealed slots
            dequantized, window slots copied).
        """
        L, S0 = self._length, self._sealed
        if self.positions is None:
            empty = torch.empty((0, 0), dtype=torch.int32, device=self.device)
            return (torch.empty((0, 0, self.k_rank), dtype=self.dtype, device=self.device),
                    torch.empty((0, 0, self.v_rank), dtype=self.dtype, device=self.device), empty)
        pos = self.positions[:, start:L]
        if not self.quantized:
            return self.k_latent[:, start:L], self.v_latent[:, start:L], pos
        hk = torch.empty((self.batch, L - start, self.k_rank), dtype=self.dtype, device=self.device)
        hv = torch.empty((self.batch, L - start, self.v_rank), dtype=self.dtype, device=self.device)
        if start < S0:
            self._dequantize_into(hk[:, :S0 - start], hv[:, :S0 - start], start, S0)
        w0 = max(start, S0)  # first window slot read
        if L > w0:
            hk[:, w0 - start:] = self.k_window[:, w0 - S0:L - S0]
            hv[:, w0 - start:] = self.v_window[:, w0 - S0:L - S0]
        return hk, hv, pos

    def crop(self, keep: int) -> None:
        """Keep the first ``keep`` slots, 0 <= keep <= length (validated by the caller).

        Quantized (spec section 3): sealed blocks ending after the new sealed boundary are re-opened; their kept
        slots go back into the window as their dequantized values (attention reads what it read before). With
        residual 0 nothing is re-opened.
        """
        keep = int(keep)
        if keep >= self._length:
            return
        target = self._sealed_target(keep)
        if target < self._sealed:
            if self.residual:
                # the blocks past `target` re-open; only [target, keep) is kept (keep <= target + residual
                # <= sealed: a cut at or before the old sealed boundary, since 1..residual slots stay exact)
                if keep > target:
                    qk, qv = self._dequantize(target, keep)
                    self.k_window[:, :keep - target] = qk
                    self.v_window[:, :keep - target] = qv
                self._sealed = target
            else:  # residual 0: every kept slot stays sealed as it is (quantization is per token)
                self._sealed = keep
        self._length = keep

    def select(self, index: torch.Tensor) -> None:
        """New batch order: sequence i becomes the old sequence ``index[i]`` (every buffer re-indexed).

        Parameters
        ----------
        index : Tensor (B',) long
            Values in [0, batch) (validated by the caller); repeats allowed (beam search, selection,
            repeat_interleave). With a fixed capacity and B' == batch the buffers are rewritten in place (their
            addresses stay); otherwise they are reallocated with the same capacity.
        """
        if self.positions is None:
            return
        index = index.to(device=self.device, dtype=torch.long)
        if self._fixed_capacity is not None and int(index.shape[0]) == self.batch:
            for buf, filled in self._filled():
                if filled:
                    buf[:, :filled] = buf[:, :filled].index_select(0, index)
            return
        self._rebuild(int(index.shape[0]), self.capacity, index)

    def reset(self) -> None:
        """Drop every token. A growable store releases its buffers; with ``max_tokens`` they are kept (same
        addresses, same batch) so captured CUDA graphs stay valid."""
        if self._fixed_capacity is not None and self.positions is not None:
            self._length = self._sealed = 0
            return
        self._release()

    def __repr__(self) -> str:
        quant = "" if self.bits is None else (f", bits={self.bits}, residual={self.residual}, "
                                              f"quant_group={self.quant_group}, sealed={self._sealed}")
        return (f"DeviceLatentStore(k_ranks={list(self.k_ranks)}, v_ranks={list(self.v_ranks)}, dtype={self.dtype}, "
                f"device={self.device}, batch={self.batch}, length={self._length}, capacity={self.capacity}"
                f"{quant})")


__all__ = ["CHUNK", "DeviceLatentStore"]
