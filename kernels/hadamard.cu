/* hadamard.cu -- the Hadamard-type transform on the GPU (see hadamard.cuh for the design, csrc/hadamard.h for
 * the construction; palu_hadamard_rows in csrc/hadamard.c is the scalar reference).
 *
 * Shape legend: n elements per row, p inner block order, K = n / p blocks (a power of two, L = log2 K),
 * R rows per CTA. Shared memory of one CTA: buf[R*n] fp32, then other[R*n] (Paley only), then aux:
 * Householder block sums (R*K fp32) or the Paley residue table (q bytes).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <limits.h>
#include <stdint.h>

#include "cuda_check.cuh"
#include "hadamard.cuh"
#include "hadamard.h"

namespace {

constexpr int kTargetCtaElems = 4096; /* small n: pack rows until a CTA holds about this many elements */
constexpr int kMaxThreads = 1024;
constexpr int kElemsPerThread = 8;
constexpr size_t kDefaultSmem = 48 * 1024; /* above this a kernel needs cudaFuncSetAttribute */

struct HadamardArgs {
    const void *x;
    void *out;
    long long x_ld, out_ld; /* row strides in elements */
    long long rows;
    int n, p, q;            /* length, block order, Paley prime */
    int blocks, log2_blocks;
    int kind;               /* palu_hadamard_kind */
    int rows_per_cta;
    int vec8;               /* n, both row strides multiples of 8 and both pointers 16-byte aligned */
    float sign;             /* Paley: +1 applies I + C, -1 applies (I + C)^T = I - C */
    float coef;             /* Householder: 2 / p */
    float scale;            /* 1/sqrt(n) or 1/sqrt(K) */
};

template <typename T> struct Cvt;
template <> struct Cvt<float> {
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
    /* 8 elements = two 16-byte accesses */
    static __device__ __forceinline__ void load8(const float *p, float v[8])
    {
        const float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
    static __device__ __forceinline__ void store8(float *p, const float v[8])
    {
        reinterpret_cast<float4 *>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4 *>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
};
template <> struct Cvt<__half> {
    static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
    static __device__ __forceinline__ void load8(const __half *p, float v[8])
    {
        const uint4 raw = *reinterpret_cast<const uint4 *>(p);
        const __half2 *h = reinterpret_cast<const __half2 *>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float2 f = __half22float2(h[k]);
            v[2 * k] = f.x, v[2 * k + 1] = f.y;
        }
    }
    static __device__ __forceinline__ void store8(__half *p, const float v[8])
    {
        uint4 raw;
        __half2 *h = reinterpret_cast<__half2 *>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) h[k] = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
        *reinterpret_cast<uint4 *>(p) = raw;
    }
};
template <> struct Cvt<__nv_bfloat16> {
    static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
    static __device__ __forceinline__ void load8(const __nv_bfloat16 *p, float v[8])
    {
        const uint4 raw = *reinterpret_cast<const uint4 *>(p);
        const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float2 f = __bfloat1622float2(h[k]);
            v[2 * k] = f.x, v[2 * k + 1] = f.y;
        }
    }
    static __device__ __forceinline__ void store8(__nv_bfloat16 *p, const float v[8])
    {
        uint4 raw;
        __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&raw);
#pragma unroll
        for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
        *reinterpret_cast<uint4 *>(p) = raw;
    }
};

/* In-register butterfly over RADIX values (stages of span 1, 2, ... RADIX/2 in the register index). */
template <int RADIX> __device__ __forceinline__ void butterfly_regs(float v[RADIX])
{
#pragma unroll
    for (int span = 1; span < RADIX; span <<= 1) {
#pragma unroll
        for (int k = 0; k < RADIX; k++) {
            if (!(k & span)) {
                const float a = v[k], b = v[k + span];
                v[k] = a + b;
                v[k + span] = a - b;
            }
        }
    }
}

/* Householder: each block of p channels minus coef * its sum. One warp per block sum (fixed order). */
__device__ void householder_stage(float *buf, float *sums, int total, int p, int segments, float coef)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int s = warp; s < segments; s += warps) {
        float acc = 0.0f;
        for (int j = lane; j < p; j += 32) acc += buf[s * p + j];
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (lane == 0) sums[s] = acc;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < total; e += blockDim.x) buf[e] -= coef * sums[e / p];
    __syncthreads();
}

