/* latent_decode_common.cuh -- what the decode kernels' translation units share (internal; included by
 * kernels/latent_decode*.cu only): the kernel parameter block, the device helpers (every PTX instruction and warp
 * intrinsic sits in one small wrapper, so that a CPU lock-step emulator can stand in for them when PALU_EMULATE is
 * defined), the RoPE angle, the CTA-level combine of online-softmax states, the plan, the host helpers of the
 * launchers (shared-memory and sm_90a checks, TMA tensor maps, one launch, the equal-rank dispatch switch), and the
 * kernels of latent_decode_v4.cu (v4, v5), latent_decode_v9.cu and latent_decode_v10.cu as the plan and the dispatch
 * of latent_decode.cu see them. Everything sits in namespace palu_decode; each .cu file keeps its kernels in an
 * anonymous namespace.
 *
 * Shape legend: as latent_decode.cu.
 */
#ifndef PALU_LATENT_DECODE_COMMON_CUH
#define PALU_LATENT_DECODE_COMMON_CUH

#ifndef PALU_EMULATE
#include <cuda.h> /* CUtensorMap (types only: the encoder is reached through cudaGetDriverEntryPointByVersion) */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>
#endif

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <type_traits>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifndef PALU_EMULATE
#include "cuda_check.cuh"
#endif
#include "latent_decode.cuh"

#ifndef PALU_EMU_LAUNCH
#define PALU_EMU_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace palu_decode __attribute__((visibility("hidden"))) { /* internal to the extension: no exported symbols */

constexpr int kMaxGroups = PALU_LATENT_DECODE_MAX_GROUPS;
constexpr int kV1Threads = 128;
constexpr int kV1Tile = 16;        /* tokens per v1 tile */
constexpr int kV2Tile = 32;        /* tokens per warp tile in v2 (two m16 tiles) */
constexpr int kMergeThreads = 128; /* merge_kernel: 4 warps of 4 columns each */
constexpr int kMaxSplits = 1024;   /* CTAs along the sequence, per (KV head, sequence) */
constexpr size_t kDefaultSmem = 48 * 1024;

/* Ranks and column offsets of every group (the kernels read their own group's entry). */
struct GroupTable {
    int rk[kMaxGroups], rv[kMaxGroups], kcol[kMaxGroups], vcol[kMaxGroups];
};

struct DecodeParams {
    const void *q, *k_latent, *v_latent, *k_up;
    const int32_t *positions, *pad_start;
    const int32_t *k_pairs; /* NULL, or per group the RoPE pairs, rebuilt ones first (latent_decode.cuh) */
    const float *k_bias, *inv_freq;
    float *ws;
    long long kbs, kts, vbs, vts, pbs; /* element strides: batch / token of the latents, batch of positions */
    int B, H, Hkv, D, G, n_rep, T;
    int splits;      /* gridDim.y */
    int partials;    /* P = splits * (partials per CTA) */
    int ws_stride;   /* W */
    int max_rk, max_rv;
    float score_scale; /* scaling * attention_scaling * log2(e) */
    GroupTable groups;
    /* direct: one partial per (sequence, head) in a kernel that combines its partials with combine_cta_partials
     * (v4, v9, v10, v11): that combination writes the call's output itself and no merge is launched (a merge of one
     * partial only divides z by l, ~5 us of a call at batch 8: run 129's call - kernel) */
    int direct, out_dtype, z_width; /* out_dtype: a palu_dtype; z_width: the output row's width (MergeParams) */
    /* pair: two partials per head, one per CTA (splits = 2), launched as clusters of the two splits (v10, v11): after
     * a cluster barrier, split 0 combines both partials and writes the output (combine_cluster_pair) and no merge is
     * launched (the merge's launch, grid wait and L2 round trips: ~5-6 us of a batch-8 GQA call) */
    int pair;
    void *out;
};

/* v4's tensor maps (the TMA build): key and value latents (3D: columns, slots, sequences; boxes of rk x 16 rows,
 * swizzled as v4_swz). A second kernel parameter, __grid_constant__ so that the copies can name it by address
 * (CUtensorMap carries its own 128-byte alignment); the cp.async build ignores it. */
#ifndef PALU_EMULATE
typedef CUtensorMap TmaMap;
#endif
struct V4Maps {
    TmaMap k, v;
};

struct MergeParams {
    const float *ws;
    void *out;
    int H, G, n_rep, partials, ws_stride, z_width;
    GroupTable groups;
};

/* ---- device helpers ------------------------------------------------------------------------------------ */

#ifndef PALU_EMULATE
namespace dev {

__device__ __forceinline__ unsigned smem_u32(const void *p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }
__device__ __forceinline__ int warp_id() { return threadIdx.x >> 5; }
__device__ __forceinline__ void sync_cta() { __syncthreads(); }
/* Programmatic dependent launch (compute capability 9.0+; no-ops below): a kernel launched with programmatic
 * stream serialization waits here until the grid before it has completed and its memory writes are visible
 * (without that launch attribute there is nothing to wait for); launch_dependents lets the next such grid be
 * launched before this one exits (its CTAs still wait for this grid in grid_dependency_wait). */
__device__ __forceinline__ void grid_dependency_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void launch_dependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
/* Thread-block clusters (sm_90): barrier.cluster over every thread of the cluster, all of which must call it (the
 * arrive releases and the wait acquires at cluster scope: global writes before it are visible to the cluster's reads
 * after it), and the CTA's rank in its cluster. */
__device__ __forceinline__ void cluster_sync()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ unsigned cluster_ctarank()
{
    unsigned r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
    return r;
}
/* a load from L2 (ld.global.cg): another SM's writes, never a line this SM's L1 may hold */
__device__ __forceinline__ float ld_cg(const float *p) { return __ldcg(p); }
/* The CTA's dynamic shared memory (16-byte aligned). */
__device__ __forceinline__ char *dyn_smem()
{
    extern __shared__ float4 smem_f4[];
    return reinterpret_cast<char *>(smem_f4);
}
__device__ __forceinline__ void sync_warp() { __syncwarp(); }
__device__ __forceinline__ float shfl(float v, int src) { return __shfl_sync(0xffffffffu, v, src); }
__device__ __forceinline__ int shfl_int(int v, int src) { return __shfl_sync(0xffffffffu, v, src); }
__device__ __forceinline__ float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ bool all_lanes(bool pred) { return __all_sync(0xffffffffu, pred) != 0; }
/* 2^x (ex2.approx: relative error ~2^-22; ex2(-inf) = +0, which the online softmax relies on) */
__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ void sincos_turn(float x, float *s, float *c) { __sincosf(x, s, c); }

/* 16 bytes global -> shared, bypassing L1; valid = false writes 16 zero bytes (src-size 0, nothing is read) */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(valid ? 4 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Four 8x8 b16 matrices; lane l gives the row address of matrix l/8, row l%8; register k holds matrix k's
 * (row lane/4, cols 2*(lane%4) .. +1), or with .trans its (rows 2*(lane%4) .. +1, col lane/4). */
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}

/* Transpose of an 8x8 b16 matrix held as an mma fragment (lane l: row l/4, cols 2(l%4), +1), same layout out. */
__device__ __forceinline__ uint32_t movm_trans(uint32_t a)
{
    uint32_t d;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
    return d;
}

/* Tensor-memory-access copies (sm_90): one thread moves a whole box of a tensor described by a CUtensorMap kernel
 * parameter into shared memory, completing `bytes` of transaction on an mbarrier the consumers wait on. v4's
 * mbarriers have one arrival (the issuing thread's arrive.expect_tx), so each fill is one phase; v9's take `count`. */
__device__ __forceinline__ void mbar_init(uint64_t *bar, int count = 1)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
/* the inits visible to the async proxy (the TMA unit completes transactions on them) */
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_expect(uint64_t *bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
}
/* until phase `parity` of bar has completed (its bytes have landed and are visible to this thread) */
__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity)
{
    asm volatile("{\n"
                 ".reg .pred done;\n"
                 "wait_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra wait_%=;\n"
                 "}\n" ::"r"(smem_u32(bar)),
                 "r"(parity)
                 : "memory");
}
/* box at (c0, c1, c2) of the tensor map (a __grid_constant__ kernel parameter) into dst */
__device__ __forceinline__ void tma_load_3d(void *dst, const void *map, int c0, int c1, int c2, uint64_t *bar)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
                 "[%5];\n" ::"r"(smem_u32(dst)),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
                 : "memory");
}

