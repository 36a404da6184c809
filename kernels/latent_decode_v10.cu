/* latent_decode_v10.cu -- decode kernel v10 (GQA: 2-8 query heads per KV head, group size 1, head_dim 128, ranks
 * 64, sm_90a) and its launcher. The design is in the comment above the kernel, its history in
 * docs/design/latent_decode_notes.md ("The GQA probe", "v10 in the library"); what it shares with the other decode
 * kernels is in latent_decode_common.cuh, and latent_decode.cu plans and dispatches it.
 *
 * Shape legend: B batch, T slots, H query heads, Hkv KV heads, n_rep = H / Hkv, D head_dim, R = rk = rv rank, S
 * steps of 64 slots per block, NST stages of latents in flight.
 */
#include "latent_decode_common.cuh"

using namespace palu_decode;

namespace {

/* ---- v10: the key rebuild on wgmma with RoPE split between the query and the key (GQA, G = 1, D = 128, rk = rv
 * = 64, sm_90a) --------------------------------------------------------------------------------------------------
 *
 * For the slot in row k (< 64) of step tau (< kV10S) of a block whose first slot sits at position A, at position
 * P = A + 64 tau + k when positions are consecutive,
 *     q_j . R(P) U c = (R(A)^T q_j) . R(P - A - 64 tau) (U_tau c),      U_tau = R(64 tau) U,
 * so a 64-slot step is
 *   (1) K_tau = C . U_tau^T on wgmma (m64n128, K = rk): the latent box as TMA wrote it (128-byte swizzle) is the A
 *       operand, a U_tau image built in the prologue the B operand. One rebuild per KV head, shared by its n_rep
 *       query heads (v9's absorbed form multiplies per query head: n_rep times the tensor work);
 *   (2) each thread rotates its accumulator rows by R(k), angles fixed for the kernel (registers), or, in a step
 *       whose positions are not consecutive from the block's anchor, by R(P - A - 64 tau) of each slot (cold path);
 *   (3) S = K . Q_A^T on mma.sync per 16 slots: the packed keys as the A operand straight from the accumulators,
 *       Q_A = R(A)^T Q (rotated once per block by each warp for itself) as B, n_rep of its 8 columns real; both in
 *       fp16 whatever the dtype (computed in fp32 here; bf16 operands missed bf16's tolerance, run 72); four
 *       independent HMMA chains (kV10ScoreChains), since the step's next rebuild cannot issue before they drain;
 *   (4) the online softmax per head over the warp's 16 slots, its max reduced only when a score passes the running
 *       max by 8 (P then stays <= 2^8, exact enough in fp16); P, transposed per 8 x 8 half in registers
 *       (movmatrix), is the B operand of O^T += V^T . P, whose columns are the heads whose state the thread keeps.
 * Tensor work per slot: 8K MAC on wgmma and ~1.5K on mma.sync, ~40% of the H200's tensor rate at the 4.3 TB/s floor.
 *
 * Keys in the interpolative basis (p.k_pairs, compress_kv(key_basis="interpolative"); notes "Twentieth session"):
 * half the head dimensions, 32 whole RoPE pairs per KV head, ARE the latent's 64 columns, so (1) is m64n64 over the
 * other 32 pairs only and the stored half is read from the K tile by ldmatrix into (3)'s A fragments, rotated by
 * the same R(k). The kernel works in permuted dimensions [rebuilt lower | stored lower | rebuilt upper | stored
 * upper] (32 each; the query and inv_freq permuted in the prologue, partners still 64 apart), and since the stored
 * half has no U_tau, its Q_A rows are rotated to A + 64 cw and its keys by R(k) in the warpgroup's first step of a
 * block and by R(128 + k) in its second (a second table of the stored half's angles: run 168's second set of query
 * rows for that step cost ~130 instructions per block and made the step 7.5% slower than the plain basis).
 *
 * CTA = 8 warps, one per SM: two warpgroups, group cw taking steps cw, cw + 2 of every block of kV10S = 4 steps and
 * issuing the TMA copies of its own stages (one thread refills a stage once the group's four warps have released
 * it). No copy warp: ptxas sizes the registers of a wgmma kernel per warpgroup, so a ninth warp would cut every
 * thread to 168 registers (spills); setmaxnreg could not move enough of them (notes "The GQA probe").
 * Measured as a probe first (python/probe_gqa.cu): Llama-3-8B shapes, batch 8, 90-92% of the DRAM floor from 64K
 * slots (v4: ~72%). This library kernel: 279 us at B8 64K (run 88), against the probe's 274 (whose U_tau images come
 * from a kernel of their own) and v4's 341 (notes "v10 in the library", "v10 at the probe's speed" and "What bounds a
 * v10 step": its loads alone take 240 us there, its arithmetic alone 255); its prologue waits one DRAM round trip,
 * ahead of the first stages' copies (run 97: batch-1 intercept 10.2 -> 7.0 us). Auto takes it where each
 * CTA walks >= 1024 slots (v10_worth_it). Latents by TMA only: under CUDA-graph
 * capture (no tensor map may hold the call's length) auto runs v4 and an explicit request fails with
 * PALU_ERR_UNSUPPORTED. */
constexpr int kV10D = 128, kV10R = 64;
constexpr int kV10S = 4;          /* 64-slot steps per block (one anchor, one Q_A); U_tau images for tau < kV10S */
constexpr int kV10Rows = 64;      /* slots per step: the wgmma M */
constexpr int kV10Warps = 8;      /* two warpgroups */
constexpr int kV10MaxRep = 8;     /* query heads per KV head: the 8 columns of the score and P . V products */
constexpr int kV10NST = 8;        /* stages: per warpgroup one read, one rebuilt, two loading */
constexpr size_t kV10Tile = (size_t)kV10Rows * kV10R * 2; /* one 64-row box, 8 KB */
constexpr size_t kV10Stage = 2 * kV10Tile;                /* K and V */
constexpr size_t kV10UT = (size_t)kV10D * kV10R * 2;      /* one U_tau image, 16 KB */
constexpr int kV10QRow = 2 * kV10D + 16;                  /* a Q_A row (dtype), padded: conflict-free fragment reads */
constexpr size_t kV10OffU = kV10NST * kV10Stage;
constexpr size_t kV10OffQA = kV10OffU + kV10S * kV10UT;                          /* per warp: n_rep rows */
constexpr size_t kV10OffQ = kV10OffQA + (size_t)kV10Warps * kV10MaxRep * kV10QRow; /* the queries, fp32 */
constexpr size_t kV10OffPos = kV10OffQ + (size_t)kV10MaxRep * kV10D * 4; /* per warp: a ring of 3 blocks' positions */
constexpr int kV10PosRing = 3;
constexpr size_t kV10OffFreq = kV10OffPos + (size_t)kV10Warps * kV10PosRing * 32 * 4; /* inv_freq, D / 2 floats */
constexpr size_t kV10OffQraw = kV10OffFreq + (size_t)kV10D / 2 * 4; /* the queries as loaded (prologue only) */
constexpr size_t kV10OffBar = kV10OffQraw + (size_t)kV10MaxRep * kV10D * 2;
constexpr size_t kV10Smem = kV10OffBar + 2 * kV10NST * 8 + 1024; /* + the base's 1024-byte alignment */
static_assert(kV10Smem <= 227 * 1024, "one CTA per SM");
static_assert(kV10Warps * kV10MaxRep * (2 + kV10R) * 4 <= kV10OffU, "the records fit in the stages");
static_assert(kV10NST % 2 == 0, "each warpgroup owns the stages of its parity");
static_assert(kV10Rows * kV10S == kV9BlockSlots, "the plan's block size (latent_decode_common.cuh)");
/* The interpolative key basis (IB, latent_decode.cuh's k_pairs; notes "Twentieth session"): half the head dimensions
 * come from the latent itself, so a U_tau image has only the 64 rebuilt rows (8 KB; the images' area also holds the
 * prologue's pair list and raw inv_freq). */
constexpr int kV10IbRows = kV10D / 2;                          /* rebuilt dimensions: the wgmma N */
constexpr size_t kV10IbUT = (size_t)kV10IbRows * kV10R * 2;    /* one rebuilt-rows U_tau image, 8 KB */
constexpr size_t kV10IbOffPairs = kV10OffU + kV10S * kV10IbUT; /* D / 2 int32 */
constexpr size_t kV10IbOffFreqRaw = kV10IbOffPairs + (size_t)kV10D / 2 * 4; /* inv_freq as loaded, D / 2 floats */
static_assert(kV10IbOffFreqRaw + kV10D / 2 * 4 <= kV10OffQA, "the IB areas fit in the U images' area");
constexpr int kV10Tasks = kV10D * (kV10R / 8) / (32 * kV10Warps); /* U_tau core-matrix rows per thread */
static_assert(kV10Tasks * 32 * kV10Warps == kV10D * (kV10R / 8), "the image build's tasks split evenly");
static_assert(kV10MaxRep * kV10D <= kV10Tasks * 32 * kV10Warps, "one query value per task slot at most");
static_assert((size_t)kV10D * kV10R * 2 <= (size_t)kV10Warps * kV10MaxRep * kV10QRow, "U's staging fits in Q_A's area");
static_assert(kV10MaxRep * kV10D * 2 / 16 + 2 * (kV10D / 2 * 4 / 16) <= 32 * kV10Warps, "one prologue chunk per thread");

/* V10X_F16ACC: fp16 keys in the interpolative basis rebuilt with fp16 accumulators (on since run 179: v10 ib -0.9 to
 * -2.3%, v11 ib -1.5 to -2.3% kernel time at batch 8; tests, long-prompt generate tests and memcheck pass); 0 takes
 * the fp32 accumulators back */
#ifndef V10X_F16ACC
#define V10X_F16ACC 1
#endif
#ifdef PALU_V5_WGMMA /* the sm_90a build of the kernel only */
constexpr int kV10ScoreChains = 4; /* independent HMMA chains of the score product (runs 86-88: 1 -> 2 -> 4 chains,
                                     * B8 64K 296 -> 287 -> 279 us) */
constexpr uint32_t kV10USbo = (kV10R / 8) * 128; /* U_tau image: N = D rows, K = rk; 8-row groups 1 KB apart */
/* byte offset of U_tau[d][j] in its image (K-major, no swizzle, core matrices of 8 rows x 16 bytes) */
__device__ __forceinline__ uint32_t v10_ucm(int d, int j)
{
    return (uint32_t)((d >> 3) * kV10USbo + (j >> 3) * 128 + (d & 7) * 16 + (j & 7) * 2);
}
#endif

/* NREP: query heads per KV head at compile time (4: Llama-3, Mistral), or 0: p.n_rep at run time. IB: the keys
 * are in the interpolative basis (p.k_pairs; above kV10IbRows): the wgmma rebuilds 64 of the 128 dimensions, the
 * other 64 are the latent itself. */
template <typename T, int NREP, bool IB>
__global__ void __launch_bounds__(kV10Warps * 32, 1) decode_v10_kernel(const DecodeParams p, const __grid_constant__ V4Maps maps)
{
#ifdef PALU_V5_WGMMA
    constexpr int D = kV10D, R = kV10R, HALF = kV10D / 2, S = kV10S, NST = kV10NST, M = kV10Rows;
    char *smem = dev::dyn_smem();
    smem += (1024 - (dev::smem_u32(smem) & 1023)) & 1023; /* stays a shared-space pointer */
    const int h = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, T_len = p.T, n_rep = NREP ? NREP : p.n_rep;
    const int g = lane >> 2, c = lane & 3, cw = warp >> 2, wl = warp & 3;
    const int ps = p.pad_start[b];
    const bool bad_pad = ps < 0 || ps >= T_len;
    const int len = bad_pad ? 0 : T_len - ps;
    const int chunk = ((len + p.splits - 1) / p.splits + M * S - 1) / (M * S) * (M * S);
    const int t0 = ps + split * chunk, t1 = bad_pad ? t0 : min(T_len, t0 + chunk);
    const int nblocks = t1 > t0 ? (t1 - t0 + M * S - 1) / (M * S) : 0, nsteps = nblocks * S;
    const int32_t *pos = p.positions + (size_t)b * p.pbs;
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + kV10OffBar), *empty = full + NST;
    if (tid == 0) {
        for (int s = 0; s < NST; s++) dev::mbar_init(full + s, 1), dev::mbar_init(empty + s, 4);
        dev::mbar_init_fence();
    }
    __syncthreads();
    const bool issuer = wl == 0 && lane == 0; /* copies the stages of this warpgroup's parity */
    auto load = [&](int st) {
        char *kt = smem + (st % NST) * kV10Stage;
        uint64_t *bar = full + st % NST;
        dev::mbar_expect(bar, (uint32_t)(2 * kV10Tile));
        dev::tma_load_3d(kt, &maps.k, p.groups.kcol[h], t0 + M * st, b, bar);
        dev::tma_load_3d(kt + kV10Tile, &maps.v, p.groups.vcol[h], t0 + M * st, b, bar);
    };

