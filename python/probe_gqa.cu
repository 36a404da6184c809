/* Speed-of-light probe of a GQA latent decode with the key rebuild on wgmma and the RoPE split in two (Llama-3-8B
 * shapes: n_rep query heads per KV head, G = 1, D = 128, rk = rv = 64, fp16, consecutive positions). A standalone
 * program, not part of the package: it includes kernels/latent_decode_common.cuh for its device helpers, checks
 * itself against a float64 reference, then times the kernel against the DRAM floor. Design and outcome:
 * docs/design/latent_decode_notes.md, "The GQA probe".
 *
 * Why a new form. v9's absorbed scores (W = Qa . U_tau per query head) cost n_rep x D x rk tensor MACs per slot:
 * at n_rep = 4 more than the H200 does in the time the slot's 256 bytes take to arrive. v4 rebuilds each key once
 * per KV head, but on mma.sync from registers, then rotates every key element with its own angle and dots it with
 * n_rep queries on the CUDA cores: ~580 instructions per 16 slots, bound by shared-memory reads and latency.
 *
 * Here, for the slot at position A + k + 64 tau of a block (A: the block's first position, k < 64 its row in a
 * 64-slot step, tau < S the step):
 *     q_j . R(A + k + 64 tau) U c = (R(A)^T q_j) . R(k) (U_tau c),     U_tau = R(64 tau) U,
 * so one step is (1) K_tau = C . U_tau^T on wgmma (m64n128, K = rk, both operands in shared memory: the latent box
 * as TMA wrote it, 128-byte swizzled, and a precomputed U_tau image): one rebuild per KV head, no per-key angle;
 * (2) each thread rotates its accumulators by R(k) for its own two rows k, angles fixed for the whole kernel (kept
 * in registers as half2); (3) the scores of all n_rep heads as mma.sync S = K . Q_A^T per 16 slots, the packed
 * keys as the A operand straight from the accumulators and Q_A = R(A)^T Q (rotated once per block; n_rep of 8
 * columns) as B; (4) P, transposed per 8 x 8 half in registers (movmatrix), is the B operand of O^T += V^T . P,
 * and O^T's columns are the heads whose softmax state the thread keeps: no shuffle to rescale.
 *
 * Tensor work per slot: 8K MAC on wgmma (the rebuild) + 1.5K on mma.sync (scores and P . V at 2x padding): ~40% of
 * the H200's tensor rate at its 4.3 TB/s floor. CUDA-core work: ~200 instructions per 16 slots and warp.
 *
 * CTA = 8 warps, one per SM: two warpgroups, group cw taking steps cw, cw + 2 of every block of S = 4 steps and
 * loading them itself (TMA boxes of 64 rows x rk into the stages of its parity; one thread refills a stage once its
 * four warps are done with it); each warp rotates the n_rep queries to each block's first position for itself. U_tau images are built by a separate kernel before timing (the
 * library would build them per layer once, or per CTA as v9 does).
 *
 * build: nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -I csrc -I kernels \
 *        -I third_party/dlpack/include python/probe_gqa.cu -o probe_gqa -lcuda
 * run:   ./probe_gqa check [QSCALE] | ./probe_gqa time B HKV T SPLITS ITERS */
#include "../kernels/latent_decode_common.cuh"

#include <algorithm>
#include <cmath>
#include <vector>

extern "C" palu_status palu_fail(palu_status s, const char *, ...) { return s; }
extern "C" const char *palu_dtype_name(palu_dtype) { return "?"; }

#ifndef PROBE_NST
#define PROBE_NST 8
#endif
#ifndef PROBE_LAZY
#define PROBE_LAZY 1 /* 1: a head's max is reduced over the warp only when a score passes the running max by 8 */
#endif
#ifndef PROBE_CHAINS
#define PROBE_CHAINS 1 /* independent accumulator chains of the scores */
#endif

using namespace palu_decode;