/* Paley: dst = (I +- C) src per block of p = q + 1 channels (C as in hadamard.h). */
__device__ void paley_stage(const float *src, float *dst, const unsigned char *is_square, int total, int q,
                            float sign)
{
    const int p = q + 1;
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
        const int seg = e / p, i = e - seg * p;
        const float *v = src + seg * p;
        float s;
        if (i == 0) {
            s = 0.0f;
            for (int j = 1; j <= q; j++) s += v[j];
        } else {
            s = -v[0];
            const int ii = i - 1;
            for (int d = 1; d < q; d++) {
                int j = ii + d;
                if (j >= q) j -= q;
                const float vj = v[1 + j];
                s += is_square[d] ? vj : -vj;
            }
        }
        dst[e] = v[i] + sign * s;
    }
    __syncthreads();
}

/* One shared-memory pass of LOG_R Sylvester stages (spans 2^s ... 2^(s+LOG_R-1) in units of blocks of p)
 * over every row of the CTA: each thread butterflies groups of 2^LOG_R elements in registers. */
template <int LOG_R> __device__ void sylvester_pass(float *buf, int total, int n, int p, int L, int s)
{
    constexpr int RADIX = 1 << LOG_R;
    const int h = 1 << s, hp = h * p, groups = total >> LOG_R, row_log = L - LOG_R;
    for (int w = threadIdx.x; w < groups; w += blockDim.x) {
        int g = w, i = 0;
        if (p != 1) {
            g = w / p;
            i = w - g * p;
        }
        const int r = g >> row_log, u = g & ((1 << row_log) - 1);
        const int lo = ((u & ~(h - 1)) << LOG_R) | (u & (h - 1)); /* bits s .. s+LOG_R-1 clear */
        float *b = buf + r * n + lo * p + i;
        float v[RADIX];
#pragma unroll
        for (int k = 0; k < RADIX; k++) v[k] = b[k * hp];
        butterfly_regs<RADIX>(v);
#pragma unroll
        for (int k = 0; k < RADIX; k++) b[k * hp] = v[k];
    }
    __syncthreads();
}

/* The Sylvester stages s0 .. L-1 across the K blocks of every row, unscaled, up to three per barrier. */
__device__ void sylvester_stages(float *buf, int total, int n, int p, int L, int s0)
{
    int s = s0;
    for (; L - s >= 3; s += 3) sylvester_pass<3>(buf, total, n, p, L, s);
    if (L - s == 2) sylvester_pass<2>(buf, total, n, p, L, s);
    if (L - s == 1) sylvester_pass<1>(buf, total, n, p, L, s);
}