/* d += a (16x16, row) . b (16x8, col), fp32 accumulators (PTX ISA fragment layouts for m16n8k16). */
template <typename T> __device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                             uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                                     uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                              uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

} // namespace dev
#endif /* !PALU_EMULATE */

/* ---- v5 device helpers: Hopper warpgroup MMA (sm_90a only) ---------------------------------------------------- */

#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && !defined(PALU_EMULATE)
#define PALU_V5_WGMMA 1
namespace dev {

/* Shared-memory matrix descriptor, no swizzle (PTX ISA "Matrix Descriptor Format"): bits 0-13 start address >> 4,
 * 16-29 leading-dimension byte offset >> 4, 32-45 stride-dimension byte offset >> 4, 49-51 base offset (0),
 * 62-63 swizzle mode (0 = none). For a K-major operand in the no-swizzle mode the matrix is made of core
 * matrices of 8 rows x 16 bytes (8 rows x 8 b16 values, 128 contiguous bytes, row r at byte 16 r); LBO is the
 * distance between the two core matrices adjacent in K (one k16 step spans two), SBO the distance between core
 * matrices adjacent in M (or N), i.e. between 8-row groups. */
__device__ __forceinline__ uint64_t wgmma_desc(const void *p, uint32_t lbo, uint32_t sbo)
{
    const uint32_t a = smem_u32(p);
    return (uint64_t)((a & 0x3FFFFu) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFFu) << 16) |
           ((uint64_t)((sbo >> 4) & 0x3FFFu) << 32);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
/* Pins a register across the asynchronous MMA: the compiler may neither read it early nor write it late. */
__device__ __forceinline__ void fence_reg(float &r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void fence_reg(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }
/* Generic-proxy writes (cp.async, st.shared) of this thread become visible to the async proxy (wgmma). */
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
/* bar.sync over `n` threads with id `id` (named barriers 1.. ; 0 is __syncthreads) */
__device__ __forceinline__ void bar_named_n(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
/* Barrier of the 128 threads of one warpgroup (ids 1.. ; 0 is __syncthreads). */
__device__ __forceinline__ void bar_wg(int id) { asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory"); }
/* One plain arrival on an mbarrier (one of the `count` its phase waits for). */
__device__ __forceinline__ void mbar_arrive(uint64_t *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
/* `n` arrivals at once (of the `count` its phase waits for): one thread standing in for a warp after __syncwarp */
__device__ __forceinline__ void mbar_arrive_n(uint64_t *bar, uint32_t n)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(n) : "memory");
}
/* An arrival on `bar` once this thread's earlier cp.async copies have landed (counted in the init count). */
__device__ __forceinline__ void cp_async_mbar_arrive(uint64_t *bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
/* fp32 pair -> packed fp16 pair (lo in the low half), saturating at +-65504 (one F2FP.SATFINITE) */
__device__ __forceinline__ uint32_t half2_satfinite(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.satfinite.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

/* d (64 x N, fp32) = A (64 x 16, K-major, descriptor da) . B (16 x N, K-major, descriptor db) + (scale_d ? d : 0),
 * one asynchronous warpgroup MMA, m64nNk16 with N = D. */
template <typename T, int N> __device__ __forceinline__ void wgmma_k16(float (&d)[N / 2], uint64_t da, uint64_t db,
                                                                      int scale_d);
/* The PTX type name and the accumulator registers are part of the instruction text, so one macro body per N writes
 * the fp16 and bf16 specializations (operands: d[0 .. N/2), then da, db, scale_d). */
#define PALU_WGMMA_D32 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define PALU_WGMMA_D64 \
    PALU_WGMMA_D32, \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define PALU_WGMMA_K16_N64(TYPE, PTX_TYPE)                                                                             \
    template <>                                                                                                        \
    __device__ __forceinline__ void wgmma_k16<TYPE, 64>(float(&d)[32], uint64_t da, uint64_t db, int scale_d)          \
    {                                                                                                                  \
        asm volatile("{\n.reg .pred p;\n"                                                                              \
                     "setp.ne.b32 p, %34, 0;\n"                                                                        \
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX_TYPE "." PTX_TYPE " "                           \
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                        \
                     "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "                             \
                     "%32, %33, p, 1, 1, 0, 0;\n}\n"                                                                   \
                     : PALU_WGMMA_D32                                                                                  \
                     : "l"(da), "l"(db), "r"(scale_d)                                                                  \
                     : "memory");                                                                                      \
    }
#define PALU_WGMMA_K16_N128(TYPE, PTX_TYPE)                                                                            \
    template <>                                                                                                        \
    __device__ __forceinline__ void wgmma_k16<TYPE, 128>(float(&d)[64], uint64_t da, uint64_t db, int scale_d)         \
    {                                                                                                                  \
        asm volatile("{\n.reg .pred p;\n"                                                                              \
                     "setp.ne.b32 p, %66, 0;\n"                                                                        \
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTX_TYPE "." PTX_TYPE " "                          \
                     "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                        \
                     "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                               \
                     "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                               \
                     "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "                             \
                     "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                                   \
                     : PALU_WGMMA_D64                                                                                  \
                     : "l"(da), "l"(db), "r"(scale_d)                                                                  \
                     : "memory");                                                                                      \
    }
/* The same product for fp16 operands accumulated in fp16 (d: N / 4 registers of two adjacent columns of a row, the
 * pairs of the fp32 layout above): half the accumulator registers, and a key rebuilt this way is already the fp16
 * pair the key rotation takes (no conversion per pair). One rounding to fp16 per k16 step. */
__device__ __forceinline__ void wgmma_k16_f16acc64(uint32_t (&d)[16], uint64_t da, uint64_t db, int scale_d)
{
    asm volatile("{\n.reg .pred p;\n"
                 "setp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f16.f16.f16 "
                 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
                 "%16, %17, p, 1, 1, 0, 0;\n}\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
                   "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15])
                 : "l"(da), "l"(db), "r"(scale_d)
                 : "memory");
}
PALU_WGMMA_K16_N64(__half, "f16")
PALU_WGMMA_K16_N64(__nv_bfloat16, "bf16")
PALU_WGMMA_K16_N128(__half, "f16")
PALU_WGMMA_K16_N128(__nv_bfloat16, "bf16")
#undef PALU_WGMMA_K16_N64
#undef PALU_WGMMA_K16_N128
#undef PALU_WGMMA_D64
#undef PALU_WGMMA_D32

} // namespace dev
#endif
#ifdef PALU_EMULATE
#define PALU_V5_WGMMA 1 /* tests/emu/emu.h models the helpers above (wgmma from its descriptors, mbarriers, ...) */
#endif

template <typename T> struct Num;
template <> struct Num<__half> {
    static constexpr bool kHalfRope = true; /* v4/v5 rotate fp16 keys in packed half2 (see V4Warp) */
    static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        __half2 h = __floats2half2_rn(lo, hi);
        uint32_t u;
        memcpy(&u, &h, sizeof u);
        return u;
    }    static __device__ __forceinline__ float2 unpack(uint32_t u)
    {
        __half2 h;
        memcpy(&h, &u, sizeof h);
        return __half22float2(h);
    }
};
template <> struct Num<__nv_bfloat16> {
    static constexpr bool kHalfRope = false; /* bf16's 8-bit mantissa: RoPE stays fp32 */
    static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        uint32_t u;
        memcpy(&u, &h, sizeof u);
        return u;
    }    static __device__ __forceinline__ float2 unpack(uint32_t u)
    {
        __nv_bfloat162 h;
        memcpy(&h, &u, sizeof h);
        return __bfloat1622float2(h);
    }
};
template <> struct Num<float> {
    static __device__ __forceinline__ float to_f(float v) { return v; }
    static __device__ __forceinline__ float from_f(float v) { return v; }
};

/* d = a . b + c with separate c (saves the register copies of seeding the accumulators with the bias; v3 and v4). */
#ifndef PALU_EMULATE
template <typename T> __device__ __forceinline__ void mma16816c(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                              uint32_t b1, float c0, float c1);
template <> __device__ __forceinline__ void mma16816c<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                               uint32_t b1, float c0, float c1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%10,%11};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c0), "f"(c1));
}
template <> __device__ __forceinline__ void mma16816c<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                                      uint32_t b0, uint32_t b1, float c0, float c1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%10,%11};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c0), "f"(c1));
}
#else
template <typename T> inline void mma16816c(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, float c0,
                                            float c1)
{
    d[0] = c0, d[1] = c1, d[2] = c0, d[3] = c1;
    dev::mma16816<T>(d, a, b0, b1);
}
#endif