    /* Positions, once per block and warp: lane l holds the position of the warp's row 16 wl + (l & 15) in its step
     * cw + 2 (l >> 4) of the block (the thread's own rows g, g + 8 are lanes g, g + 8 and 16 + g, 24 + g). They
     * travel by cp.async into a per-warp ring two blocks ahead; one vote per block says whether every row sits where
     * the anchor predicts. (Run 76: per-step reads, checks and votes, ~50 instructions of ~410 per step, were most
     * of the gap to the probe.) The first two blocks' are requested before anything else: issued after the
     * prologue, they queued behind the first stages' copies (~128 KB per CTA) and the first block waited for them. */
    int *pring = reinterpret_cast<int *>(smem + kV10OffPos) + warp * kV10PosRing * 32;
    const int lane_tau = cw + 2 * (lane >> 4), lane_row = 16 * wl + (lane & 15);
    auto fetch_pos = [&](int n) { /* block n into ring slot n % kV10PosRing (one cp.async group per block) */
        const int slot = t0 + M * (S * n + lane_tau) + lane_row;
        dev::cp_async4(pring + (n % kV10PosRing) * 32 + lane, pos + min(max(slot, 0), T_len - 1), true); /* bad_pad */
        dev::cp_async_commit();
    };
    fetch_pos(0);
    fetch_pos(1);