template <typename T>
__global__ void hadamard_kernel(const HadamardArgs a)
{
    extern __shared__ float4 smem_f4[]; /* float4: 16-byte alignment for the whole dynamic region */
    float *buf = reinterpret_cast<float *>(smem_f4);
    const int cta_elems = a.rows_per_cta * a.n;
    float *other = buf + cta_elems;
    float *aux = buf + (a.kind == PALU_HADAMARD_PALEY ? 2 : 1) * cta_elems;

    const long long row0 = (long long)blockIdx.x * a.rows_per_cta;
    const int nr = (int)min((long long)a.rows_per_cta, a.rows - row0);
    const int n = a.n, total = nr * n;
    const T *x = static_cast<const T *>(a.x);
    T *out = static_cast<T *>(a.out);

    /* Load to fp32. Vector path: 8 elements per access (n, strides and pointers allow it), and for powers of
     * two the three lowest Sylvester stages on those 8 channels right away, in registers. */
    int s0 = 0;
    if (a.vec8) {
        const int chunks_per_row = n >> 3;
        for (int k = threadIdx.x; k < (total >> 3); k += blockDim.x) {
            const int r = k / chunks_per_row, c = (k - r * chunks_per_row) << 3;
            float v[8];
            Cvt<T>::load8(x + (row0 + r) * a.x_ld + c, v);
            if (a.kind == PALU_HADAMARD_SYLVESTER) butterfly_regs<8>(v);
            Cvt<float>::store8(buf + r * n + c, v);
        }
        if (a.kind == PALU_HADAMARD_SYLVESTER) s0 = 3;
    } else {
        for (int e = threadIdx.x; e < total; e += blockDim.x) {
            const int r = e / n, c = e - r * n;
            buf[e] = Cvt<T>::load(x[(row0 + r) * a.x_ld + c]);
        }
    }
    if (a.kind == PALU_HADAMARD_PALEY) {
        unsigned char *is_square = reinterpret_cast<unsigned char *>(aux);
        const unsigned q = (unsigned)a.q;
        for (unsigned d = threadIdx.x; d < q; d += blockDim.x) is_square[d] = 0;
        __syncthreads();
        /* v and q - v square to the same residue: 1..(q-1)/2 marks each nonzero residue once (q < 2^16). */
        for (unsigned v = 1 + threadIdx.x; v <= (q - 1) / 2; v += blockDim.x) is_square[(v * v) % q] = 1;
    }
    __syncthreads();

    if (a.kind == PALU_HADAMARD_HOUSEHOLDER) {
        householder_stage(buf, aux, total, a.p, nr * a.blocks, a.coef);
    } else if (a.kind == PALU_HADAMARD_PALEY) {
        paley_stage(buf, other, reinterpret_cast<const unsigned char *>(aux), total, a.q, a.sign);
        float *t = buf;
        buf = other;
        other = t;
    }
    sylvester_stages(buf, total, n, a.p, a.log2_blocks, s0);

    const float scale = a.scale;
    if (a.vec8) {
        const int chunks_per_row = n >> 3;
        for (int k = threadIdx.x; k < (total >> 3); k += blockDim.x) {
            const int r = k / chunks_per_row, c = (k - r * chunks_per_row) << 3;
            float v[8];
            Cvt<float>::load8(buf + r * n + c, v);
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] *= scale;
            Cvt<T>::store8(out + (row0 + r) * a.out_ld + c, v);
        }
    } else {
        for (int e = threadIdx.x; e < total; e += blockDim.x) {
            const int r = e / n, c = e - r * n;
            out[(row0 + r) * a.out_ld + c] = Cvt<T>::store(buf[e] * scale);
        }
    }
}

template <typename T>
palu_status launch(const palu_hadamard_plan &plan, const void *x, int64_t x_ld, void *out, int64_t out_ld,
                   int64_t rows, int transpose, int device, cudaStream_t stream)
{
    const int64_t n = (int64_t)plan.n;
    int64_t rows_per_cta = n >= kTargetCtaElems ? 1 : kTargetCtaElems / n;
    if (rows_per_cta > rows) rows_per_cta = rows;
    const size_t cta_elems = (size_t)(rows_per_cta * n);
    const bool paley = plan.kind == PALU_HADAMARD_PALEY;
    size_t aux = 0;
    if (paley) aux = (plan.q + 15) / 16 * 16;
    else if (plan.kind == PALU_HADAMARD_HOUSEHOLDER) aux = (size_t)rows_per_cta * plan.blocks * sizeof(float);
    const size_t smem = cta_elems * sizeof(float) * (paley ? 2 : 1) + aux;

    int smem_optin = 0;
    PALU_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (smem > (size_t)smem_optin)
        return palu_fail(PALU_ERR_UNSUPPORTED,
                         "n=%lld needs %zu bytes of shared memory per block; device %d allows %d (use a shorter "
                         "length or the CPU path)",
                         (long long)n, smem, device, smem_optin);
    const int64_t grid = (rows + rows_per_cta - 1) / rows_per_cta;
    if (grid > INT_MAX)
        return palu_fail(PALU_ERR_UNSUPPORTED, "%lld rows of n=%lld need more than 2^31-1 blocks", (long long)rows,
                         (long long)n);
    if (smem > kDefaultSmem)
        PALU_CUDA_CHECK(
            cudaFuncSetAttribute(hadamard_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));

    HadamardArgs a;
    a.x = x;
    a.out = out;
    a.x_ld = x_ld;
    a.out_ld = out_ld;
    a.rows = rows;
    a.n = (int)n;
    a.p = (int)plan.p;
    a.q = (int)plan.q;
    a.blocks = (int)plan.blocks;
    a.log2_blocks = 0;
    while ((size_t{1} << a.log2_blocks) < plan.blocks) a.log2_blocks++;
    a.kind = (int)plan.kind;
    a.rows_per_cta = (int)rows_per_cta;
    a.vec8 = n % 8 == 0 && (rows == 1 || (x_ld % 8 == 0 && out_ld % 8 == 0)) && (uintptr_t)x % 16 == 0 &&
             (uintptr_t)out % 16 == 0;
    a.sign = transpose ? -1.0f : 1.0f;
    a.coef = (float)(2.0 / (double)plan.p);
    a.scale = (float)plan.scale;

    int threads = (int)((cta_elems + kElemsPerThread - 1) / kElemsPerThread);
    threads = (threads + 31) / 32 * 32;
    if (threads > kMaxThreads) threads = kMaxThreads;

    /* A stale error left in this runtime by an earlier call would be blamed on this launch: drop it. Sticky
     * (context-corrupting) errors come back from the launch itself. */
    (void)cudaGetLastError();
    hadamard_kernel<T><<<(unsigned)grid, threads, smem, stream>>>(a);
    PALU_CUDA_CHECK_LAUNCH();
    return PALU_OK;
}