/* ---- RoPE angle ------------------------------------------------------------------------------------------ */

/* (hi, lo) floats with hi + lo = inv_freq / (2 pi) to ~2^-48 relative (computed in double). */
__device__ __forceinline__ float2 turn_split(float inv_freq)
{
    const double f = (double)inv_freq * 0.15915494309189533577; /* 1 / (2 pi) */
    const float hi = (float)f;
    return make_float2(hi, (float)(f - (double)hi));
}

/* A turn table entry: turn_split(inv_freq) and the cos and sin of span * inv_freq, span a power of two (8, 32), so
 * that the product is exact in float and sincosf (full accuracy: the kernels are built without fast math) rounds
 * once, ~1 ulp. It replaced a double-precision sincos per frequency and CTA: no faster on the H200 (run 35; the
 * ~1-1.5 us that the v4 prologue's tables cost is the R(tau) table loop), but free of FP64, which runs at 1/64 of
 * the FP32 rate on GPUs outside the H100/H200 class that the compute_90 PTX may be JIT-compiled for. */
__device__ __forceinline__ float4 turn_entry(float inv_freq, float span)
{
    const float2 tr = turn_split(inv_freq);
    float s, c;
    sincosf(span * inv_freq, &s, &c);
    return make_float4(tr.x, tr.y, c, s);
}

/* cos and sin of pos * inv_freq for |pos| < 2^24, inv_freq given as turn_split(inv_freq). pos * hi is split
 * exactly into r1 + e1 (FMA), r1 - rint(r1) is exact, so the fraction of a turn carries ~2^-25 absolute error;
 * __sincosf on [-pi, pi] adds at most ~2^-21; total ~1e-6 absolute at every position. */
__device__ __forceinline__ void rope_cos_sin(int pos, float2 turn, float *c, float *s)
{
    const float p = (float)pos;
    const float r1 = p * turn.x;
    const float e1 = fmaf(p, turn.x, -r1);
    const float fr = (r1 - rintf(r1)) + fmaf(p, turn.y, e1);
    dev::sincos_turn(fr * 6.28318530717958648f, s, c);
}

/* cos and sin of a small angle n * inv_freq (0 <= n < 256: a row within a block, not a position): the product is
 * below 256 radians, where the fast sine's own argument reduction (a float multiply by 1 / (2 pi)) costs at most
 * ~256 / (2 pi) * 2^-24 of a turn, ~1.5e-5 radians, far inside the fp16 rounding of what these angles rotate; no
 * turn split (an FP64 multiply and three conversions per frequency) is needed for them. */
__device__ __forceinline__ void small_cos_sin(int n, float inv_freq, float *c, float *s)
{
    dev::sincos_turn((float)n * inv_freq, s, c);
}

#ifdef PALU_V5_WGMMA /* helpers of the wgmma key-rebuild kernels v10 and v11 (sm_90a builds and the emulator) */
/* the low word of a wgmma descriptor: the start address >> 4 (bits 0-13) and LBO >> 4 (bits 16-29). The address is
 * masked to its offset in the CTA's shared memory first: in a cluster launch (the pair launch) a shared address also
 * carries the CTA's rank in the cluster from bit 24, which unmasked spilled into the LBO field of every rank-1 CTA's
 * descriptors and gave it wrong products (run 137) */
__device__ __forceinline__ uint32_t wgmma_desc_lo(const void *p, uint32_t lbo)
{
    return ((dev::smem_u32(p) & 0x3FFFFu) >> 4) | ((lbo >> 4) << 16);
}
/* the constant high word of a wgmma descriptor: SBO and the layout type (0 none, 1 the 128-byte swizzle) */
__device__ __forceinline__ uint64_t wgmma_desc_hi(uint32_t sbo, uint32_t layout)
{
    return ((uint64_t)((sbo >> 4) | (layout << 30))) << 32;
}
/* The keys and rotated queries of the score product are fp16 for both dtypes (dev::half2_satfinite, saturating at
 * +-65504). They are computed in fp32 inside the kernel, so bf16 models lose nothing by it and gain 3 mantissa bits
 * per operand: with bf16 operands, the extra rounding of v10's U_tau images (bf16, as the latent boxes they
 * multiply) put a sharp-softmax case at 1.09e-2 against bf16's 1e-2 (run 72) */