namespace probe {
constexpr int D = 128, R = 64, HALF = 64, S = 4, NST = PROBE_NST, ROWS = 64, NREP = 4, NCH = PROBE_CHAINS;
/* two warpgroups and nothing else: ptxas sizes registers per warpgroup for a wgmma kernel, so a ninth (copy) warp
 * would cut every thread to 168 registers; each warpgroup issues the TMA copies of its own stages instead */
constexpr int CWARPS = 8, THREADS = 32 * CWARPS;
constexpr size_t TILE = (size_t)ROWS * R * 2;                     /* one 64-row latent box, 8 KB, SW128 */
constexpr size_t STAGE = 2 * TILE;                                /* K and V */
constexpr size_t UT = (size_t)D * R * 2;                          /* one U_tau image, 16 KB */
constexpr int QROW = 2 * D + 16;                                  /* Q_A row (fp16), padded: conflict-free reads */
constexpr size_t OFF_U = NST * STAGE, OFF_QA = OFF_U + S * UT, OFF_BAR = OFF_QA + CWARPS * NREP * QROW;
constexpr size_t SMEM = OFF_BAR + 8 * (2 * NST) + 1024;
static_assert(SMEM <= 232448, "shared memory per CTA");
static_assert(CWARPS * NREP * (2 + R) * 4 <= NST * STAGE, "records fit in the stages");
static_assert(NST % 2 == 0 && NST >= 6, "each warpgroup owns the stages of its parity, two held and the rest loading");
constexpr uint32_t USBO = (R / 8) * 128; /* U_tau image: N = D rows, K = rk; 8-row groups 1 KB apart */

/* byte offset of U_tau[d][j] in its image (K-major, no swizzle, core matrices of 8 rows x 16 bytes) */
__host__ __device__ inline uint32_t ucm(int d, int j)
{
    return (uint32_t)((d >> 3) * USBO + (j >> 3) * 128 + (d & 7) * 16 + (j & 7) * 2);
}

/* the constant high word of a wgmma descriptor: SBO, and the layout type (1: 128-byte swizzle) */
__device__ __forceinline__ uint64_t desc_hi(uint32_t sbo, uint32_t layout) { return ((uint64_t)((sbo >> 4) | (layout << 30))) << 32; }

__device__ __forceinline__ void mbar_arrive(uint64_t *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(dev::smem_u32(bar)) : "memory");
}

