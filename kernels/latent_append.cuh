/* latent_append.cuh -- append the new tokens' latents and positions to a latent KV cache on the GPU, in one
 * kernel (no CUDA types here; the C binding includes this header).
 *
 * What it does. For every sequence b < B and new token s < S, slot start + s of the cache receives the token's
 * key latent (Rk values), value latent (Rv values) and RoPE position:
 *
 *     k_cache[b, start + s, :] = k_new[b, s, :]    v_cache[b, start + s, :] = v_new[b, s, :]
 *     pos_cache[b, start + s]  = pos_new[b, s]
 *
 * Layout: docs/design/latent_cache.md section 2 (the unquantized store palu_c/device_store.py: k_latent
 * (B, C, Rk), v_latent (B, C, Rv) in the model dtype, positions (B, C) int32). The copy is bitwise (no dtype
 * conversion: the new latents must already be in the cache's dtype); each thread moves 16, 8, 4 or 2 bytes, the
 * widest unit that every row length, stride and pointer allows. The reference is plain indexed assignment
 * (the torch store does exactly that); tests/gpu/test_latent_decode_cuda.py checks the kernel against it.
 *
 * Shape legend: B batch, S new tokens, C capacity (slots), Rk / Rv key / value latent widths.
 */
#ifndef PALU_LATENT_APPEND_CUH
#define PALU_LATENT_APPEND_CUH

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct palu_latent_append_args {
    int64_t batch, tokens, start, capacity; /* B, S, first slot written, C; start + S <= C */
    int64_t k_width, v_width;               /* Rk, Rv */
    palu_dtype dtype;                       /* of both caches and both new tensors (F32, F16, BF16, F64) */
    void *k_cache;                          /* strides in elements; the last axis contiguous */
    int64_t kc_batch_stride, kc_token_stride;
    void *v_cache;
    int64_t vc_batch_stride, vc_token_stride;
    int32_t *pos_cache;
    int64_t pc_batch_stride;
    const void *k_new;
    int64_t kn_batch_stride, kn_token_stride;
    const void *v_new;
    int64_t vn_batch_stride, vn_token_stride;
    const int32_t *pos_new;
    int64_t pn_batch_stride, pn_token_stride;
} palu_latent_append_args;

/* Launchers */

/* Launch the append on `stream` (cudaStream_t; NULL = legacy default stream). Never allocates or
 * synchronizes. PALU_ERR_VALUE for sizes, strides or pointers that do not fit (start + S > C, overlapping cache
 * rows, NULL), PALU_ERR_TYPE for an unknown dtype, PALU_ERR_CUDA for a launch error. S == 0 launches nothing.
 * `device` is made current for the launch and restored. */
palu_status palu_latent_append_cuda(const palu_latent_append_args *a, int device, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* PALU_LATENT_APPEND_CUH */
