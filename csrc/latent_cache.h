/* latent_cache.h -- the host (CPU) latent KV cache of one Palu attention layer (docs/design/latent_cache.md).
 *
 * Overview. A layer's cache holds, per sequence b and slot t, the key latent hk (Rk floats), the value latent
 * hv (Rv floats) and the slot's RoPE position (int32). Slots are shared by the batch (one per generation step).
 * Unquantized, the latents live in two (B, C, R) float32 buffers. Quantized (bits in {2, 3, 4, 8}), slots
 * [0, sealed) hold packed codes plus float32 scales and zero points (asymmetric round-to-nearest per token and
 * head group, or per `quant_group` channels inside a group; bit layout v1 of docs/quant_format.md), and the
 * newest slots [sealed, length) stay exact in a full-precision window:
 *
 *     sealed = residual * floor((length - 1) / residual)   for length >= 1 (1..residual exact slots),
 *     sealed = length                                       for residual = 0 (every slot quantized at once).
 *
 * Quantization is per token, so a slot's codes never depend on its neighbours: sealing is only a question of
 * when a slot leaves the window. crop() keeps every sealed slot below the new length that is still below the
 * new sealed boundary; slots that fall between the new sealed boundary and the new length go back into the
 * window as their dequantized values (attention reads exactly what it read before the crop) and are quantized
 * again when they next leave the window (two rounds of rounding for those slots). With residual = 0 nothing is
 * re-opened.
 *
 * Storage (C = capacity in slots, a multiple of PALU_LATENT_CACHE_CHUNK; W = window capacity):
 *   positions  (B, C) int32
 *   unquantized: k_latent (B, C, Rk), v_latent (B, C, Rv) float32
 *   quantized:   k_codes (B, C, Wk) uint32: the token's groups one after another, group g's ceil(rk_g*bits/32)
 *                words starting at word offset wk_g (each group row starts on a fresh word, layout v1);
 *                k_scales, k_zeros (B, C, Sk) float32: group g's rk_g / q sub-group scales at offset sk_g
 *                (q = quant_group, or rk_g when 0); values alike (Wv, Sv);
 *                k_window (B, W, Rk), v_window (B, W, Rv) float32: window slot i is cache slot sealed + i.
 * Capacity grows by whole chunks (reallocate and copy); the window grows to the largest append seen.
 *
 * Shape legend: B batch, T tokens of one append, C capacity, NG head groups, rk_g / rv_g group ranks,
 * Rk / Rv their sums.
 *
 * Thread safety: none inside; the binding serializes access (it holds the GIL or a busy flag).
 */
#ifndef PALU_LATENT_CACHE_H
#define PALU_LATENT_CACHE_H

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PALU_LATENT_CACHE_VERSION 1
#define PALU_LATENT_CACHE_CHUNK 256 /* capacity grows by whole chunks of slots */

/* Which latent of a layer. Values only ever appended. */
typedef enum palu_latent_kind { PALU_LATENT_KEY = 0, PALU_LATENT_VALUE = 1 } palu_latent_kind;

/* One side (keys or values) of the cache. Every pointer is owned by the cache (NULL until allocated). */
typedef struct palu_latent_side {
    int64_t n_groups;     /* NG */
    int64_t *ranks;       /* NG ranks r_g >= 1 */
    int64_t *word_off;    /* NG + 1 word offsets into a token's code row; word_off[NG] = words per token */
    int64_t *scale_off;   /* NG + 1 offsets into a token's scale row; scale_off[NG] = scales per token */
    int64_t width;        /* R = sum r_g */
    float *latent;        /* unquantized: (B, C, R) */
    uint32_t *codes;      /* quantized: (B, C, words) */
    float *scales, *zeros;/* quantized: (B, C, scales per token) each */
    float *window;        /* quantized: (B, W, R) */
} palu_latent_side;