__device__ __forceinline__ uint32_t h2u(__half2 h)
{
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

/* grid (split, KV head, sequence); p.ws gets one (m, l, z) record per query head and split (log2 domain) */
__global__ void __launch_bounds__(THREADS, 1) gqa_kernel(const DecodeParams p, const char *ut,
                                                         const __grid_constant__ V4Maps maps)
{
#ifdef PALU_V5_WGMMA
    char *smem = dev::dyn_smem();
    smem += (1024 - (dev::smem_u32(smem) & 1023)) & 1023;
    const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, T_len = p.T;
    const int g = lane >> 2, c = lane & 3, cw = warp >> 2, wl = warp & 3;
    const int chunk = ((T_len + p.splits - 1) / p.splits + ROWS * S - 1) / (ROWS * S) * (ROWS * S);
    const int t0 = split * chunk, t1 = min(T_len, t0 + chunk);
    const int nblocks = t1 > t0 ? (t1 - t0 + ROWS * S - 1) / (ROWS * S) : 0, nsteps = nblocks * S;
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + OFF_BAR), *empty = full + NST;
    if (tid == 0) {
        for (int s = 0; s < NST; s++) dev::mbar_init(full + s, 1), dev::mbar_init(empty + s, 4);
        dev::mbar_init_fence();
    }
    __syncthreads();
    const bool issuer = wl == 0 && lane == 0; /* copies this warpgroup's stages (parity cw) */
    auto load = [&](int st) {
        char *kt = smem + (st % NST) * STAGE;
        uint64_t *bar = full + st % NST;
        dev::mbar_expect(bar, (uint32_t)(2 * TILE));
        dev::tma_load_3d(kt, &maps.k, p.groups.kcol[h], t0 + ROWS * st, b, bar);
        dev::tma_load_3d(kt + TILE, &maps.v, p.groups.vcol[h], t0 + ROWS * st, b, bar);
    };
    if (issuer)
        for (int st = cw; st < min(nsteps, NST); st += 2) load(st);

    /* ---- prologue: the U_tau images into shared memory ---- */
    {
        const char *src = ut + (size_t)h * S * UT;
        for (int e = tid; e < (int)(S * UT / 16); e += THREADS) dev::cp_async16(smem + OFF_U + 16 * e, src + 16 * e, true);
        dev::cp_async_commit();
        dev::cp_async_wait<0>();
        dev::fence_proxy_async();
        __syncthreads();
    }
    /* R(k) for this thread's rows k = 16 wl + g and + 8, frequencies f = 8 i + 2 c + e (i < 8, e < 2): packed half2
     * (e = 0, 1) cos and sin per row and i */
    __half2 kc[2][8], ks[2][8];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int k = 16 * wl + g + 8 * rr;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float c0, s0, c1, s1;
            rope_cos_sin(k, turn_split(p.inv_freq[8 * i + 2 * c]), &c0, &s0);
            rope_cos_sin(k, turn_split(p.inv_freq[8 * i + 2 * c + 1]), &c1, &s1);
            kc[rr][i] = __floats2half2_rn(c0, c1);
            ks[rr][i] = __floats2half2_rn(s0, s1);
        }
    }
    /* Q_A = R(A)^T q per block, each warp for itself (no barrier): lane takes frequencies lane and lane + 32 of
     * every head into its warp's buffer, then reads its fragments back */
    const __half *qg = static_cast<const __half *>(p.q) + ((size_t)b * p.H + (size_t)h * NREP) * D;
    float qlo[NREP][2], qhi[NREP][2];
    float2 qtr[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        qtr[e] = turn_split(p.inv_freq[lane + 32 * e]);
#pragma unroll
        for (int j = 0; j < NREP; j++)
            qlo[j][e] = __half2float(qg[j * D + lane + 32 * e]), qhi[j][e] = __half2float(qg[j * D + lane + 32 * e + HALF]);
    }
    char *buf = smem + OFF_QA + (size_t)warp * NREP * QROW;

    const uint32_t u_lo = (dev::smem_u32(smem + OFF_U) >> 4) | ((128u >> 4) << 16);
    const uint32_t k_lo = (dev::smem_u32(smem) >> 4) | (1u << 16);
    const uint64_t u_hi = desc_hi(USBO, 0), k_hi = desc_hi(1024, 1);
    float acc[64];
    auto issue = [&](int s, int tau) {
        dev::wgmma_fence();
        const uint32_t ad = k_lo + (uint32_t)(s * (STAGE >> 4)), ud = u_lo + (uint32_t)(tau * (UT >> 4));
#pragma unroll
        for (int kk = 0; kk < R / 16; kk++)
            dev::wgmma_k16<__half, 128>(acc, k_hi | (ad + 2 * kk), u_hi | (ud + 16 * kk), kk > 0);
        dev::wgmma_commit();
    };
    auto wait_acc = [&]() {
        dev::wgmma_wait0();
#pragma unroll
        for (int e = 0; e < 64; e++) dev::fence_reg(acc[e]);
    };
    float o[4][4] = {};
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}; /* heads 2 c, 2 c + 1 */
    uint32_t qa[8][2] = {};
    const int lrow = 16 * wl + (lane & 7) + ((lane >> 4) << 3), lsel = (lane >> 3) & 1;
    const int nown = nblocks * 2; /* this warpgroup's steps cw, cw + 2, cw + 4, ... */
    int s = cw, ph = 0;           /* stage and phase of this warpgroup's current step */
    auto advance = [](int &s_, int &ph_) { s_ += 2; if (s_ >= NST) s_ -= NST, ph_ ^= 1; };
    if (nown > 0) {
        dev::mbar_wait(full + s, ph);
        issue(s, cw);
    }
    wait_acc();
    for (int x = 0; x < nown; x++) {
        const int st = cw + 2 * x;
        const char *kt = smem + s * STAGE, *vt = kt + TILE;
        if ((x & 1) == 0) { /* a new block: its rotated queries (positions are the slot indices in this probe) */
            const int A = t0 + st / S * ROWS * S;
            __syncwarp(); /* this warp's reads of the previous block's fragments are done */
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float cs, sn;
                rope_cos_sin(A, qtr[e], &cs, &sn);
#pragma unroll
                for (int j = 0; j < NREP; j++) {
                    __half *row = reinterpret_cast<__half *>(buf + j * QROW);
                    row[lane + 32 * e] = __float2half_rn(qlo[j][e] * cs + qhi[j][e] * sn);
                    row[lane + 32 * e + HALF] = __float2half_rn(qhi[j][e] * cs - qlo[j][e] * sn);
                }
            }
            __syncwarp();
            if (g < NREP)
#pragma unroll
                for (int kk = 0; kk < 8; kk++)
#pragma unroll
                    for (int hf = 0; hf < 2; hf++)
                        qa[kk][hf] = *reinterpret_cast<const uint32_t *>(buf + g * QROW + (16 * kk + 2 * c + 8 * hf) * 2);
        }
        /* pack and rotate by R(k): chunk i (dims 8 i + 2 c, +1) with its partner chunk i + 8 */
        uint32_t pk[2][16];