    /* ---- prologue: U_tau images, the queries in fp32, inv_freq in shared memory, each thread's key rotation R(k).
     * The prologue waits for one DRAM round trip (weights and queries are cold in a decode step): U, the queries and
     * inv_freq all arrive by cp.async in one group (U into the Q_A area, free until the loop, the raw queries into
     * their own 2 KB; plain loads issued before the wait were scheduled after it by ptxas), and R(k)
     * reads inv_freq from shared memory. Run 95's clock stamps: with the reads inside the task loops (four dependent
     * rounds for the images, two for the queries, sixteen global inv_freq reads for R(k)), behind the first stages'
     * copies, the prologue took ~11,500 of a batch-1 16K step's ~28,500 cycles. */
    const float *ftab = reinterpret_cast<const float *>(smem + kV10OffFreq);
    {
        /* U ([D][R], 128-byte rows) staged with its 16-byte chunks XOR-swizzled by d & 7, so that the task reads
         * below (8 lanes, 8 consecutive d, one chunk column) fall on distinct banks; d and its rotate_half partner
         * d +- 64 share the swizzle */
        char *ust = smem + kV10OffQA;
        const char *ukg = reinterpret_cast<const char *>(static_cast<const T *>(p.k_up) + (size_t)D * p.groups.kcol[h]);
#pragma unroll
        for (int i = 0; i < kV10Tasks; i++) {
            const int e = tid + 32 * kV10Warps * i, d = e / (R / 8), jc = e % (R / 8);
            dev::cp_async16(ust + d * (R * 2) + ((jc ^ (d & 7)) << 4), ukg + (size_t)e * 16, true);
        }
        /* the queries (n_rep D values, 16-byte aligned: v10_unsupported) and inv_freq (D / 2 floats, likewise) */
        const T *qg = static_cast<const T *>(p.q) + ((size_t)b * p.H + (size_t)h * n_rep) * D;
        const T *qraw = reinterpret_cast<const T *>(smem + kV10OffQraw);
        constexpr int QC = D * (int)sizeof(T) / 16, FC = HALF * 4 / 16; /* 16-byte chunks per query row, of inv_freq */
        if (tid < n_rep * QC) dev::cp_async16(smem + kV10OffQraw + 16 * tid, reinterpret_cast<const char *>(qg) + 16 * tid, true);
        else if (tid >= 32 * kV10Warps - FC) { /* IB: raw, permuted below */
            const int k = tid - (32 * kV10Warps - FC);
            dev::cp_async16(smem + (IB ? kV10IbOffFreqRaw : kV10OffFreq) + 16 * k,
                            reinterpret_cast<const char *>(p.inv_freq) + 16 * k, true);
        } else if (IB && tid >= 32 * kV10Warps - 2 * FC) { /* the group's pair list, D / 2 int32 like inv_freq */
            const int k = tid - (32 * kV10Warps - 2 * FC);
            dev::cp_async16(smem + kV10IbOffPairs + 16 * k, reinterpret_cast<const char *>(p.k_pairs + (size_t)h * HALF) + 16 * k,
                            true);
        }
        dev::cp_async_commit();
        /* the first stages' TMA copies only now: issued first, their ~128 KB per CTA held U and the queries back
         * behind them in DRAM's queue (run 95: ~4 us of every call's prologue) */
        if (issuer)
            for (int st = cw; st < min(nsteps, NST); st += 2) load(st);
        dev::cp_async_wait<0>();
        __syncthreads();
        /* a task is one core-matrix row: dimension d, ranks j0 .. j0 + 7, in all S images (16-byte stores: four
         * wavefronts per warp, the least 512 bytes take); task e = tid + 256 i, d fastest: each 8 lanes store 128
         * bytes */
        float *qs = reinterpret_cast<float *>(smem + kV10OffQ);
        /* IB: head dimensions permuted to [rebuilt lower 32 | stored lower 32 | rebuilt upper 32 | stored upper 32]
         * (the same permutation of the query and the keys leaves every score unchanged, and RoPE partners stay D / 2
         * apart): permuted dimension x is dimension orig(x) = pairs[x % 64] + (x >= 64 ? 64 : 0) */
        const int *pairs = reinterpret_cast<const int *>(smem + kV10IbOffPairs);
        const float *fraw = reinterpret_cast<const float *>(smem + kV10IbOffFreqRaw);
        constexpr size_t UT = IB ? kV10IbUT : kV10UT;
#pragma unroll
        for (int i = 0; i < kV10Tasks; i++) {
            const int e = tid + 32 * kV10Warps * i;
            if (!IB || i < kV10Tasks / 2) { /* IB: the 64 rebuilt rows only, in the order [lower 32 | upper 32] */
                const int row = IB ? e % kV10IbRows : e % D, j0 = 8 * (e / (IB ? kV10IbRows : D));
                const bool lower = row < (IB ? kV10IbRows / 2 : HALF);
                /* the row's frequency (a pair list is trusted, not checked: masked, a bad one cannot index out of U) */
                const int f = IB ? pairs[row % (kV10IbRows / 2)] & (HALF - 1) : row % HALF;
                const int d = IB ? f + (lower ? 0 : HALF) : row;               /* its dimension of U */
                const int chunk = ((j0 >> 3) ^ (d & 7)) << 4;
                const uint4 uu = *reinterpret_cast<const uint4 *>(ust + d * (R * 2) + chunk);
                const uint4 ww = *reinterpret_cast<const uint4 *>(ust + (lower ? d + HALF : d - HALF) * (R * 2) + chunk);
                const T *u = reinterpret_cast<const T *>(&uu), *w = reinterpret_cast<const T *>(&ww);
                const float fr = IB ? fraw[f] : ftab[f];
#pragma unroll
                for (int tau = 0; tau < S; tau++) {
                    float cs, sn;
                    small_cos_sin(64 * tau, fr, &cs, &sn);
                    if (!lower) sn = -sn; /* lower: u cos - w sin; upper: u cos + w sin */
                    uint32_t packed[4];
#pragma unroll
                    for (int k = 0; k < 8; k += 2)
                        packed[k / 2] = Num<T>::pack(Num<T>::to_f(u[k]) * cs - Num<T>::to_f(w[k]) * sn,
                                                     Num<T>::to_f(u[k + 1]) * cs - Num<T>::to_f(w[k + 1]) * sn);
                    *reinterpret_cast<uint4 *>(smem + kV10OffU + tau * UT + v10_ucm(row, j0)) =
                        make_uint4(packed[0], packed[1], packed[2], packed[3]);
                }
            }
            if (e < n_rep * D) {
                const int x = e % D;
                qs[e] = Num<T>::to_f(qraw[IB ? e - x + (pairs[x % HALF] & (HALF - 1)) + (x >= HALF ? HALF : 0) : e]);
            }
            if (IB && e < HALF) reinterpret_cast<float *>(smem + kV10OffFreq)[e] = fraw[pairs[e] & (HALF - 1)];
        }
        dev::fence_proxy_async();
        __syncthreads(); /* images, queries and inv_freq written; U's staging (the Q_A area) read */
    }
    KeyRot rot;  /* R(k) of this thread's rows k = 16 wl + g and + 8 */
    KeyRot rot2; /* IB: R(128 + k) in the stored half's slots 4-7 (the warpgroup's second step of a block) */
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int k = 16 * wl + g + 8 * rr;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float c0, s0, c1, s1;
            small_cos_sin(k, ftab[8 * i + 2 * c], &c0, &s0);
            small_cos_sin(k, ftab[8 * i + 2 * c + 1], &c1, &s1);
            rot.set(rr, i, c0, c1, s0, s1);
            if (IB && i >= 4) {
                small_cos_sin(2 * M + k, ftab[8 * i + 2 * c], &c0, &s0);
                small_cos_sin(2 * M + k, ftab[8 * i + 2 * c + 1], &c1, &s1);
                rot2.set(rr, i, c0, c1, s0, s1);
            }
        }
    }
    const float *qs = reinterpret_cast<const float *>(smem + kV10OffQ);
    /* with NREP known, this lane's query values (frequencies 2 lane, 2 lane + 1 and their partners) stay in registers */
    float2 qlo[NREP ? NREP : 1], qhi[NREP ? NREP : 1];