palu_status dispatch(const palu_hadamard_plan &plan, const void *x, int64_t x_ld, void *out, int64_t out_ld,
                     int64_t rows, palu_dtype dtype, int transpose, int device, cudaStream_t stream)
{
    switch (dtype) {
    case PALU_DTYPE_F32: return launch<float>(plan, x, x_ld, out, out_ld, rows, transpose, device, stream);
    case PALU_DTYPE_F16: return launch<__half>(plan, x, x_ld, out, out_ld, rows, transpose, device, stream);
    case PALU_DTYPE_BF16:
        return launch<__nv_bfloat16>(plan, x, x_ld, out, out_ld, rows, transpose, device, stream);
    default:
        return palu_fail(PALU_ERR_UNSUPPORTED,
                         "dtype %s (palu_dtype %d) is not supported on CUDA; use float32, float16 or bfloat16",
                         palu_dtype_name(dtype), (int)dtype);
    }
}

} // namespace

extern "C" palu_status palu_hadamard_cuda(const void *x, int64_t x_row_stride, void *out, int64_t out_row_stride,
                                          int64_t rows, int64_t n, palu_dtype dtype, int transpose, int device,
                                          void *stream)
{
    if (n < 1 || rows < 0)
        return palu_fail(PALU_ERR_VALUE, "need n >= 1 and rows >= 0, got n=%lld rows=%lld", (long long)n,
                         (long long)rows);
    if (x_row_stride < 0 || (rows > 1 && out_row_stride < n))
        return palu_fail(PALU_ERR_VALUE,
                         "row strides x=%lld out=%lld are invalid for n=%lld (out rows may not overlap)",
                         (long long)x_row_stride, (long long)out_row_stride, (long long)n);
    if (rows == 0) return PALU_OK;
    if (n > INT_MAX / 2)
        return palu_fail(PALU_ERR_UNSUPPORTED, "n=%lld is too long for one CUDA block", (long long)n);
    palu_hadamard_plan plan;
    palu_status st = palu_hadamard_plan_init(&plan, (size_t)n);
    if (st != PALU_OK) return st;

    int previous = 0;
    PALU_CUDA_CHECK(cudaGetDevice(&previous));
    if (previous != device) PALU_CUDA_CHECK(cudaSetDevice(device));
    st = dispatch(plan, x, x_row_stride, out, out_row_stride, rows, dtype, transpose, device,
                  static_cast<cudaStream_t>(stream));
    if (previous != device) {
        cudaError_t err = cudaSetDevice(previous);
        if (err != cudaSuccess && st == PALU_OK)
            st = palu_fail(PALU_ERR_CUDA, "cudaSetDevice(%d) failed restoring the caller's device: %s", previous,
                           cudaGetErrorString(err));
    }
    return st;
}
