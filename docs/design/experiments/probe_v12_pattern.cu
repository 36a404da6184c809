/* probe_v12_pattern.cu -- compile-only probe (no numerics, never launched): does ptxas keep a decode step whose
 * products are all asynchronous wgmma (rebuild, scores with register A, P . V with transposed shared A) pipelined,
 * or does it serialize them (warnings C7515 / C7517, injected waits)? Notes, "A plan for the group-size-2 kernel".
 *
 *   nvcc -c -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v \
 *        docs/design/experiments/probe_v12_pattern.cu -o /tmp/probe_v12.o
 *
 * Per step x of one warpgroup (one KV head, 64 slots), the queue order is
 *   wait_group 0 (rebuild(x), P.V(x-1)) | pack -> pk | scores(x) [commit] | rebuild(x + 1) [commit]
 *   | wait_group 1 (scores(x)) | softmax, rescale O | P to shared | P.V(x) [commit]
 * so rebuild(x + 1) runs under the softmax, as in v11, and P.V(x) until the next step's top. This form compiles
 * with no serialization warning; what ptxas refused is in the notes ("What ptxas keeps pipelined"). */
#include <cstdint>
#include <cuda_fp16.h>

namespace {

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ void pin(float &r) { asm volatile("" : "+f"(r)::"memory"); }

/* the rebuild: m64n64k16, both operands from shared memory, fp32 accumulators */
__device__ __forceinline__ void rebuild_k16(float (&d)[32], uint64_t da, uint64_t db, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(scale_d)
                 : "memory");
}
/* the scores: m64n8k16, A = the packed keys from registers, B = Q_A from shared memory */
__device__ __forceinline__ void score_k16(float (&d)[4], const uint32_t (&a)[4], uint64_t db, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d)
                 : "memory");
}
/* P . V: m64n8k16, A = V^T (the V tile read transposed: imm-trans-a 1), B = P from shared memory */
__device__ __forceinline__ void pv_k16(float (&d)[4], uint64_t da, uint64_t db, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, %4, %5, p, 1, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "l"(da), "l"(db), "r"(scale_d)
                 : "memory");
}

} // namespace

extern "C" __global__ void __launch_bounds__(128, 1) probe_v12_step(const uint64_t *desc, float *out, int nsteps)
{
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint64_t dk = desc[0], du = desc[1], dq = desc[2], dv = desc[3], dp = desc[4];
    float acc[32], o[2][4], m_run[2] = {-1e30f, -1e30f}, l_run[2] = {};
    fence();
#pragma unroll
    for (int kk = 0; kk < 8; kk++) rebuild_k16(acc, dk + 2 * kk, du + 16 * kk, kk > 0);
    commit();
    for (int x = 0; x < nsteps; x++) {
        wait<0>(); /* rebuild(x) and P.V(x-1): a wait<1> here, leaving P.V(x-1) in flight under the pack, makes
                    * ptxas serialize every wgmma (C7514), even with an empty group committed before the loop */
#pragma unroll
        for (int e = 0; e < 32; e++) pin(acc[e]);
        uint32_t pk[8][4];
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) { /* stand-in for the rotation: one packed pair per register */
                const __half2 h = __floats2half2_rn(acc[(4 * i + j) % 32] * 0.5f, acc[(4 * i + j + 1) % 32]);
                pk[i][j] = *reinterpret_cast<const uint32_t *>(&h);
            }
        float sc[4] = {};
        fence();
#pragma unroll
        for (int kk = 0; kk < 8; kk++) score_k16(sc, pk[kk], dq + 16 * kk, kk > 0);
        commit();
        /* the next rebuild (its accumulators were read by the pack above), issued unconditionally: a conditional
         * issue merges two versions of the accumulators at the loop's back edge, and ptxas then waits (C7517) */
#pragma unroll
        for (int kk = 0; kk < 8; kk++) rebuild_k16(acc, dk + 2 * kk + 256 * min(x + 1, nsteps - 1), du + 16 * kk, kk > 0);
        commit();
        wait<1>(); /* the scores; the rebuild stays in flight (ptxas keeps this pipelined) */
#pragma unroll
        for (int e = 0; e < 4; e++) pin(sc[e]);
        float p[4];
#pragma unroll
        for (int e = 0; e < 2; e++) { /* softmax stand-in, with the rescale of O's columns */
            const float mx = fmaxf(fmaxf(sc[e], sc[e + 2]), m_run[e]);
            const float m_new = mx > m_run[e] + 8.0f ? mx : m_run[e]; /* no branch around the accumulators */
            const float corr = exp2f(m_run[e] - m_new);
            m_run[e] = m_new, l_run[e] *= corr;
#pragma unroll
            for (int t = 0; t < 2; t++) o[t][e] *= corr, o[t][e + 2] *= corr;
            p[e] = exp2f(sc[e] - m_run[e]), p[e + 2] = exp2f(sc[e + 2] - m_run[e]);
            l_run[e] += p[e] + p[e + 2];
        }
        const __half2 p01 = __floats2half2_rn(p[0], p[1]), p23 = __floats2half2_rn(p[2], p[3]);
        reinterpret_cast<__half2 *>(smem)[2 * threadIdx.x + (x & 1) * 256] = p01; /* P to shared (stand-in layout) */
        reinterpret_cast<__half2 *>(smem)[2 * threadIdx.x + 1 + (x & 1) * 256] = p23;
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync 1, 128;\n" ::: "memory");
        fence();
#pragma unroll
        for (int t = 0; t < 2; t++)
#pragma unroll
            for (int kk = 0; kk < 4; kk++) pv_k16(o[t], dv + 64 * t + 2 * kk, dp + 16 * kk + 64 * (x & 1), x > 0 || kk > 0);
        commit();
    }
    wait<0>();
#pragma unroll
    for (int t = 0; t < 2; t++)
#pragma unroll
        for (int e = 0; e < 4; e++) pin(o[t][e]);
    float s = l_run[0] + l_run[1];
#pragma unroll
    for (int t = 0; t < 2; t++)
#pragma unroll
        for (int e = 0; e < 4; e++) s += o[t][e];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