#pragma unroll
    for (int j = 0; j < NREP; j++)
        qlo[j] = *reinterpret_cast<const float2 *>(qs + j * D + 2 * lane),
        qhi[j] = *reinterpret_cast<const float2 *>(qs + j * D + HALF + 2 * lane);
    /* the query rotation: lane takes the adjacent frequencies 2 lane, 2 lane + 1 (one fp16 pair per store) */
    const float2 qtr0 = turn_split(ftab[2 * lane]), qtr1 = turn_split(ftab[2 * lane + 1]);
    char *qbuf = smem + kV10OffQA + (size_t)warp * kV10MaxRep * kV10QRow; /* this warp's Q_A rows */

    const uint32_t u_lo = wgmma_desc_lo(smem + kV10OffU, 128);
    const uint32_t k_lo = wgmma_desc_lo(smem, 16);
    const uint64_t u_hi = wgmma_desc_hi(kV10USbo, 0), k_hi = wgmma_desc_hi(1024, 1);
    constexpr int NACC = IB ? kV10IbRows / 2 : D / 2; /* accumulators per thread: the wgmma N / 2 */
    /* fp16 keys in the interpolative basis are rebuilt with fp16 accumulators (kH16): each register is already the
     * fp16 pair the key rotation takes, so the pack converts nothing (bf16 operands accumulate only in fp32) */
    constexpr bool kH16 = IB && V10X_F16ACC && std::is_same_v<T, __half>;
    RebuildAcc<NACC, kH16> acc;
    auto issue = [&](int s, int tau) {
        dev::wgmma_fence();
        const uint32_t ad = k_lo + (uint32_t)(s * (kV10Stage >> 4));
        const uint32_t ud = u_lo + (uint32_t)(tau * ((IB ? kV10IbUT : kV10UT) >> 4));
#pragma unroll
        for (int kk = 0; kk < R / 16; kk++) rebuild_k16<T>(acc, k_hi | (ad + 2 * kk), u_hi | (ud + 16 * kk), kk > 0);
        dev::wgmma_commit();
    };
    auto wait_acc = [&]() {
        dev::wgmma_wait0();
        fence_acc(acc);
    };
    float o[4][4] = {};
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}; /* heads 2 c, 2 c + 1 */
    uint32_t qa[8][2] = {};
    const int lrow = 16 * wl + (lane & 7) + ((lane >> 4) << 3), lsel = (lane >> 3) & 1;
    const int nown = nblocks * 2; /* this warpgroup's steps cw, cw + 2, ... */
    int s = cw, ph = 0;           /* stage and phase of the current step */
    int lane_pos = 0;     /* this block's position of the lane's row (above) */
    bool regular = true;  /* this block's rows of this warp all at A + 64 tau + k */
    int A = 0; /* this block's anchor for this warp: the position its slot 0 would have */
    /* IB: this lane's ldmatrix row of the latent tile (the A fragments of the stored half). Loading them half a step
     * ahead, at the next step's rebuild issue, with the four offsets kept in registers, was slower (run 172: 4.8% more
     * executed instructions, B8 64K kernel 259 -> 269 us) */
    const int arow = 16 * wl + (lane & 7) + (((lane >> 3) & 1) << 3), asel = lane >> 4;
    /* the rotated keys as the score's A fragments: pk[rr][i] = dims 8 i + 2 c, +1 of row g + 8 rr; chunk i with
     * chunk i + 8 (its RoPE partners). IB: chunks 0-3 and 8-11 are rebuilt (accumulator chunks i and i + 4), 4-7
     * and 12-15 the latent's columns 8 (i - 4) + 2 c and + 32, read from the stage's K tile (kt) */
    auto pack = [&](const KeyRot &r, const KeyRot &rs, const char *kt, uint32_t (&pk)[2][16]) { /* rs: stored half */
        constexpr int NB = IB ? 4 : 8; /* rebuilt chunk pairs */
        rotate_rebuilt<NB>(r, acc, pk);
        if constexpr (IB) {
            uint32_t lat[4][4]; /* latent columns 16 kk .. + 15 of rows 16 wl + g, + 8 (the m16n8k16 A layout) */
#pragma unroll
            for (int kk = 0; kk < 4; kk++) dev::ldsm_x4(lat[kk], kt + arow * 128 + (((2 * kk + asel) ^ (arow & 7)) << 4));
            rotate_stored_half<T>(rs, lat, pk);
        }
    };
    if (nown > 0) {
        dev::mbar_wait(full + s, ph);
        issue(s, cw);
    }
    wait_acc();
    for (int x = 0; x < nown; x++) {
        const int st = cw + 2 * x, tau = st % S;
        const char *kt = smem + s * kV10Stage, *vt = kt + kV10Tile;
        if (tau < 2) { /* a new block: its positions, and its queries rotated to the anchor (each warp for itself) */
            const int n = x >> 1;
            dev::cp_async_wait<1>(); /* block n's positions (each lane reads only what it copied itself) */
            lane_pos = pring[(n % kV10PosRing) * 32 + lane];
            fetch_pos(n + 2); /* (past the last block: reads clamped, an empty use keeps the wait count uniform) */
            /* this warp's anchor: its first row's position less its offset in the block (all warps agree on it when
             * the positions are consecutive; otherwise any anchor serves the cold path) */
            A = __shfl_sync(0xffffffffu, lane_pos, 0) - M * cw - 16 * wl;
            const int lane_slot = t0 + M * (S * n + lane_tau) + lane_row;
            regular = __all_sync(0xffffffffu, lane_slot >= t1 || lane_pos == A + M * lane_tau + lane_row);
            /* IB: the stored half (lanes 16-31: permuted frequencies 32-63) has no U_tau to carry R(64 tau): its
             * queries are rotated to A + 64 cw (and its keys in the second step by R(128 + k), rot2) */
            const int aq = IB && lane >= 16 ? A + M * cw : A;
            float c0, s0, c1, s1;
            rope_cos_sin(aq, qtr0, &c0, &s0);
            rope_cos_sin(aq, qtr1, &c1, &s1);
            __syncwarp(); /* this warp's reads of the previous block's rows are done */
            /* fp16 for both dtypes (see KeyRot); n_rep unrolled to its bound under a predicate (a runtime loop
             * with one saturating conversion per value made this section 319 instructions, the probe's 131) */
#pragma unroll
            for (int j = 0; j < (NREP ? NREP : kV10MaxRep); j++) {
                if (NREP || j < n_rep) {
                    const float *qj = qs + j * D + 2 * lane; /* the runtime-n_rep build reads them here */
                    const float2 lo = NREP ? qlo[NREP ? j : 0] : *reinterpret_cast<const float2 *>(qj);
                    const float2 hi = NREP ? qhi[NREP ? j : 0] : *reinterpret_cast<const float2 *>(qj + HALF);
                    uint32_t *row = reinterpret_cast<uint32_t *>(qbuf + j * kV10QRow);
                    row[lane] = dev::half2_satfinite(lo.x * c0 + hi.x * s0, lo.y * c1 + hi.y * s1);
                    row[HALF / 2 + lane] = dev::half2_satfinite(hi.x * c0 - lo.x * s0, hi.y * c1 - lo.y * s1);
                }
            }
            __syncwarp();
            if (g < n_rep)
#pragma unroll
                for (int kk = 0; kk < 8; kk++)
#pragma unroll
                    for (int hf = 0; hf < 2; hf++)
                        qa[kk][hf] = *reinterpret_cast<const uint32_t *>(qbuf + g * kV10QRow + (16 * kk + 2 * c + 8 * hf) * 2);
        }
        /* a block whose positions are not all consecutive from the anchor: each row by its own offset (cold path:
         * left padding inside a block, a jump in the positions) */
        const int sl = t0 + M * st + 16 * wl + g; /* this thread's rows: slots sl, sl + 8 */
        uint32_t pk[2][16];
        /* IB: the stored half's queries sit at A + 64 cw, so in the warpgroup's second step of the block (x odd, tau
         * = cw + 2) its keys turn 128 slots further than the rebuilt half's */
        const bool second = IB && (x & 1);
        if (regular) {
            if (second) /* a warp-uniform branch: two copies of the stored half's rotations, no selects */
                pack(rot, rot2, kt, pk);
            else
                pack(rot, rot, kt, pk);
        } else {
            const int pcur0 = __shfl_sync(0xffffffffu, lane_pos, 16 * (x & 1) + g);
            const int pcur1 = __shfl_sync(0xffffffffu, lane_pos, 16 * (x & 1) + g + 8);
            const int off0 = sl < t1 ? pcur0 - A - M * tau : 16 * wl + g;
            const int off1 = sl + 8 < t1 ? pcur1 - A - M * tau : 16 * wl + g + 8;
            KeyRot xr, xs;
            key_row_rotation(xr, 0, off0, c, ftab);
            key_row_rotation(xr, 1, off1, c, ftab);
            if (second) {
                key_row_rotation(xs, 0, off0 + 2 * M, c, ftab);
                key_row_rotation(xs, 1, off1 + 2 * M, c, ftab);
            }
            pack(xr, second ? xs : xr, kt, pk);
        }
        /* S (16 slots x 8 heads, n_rep real) = K . Q_A^T, fp16 operands for both dtypes, as kV10ScoreChains
         * independent chains of HMMA summed at the end: one chain of 8 dependent HMMA held the step ~300 cycles and
         * the group's next rebuild waited behind it (run 88: four chains, -17 us at B8 64K; scores on wgmma instead,
         * branch v10-wgmma-scores, gained nothing: their group waited behind the other warpgroup's rebuild) */
        float scc[kV10ScoreChains][4] = {};
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            const uint32_t a[4] = {pk[0][2 * kk], pk[1][2 * kk], pk[0][2 * kk + 1], pk[1][2 * kk + 1]};
            dev::mma16816<__half>(scc[kk % kV10ScoreChains], a, qa[kk][0], qa[kk][1]);
        }
        float sc[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            sc[e] = scc[0][e];
#pragma unroll
            for (int ch = 1; ch < kV10ScoreChains; ch++) sc[e] += scc[ch][e];
        }
        /* V^T's fragments now: their shared-memory latency hides under the softmax (run 76: loaded just before
         * P . V, the first of its mma waited on them in 9% of the stall samples) */
        uint32_t va[4][4];