__device__ __forceinline__ __half2 u32_as_half2(uint32_t u)
{
    __half2 h;
    memcpy(&h, &u, 4);
    return h;
}
/* A thread's key rotation for its two rows (rr) and 16 frequencies f = 8 i + 2 c + e (e < 2, i < 8, c its lane
 * quad): cos and sin pairs as half2, applied in half2 after the fp32 accumulators are packed (v4's fp16 RoPE) */
struct KeyRot {
    __half2 c[2][8], s[2][8];
    __device__ __forceinline__ void set(int rr, int i, float c0, float c1, float s0, float s1)
    {
        c[rr][i] = __floats2half2_rn(c0, c1), s[rr][i] = __floats2half2_rn(s0, s1);
    }
    /* the packed rotated pair (lo: dims 8 i + 2 c + e, hi: those + 64) of row rr */
    __device__ __forceinline__ void apply(int rr, int i, float l0, float l1, float h0, float h1, uint32_t *lo,
                                          uint32_t *hi) const
    {
        apply_h2(rr, i, u32_as_half2(dev::half2_satfinite(l0, l1)), u32_as_half2(dev::half2_satfinite(h0, h1)), lo, hi);
    }
    /* the same for a pair already in fp16 (v10's stored half, read from an fp16 latent: no conversions) */
    __device__ __forceinline__ void apply_h2(int rr, int i, __half2 l, __half2 h, uint32_t *lo, uint32_t *hi) const
    {
        const __half2 x = __hfma2(__hneg2(h), s[rr][i], __hmul2(l, c[rr][i]));
        const __half2 y = __hfma2(l, s[rr][i], __hmul2(h, c[rr][i]));
        memcpy(lo, &x, 4), memcpy(hi, &y, 4);
    }
};
/* The interpolative key basis's stored half (v10, v11): rotate the latent's columns, loaded by ldmatrix as the score's
 * A fragments (lat[kk] for chunks kk = 0, 1 of the lower members, lat[kk + 2] for their upper partners), into the key
 * fragments pk[rr][i] and pk[rr][i + 8] of slots i = 4 + 2 kk + (q >> 1). fp16 latents are rotated as they are (run
 * 168: through fp32 and back, 6 more instructions per pair, made v10's step 13% slower); bf16 ones become fp16. */
template <typename T>
__device__ __forceinline__ void rotate_stored_half(const KeyRot &r, const uint32_t (&lat)[4][4], uint32_t (&pk)[2][16])
{
#pragma unroll
    for (int kk = 0; kk < 2; kk++)
#pragma unroll
        for (int q = 0; q < 4; q++) { /* row g + 8 (q & 1), columns + 8 (q >> 1) */
            const int i = 4 + 2 * kk + (q >> 1);
            if constexpr (std::is_same_v<T, __half>) {
                r.apply_h2(q & 1, i, u32_as_half2(lat[kk][q]), u32_as_half2(lat[kk + 2][q]), &pk[q & 1][i],
                           &pk[q & 1][i + 8]);
            } else {
                const float2 lo = Num<T>::unpack(lat[kk][q]), hi = Num<T>::unpack(lat[kk + 2][q]);
                r.apply(q & 1, i, lo.x, lo.y, hi.x, hi.y, &pk[q & 1][i], &pk[q & 1][i + 8]);
            }
        }
}
/* The key rebuild's accumulators (v10, v11): fp32, NACC per thread, or for fp16 keys rebuilt with fp16 accumulators
 * (F16ACC: dev::wgmma_k16_f16acc64, m64n64 only) NACC / 2 registers of fp16 pairs. One k16 step of the rebuild into
 * either form, the fence after its wait, and the rotation of the rebuilt half into the score's A fragments: chunk
 * pairs i < NB, the fp32 layout's elements 4 i + 2 rr, + 1 being the fp16 pair register 2 i + rr. */
template <int NACC, bool F16ACC>
using RebuildAcc = std::conditional_t<F16ACC, uint32_t[NACC / 2], float[NACC]>;
template <typename T, int NACC>
__device__ __forceinline__ void rebuild_k16(float (&acc)[NACC], uint64_t da, uint64_t db, int scale_d)
{
    dev::wgmma_k16<T, 2 * NACC>(acc, da, db, scale_d);
}
template <typename T, int NA>
__device__ __forceinline__ void rebuild_k16(uint32_t (&acc)[NA], uint64_t da, uint64_t db, int scale_d)
{
    static_assert(std::is_same_v<T, __half> && NA == 16, "fp16 accumulators: fp16 keys, m64n64 only");
    dev::wgmma_k16_f16acc64(acc, da, db, scale_d);
}
template <typename A, int NA> __device__ __forceinline__ void fence_acc(A (&acc)[NA])
{
#pragma unroll
    for (int e = 0; e < NA; e++) dev::fence_reg(acc[e]);
}
template <int NB, int NA>
__device__ __forceinline__ void rotate_rebuilt(const KeyRot &r, const float (&acc)[NA], uint32_t (&pk)[2][16])
{
#pragma unroll
    for (int rr = 0; rr < 2; rr++)
#pragma unroll
        for (int i = 0; i < NB; i++)
            r.apply(rr, i, acc[4 * i + 2 * rr], acc[4 * i + 2 * rr + 1], acc[4 * (i + NB) + 2 * rr],
                    acc[4 * (i + NB) + 2 * rr + 1], &pk[rr][i], &pk[rr][i + 8]);
}
template <int NB, int NA>
__device__ __forceinline__ void rotate_rebuilt(const KeyRot &r, const uint32_t (&acc)[NA], uint32_t (&pk)[2][16])
{
#pragma unroll
    for (int rr = 0; rr < 2; rr++)
#pragma unroll
        for (int i = 0; i < NB; i++)
            r.apply_h2(rr, i, u32_as_half2(acc[2 * i + rr]), u32_as_half2(acc[2 * (i + NB) + rr]), &pk[rr][i],
                       &pk[rr][i + 8]);
}
/* The warp's online-softmax states as records for combine_cta_partials, after the main loop: query head j < n_rep
 * at recs + (warp n_rep + j)(2 + R) holds m, l (summed here over the fragment's 8 row groups), then O^T's R values.
 * Thread (g, c) holds heads 2 c, 2 c + 1 (e = 0, 1) and O^T's m-tiles o[mb] (rows 16 mb + g, + 8; P . V layout). */