typedef struct palu_latent_cache {
    int bits;             /* 0: unquantized; else 2, 3, 4 or 8 */
    int64_t residual;     /* window size when quantized (>= 0) */
    int64_t quant_group;  /* channels per scale inside a group; 0 = the whole group */
    int64_t batch;        /* B; 0 while nothing is allocated */
    int64_t length;       /* slots filled */
    int64_t sealed;       /* slots [0, sealed) quantized (always 0 unquantized) */
    int64_t capacity;     /* C */
    int64_t window_cap;   /* W (quantized) */
    int32_t *positions;   /* (B, C) */
    palu_latent_side k, v;
} palu_latent_cache;

/* Set up an empty cache. k_ranks / v_ranks (n_groups entries each, every one >= 1) are copied. bits is 0 or one
 * of 2, 3, 4, 8; residual >= 0; quant_group 0 or a divisor of every rank. PALU_ERR_VALUE (nothing allocated,
 * cache zeroed) on a bad argument, PALU_ERR_NOMEM. */
palu_status palu_latent_cache_init(palu_latent_cache *cache, int64_t n_groups, const int64_t *k_ranks,
                                   const int64_t *v_ranks, int bits, int64_t residual, int64_t quant_group);

/* Release every buffer (the cache is then zeroed; calling it twice is harmless). */
void palu_latent_cache_free(palu_latent_cache *cache);

/* Drop every token and buffer; the configuration stays. */
void palu_latent_cache_reset(palu_latent_cache *cache);

/* Append T tokens of a batch of B sequences: hk (B, T, Rk), hv (B, T, Rv) float32, finite; pos (B, T) int32
 * (>= 0). If the cache holds no token, B may differ from the held batch (buffers start over); otherwise B must
 * equal it. Quantized caches seal slots leaving the window. PALU_ERR_VALUE (cache unchanged) for a bad
 * argument or a non-finite latent, PALU_ERR_NOMEM (cache unchanged). */
palu_status palu_latent_cache_append(palu_latent_cache *cache, int64_t batch, int64_t tokens, const float *hk,
                                     const float *hv, const int32_t *pos);

/* Copy slots [start, length) as attention reads them: hk (B, S, Rk), hv (B, S, Rv) float32 (sealed slots
 * dequantized), pos (B, S) int32, S = length - start; any of the three outputs may be NULL. */
palu_status palu_latent_cache_read(const palu_latent_cache *cache, int64_t start, float *hk, float *hv,
                                   int32_t *pos);

/* Rows [t0, t1) of group g of one side of sequence b, as float32 rows of r_g values: returns in *rows a pointer
 * to row t0 and in *stride the distance between rows, either into the cache's own buffer (unquantized, or all
 * rows in the window) or into `scratch` ((t1 - t0) * r_g floats, filled by dequantizing). No validation
 * beyond debug asserts: 0 <= b < batch, 0 <= g < NG, 0 <= t0 < t1 <= length. */
void palu_latent_cache_rows(const palu_latent_cache *cache, palu_latent_kind kind, int64_t b, int64_t g, int64_t t0,
                            int64_t t1, float *scratch, const float **rows, int64_t *stride);

/* Keep the first `keep` slots (0 <= keep <= length); see the overview for quantized caches.
 * PALU_ERR_VALUE for keep out of range, PALU_ERR_NOMEM (cache unchanged). */
palu_status palu_latent_cache_crop(palu_latent_cache *cache, int64_t keep);

/* Re-index the batch: sequence i becomes old sequence index[i], i < n (n >= 1; repeats allowed, so this also
 * selects and repeats). Every index must be in [0, batch). PALU_ERR_VALUE / PALU_ERR_NOMEM (cache unchanged). */
palu_status palu_latent_cache_select(palu_latent_cache *cache, const int64_t *index, int64_t n);

/* True bytes held for the filled slots: positions, latents (or codes + scales + zeros of the sealed slots and
 * the window's exact slots). */
int64_t palu_latent_cache_nbytes(const palu_latent_cache *cache);

/* Bytes of every allocated buffer (capacity included). */
int64_t palu_latent_cache_reserved_bytes(const palu_latent_cache *cache);

#ifdef __cplusplus
}
#endif
#endif /* PALU_LATENT_CACHE_H */