#pragma unroll
        for (int mb = 0; mb < 4; mb++) dev::ldsm_x4_trans(va[mb], vt + lrow * 128 + (((2 * mb + lsel) ^ (lrow & 7)) << 4));
        int sn = s, phn = ph; /* the next step of this warpgroup */
        if ((sn += 2) >= NST) sn -= NST, phn ^= 1;
        if (x + 1 < nown) { /* its rebuild runs under this step's softmax and P . V */
            dev::mbar_wait(full + sn, phn);
            issue(sn, (st + 2) % S);
        }
        if (issuer && x > 0 && st - 2 + NST < nsteps) { /* refill the previous step's stage (its 4 warps are done) */
            const int sp = s == cw ? s + NST - 2 : s - 2, php = s == cw ? ph ^ 1 : ph;
            dev::mbar_wait(empty + sp, php);
            load(st - 2 + NST);
        }
        /* this thread's scores: slots sl, sl + 8 (e >> 1) for heads 2 c, 2 c + 1 (e & 1) */
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) v[e] = sl + 8 * (e >> 1) < t1 ? sc[e] * p.score_scale : -INFINITY;
        /* a head's max is reduced over the warp only when a score passes its running max by 8 (log2 units): P
         * stays <= 2^8, exact enough in the dtype, and the common step needs no shuffle */
        bool big = false;