template <int R>
__device__ __forceinline__ void store_warp_records(float *recs, int warp, int n_rep, int g, int c, const float (&m_run)[2],
                                                   float (&l_run)[2], const float (&o)[R / 16][4])
{
    constexpr int REC = 2 + R;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        l_run[e] += dev::shfl_xor(l_run[e], 4);
        l_run[e] += dev::shfl_xor(l_run[e], 8);
        l_run[e] += dev::shfl_xor(l_run[e], 16);
        if (g == 0 && 2 * c + e < n_rep)
            recs[(warp * n_rep + 2 * c + e) * REC] = m_run[e], recs[(warp * n_rep + 2 * c + e) * REC + 1] = l_run[e];
    }
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int j = 2 * c + (e & 1);
        if (j < n_rep) {
            float *rec = recs + (warp * n_rep + j) * REC + 2;
#pragma unroll
            for (int mb = 0; mb < R / 16; mb++) rec[16 * mb + g + 8 * (e >> 1)] = o[mb][e];
        }
    }
}
/* the rotation R(delta) of a thread's row rr, frequencies of lane quad c (cold: irregular positions); rolled and
 * out of line, so that the hot path keeps its registers */
static __device__ __noinline__ void key_row_rotation(KeyRot &rot, int rr, int delta, int c, const float *inv_freq)
{
#pragma unroll 1
    for (int i = 0; i < 8; i++) {
        float c0, s0, c1, s1;
        rope_cos_sin(delta, turn_split(inv_freq[8 * i + 2 * c]), &c0, &s0);
        rope_cos_sin(delta, turn_split(inv_freq[8 * i + 2 * c + 1]), &c1, &s1);
        rot.set(rr, i, c0, c1, s0, s1);
    }
}
#endif

/* Partial record of (sequence b, query head h, partial index pidx). */
__device__ __forceinline__ float *partial(const DecodeParams &p, int b, int h, int pidx)
{
    return p.ws + ((size_t)(b * p.H + h) * p.partials + pidx) * p.ws_stride;
}

/* The CTA's one partial per head (pidx = split): the warps' records (write_record, `recs` in shared memory, warp
 * w's at recs + w n_rep (2 + RV)) combined as online-softmax states. Per-warp partials (v4 and v5 as first
 * written) made the merge kernel walk 264 partials per head at Llama-3-8B B = 1 (33 splits x 8 warps); one per
 * CTA is 33. NaN for a bad pad_start; a CTA whose warps all had empty ranges writes m = -inf, l = 0, z = 0.
 * direct (p.direct: the call's one partial per head): the output z / l instead, bit for bit what merge_kernel makes of a
 * single partial (its weights are ex2(0) = 1 and its combinations with empty states exact). */
/* The first column of query head h in a row of z (group g's heads one after another, rv columns each) and, in *rv,
 * its width: where merge_kernel and combine_cta_partials's direct output write. */
__device__ __forceinline__ int z_head_column(const GroupTable &groups, int G, int n_rep, int h, int *rv)
{
    const int g = h / n_rep / G;
    *rv = groups.rv[g];
    return n_rep * G * groups.vcol[g] + (h - g * G * n_rep) * *rv;
}

/* Output element `at` of the call (the merge's z / l, or NaN), in the output dtype */
__device__ __forceinline__ void store_output(void *out, int out_dtype, size_t at, float v)
{
    if (out_dtype == PALU_DTYPE_F16)
        static_cast<__half *>(out)[at] = Num<__half>::from_f(v);
    else if (out_dtype == PALU_DTYPE_BF16)
        static_cast<__nv_bfloat16 *>(out)[at] = Num<__nv_bfloat16>::from_f(v);
    else
        static_cast<float *>(out)[at] = v;
}

/* Combine two online-softmax states (max m, sum l and one column z, both scaled to m): m == -inf is an empty state
 * (its factor must not become ex2(-inf - -inf) = NaN). */
__device__ __forceinline__ void combine_mlz(float &m, float &l, float &z, float m2, float l2, float z2)
{
    const float mn = fmaxf(m, m2);
    const float a = m == mn ? 1.0f : dev::ex2(m - mn), c = m2 == mn ? 1.0f : dev::ex2(m2 - mn);
    l = fmaf(l, a, l2 * c), z = fmaf(z, a, z2 * c), m = mn;
}

template <int RV>
__device__ void combine_cta_partials(const DecodeParams &p, int b, int h0, int split, int warps, const float *recs,
                                     bool bad_pad, bool direct)
{
    constexpr int REC = 2 + RV;
    const int n_rep = p.n_rep, stride = n_rep * REC;
    const float nan = __int_as_float(0x7fc00000);
    for (int t = threadIdx.x; t < n_rep * RV; t += blockDim.x) {
        const int e = t / RV, d = t - e * RV;
        const float *r = recs + e * REC;
        float mx = -INFINITY;
        for (int w = 0; w < warps; w++) mx = fmaxf(mx, r[w * stride]);
        float l = 0.0f, z = 0.0f;
        for (int w = 0; w < warps; w++) {
            const float m = r[w * stride], wt = m == -INFINITY ? 0.0f : dev::ex2(m - mx);
            l = fmaf(wt, r[w * stride + 1], l);
            z = fmaf(wt, r[w * stride + 2 + d], z);
        }
        if (direct) { /* the merge's column of head h0 + e */
            int rv;
            const int col = z_head_column(p.groups, p.G, n_rep, h0 + e, &rv);
            if (d < rv) store_output(p.out, p.out_dtype, (size_t)b * p.z_width + col + d, bad_pad ? nan : z / l);
            continue;
        }
        float *out = partial(p, b, h0 + e, split);
        if (d == 0) out[0] = bad_pad ? nan : mx, out[1] = bad_pad ? nan : l;
        out[2 + d] = bad_pad ? nan : z;
    }
}

/* The body of v9, v10 and v11 in a build without their sm_90a code (compute_90 PTX JIT-compiled for another GPU; the
 * host plans them only on compute capability 9.0, where the sm_90a code runs): the call's result made loudly NaN for
 * the CTA's first head, in the output itself where no merge runs (p.direct, p.pair), else in the partial the merge
 * reads. */
__device__ __forceinline__ void poison_unsupported_build(const DecodeParams &p, int b, int h0, int split)
{
    if (threadIdx.x != 0) return;
    const float nan = __int_as_float(0x7fc00000);
    if (p.direct || p.pair) {
        int rv;
        const int col = z_head_column(p.groups, p.G, p.n_rep, h0, &rv);
        store_output(p.out, p.out_dtype, (size_t)b * p.z_width + col, nan);
    } else {
        partial(p, b, h0, split)[0] = nan;
    }
}

/* The pair launch's output (p.pair): every thread of both CTAs of a cluster calls it after combine_cta_partials has
 * written their partials; split 0 then combines partials 0 and 1 of its `heads` query heads from h0 and writes z / l.
 * It is merge_kernel's arithmetic for two partials (each lane's own state first, then combine_mlz of partial 0 with
 * partial 1; its combinations with empty states are exact), so the output is bit for bit the merge's, NaN where a
 * partial is NaN (a bad pad_start). */
