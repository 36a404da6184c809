/* latent_append.cu -- one kernel writes the new tokens' latents and positions into the cache (see
 * latent_append.cuh). Shape legend: B batch, S new tokens, U vector units per row, Rk / Rv widths.
 */
#include <cuda_runtime.h>

#include <stdint.h>

#include "cuda_check.cuh"
#include "latent_append.cuh"

namespace {

constexpr int kThreads = 256;

struct AppendParams {
    char *kc, *vc;
    int32_t *pc;
    const char *kn, *vn;
    const int32_t *pn;
    long long kcb, kct, vcb, vct, pcb; /* strides in bytes (caches) */
    long long knb, knt, vnb, vnt;      /* strides in bytes (new latents) */
    long long pnb, pnt;                /* strides in elements (new positions) */
    long long rows;                    /* B * S */
    int S, start, ku, vu;              /* ku / vu: vector units per key / value row */
};

/* Thread e moves unit (e % U) of row (e / U), U = ku + vu + 1: a key unit, a value unit or the position. */
template <typename V> __global__ void __launch_bounds__(kThreads) append_kernel(const AppendParams p)
{
    const long long U = (long long)p.ku + p.vu + 1;
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= p.rows * U) return;
    const long long row = e / U;
    const int u = (int)(e - row * U);
    const long long b = row / p.S, s = row - b * p.S, slot = p.start + s;
    if (u < p.ku) {
        const V *src = reinterpret_cast<const V *>(p.kn + b * p.knb + s * p.knt);
        V *dst = reinterpret_cast<V *>(p.kc + b * p.kcb + slot * p.kct);
        dst[u] = src[u];
    } else if (u < p.ku + p.vu) {
        const V *src = reinterpret_cast<const V *>(p.vn + b * p.vnb + s * p.vnt);
        V *dst = reinterpret_cast<V *>(p.vc + b * p.vcb + slot * p.vct);
        dst[u - p.ku] = src[u - p.ku];
    } else {
        p.pc[b * p.pcb + slot] = p.pn[b * p.pnb + s * p.pnt];
    }
}

template <typename V> palu_status launch(const AppendParams &p, cudaStream_t stream)
{
    const long long total = p.rows * ((long long)p.ku + p.vu + 1);
    const long long blocks = (total + kThreads - 1) / kThreads;
    if (blocks > 0x7fffffffLL) return palu_fail(PALU_ERR_UNSUPPORTED, "append of %lld rows is too large", p.rows);
    (void)cudaGetLastError();
    append_kernel<V><<<(unsigned)blocks, kThreads, 0, stream>>>(p);
    PALU_CUDA_CHECK_LAUNCH();
    return PALU_OK;
}

/* Widest unit (16, 8, 4 or 2 bytes) dividing every byte quantity in `v`. */
int unit_bytes(const long long *v, int n)
{
    for (int w = 16; w > 2; w >>= 1) {
        bool ok = true;
        for (int i = 0; i < n && ok; i++) ok = v[i] % w == 0;
        if (ok) return w;
    }
    return 2;
}

} // namespace

extern "C" palu_status palu_latent_append_cuda(const palu_latent_append_args *a, int device, void *stream)
{
    if (a == NULL) return palu_fail(PALU_ERR_VALUE, "`args` is NULL");
    const size_t es = palu_dtype_size(a->dtype);
    if (es == 0) return palu_fail(PALU_ERR_TYPE, "unknown dtype value %d", (int)a->dtype);
    if (a->batch < 1 || a->tokens < 0 || a->start < 0 || a->k_width < 1 || a->v_width < 1 ||
        a->start + a->tokens > a->capacity)
        return palu_fail(PALU_ERR_VALUE,
                         "append of %lld tokens at slot %lld does not fit a cache of %lld slots (batch %lld, widths "
                         "%lld / %lld)",
                         (long long)a->tokens, (long long)a->start, (long long)a->capacity, (long long)a->batch,
                         (long long)a->k_width, (long long)a->v_width);
    if (a->tokens == 0) return PALU_OK;
    if (!a->k_cache || !a->v_cache || !a->pos_cache || !a->k_new || !a->v_new || !a->pos_new)
        return palu_fail(PALU_ERR_VALUE, "a cache or new-token pointer is NULL");
    if (a->kc_token_stride < a->k_width || a->vc_token_stride < a->v_width ||
        (a->batch > 1 && (a->kc_batch_stride < a->capacity * a->kc_token_stride ||
                          a->vc_batch_stride < a->capacity * a->vc_token_stride ||
                          a->pc_batch_stride < a->capacity)))
        return palu_fail(PALU_ERR_VALUE, "cache strides would make rows overlap (k %lld/%lld, v %lld/%lld, positions "
                                         "%lld for %lld slots)",
                         (long long)a->kc_batch_stride, (long long)a->kc_token_stride, (long long)a->vc_batch_stride,
                         (long long)a->vc_token_stride, (long long)a->pc_batch_stride, (long long)a->capacity);
    if (a->kn_batch_stride < 0 || a->kn_token_stride < 0 || a->vn_batch_stride < 0 || a->vn_token_stride < 0 ||
        a->pn_batch_stride < 0 || a->pn_token_stride < 0)
        return palu_fail(PALU_ERR_VALUE, "negative strides are not supported");

    AppendParams p;
    const long long E = (long long)es;
    p.kc = static_cast<char *>(a->k_cache), p.vc = static_cast<char *>(a->v_cache), p.pc = a->pos_cache;
    p.kn = static_cast<const char *>(a->k_new), p.vn = static_cast<const char *>(a->v_new), p.pn = a->pos_new;
    p.kcb = a->kc_batch_stride * E, p.kct = a->kc_token_stride * E, p.vcb = a->vc_batch_stride * E;
    p.vct = a->vc_token_stride * E, p.pcb = a->pc_batch_stride;
    p.knb = a->kn_batch_stride * E, p.knt = a->kn_token_stride * E, p.vnb = a->vn_batch_stride * E;
    p.vnt = a->vn_token_stride * E, p.pnb = a->pn_batch_stride, p.pnt = a->pn_token_stride;
    p.rows = a->batch * a->tokens;
    p.S = (int)a->tokens, p.start = (int)a->start;
    const long long quantities[] = {a->k_width * E, a->v_width * E, p.kcb, p.kct, p.vcb, p.vct, p.knb, p.knt, p.vnb,
                                    p.vnt, (long long)(uintptr_t)p.kc, (long long)(uintptr_t)p.vc,
                                    (long long)(uintptr_t)p.kn, (long long)(uintptr_t)p.vn};
    const int w = unit_bytes(quantities, (int)(sizeof quantities / sizeof quantities[0]));
    p.ku = (int)(a->k_width * E / w), p.vu = (int)(a->v_width * E / w);

    int previous = 0;
    PALU_CUDA_CHECK(cudaGetDevice(&previous));
    if (previous != device) PALU_CUDA_CHECK(cudaSetDevice(device));
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    palu_status st;
    switch (w) {
    case 16: st = launch<uint4>(p, s); break;
    case 8: st = launch<uint2>(p, s); break;
    case 4: st = launch<uint32_t>(p, s); break;
    default: st = launch<uint16_t>(p, s); break;
    }
    if (previous != device) {
        cudaError_t err = cudaSetDevice(previous);
        if (err != cudaSuccess && st == PALU_OK)
            st = palu_fail(PALU_ERR_CUDA, "cudaSetDevice(%d) failed restoring the caller's device: %s", previous,
                           cudaGetErrorString(err));
    }
    return st;
}