#pragma unroll
        for (int e = 0; e < 4; e++) big = big || v[e] > m_run[e & 1] + 8.0f;
        const bool reduce = __any_sync(0xffffffffu, big);
        float pr[4];
#pragma unroll
        for (int e = 0; e < 2; e++) { /* head 2 c + e: the lanes of equal c hold its 16 slots */
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
        const uint32_t b0 = dev::movm_trans(Num<T>::pack(pr[0], pr[1])), b1 = dev::movm_trans(Num<T>::pack(pr[2], pr[3]));
#pragma unroll
        for (int mb = 0; mb < 4; mb++) dev::mma16816<T>(o[mb], va[mb], b0, b1);
        __syncwarp();
        if (lane == 0) dev::mbar_arrive(empty + s);
        s = sn, ph = phn;
        wait_acc(); /* the next step's rebuild (nothing in flight after the last step) */
    }
    dev::cp_async_wait<0>(); /* the ring's prefetches past the last step */
    dev::launch_dependents(); /* the merge grid may be launched now: only its launch overlaps this epilogue */

    /* records (over the stages: every copy has been consumed): warp w, head j at recs + (w n_rep + j)(2 + R) */
    __syncthreads();
    float *recs = reinterpret_cast<float *>(smem);
    store_warp_records<R>(recs, warp, n_rep, g, c, m_run, l_run, o);
    __syncthreads();
    combine_cta_partials<R>(p, b, h * n_rep, split, kV10Warps, recs, bad_pad, p.direct);
    if (p.pair) combine_cluster_pair<R>(p, b, h * n_rep, n_rep);