template <int RV> __device__ void combine_cluster_pair(const DecodeParams &p, int b, int h0, int heads)
{
    dev::cluster_sync(); /* both partials written and visible */
    if (dev::cluster_ctarank() != 0) return;
    for (int t = threadIdx.x; t < heads * RV; t += blockDim.x) {
        const int e = t / RV, d = t - e * RV;
        int rv;
        const int col = z_head_column(p.groups, p.G, p.n_rep, h0 + e, &rv);
        if (d >= rv) continue;
        const float *r0 = partial(p, b, h0 + e, 0), *r1 = partial(p, b, h0 + e, 1);
        float m = dev::ld_cg(r0), l = dev::ld_cg(r0 + 1), z = dev::ld_cg(r0 + 2 + d);
        const float m1 = dev::ld_cg(r1), l1 = dev::ld_cg(r1 + 1), z1 = dev::ld_cg(r1 + 2 + d);
        const bool bad = isnan(m) || isnan(l) || isnan(m1) || isnan(l1);
        combine_mlz(m, l, z, m1, l1, z1);
        store_output(p.out, p.out_dtype, (size_t)b * p.z_width + col + d, bad ? __int_as_float(0x7fc00000) : z / l);
    }
}

/* ---- the plan, and the launchers' host helpers ------------------------------------------------------------- */

struct Plan {
    int impl;        /* 1, 2, 3, 4 (v3w), 5 (v4), 6 (v5), 9 (v9) or 10 (v10) */
    int warps;       /* v2: warps per CTA */
    int splits_max;  /* splits for the largest length (sizes the workspace) */
    int splits;      /* splits for this length */
    int partials_per_cta;
    int ws_stride;
    int max_rk, max_rv;
    size_t smem;
    int sm_count;
    int cc_major; /* >= 9: the merge is launched as a programmatic dependent of the decode kernel */
};

/* Warps per CTA and CTAs per SM by rank: 8 x 2 (<= 128 registers) for rk <= 64, 12 x 1 (<= 168) for 128. */
template <int RK> struct V4Shape {
    static constexpr int WARPS = RK <= 64 ? 8 : 12;
    static constexpr int MINB = RK <= 64 ? 2 : 1;
};

inline bool aligned16(const void *ptr) { return ((uintptr_t)ptr & 15) == 0; }

/* The shared-memory part of an equal-rank kernel's support check: `need` bytes per CTA (0: no instantiation for
 * these ranks) against the device's opt-in limit; NULL when it fits, else `why` filled. */
inline const char *smem_unsupported(const char *name, size_t need, int max_rk, int max_rv, int smem_optin, char *why,
                             size_t why_len)
{
    if (need == 0)
        return snprintf(why, why_len, "ranks k %d / v %d (%s takes 32/32, 64/64, 128/128)", max_rk, max_rv, name),
               why;
    if (need > (size_t)smem_optin)
        return snprintf(why, why_len, "ranks k %d / v %d need %zu bytes of shared memory per CTA; the device allows "
                        "%d", max_rk, max_rv, need, smem_optin),
               why;
    return NULL;
}

/* Why a kernel of sm_90a code (wgmma) cannot run on `device` (NULL when it can: compute capability 9.0 exactly). */
inline const char *sm90a_unsupported(const char *name, int device, char *why, size_t why_len)
{
#ifdef PALU_EMULATE /* the CPU emulator models wgmma (tests/emu/emu.h); EMU_NO_WGMMA=1 plans as on a GPU without it */
    (void)device;
    if (getenv("EMU_NO_WGMMA") == NULL) return NULL;
    return snprintf(why, why_len, "the CPU emulator with EMU_NO_WGMMA set (%s uses wgmma)", name), why;
#endif
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
        return snprintf(why, why_len, "the compute capability of device %d could not be read", device), why;
    if (major != 9 || minor != 0)
        return snprintf(why, why_len, "compute capability %d.%d (%s uses wgmma: sm_90a, i.e. 9.0 only)", major, minor,
                        name),
               why;
    return NULL;
}

/* v4's tile loads by TMA. Per call, two tensor maps (key and value latents: 3D columns x slots x sequences, boxes of
 * rk x 16 swizzled as v4_swz) are encoded on the host with the driver's cuTensorMapEncodeTiled and passed as a
 * __grid_constant__ parameter; the positions stay on cp.async. Taken when every condition holds, else the cp.async
 * build runs (same results; the latents' alignment conditions are v2's):
 *   - rk = rv <= 64 (a row fits the 128-byte swizzle span), compute capability >= 9.0;
 *   - the stream is not capturing a CUDA graph: a map holds this call's slot count T (rows past it read as zeros),
 *     and a replayed graph would reuse it for later, longer steps;
 *   - PALU_C_V4_TMA is not "0" in the environment (read once: the switch for side-by-side timing).
 * Measured in the notes (v4e). */
#ifndef PALU_EMULATE
typedef PFN_cuTensorMapEncodeTiled_v12000 EncodeTiledFn;
inline EncodeTiledFn tensor_map_encoder()
{
    static const EncodeTiledFn fn = []() -> EncodeTiledFn {
        void *f = NULL;
        cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess) {
            (void)cudaGetLastError();
            return NULL;
        }
        return reinterpret_cast<EncodeTiledFn>(f);
    }();
    return fn;
}
#endif

/* One tiled tensor map, no interleave, unit element strides, zero fill out of bounds; false if it cannot be made. */
inline bool encode_map(TmaMap *m, CUtensorMapDataType dt, cuuint32_t rank, const void *base, const cuuint64_t *dims,
                const cuuint64_t *strides, const cuuint32_t *box, CUtensorMapSwizzle swizzle)
{
    const cuuint32_t unit[3] = {1, 1, 1};
#ifdef PALU_EMULATE
    return emu_encode_map(m, dt, rank, base, dims, strides, box, unit, swizzle);
#else
    const EncodeTiledFn f = tensor_map_encoder();
    return f != NULL && f(m, dt, rank, const_cast<void *>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                          swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
#endif
}

/* The pair launch (DecodeParams.pair) unless PALU_C_PAIR_MERGE is "0" in the environment (read once: the switch for
 * side-by-side timing against the merge kernel). */
inline bool pair_launch_enabled()
{
    static const bool on = [] {
        const char *e = getenv("PALU_C_PAIR_MERGE");
        return !(e != NULL && strcmp(e, "0") == 0);
    }();
    return on;
}

inline bool v4_tma_enabled()
{
    static const bool on = [] {
        const char *e = getenv("PALU_C_V4_TMA");
        return !(e != NULL && strcmp(e, "0") == 0);
    }();
    return on;
}

/* Whether this call may load by TMA: compute capability 9.0+, PALU_C_V4_TMA not "0", and the stream not capturing a
 * CUDA graph (a map holds this call's slot count T; a replayed graph would reuse it for later, longer steps). */
inline bool tma_allowed(const Plan &pl, cudaStream_t stream)
{
    if (pl.cc_major < 9 || !v4_tma_enabled()) return false;
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &cap) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return cap == cudaStreamCaptureStatusNone;
}

/* The key and value latent maps of this call: 3D (columns, slots, sequences), boxes of rank columns x `rows` slots,
 * swizzled by `sw`; false if they cannot be made. */