#pragma unroll
        for (int rr = 0; rr < 2; rr++)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const __half2 lo = __floats2half2_rn(acc[4 * i + 2 * rr], acc[4 * i + 2 * rr + 1]);
                const __half2 hi = __floats2half2_rn(acc[4 * (i + 8) + 2 * rr], acc[4 * (i + 8) + 2 * rr + 1]);
                pk[rr][i] = h2u(__hfma2(__hneg2(hi), ks[rr][i], __hmul2(lo, kc[rr][i])));
                pk[rr][i + 8] = h2u(__hfma2(lo, ks[rr][i], __hmul2(hi, kc[rr][i])));
            }
        /* S (16 slots x 8 heads, 4 real) = K . Q_A^T: the packed keys as the A operand, Q_A^T as B; NCH chains */
        float sc[NCH][4] = {};
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            const uint32_t a[4] = {pk[0][2 * kk], pk[1][2 * kk], pk[0][2 * kk + 1], pk[1][2 * kk + 1]};
            dev::mma16816<__half>(sc[kk % NCH], a, qa[kk][0], qa[kk][1]);
        }
#pragma unroll
        for (int ch = 1; ch < NCH; ch++)
#pragma unroll
            for (int e = 0; e < 4; e++) sc[0][e] += sc[ch][e];
        int sn = s, phn = ph;
        advance(sn, phn);
        if (x + 1 < nown) { /* the next step's rebuild runs under this step's softmax and P . V */
            dev::mbar_wait(full + sn, phn);
            issue(sn, (st + 2) % S);
        }
        if (issuer && x > 0 && st - 2 + NST < nsteps) { /* refill the previous step's stage once its 4 warps are done */
            const int sp = s == cw ? s + NST - 2 : s - 2, php = s == cw ? ph ^ 1 : ph;
            dev::mbar_wait(empty + sp, php);
            load(st - 2 + NST);
        }
        /* this thread's scores: slots g, g + 8 of this warp's 16 (e >> 1) for heads 2 c, 2 c + 1 (e & 1) */
        const int sl = t0 + ROWS * st + 16 * wl + g;
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) v[e] = sl + 8 * (e >> 1) < t1 ? sc[0][e] * p.score_scale : -INFINITY;
        float pr[4];
        bool reduce = true;
        if (PROBE_LAZY) { /* scores within 2^8 of the running max: P up to 256, still exact in fp16's range */
            bool big = false;
#pragma unroll
            for (int e = 0; e < 4; e++) big = big || v[e] > m_run[e & 1] + 8.0f;
            reduce = __any_sync(0xffffffffu, big);
        }