#else
    poison_unsupported_build(p, blockIdx.z, blockIdx.x * p.n_rep, blockIdx.y);
#endif
}

} // namespace

namespace palu_decode __attribute__((visibility("hidden"))) { /* internal to the extension: no exported symbols */

/* ---- v10 launch ---- */

const char *v10_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                            int *warps, size_t *smem, char *why, size_t why_len)
{
    const int64_t n_rep = a->heads / a->kv_heads;
    if (n_rep < 2 || n_rep > kV10MaxRep)
        return snprintf(why, why_len, "n_rep = heads / kv_heads = %lld (v10 takes 2 to %d query heads per KV head)",
                        (long long)n_rep, kV10MaxRep), why;
    if (!aligned16(a->q) || !aligned16(a->inv_freq) || (a->k_pairs && !aligned16(a->k_pairs)))
        return snprintf(why, why_len, "q, inv_freq or k_pairs not 16-byte aligned (v10 copies them in 16-byte "
                                      "pieces: pass tensors that start on a 16-byte boundary, e.g. a .clone())"), why;
    static_assert(kV10D == 128 && kV10R == 64, "g1_d128_r64_unsupported's shape");
    /* latent rows by TMA boxes, k_up rows by 16-byte loads */
    const char *no = g1_d128_r64_unsupported("v10", a, max_rk, max_rv, smem_optin, device, kV10Smem, why, why_len);
    if (no == NULL) *warps = kV10Warps, *smem = kV10Smem;
    return no;
}