inline bool latent_tma_maps(const DecodeParams &p, int rank, int rows, CUtensorMapSwizzle sw, V4Maps *maps)
{
    int ncols_k = 0, ncols_v = 0; /* Rk, Rv: the columns the maps span */
    for (int g = 0; g < p.Hkv / p.G; g++) ncols_k += p.groups.rk[g], ncols_v += p.groups.rv[g];
    const cuuint64_t T = (cuuint64_t)p.T, B = (cuuint64_t)p.B;
    auto round16 = [](cuuint64_t n) { return (n + 15) / 16 * 16; };
    /* a single sequence's batch stride is never used: any multiple of 16 that spans its rows */
    const cuuint64_t ks[2] = {(cuuint64_t)p.kts * 2, p.B > 1 ? (cuuint64_t)p.kbs * 2 : round16(T * p.kts * 2)};
    const cuuint64_t vs[2] = {(cuuint64_t)p.vts * 2, p.B > 1 ? (cuuint64_t)p.vbs * 2 : round16(T * p.vts * 2)};
    const cuuint64_t kd[3] = {(cuuint64_t)ncols_k, T, B}, vd[3] = {(cuuint64_t)ncols_v, T, B};
    const cuuint32_t kb[3] = {(cuuint32_t)rank, (cuuint32_t)rows, 1};
    return encode_map(&maps->k, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, p.k_latent, kd, ks, kb, sw) &&
           encode_map(&maps->v, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, p.v_latent, vd, vs, kb, sw);
}

/* One launch of a decode kernel: shared-memory opt-in, grid (KV heads / kv_per_cta, split, sequence), 32 x warps
 * threads; `extra` are the kernel's parameters after DecodeParams (v4: its tensor maps). kv_per_cta: the KV heads
 * one CTA serves (v11: the two of a group; else 1). */
template <class... A>
palu_status launch_decode_grid(void (*kern)(DecodeParams, A...), size_t smem, int kv_per_cta, const DecodeParams &p,
                               const Plan &pl, cudaStream_t stream, const A &...extra)
{
    if (smem > kDefaultSmem)
        PALU_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)(p.Hkv / kv_per_cta), (unsigned)p.splits, (unsigned)p.B);
    if (p.pair) { /* clusters of the two splits (fill_params sets pair only with splits = 2) */
#ifdef PALU_EMULATE
        PALU_EMU_LAUNCH_CLUSTER(kern, grid, dim3(32 * pl.warps), smem, stream, 2, p, extra...);
#else
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = 1, attr[0].val.clusterDim.y = 2, attr[0].val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid, cfg.blockDim = dim3(32 * pl.warps), cfg.dynamicSmemBytes = smem, cfg.stream = stream;
        cfg.attrs = attr, cfg.numAttrs = 1;
        PALU_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kern, p, extra...));
#endif
    } else {
        PALU_EMU_LAUNCH(kern, grid, dim3(32 * pl.warps), smem, stream, p, extra...);
    }
    PALU_CUDA_CHECK_LAUNCH();
    return PALU_OK;
}

/* One launch of the whole batch, one KV head per CTA (v4, v9, v10). A batch beyond one wave of v9-v11's one CTA per
 * SM runs as one grid in several waves: launching it as chunks of one wave each (sessions 9-12) cost 0.7-1.4% where
 * it split a launch (runs 111, 128) and was kept only while v9's fault was unexplained; the fault was a race in v9's
 * stage ring (notes, "The fault's cause"), and the reproducer runs clean on a multi-wave grid (run 128). */
template <class... A>
palu_status launch_decode_smem(void (*kern)(DecodeParams, A...), size_t smem, const DecodeParams &p, const Plan &pl,
                               cudaStream_t stream, const A &...extra)
{
    return launch_decode_grid(kern, smem, 1, p, pl, stream, extra...);
}

/* Where a kernel that loads by TMA only (v10, v11) cannot have it in this call (a CUDA-graph capture, PALU_C_V4_TMA=0,
 * a map the driver refused): nothing is launched; auto's caller then runs v4 (PALU_OK), an explicit request fails
 * naming the kernel. */
inline palu_status tma_only_refusal(const palu_latent_decode_args *a, const char *name)
{
    if (a->impl == PALU_LATENT_DECODE_AUTO) return PALU_OK;
    return palu_fail(PALU_ERR_UNSUPPORTED, "the decode kernel %s loads its latents by TMA, which this call cannot use "
                                           "(a CUDA-graph capture, PALU_C_V4_TMA=0 or a tensor map the driver refused); "
                                           "use impl=\"auto\", which runs v4 there", name);
}

/* One launch at the plan's shared memory (v2, v3, v5). */
inline palu_status launch_decode(void (*kern)(DecodeParams), const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    return launch_decode_smem(kern, pl.smem, p, pl, stream);
}

/* The dispatch switch of the kernels compiled for equal ranks (v3, v3w, v4, v5): dtype x head_dim x rank bucket
 * -> K::launch<T, D, R>, where K names the family (K::name) and picks the bias or bias-free instantiation. */
template <class K, typename T, int D>
palu_status launch_equal_ranks(const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    if (pl.max_rk == 32 && pl.max_rv == 32) return K::template launch<T, D, 32>(p, pl, stream);
    if (pl.max_rk == 64 && pl.max_rv == 64) return K::template launch<T, D, 64>(p, pl, stream);
    if (pl.max_rk == 128 && pl.max_rv == 128) return K::template launch<T, D, 128>(p, pl, stream);
    return palu_fail(PALU_ERR_UNSUPPORTED, "ranks k %d / v %d have no %s kernel", pl.max_rk, pl.max_rv, K::name);
}

template <class K>
palu_status dispatch_equal_ranks(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl,
                                 cudaStream_t stream)
{
    switch (a->dtype) {
    case PALU_DTYPE_F16:
        switch (p.D) {
        case 64: return launch_equal_ranks<K, __half, 64>(p, pl, stream);
        case 128: return launch_equal_ranks<K, __half, 128>(p, pl, stream);
        default: break;
        }
        break;
    case PALU_DTYPE_BF16:
        switch (p.D) {
        case 64: return launch_equal_ranks<K, __nv_bfloat16, 64>(p, pl, stream);
        case 128: return launch_equal_ranks<K, __nv_bfloat16, 128>(p, pl, stream);
        default: break;
        }
        break;
    default: return palu_fail(PALU_ERR_UNSUPPORTED, "dtype %s has no %s kernel", palu_dtype_name(a->dtype), K::name);
    }
    return palu_fail(PALU_ERR_UNSUPPORTED, "head_dim %d has no %s kernel (64 or 128)", p.D, K::name);
}

/* ---- v3 (latent_decode.cu), v4 and v5 (latent_decode_v4.cu), as the plan and the dispatch see them ---- */

/* Why the v3/v4 specialization does not fit this call's shape (NULL when it does): v2's conditions, plus equal
 * ranks in every group with (rk, rv) one of kV3Ranks. */
const char *v3_shape_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, char *why,
                                 size_t why_len);