#pragma unroll
        for (int e = 0; e < 2; e++) { /* head 2 c + e: its max over the 16 slots (lanes of equal c), then rescale */
            if (reduce) {
                float mx = fmaxf(v[e], v[e + 2]);
                mx = fmaxf(mx, dev::shfl_xor(mx, 4));
                mx = fmaxf(mx, dev::shfl_xor(mx, 8));
                mx = fmaxf(mx, dev::shfl_xor(mx, 16));
                const float m_new = fmaxf(m_run[e], mx);
                if (m_new > m_run[e]) {
                    const float corr = dev::ex2(m_run[e] - m_new);
                    l_run[e] *= corr, m_run[e] = m_new;
#pragma unroll
                    for (int mb = 0; mb < 4; mb++) o[mb][e] *= corr, o[mb][e + 2] *= corr;
                }
            }
            const float mu = m_run[e] == -INFINITY ? 0.0f : m_run[e];
            pr[e] = dev::ex2(v[e] - mu), pr[e + 2] = dev::ex2(v[e + 2] - mu);
            l_run[e] += pr[e] + pr[e + 2];
        }
        /* P (slots x heads) to the B operand of O^T += V^T P: each 8 x 8 half transposed in registers */
        const uint32_t b0 = dev::movm_trans(Num<__half>::pack(pr[0], pr[1])), b1 = dev::movm_trans(Num<__half>::pack(pr[2], pr[3]));
#pragma unroll
        for (int mb = 0; mb < 4; mb++) {
            uint32_t a[4];
            const int ch = 2 * mb + lsel;
            dev::ldsm_x4_trans(a, vt + lrow * 128 + ((ch ^ (lrow & 7)) << 4));
            dev::mma16816<__half>(o[mb], a, b0, b1);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(empty + s);
        s = sn, ph = phn;
        wait_acc(); /* the next step's rebuild (a no-op after the last step) */
    }

    /* records: warp w, head j at recs + (w NREP + j)(2 + R) */
    __syncthreads();
    float *recs = reinterpret_cast<float *>(smem);
    constexpr int REC = 2 + R;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        l_run[e] += dev::shfl_xor(l_run[e], 4);
        l_run[e] += dev::shfl_xor(l_run[e], 8);
        l_run[e] += dev::shfl_xor(l_run[e], 16);
        if (g == 0 && c < NREP / 2) recs[(warp * NREP + 2 * c + e) * REC] = m_run[e], recs[(warp * NREP + 2 * c + e) * REC + 1] = l_run[e];
    }
    if (c < NREP / 2)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float *rec = recs + (warp * NREP + 2 * c + (e & 1)) * REC + 2;
#pragma unroll
            for (int mb = 0; mb < 4; mb++) rec[16 * mb + g + 8 * (e >> 1)] = o[mb][e];
        }
    __syncthreads();
    combine_cta_partials<R>(p, b, h * NREP, split, CWARPS, recs, false);
#endif
}

/* U_tau = R(64 tau) U per KV head, in the wgmma B image (ucm); U is [Hkv][D][R] */
__global__ void build_ut(const __half *uk, const float *inv_freq, char *ut)
{
    const int h = blockIdx.x, tau = blockIdx.y;
    for (int e = threadIdx.x; e < D * R; e += blockDim.x) {
        const int d = e / R, j = e % R, f = d % HALF;
        const double a = 64.0 * tau * (double)inv_freq[f], cs = cos(a), sn = sin(a);
        const double u = __half2float(uk[((size_t)h * D + d) * R + j]);
        const double w = __half2float(uk[((size_t)h * D + (d < HALF ? d + HALF : d - HALF)) * R + j]);
        const double r = d < HALF ? u * cs - w * sn : u * cs + w * sn;
        *reinterpret_cast<__half *>(ut + ((size_t)h * S + tau) * UT + ucm(d, j)) = __float2half_rn((float)r);
    }
}

/* independent reference scores: one thread per (b, query head, t): k = U c in fp32, RoPE in double, q . k */
__global__ void ref_scores(const __half *q, const __half *kl, const __half *uk, const float *inv_freq, double *sc,
                           int B, int H, int Hkv, int T)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)B * H * T) return;
    const int t = (int)(e % T), hq = (int)((e / T) % H), b = (int)(e / ((long long)T * H)), h = hq / (H / Hkv);
    const __half *cl = kl + ((size_t)b * T + t) * Hkv * R + h * R;
    float k[D];
    for (int d = 0; d < D; d++) {
        float a = 0.0f;
        for (int r = 0; r < R; r++) a += __half2float(uk[((size_t)h * D + d) * R + r]) * __half2float(cl[r]);
        k[d] = a;
    }
    double s = 0.0;
    for (int i = 0; i < HALF; i++) {
        double sn, cs;
        sincos((double)t * inv_freq[i], &sn, &cs);
        const double lo = k[i] * cs - k[i + HALF] * sn, hi = k[i + HALF] * cs + k[i] * sn;
        s += __half2float(q[((size_t)b * H + hq) * D + i]) * lo + __half2float(q[((size_t)b * H + hq) * D + i + HALF]) * hi;
    }
    sc[e] = s;
}