/* v10 loads by TMA only: where TMA is not allowed (CUDA-graph capture, PALU_C_V4_TMA=0) auto runs v4 instead (*ran
 * false) and an explicit request fails, naming the way out. */
template <typename T>
palu_status launch_v10(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                       bool *ran)
{
    V4Maps maps;
    memset(&maps, 0, sizeof maps);
    *ran = tma_allowed(pl, stream) && latent_tma_maps(p, kV10R, kV10Rows, CU_TENSOR_MAP_SWIZZLE_128B, &maps);
    if (*ran) {
        const bool ib = p.k_pairs != nullptr; /* the interpolative key basis: half the rebuild */
        auto kernel = p.n_rep == 4 ? (ib ? decode_v10_kernel<T, 4, true> : decode_v10_kernel<T, 4, false>)
                                   : (ib ? decode_v10_kernel<T, 0, true> : decode_v10_kernel<T, 0, false>);
        return launch_decode_smem(kernel, kV10Smem, p, pl, stream, maps);
    }
    return tma_only_refusal(a, "v10");
}

palu_status dispatch_v10(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                         bool *ran)
{
    *ran = false;
    switch (a->dtype) {
    case PALU_DTYPE_F16: return launch_v10<__half>(a, p, pl, stream, ran);
    case PALU_DTYPE_BF16: return launch_v10<__nv_bfloat16>(a, p, pl, stream, ran);
    default: return palu_fail(PALU_ERR_TYPE, "dtype %s is not supported by v10", palu_dtype_name(a->dtype));
    }
}

} // namespace palu_decode
