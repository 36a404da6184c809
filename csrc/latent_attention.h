/* latent_attention.h -- one decode step of attention over a Palu latent KV cache (scalar CPU reference).
 *
 * Overview. The cache (docs/design/latent_cache.md) holds, per token slot, the key latent hk (Rk values) and
 * the value latent hv (Rv values) of a layer, plus the slot's RoPE position. For one new query per sequence
 * this computes, for every query head h of sequence b,
 *
 *     out[b, h] = sum_t p_t V_t,   p = softmax_t(scaling * q[b, h] . K_t),   t in [pad_start[b], T)
 *     K_t = RoPE(Uk_head @ hk_t[g] + bk_head, positions[b, t]),   V_t = Uv_head @ hv_t[g] + bv_head
 *
 * where head = h / n_rep is the KV head of query head h (GQA), g = head / G its group, Uk_head the D rows
 * of group g's up-projection that belong to that head. Keys are rebuilt once per (sequence, KV head) and
 * shared by its n_rep query heads. Values are never rebuilt per token: since sum_t p_t = 1,
 *     out[b, h] = Uv_head @ (sum_t p_t hv_t[g]) + bv_head,
 * which is exact and costs one (D x rv_g) product per query head instead of one per token.
 *
 * This is the `_ref` twin of the CUDA decode kernel (STYLE.md rule 9) and the CPU path: float32 in and out,
 * float32 products (key rebuild, scores, probability-weighted value latents; vectorized loops, see the .c file),
 * the softmax normalizer accumulated in double. The RoPE angle pos * inv_freq[i] is formed and its
 * cos/sin evaluated in double before rounding to float32 (transformers forms the angle in float32, which loses
 * up to about pos * 2^-24 rad of phase at large positions); cos and sin are then multiplied by
 * attention_scaling.
 *
 * RoPE is the half-rotation (rotate_half) form of Llama / Mistral / Qwen2: with half = D / 2,
 * a_i = pos * inv_freq[i mod half], c_i = cos(a_i) * attention_scaling, s_i = sin(a_i) * attention_scaling,
 *     rot[i] = k[i] c_i - k[i + half] s_i          (i < half)
 *     rot[i] = k[i] c_i + k[i - half] s_i          (i >= half)
 *
 * Shape legend: B batch, T cached slots, H query heads, Hkv KV heads, n_rep = H / Hkv, D head_dim, G KV heads
 * per group, NG = Hkv / G groups, rk_g / rv_g key / value rank of group g, Rk = sum rk_g, Rv = sum rv_g.
 */
#ifndef PALU_LATENT_ATTENTION_H
#define PALU_LATENT_ATTENTION_H

#include "latent_cache.h"
#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes of one decode-attention call. All counts must be >= 1. */
typedef struct palu_latent_attn_shape {
    int64_t batch;          /* B */
    int64_t tokens;         /* T: cache slots, padding included */
    int64_t heads;          /* H: query heads, a multiple of kv_heads */
    int64_t kv_heads;       /* Hkv */
    int64_t head_dim;       /* D: even (RoPE rotates halves) */
    int64_t group_size;     /* G: KV heads per group, divides kv_heads */
    const int64_t *k_ranks; /* borrowed, NG entries >= 1: rk_g */
    const int64_t *v_ranks; /* borrowed, NG entries >= 1: rv_g */
} palu_latent_attn_shape;

/* One decode step of latent attention (see the overview above). All arrays are contiguous, row-major.
 *
 *   q          (B, H, D) float32: the step's queries, RoPE already applied.
 *   k_latent   (B, T, Rk) float32: group g occupies columns [sum_{j<g} rk_j, + rk_g).
 *   v_latent   (B, T, Rv) float32: same convention with rv.
 *   positions  (B, T) int32: RoPE position of every slot; must be >= 0 on the valid slots (padding slots
 *              are never read, whatever they hold).
 *   pad_start  (B,) int32: slots [0, pad_start[b]) of sequence b are left padding and ignored; valid slots
 *              are [pad_start[b], T), so 0 <= pad_start[b] <= T - 1 (at least one slot is attended).
 *   k_up       sum_g G*D*rk_g floats: group g's row-major (G*D, rk_g) up-projection, groups one after
 *              another; row (j*D + d) of group g is dimension d of KV head g*G + j.
 *   v_up       sum_g G*D*rv_g floats, likewise.
 *   k_bias     (Hkv*D) float32 or NULL (no bias); v_bias likewise. Added after the up-projection.
 *   inv_freq   (D/2) float32: RoPE inverse frequencies (radians per position).
 *   attention_scaling  multiplies cos and sin (1 for plain RoPE; YaRN and friends set it); finite.
 *   scaling    softmax scale, usually D^-0.5; finite.
 *   out        (B, H, D) float32, written entirely on success (untouched on error).
 *
 * Returns PALU_OK; PALU_ERR_VALUE (with a detail naming the argument) for a size < 1, an odd head_dim,
 * heads not a multiple of kv_heads, group_size not dividing kv_heads, a rank < 1, a NULL required pointer,
 * a pad_start outside [0, T-1], a negative position on a valid slot, or a non-finite scale;
 * PALU_ERR_NOMEM if the O(T*D + T + max rv) scratch cannot be allocated. Never prints, never aborts. */
palu_status palu_latent_decode_attention_ref(const palu_latent_attn_shape *shape, const float *q,
                                             const float *k_latent, const float *v_latent,
                                             const int32_t *positions, const int32_t *pad_start,
                                             const float *k_up, const float *v_up, const float *k_bias,
                                             const float *v_bias, const float *inv_freq, float attention_scaling,
                                             float scaling, float *out);

/* The same decode step reading the latents and positions straight from a host latent cache (latent_cache.h):
 * sealed slots are dequantized per (sequence, group) into scratch, exact slots are read in place. shape->batch
 * and shape->tokens must equal the cache's batch and length, shape->k_ranks / v_ranks its group ranks and
 * kv_heads = groups x group_size; the other arguments are as above (pad_start[b] in [0, length - 1]). The
 * step's own latents must already be appended. Extra scratch: O(T * (max rk + max rv)) floats. */
palu_status palu_latent_cache_decode_attention_ref(const palu_latent_attn_shape *shape,
                                                   const palu_latent_cache *cache, const float *q,
                                                   const int32_t *pad_start, const float *k_up, const float *v_up,
                                                   const float *k_bias, const float *v_bias, const float *inv_freq,
                                                   float attention_scaling, float scaling, float *out);

#ifdef __cplusplus
}
#endif
#endif /* PALU_LATENT_ATTENTION_H */