/* Shared memory of a v4 CTA for these (head_dim, ranks); 0 where v4 has no kernel. */
size_t v4_smem(int D, int rk, int rv);
/* Why v4 cannot run this call (NULL when it can): v3's conditions and its CTA's shared memory. */
const char *v4_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int *warps,
                           int *ctas_per_sm, size_t *smem, char *why, size_t why_len);
/* Why v5 cannot run this call (NULL when it can): v3's shapes on a compute capability 9.0 device (sm_90a code). */
const char *v5_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                           int *warps, size_t *smem, char *why, size_t why_len);
palu_status dispatch_v4(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream);
palu_status dispatch_v5(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream);

/* The conditions v9 and v10 share (NULL when a call meets them, else `why` filled, naming the kernel): group size 1,
 * head_dim 128, ranks 64 / 64 in every group, no key bias, latent rows and k_up 16-byte aligned (whole rows are
 * copied), compute capability 9.0 (sm_90a code), `need` bytes of shared memory per CTA. */
inline const char *g1_d128_r64_unsupported(const char *name, const palu_latent_decode_args *a, int max_rk, int max_rv,
                                           int smem_optin, int device, size_t need, char *why, size_t why_len)
{
    if (a->group_size != 1)
        return snprintf(why, why_len, "group_size %lld (%s takes 1)", (long long)a->group_size, name), why;
    if (a->head_dim != 128)
        return snprintf(why, why_len, "head_dim %lld (%s takes 128)", (long long)a->head_dim, name), why;
    for (int64_t g = 0; g < a->n_groups; g++)
        if (a->k_ranks[g] != 64 || a->v_ranks[g] != 64)
            return snprintf(why, why_len, "ranks k %lld / v %lld in group %lld (%s takes 64 / 64)",
                            (long long)a->k_ranks[g], (long long)a->v_ranks[g], (long long)g, name), why;
    if (a->k_bias != NULL) return snprintf(why, why_len, "a key bias (%s takes none)", name), why;
    if (!aligned16(a->k_latent) || !aligned16(a->v_latent) || !aligned16(a->k_up) || a->k_token_stride % 8 != 0 ||
        a->v_token_stride % 8 != 0 || (a->batch > 1 && (a->k_batch_stride % 8 != 0 || a->v_batch_stride % 8 != 0)))
        return snprintf(why, why_len, "latent rows or k_up not 16-byte aligned (%s copies whole rows: base pointers, "
                                      "token and batch strides must be multiples of 16 bytes)", name), why;
    const char *no = sm90a_unsupported(name, device, why, why_len);
    if (no == NULL) no = smem_unsupported(name, need, max_rk, max_rv, smem_optin, why, why_len);
    return no;
}

/* ---- v9 (latent_decode_v9.cu), as the plan and the dispatch see it ---- */

constexpr int kV9BlockSlots = 256; /* slots per block of v9 and v10 (one anchor); the plan keeps >= 2 per CTA */

/* Why v9 cannot run this call (NULL when it can); *warps and *smem get its CTA shape. */
const char *v9_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                           int *warps, size_t *smem, char *why, size_t why_len);

/* Launches v9 for a plan that chose it and sets *ran; nothing is launched (*ran false) where v9 would copy by cp.async
 * (CUDA-graph capture) and the caller asked for auto: the caller runs v4 instead, on the same workspace. */
palu_status dispatch_v9(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                        bool *ran);

/* ---- v10 (latent_decode_v10.cu): its support check, auto's rule for it, and its launch ---- */

const char *v10_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                            int *warps, size_t *smem, char *why, size_t why_len);

/* Whether auto takes v10 for a call v10 supports: when each of its CTAs walks at least kV10AutoSlotsPerCta slots.
 * v10 builds its U_tau images in every CTA (~1-5 us), so it loses to v4 on short slices and wins on long ones
 * (run 78, Llama-3-8B shapes, call times v10 / v4: B1 8K 18.3 / 17.8 us at 512 slots per CTA, B1 16K 22.5 / 22.9 at
 * 1024, B8 2K 24.6 / 24.4 at 1024, B8 4K 32.5 / 35.0 at 2048). The split count is the plan's for v10: one wave,
 * >= 2 blocks per CTA. */
constexpr int64_t kV10AutoSlotsPerCta = 1024;
inline bool v10_worth_it(const palu_latent_decode_args *a, int sm_count)
{
    const int64_t wave = sm_count / (a->kv_heads * a->batch);
    const int64_t by_len = (a->length + 2 * kV9BlockSlots - 1) / (2 * kV9BlockSlots);
    int64_t s = wave < by_len ? wave : by_len;
    if (s < 1) s = 1;
    return a->length >= kV10AutoSlotsPerCta * s;
}

/* Launches v10 for a plan that chose it and sets *ran; nothing is launched (*ran false) where TMA cannot be used
 * (CUDA-graph capture) and the caller asked for auto: the caller runs v4 instead, on the same workspace. An explicit
 * request there fails with PALU_ERR_UNSUPPORTED. */
palu_status dispatch_v10(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                         bool *ran);

/* ---- v11 (latent_decode_v11.cu): group size 2, one CTA per group of two KV heads ---- */

/* v11 anchors every 64-slot step on its own, so a CTA's slice is a whole number of steps; the plan keeps >= 4 steps
 * per CTA (the ring's depth: with fewer, the copies of a CTA's slice cannot overlap its rebuilds) */
constexpr int kV11StepSlots = 64;
constexpr int kV11MinSlotsPerCta = 4 * kV11StepSlots;

const char *v11_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                            int *warps, size_t *smem, char *why, size_t why_len);

/* Whether auto takes v11 for a call v11 supports: when the call walks at least kV11AutoGroupSlots (sequence, group,
 * slot) triples, the shortest calls measured. Measured on the H200 with v11's slices in whole steps (run 101, call us
 * v11 / v4): Llama-3-8B B1 2K (8K triples) 18.5 / 19.2, B1 4K (16K) 20.3 / 20.0, B2 2K (16K) 20.5 / 20.9, B1 8K
 * (32K) 23.3 / 25.3, B4 2K (32K) 24.4 / 25.1, B1 16K (64K) 29.3 / 35.3; Llama-2-7B B1 2K (32K) 21.7 / 23.1. Shorter
 * calls were not measured and keep v4. (With 256-slot slices, run 100, v11 lost up to 32K triples: its few CTAs
 * walked 8 steps each.) Since v11's n_rep specialisation (run 114): Llama-3-8B B1 2K 17.3 / 18.8, B1 4K 19.3 /
 * 20.0, Llama-2-7B B1 2K 21.3 / 23.0. */
constexpr int64_t kV11AutoGroupSlots = 8 * 1024;
inline bool v11_worth_it(const palu_latent_decode_args *a, int /* sm_count: v10_worth_it's signature */)
{
    return a->batch * (a->kv_heads / 2) * a->length >= kV11AutoGroupSlots;
}

/* Launches v11 (grid: group, split, sequence) and sets *ran, as dispatch_v10 */
palu_status dispatch_v11(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                         bool *ran);

} // namespace palu_decode

#endif /* PALU_LATENT_DECODE_COMMON_CUH */