__global__ void fill_rand(__half *x, size_t n, uint32_t seed, float scale)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t v = (uint32_t)i * 2654435761u ^ seed;
        v ^= v >> 15, v *= 2246822519u, v ^= v >> 13, v *= 3266489917u, v ^= v >> 16;
        x[i] = __float2half_rn(scale * ((float)(v & 0xFFFFFF) / 8388608.0f - 1.0f));
    }
}
} // namespace probe

#define CK(x)                                                                                                          \
    do {                                                                                                               \
        cudaError_t e_ = (x);                                                                                          \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));                                 \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

int main(int argc, char **argv)
{
    using namespace probe;
    const bool check = argc > 1 && !strcmp(argv[1], "check");
    if (!check && argc < 7) {
        fprintf(stderr, "usage: %s check | %s time B HKV T SPLITS ITERS\n", argv[0], argv[0]);
        return 1;
    }
    const int B = check ? 2 : atoi(argv[2]), Hkv = check ? 2 : atoi(argv[3]), T = check ? 5001 : atoi(argv[4]);
    const int splits = check ? 3 : atoi(argv[5]), iters = check ? 1 : atoi(argv[6]), H = Hkv * NREP;
    const size_t nq = (size_t)B * H * D, nl = (size_t)B * T * Hkv * R, nu = (size_t)Hkv * D * R;
    const int W = 2 + R;
    __half *q, *kl, *vl, *uk;
    char *ut;
    float *inv, *ws;
    CK(cudaMalloc(&q, nq * 2)); CK(cudaMalloc(&kl, nl * 2)); CK(cudaMalloc(&vl, nl * 2)); CK(cudaMalloc(&uk, nu * 2));
    CK(cudaMalloc(&ut, (size_t)Hkv * S * UT)); CK(cudaMalloc(&inv, HALF * 4));
    CK(cudaMalloc(&ws, (size_t)B * H * splits * W * 4));
    const float qscale = check && argc > 2 ? (float)atof(argv[2]) : 1.0f; /* larger: sharper softmax */
    fill_rand<<<512, 256>>>(q, nq, 1u, qscale); fill_rand<<<4096, 256>>>(kl, nl, 2u, 1.0f);
    fill_rand<<<4096, 256>>>(vl, nl, 3u, 1.0f); fill_rand<<<512, 256>>>(uk, nu, 4u, 0.35f);
    std::vector<float> hinv(HALF);
    for (int i = 0; i < HALF; i++) hinv[i] = (float)pow(500000.0, -2.0 * i / D);
    CK(cudaMemcpy(inv, hinv.data(), HALF * 4, cudaMemcpyHostToDevice));
    build_ut<<<dim3(Hkv, S), 256>>>(uk, inv, ut);
    CK(cudaGetLastError());
    V4Maps maps;
    const cuuint64_t dims[3] = {(cuuint64_t)Hkv * R, (cuuint64_t)T, (cuuint64_t)B};
    const cuuint64_t strides[2] = {(cuuint64_t)Hkv * R * 2, (cuuint64_t)T * Hkv * R * 2};
    const cuuint32_t box[3] = {R, ROWS, 1};
    if (!encode_map(&maps.k, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3, kl, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B) ||
        !encode_map(&maps.v, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3, vl, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B)) {
        fprintf(stderr, "tensor map encoding failed\n");
        return 1;
    }
    DecodeParams p;
    memset(&p, 0, sizeof p);
    p.q = q, p.k_latent = kl, p.v_latent = vl, p.inv_freq = inv, p.ws = ws;
    p.B = B, p.H = H, p.Hkv = Hkv, p.D = D, p.G = 1, p.n_rep = NREP, p.T = T, p.splits = splits, p.partials = splits;
    p.ws_stride = W, p.max_rk = R, p.max_rv = R;
    p.score_scale = (float)(1.4426950408889634 / sqrt((double)D));
    for (int g = 0; g < Hkv; g++) p.groups.rk[g] = R, p.groups.rv[g] = R, p.groups.kcol[g] = g * R, p.groups.vcol[g] = g * R;
    CK(cudaFuncSetAttribute(gqa_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)SMEM));
    const dim3 grid(splits, Hkv, B);
    gqa_kernel<<<grid, THREADS, SMEM>>>(p, ut, maps);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    if (check) {
        double *sc;
        CK(cudaMalloc(&sc, (size_t)B * H * T * 8));
        ref_scores<<<(B * H * T + 127) / 128, 128>>>(q, kl, uk, inv, sc, B, H, Hkv, T);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        std::vector<double> hs((size_t)B * H * T);
        std::vector<__half> hv(nl);
        std::vector<float> hp((size_t)B * H * splits * W);
        CK(cudaMemcpy(hs.data(), sc, hs.size() * 8, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hv.data(), vl, nl * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hp.data(), ws, hp.size() * 4, cudaMemcpyDeviceToHost));
        double worst = 0.0;
        for (int b = 0; b < B; b++)
            for (int hq = 0; hq < H; hq++) {
                const int h = hq / NREP;
                const double sc_ = 1.0 / sqrt((double)D);
                double mx = -1e300, l = 0.0, z[R] = {}, zz[R] = {}, L = 0.0, M = -1e300;
                for (int t = 0; t < T; t++) mx = fmax(mx, hs[((size_t)b * H + hq) * T + t] * sc_);
                for (int t = 0; t < T; t++) {
                    const double w = exp(hs[((size_t)b * H + hq) * T + t] * sc_ - mx);
                    l += w;
                    for (int r = 0; r < R; r++) z[r] += w * __half2float(hv[((size_t)b * T + t) * Hkv * R + h * R + r]);
                }
                for (int s = 0; s < splits; s++) M = fmax(M, (double)hp[(((size_t)b * H + hq) * splits + s) * W]);
                for (int s = 0; s < splits; s++) {
                    const float *r = &hp[(((size_t)b * H + hq) * splits + s) * W];
                    const double f = r[0] == -INFINITY ? 0.0 : exp2((double)r[0] - M);
                    L += f * r[1];
                    for (int x = 0; x < R; x++) zz[x] += f * r[2 + x];
                }
                double num = 0.0, den = 0.0;
                for (int r = 0; r < R; r++) num += pow(zz[r] / L - z[r] / l, 2), den += pow(z[r] / l, 2);
                const double err = sqrt(num / den);
                worst = std::isnan(err) ? INFINITY : fmax(worst, err);
            }
        printf("check B=%d Hkv=%d n_rep=%d T=%d splits=%d qscale=%g: worst relative L2 error %.3e\n", B, Hkv, NREP, T,
               splits, qscale, worst);
        return worst < 2e-3 ? 0 : 2;
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int it = 0; it < iters + 3; it++) {
        CK(cudaEventRecord(e0));
        gqa_kernel<<<grid, THREADS, SMEM>>>(p, ut, maps);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float t;
        CK(cudaEventElapsedTime(&t, e0, e1));
        if (it >= 3) ms.push_back(t);
    }
    CK(cudaGetLastError());
    std::sort(ms.begin(), ms.end());
    const double us = ms[ms.size() / 2] * 1e3, bytes = 2.0 * nl * 2, floor_us = bytes / 4.3e12 * 1e6;
    printf("time B=%d Hkv=%d n_rep=%d T=%d splits=%d NST=%d: kernel %.1f us, floor %.1f us (%.0f%%), %.2f TB/s\n", B,
           Hkv, NREP, T, splits, NST, us, floor_us, 100.0 * floor_us / us, bytes / us * 1e-6);
    return 0;
}
