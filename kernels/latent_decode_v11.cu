/* latent_decode_v11.cu -- decode kernel v11 (group size 2, head_dim 128, ranks 128, 1-8 query heads per KV head,
 * sm_90a) and its launcher. Auto takes it for group size 2 on calls long enough to pay for its prologue
 * (v11_worth_it in latent_decode_common.cuh); on the H200 it runs the group-size-2 rows from 16K at 0.94-1.39x of
 * full-cache SDPA (1.20-1.43x at batch 8, run 144) where v4 ran them at 0.77-0.82x (run 99). The design is in the
 * comment above the kernel and in docs/design/latent_decode_notes.md ("Why the group-size-2 rows stay far from
 * 1.8x", "v11: a group-size-2 kernel"); what it shares with the other decode kernels is in
 * latent_decode_common.cuh.
 *
 * Shape legend: B batch, T slots, H query heads, Hkv KV heads, n_rep = H / Hkv, D head_dim, G = 2 KV heads per
 * group, R = rk = rv = 128 the group's ranks, NST stages of latents in flight.
 */
#include "latent_decode_common.cuh"

using namespace palu_decode;

namespace {

/* ---- v11: v10's step for a group of two KV heads ----------------------------------------------------------------
 *
 * One CTA per (sequence, group, split), 8 warps: warpgroup cw serves KV head 2 g + cw of the group and its n_rep
 * query heads, and both warpgroups walk every 64-slot step of the CTA's slice on the same latent stage (the group's
 * 64 x 128 key and value latents, each as two 64-column boxes with the 128-byte swizzle: 32 KB). Per step and
 * warpgroup, as in v10 with S = 1 (the anchor moves every step: one R(64 tau) image per head would be 32 KB, and
 * two heads x four taus do not fit beside the stages):
 *   (1) K = C . U^T on wgmma (m64n128, K = 128: eight k16 steps, the first four on the first box), U the head's
 *       [D][R] key up-projection, copied once into a core-matrix image (no rotation: tau = 0);
 *   (2) each thread rotates its accumulator rows by R(k) (k < 64, the row within the step), or by each slot's own
 *       offset from the step's anchor when the step's positions are not consecutive;
 *   (3) S = K . Q_A^T on mma.sync per 16 slots, Q_A = R(A)^T Q rotated at every step: with n_rep > 1 once per
 *       warpgroup into rows all four warps read (warp wl rotates heads wl and wl + 4; -1.5% at n_rep 4, run 121),
 *       with n_rep = 1 by each warp for itself (a shared row costs a common anchor, +2.4% there: runs 118-119);
 *   (4) online softmax per head; O^T += V^T . P with V the group's 128-wide value latent (8 m-tiles, in two halves
 *       of four to hold the fragments' registers down).
 * Bytes per slot and group: 512 (keys and values at rank 128); key-rebuild MACs per slot: 2 x 128 x 128 = 32K, ~70% of
 * the H200's dense tensor rate at the 4.3 TB/s floor (notes: the share that a fused kernel cannot reach, so the
 * estimate is 1.3-1.6x over SDPA, against v4's 0.72-0.84x on these rows).
 *
 * Specialised on n_rep (4: Llama-3-8B, 1: MHA; 0 takes p.n_rep at run time): with the count known, the query
 * rotation's row loop has no per-row tests and each lane's query values stay in registers. That took 12% off the
 * Llama-3-8B rows and 7% off the Llama-2-7B rows at batch 8, 64K (run 113: 401 -> 354 and 1443 -> 1346 us), more
 * than the ~30 instructions per warp-step it removes predicted (the likely reason, not profiled: the step is a chain
 * of short dependencies at two warps per scheduler, and the shared-memory query reads sat at its head).
 *
 * Keys in the interpolative basis (IB: p.k_pairs, compress_kv(key_basis="interpolative"), whose selection takes as
 * many RoPE pairs from each head of a group: notes "Twentieth session"): each head has 32 stored pairs, latent
 * columns 32 cw + j (lower members, box 0) and 64 + 32 cw + j (upper, box 1), so (1) is m64n64 over the head's 32
 * rebuilt pairs and the stored half comes from the K tile by ldmatrix, rotated by the same R(k) (the anchor moves
 * every step: no R(64 tau) to carry). Dimensions are permuted per head as in v10 ([rebuilt lower | stored lower |
 * rebuilt upper | stored upper]; the queries and a per-head frequency table permuted in the prologue). The U image
 * rows are gathered through the pair list, which the prologue must fetch first: one more round trip before U.
 *
 * Stages: kV11NST shared by both warpgroups (each stage waits for all 8 warps before thread 0 refills it), so the
 * ring holds one stage being read, one being rebuilt and two loading, the bytes in flight of v10's ring. */
constexpr int kV11D = 128, kV11R = 128, kV11G = 2;
constexpr int kV11Rows = 64;   /* slots per step: the wgmma M */
constexpr int kV11Warps = 8;   /* two warpgroups, one per KV head of the group */
constexpr int kV11MaxRep = 8;  /* query heads per KV head: the 8 columns of the score and P . V products */
constexpr int kV11NST = 4;     /* stages, shared by both warpgroups */
constexpr size_t kV11Box = (size_t)kV11Rows * 64 * 2;   /* one 64-row x 64-column box, 8 KB */
constexpr size_t kV11Tile = 2 * kV11Box;                 /* one operand's 64 x 128 latents */
constexpr size_t kV11Stage = 2 * kV11Tile;               /* K and V */
constexpr size_t kV11UImg = (size_t)kV11D * kV11R * 2;  /* one head's U image, 32 KB */
constexpr int kV11QRow = 2 * kV11D + 16;                 /* a Q_A row (fp16), padded: conflict-free fragment reads */
constexpr size_t kV11OffU = kV11NST * kV11Stage;
constexpr size_t kV11OffQA = kV11OffU + kV11G * kV11UImg; /* per warp: kV11MaxRep rows */
constexpr size_t kV11OffQ = kV11OffQA + (size_t)kV11Warps * kV11MaxRep * kV11QRow; /* both heads' queries, fp32 */
constexpr size_t kV11OffPos = kV11OffQ + (size_t)kV11G * kV11MaxRep * kV11D * 4;  /* per warp: a ring of 3 pairs */
constexpr int kV11PosRing = 3;
constexpr int kV11PosStride = 32 + 2; /* a ring entry: the warp's 32 (row, step) positions, then each step's row 0 */
constexpr size_t kV11OffFreq = kV11OffPos + (size_t)kV11Warps * kV11PosRing * kV11PosStride * 4; /* inv_freq */
constexpr size_t kV11OffBar = kV11OffFreq + (size_t)kV11D / 2 * 4;
constexpr size_t kV11Smem = kV11OffBar + 2 * kV11NST * 8 + 1024; /* + the base's 1024-byte alignment */
static_assert(kV11Smem <= 227 * 1024, "one CTA per SM");
static_assert(kV11Rows == kV11StepSlots, "the plan's step (latent_decode_common.cuh)");
static_assert(kV11Warps * kV11MaxRep * (2 + kV11R) * 4 <= kV11OffU, "the records fit in the stages");
static_assert((size_t)kV11G * kV11MaxRep * kV11D * 2 <= (size_t)kV11Warps * kV11MaxRep * kV11QRow,
              "the raw queries fit in the Q_A area");

/* IB (above): a head's image of its 64 rebuilt rows (16 KB, both in the first half of the images' area), then the
 * group's pair list (G D / 2 int32) and the per-head permuted frequency tables (2 x D / 2 floats) */
constexpr int kV11IbRows = kV11D / 2;
constexpr size_t kV11IbUImg = (size_t)kV11IbRows * kV11R * 2;
constexpr size_t kV11IbOffPairs = kV11OffU + kV11G * kV11IbUImg;
constexpr size_t kV11IbOffFreqH = kV11IbOffPairs + (size_t)kV11G * kV11D / 2 * 4;
static_assert(kV11IbOffFreqH + (size_t)kV11G * kV11D / 2 * 4 <= kV11OffQA, "the IB areas fit in the images' area");

/* V11X_F16ACC: fp16 keys in the interpolative basis rebuilt with fp16 accumulators (on since run 179: v10 ib -0.9 to
 * -2.3%, v11 ib -1.5 to -2.3% kernel time at batch 8; tests, long-prompt generate tests and memcheck pass); 0 takes
 * the fp32 accumulators back */
#ifndef V11X_F16ACC
#define V11X_F16ACC 1
#endif
#ifdef PALU_V5_WGMMA /* the sm_90a build of the kernel only */
constexpr int kV11ScoreChains = 4;
constexpr uint32_t kV11USbo = (kV11R / 8) * 128; /* U image: N = D rows, K = R; 8-row groups 2 KB apart */
/* byte offset of U[d][j] in its image (K-major, no swizzle, core matrices of 8 rows x 16 bytes) */
__device__ __forceinline__ uint32_t v11_ucm(int d, int j)
{
    return (uint32_t)((d >> 3) * kV11USbo + (j >> 3) * 128 + (d & 7) * 16 + (j & 7) * 2);
}
#endif

/* NREP: query heads per KV head at compile time (4: Llama-3-8B, 1: MHA), or 0: p.n_rep at run time; IB: keys in the
 * interpolative basis (above) */
template <typename T, int NREP, bool IB>
__global__ void __launch_bounds__(kV11Warps * 32, 1) decode_v11_kernel(const DecodeParams p, const __grid_constant__ V4Maps maps)
{
#ifdef PALU_V5_WGMMA
    constexpr int D = kV11D, R = kV11R, HALF = kV11D / 2, NST = kV11NST, M = kV11Rows;
    char *smem = dev::dyn_smem();
    smem += (1024 - (dev::smem_u32(smem) & 1023)) & 1023; /* stays a shared-space pointer */
    const int grp = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, T_len = p.T, n_rep = NREP ? NREP : p.n_rep;
    const int g = lane >> 2, c = lane & 3, cw = warp >> 2, wl = warp & 3;
    const int ps = p.pad_start[b];
    const bool bad_pad = ps < 0 || ps >= T_len;
    const int len = bad_pad ? 0 : T_len - ps;
    const int chunk = ((len + p.splits - 1) / p.splits + M - 1) / M * M; /* whole steps (the plan: >= 4 per CTA) */
    const int t0 = ps + split * chunk, t1 = bad_pad ? t0 : min(T_len, t0 + chunk);
    const int nsteps = t1 > t0 ? (t1 - t0 + M - 1) / M : 0;
    const int32_t *pos = p.positions + (size_t)b * p.pbs;
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + kV11OffBar), *empty = full + NST;
    if (tid == 0) {
        for (int s = 0; s < NST; s++) dev::mbar_init(full + s, 1), dev::mbar_init(empty + s, kV11Warps);
        dev::mbar_init_fence();
    }
    __syncthreads();
    const bool issuer = tid == 0;
    auto load = [&](int st) { /* step st's K and V latents: two 64-column boxes each */
        char *kt = smem + (st % NST) * kV11Stage;
        uint64_t *bar = full + st % NST;
        dev::mbar_expect(bar, (uint32_t)kV11Stage);
        for (int hb = 0; hb < 2; hb++) {
            dev::tma_load_3d(kt + hb * kV11Box, &maps.k, p.groups.kcol[grp] + 64 * hb, t0 + M * st, b, bar);
            dev::tma_load_3d(kt + kV11Tile + hb * kV11Box, &maps.v, p.groups.vcol[grp] + 64 * hb, t0 + M * st, b, bar);
        }
    };

    /* Positions, once per pair of steps and warp: lane l holds the position of the warp's row 16 wl + (l & 15) in
     * step 2 n + (l >> 4), and lanes 0 and 16 also that of their step's row 0 (the warpgroup's common anchor: the
     * Q_A rows are shared); by cp.async into a per-warp ring two pairs ahead. Where n_rep > 1 the first two pairs'
     * are requested before the prologue: issued after it, they queued behind the first stages' copies and the first
     * step waited for them (as in v10). At n_rep 1 (MHA at G = 2) the early fetch cost 0.7-1.2% (run 135) and the late
     * one took back 0.25-0.8% (run 144); why, not profiled. */
    constexpr bool kShared = NREP != 1;   /* the warpgroup shares its Q_A rows (the comment above qlo says when) */
    constexpr bool kEarlyPos = NREP != 1; /* the first two pairs' positions before the prologue */
    int *pring = reinterpret_cast<int *>(smem + kV11OffPos) + warp * kV11PosRing * kV11PosStride;
    const int lane_row = 16 * wl + (lane & 15);
    auto fetch_pos = [&](int n) {
        int *r = pring + (n % kV11PosRing) * kV11PosStride;
        const int first = t0 + M * (2 * n + (lane >> 4)), slot = first + lane_row;
        dev::cp_async4(r + lane, pos + min(max(slot, 0), T_len - 1), true);
        if (kShared && (lane & 15) == 0)
            dev::cp_async4(r + 32 + (lane >> 4), pos + min(max(first, 0), T_len - 1), true);
        dev::cp_async_commit();
    };
    if (kEarlyPos) {
        fetch_pos(0);
        fetch_pos(1);
    }

    /* ---- prologue: the two U images, the queries, inv_freq, all by cp.async in one group ahead of the first
     * stages' copies (v10's order, run 97), then the queries in fp32 and R(k) ---- */
    const float *ftab = reinterpret_cast<const float *>(smem + kV11OffFreq);
    {
        /* U of the group: [G D][R] (pack_k_up), head cw's rows cw D .. cw D + D - 1; chunk e: row e / 16, 16-byte
         * column chunk e % 16, straight into the image's core-matrix layout */
        const char *ukg = reinterpret_cast<const char *>(static_cast<const T *>(p.k_up) +
                                                         (size_t)kV11G * D * p.groups.kcol[grp]);
        if constexpr (!IB) {
            for (int e = tid; e < kV11G * D * (R / 8); e += 32 * kV11Warps) {
                const int row = e / (R / 8), jc = e % (R / 8), hd = row / D, d = row % D;
                dev::cp_async16(smem + kV11OffU + hd * kV11UImg + v11_ucm(d, 8 * jc), ukg + (size_t)e * 16, true);
            }
        } else if (tid >= 32 * kV11Warps - kV11G * HALF * 4 / 16) { /* the pair list first: U's rows follow it */
            const int k = tid - (32 * kV11Warps - kV11G * HALF * 4 / 16);
            dev::cp_async16(smem + kV11IbOffPairs + 16 * k,
                            reinterpret_cast<const char *>(p.k_pairs + (size_t)grp * kV11G * HALF) + 16 * k, true);
        }
        /* the queries of both KV heads (2 n_rep D values, 16-byte aligned: v11_unsupported), raw, into Q_A's area */
        const char *qg = reinterpret_cast<const char *>(static_cast<const T *>(p.q) +
                                                        ((size_t)b * p.H + (size_t)kV11G * grp * n_rep) * D);
        constexpr int QC = D * (int)sizeof(T) / 16, FC = HALF * 4 / 16;
        for (int e = tid; e < kV11G * n_rep * QC; e += 32 * kV11Warps)
            dev::cp_async16(smem + kV11OffQA + 16 * e, qg + 16 * e, true);
        if (tid < FC) dev::cp_async16(smem + kV11OffFreq + 16 * tid, reinterpret_cast<const char *>(p.inv_freq) + 16 * tid, true);
        dev::cp_async_commit();
        if (issuer)
            for (int st = 0; st < min(nsteps, NST); st++) load(st);
        dev::cp_async_wait<0>();
        __syncthreads();
        /* IB: head hd's permuted dimension y < 64 has frequency pair_f(hd, y): its rebuilt pairs (row entries
         * 32 hd ..) for y < 32, its stored ones (64 + 32 hd ..) above; dimension y + 64 is the upper member. The
         * list is trusted, not checked: masked, a bad one cannot index out of U or the queries. */
        const int *pairs = reinterpret_cast<const int *>(smem + kV11IbOffPairs);
        auto pair_f = [&](int hd, int y) {
            return pairs[(y < 32 ? 32 * hd + y : 2 * 32 + 32 * hd + y - 32)] & (HALF - 1);
        };
        if constexpr (IB) { /* the rebuilt rows' images, gathered through the list */
            for (int e = tid; e < kV11G * kV11IbRows * (R / 8); e += 32 * kV11Warps) {
                const int row = e / (R / 8), jc = e % (R / 8), hd = row / kV11IbRows, y = row % kV11IbRows;
                const int d = pair_f(hd, y % 32) + (y >= 32 ? HALF : 0);
                dev::cp_async16(smem + kV11OffU + hd * kV11IbUImg + v11_ucm(y, 8 * jc),
                                ukg + ((size_t)(hd * D + d) * (R / 8) + jc) * 16, true);
            }
            dev::cp_async_commit();
            float *fth = reinterpret_cast<float *>(smem + kV11IbOffFreqH);
            if (tid < kV11G * HALF) fth[tid] = ftab[pair_f(tid / HALF, tid % HALF)];
        }
        const T *qraw = reinterpret_cast<const T *>(smem + kV11OffQA);
        float *qs = reinterpret_cast<float *>(smem + kV11OffQ);
        for (int e = tid; e < kV11G * n_rep * D; e += 32 * kV11Warps) {
            const int x = e % D, hd = e / (n_rep * D);
            qs[e] = Num<T>::to_f(qraw[IB ? e - x + pair_f(hd, x % HALF) + (x >= HALF ? HALF : 0) : e]);
        }
        if (IB) dev::cp_async_wait<0>();
        __syncthreads(); /* the raw queries read: Q_A's area is free */
        for (int e = tid; e < (int)(kV11Warps * kV11MaxRep * kV11QRow / 16); e += 32 * kV11Warps)
            reinterpret_cast<uint4 *>(smem + kV11OffQA)[e] = make_uint4(0, 0, 0, 0); /* rows >= n_rep stay zero */
        dev::fence_proxy_async();
        __syncthreads();
    }
    /* this warpgroup's frequencies by (permuted) dimension: inv_freq, or IB its head's permuted table */
    const float *fth = IB ? reinterpret_cast<const float *>(smem + kV11IbOffFreqH) + cw * HALF : ftab;
    KeyRot rot; /* R(k) of this thread's rows k = 16 wl + g and + 8 */
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int k = 16 * wl + g + 8 * rr;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float c0, s0, c1, s1;
            small_cos_sin(k, fth[8 * i + 2 * c], &c0, &s0);
            small_cos_sin(k, fth[8 * i + 2 * c + 1], &c1, &s1);
            rot.set(rr, i, c0, c1, s0, s1);
        }
    }
    const float *qs = reinterpret_cast<const float *>(smem + kV11OffQ) + (size_t)cw * n_rep * D; /* this head's */
    /* With several query heads per KV head the warpgroup's Q_A rows are shared: warp wl rotates heads wl and wl + 4
     * (those < n_rep) into the buffer of the step's parity, and a named barrier of the warpgroup's 128 threads
     * publishes them (with two buffers, one barrier per step also keeps a row from being rewritten before every
     * warp has read it). Runs 118-121: -1.5 to -1.7% at Llama-3-8B shapes (n_rep 4), but +2.4% at n_rep 1, where no
     * rotation is saved and the shared rows' common anchor (two more position copies per pair of steps, 9 more
     * registers) is pure cost; so at n_rep 1 each warp rotates the one head into rows of its own. This
     * lane's query values of its heads (frequencies 2 lane, 2 lane + 1, their partners) stay in registers. */
    constexpr int kRows = kV11MaxRep / 4;
    float2 qlo[kRows], qhi[kRows];
#pragma unroll
    for (int i = 0; i < kRows; i++) {
        const int j = kShared ? wl + 4 * i : i;
        qlo[i] = j < n_rep ? *reinterpret_cast<const float2 *>(qs + j * D + 2 * lane) : make_float2(0.0f, 0.0f);
        qhi[i] = j < n_rep ? *reinterpret_cast<const float2 *>(qs + j * D + HALF + 2 * lane) : make_float2(0.0f, 0.0f);
    }
    const float2 qtr0 = turn_split(fth[2 * lane]), qtr1 = turn_split(fth[2 * lane + 1]);

    const uint32_t u_lo = wgmma_desc_lo(smem + kV11OffU + cw * (IB ? kV11IbUImg : kV11UImg), 128);
    const uint32_t k_lo = wgmma_desc_lo(smem, 16);
    const uint64_t u_hi = wgmma_desc_hi(kV11USbo, 0), k_hi = wgmma_desc_hi(1024, 1);
    constexpr int NACC = IB ? kV11IbRows / 2 : D / 2; /* accumulators per thread: the wgmma N / 2 */
    /* fp16 keys in the interpolative basis: fp16 accumulators, as in v10 (kH16) */
    constexpr bool kH16 = IB && V11X_F16ACC && std::is_same_v<T, __half>;
    RebuildAcc<NACC, kH16> acc;
    auto issue = [&](int s) {
        dev::wgmma_fence();
        const uint32_t ad = k_lo + (uint32_t)(s * (kV11Stage >> 4));
#pragma unroll
        for (int kk = 0; kk < R / 16; kk++) /* k16 step kk: box kk / 4, its 32-byte column kk % 4 */
            rebuild_k16<T>(acc, k_hi | (ad + (uint32_t)((kk >> 2) * (kV11Box >> 4)) + 2 * (kk & 3)), u_hi | (u_lo + 16 * kk),
                           kk > 0);
        dev::wgmma_commit();
    };
    auto wait_acc = [&]() {
        dev::wgmma_wait0();
        fence_acc(acc);
    };
    float o[8][4] = {};
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}; /* heads 2 c, 2 c + 1 */
    uint32_t qa[8][2] = {};
    const int lrow = 16 * wl + (lane & 7) + ((lane >> 4) << 3), lsel = (lane >> 3) & 1;
    if (!kEarlyPos) { /* n_rep 1: the first positions after the prologue (above) */
        fetch_pos(0);
        fetch_pos(1);
    }
    int lane_pos = 0, lane_a0 = 0; /* (lanes 0 and 16: row 0 of steps 2 n, 2 n + 1) */
    /* IB: this lane's ldmatrix row of a latent box and its 16-byte chunk of the head's stored columns */
    const int arow = 16 * wl + (lane & 7) + (((lane >> 3) & 1) << 3), achunk = 4 * cw + (lane >> 4);
    /* the rotated keys as the score's A fragments (v10's pack): chunk i with chunk i + 8; IB: chunks 0-3 and 8-11
     * rebuilt (accumulator chunks i, i + 4), 4-7 and 12-15 the head's stored columns of box 0 and box 1 (kt) */
    auto pack = [&](const KeyRot &r, const char *kt, uint32_t (&pk)[2][16]) {
        constexpr int NB = IB ? 4 : 8; /* rebuilt chunk pairs */
        rotate_rebuilt<NB>(r, acc, pk);
        if constexpr (IB) {
            uint32_t lat[4][4]; /* [box 0: kk 0, 1 | box 1: kk 0, 1], rows 16 wl + g, + 8 (the m16n8k16 A layout) */
#pragma unroll
            for (int q = 0; q < 4; q++)
                dev::ldsm_x4(lat[q], kt + (q >> 1) * kV11Box + arow * 128 + (((achunk + 2 * (q & 1)) ^ (arow & 7)) << 4));
            rotate_stored_half<T>(r, lat, pk);
        }
    };
    if (nsteps > 0) {
        dev::mbar_wait(full, 0);
        issue(0);
    }
    wait_acc();
    for (int x = 0; x < nsteps; x++) {
        const int s = x % NST;
        const char *vt = smem + s * kV11Stage + kV11Tile;
        if ((x & 1) == 0) { /* a new pair of steps: its positions */
            const int n = x >> 1;
            dev::cp_async_wait<1>();
            const int *r = pring + (n % kV11PosRing) * kV11PosStride;
            lane_pos = r[lane];
            if (kShared && (lane & 15) == 0) lane_a0 = r[32 + (lane >> 4)];
            fetch_pos(n + 2);
        }
        /* this step's anchor (shared rows: its row 0's position, the same in every warp; else this warp's first row's
         * position less the row) and whether this warp's rows are all consecutive from it */
        const int half = x & 1;
        const int A = kShared ? __shfl_sync(0xffffffffu, lane_a0, 16 * half)
                              : __shfl_sync(0xffffffffu, lane_pos, 16 * half) - 16 * wl;
        const int lane_slot = t0 + M * x + lane_row;
        const bool regular = __all_sync(0xffffffffu, (lane >> 4) != half || lane_slot >= t1 || lane_pos == A + lane_row);
        {   /* Q_A = R(A)^T Q: this warp's heads into the warpgroup's buffer of this step's parity (or its own) */
            char *qbuf = smem + kV11OffQA + (size_t)(kShared ? 2 * cw + half : warp) * kV11MaxRep * kV11QRow;
            float c0, s0, c1, s1;
            rope_cos_sin(A, qtr0, &c0, &s0);
            rope_cos_sin(A, qtr1, &c1, &s1);
            if (!kShared) __syncwarp(); /* the previous step's reads of the rows are done */
#pragma unroll
            for (int i = 0; i < kRows; i++) {
                const int j = kShared ? wl + 4 * i : i;
                if (j < n_rep) {
                    const float2 lo = qlo[i], hi = qhi[i];
                    uint32_t *row = reinterpret_cast<uint32_t *>(qbuf + j * kV11QRow);
                    row[lane] = dev::half2_satfinite(lo.x * c0 + hi.x * s0, lo.y * c1 + hi.y * s1);
                    row[HALF / 2 + lane] = dev::half2_satfinite(hi.x * c0 - lo.x * s0, hi.y * c1 - lo.y * s1);
                }
            }
            if (kShared) dev::bar_named_n(1 + cw, 128);
            else __syncwarp();
            /* the score's B fragments by ldmatrix: matrix m of load kk / 2 is rows (heads) 0-7 at columns
             * 16 kk + 8 m, so its registers are qa[kk][0], qa[kk][1], qa[kk + 1][0], qa[kk + 1][1] (4 loads where 16
             * plain ones were: -0.6 to -1.1%, run 182) */
#pragma unroll
            for (int kk = 0; kk < 8; kk += 2) {
                uint32_t r[4];
                dev::ldsm_x4(r, qbuf + (lane & 7) * kV11QRow + (16 * kk + 8 * (lane >> 3)) * 2);
                qa[kk][0] = r[0], qa[kk][1] = r[1], qa[kk + 1][0] = r[2], qa[kk + 1][1] = r[3];
            }
        }
        const int sl = t0 + M * x + 16 * wl + g; /* this thread's rows: slots sl, sl + 8 */
        const char *kt = smem + s * kV11Stage;
        uint32_t pk[2][16];
        if (regular) {
            pack(rot, kt, pk);
        } else {
            const int pcur0 = __shfl_sync(0xffffffffu, lane_pos, 16 * half + g);
            const int pcur1 = __shfl_sync(0xffffffffu, lane_pos, 16 * half + g + 8);
            KeyRot xr;
            key_row_rotation(xr, 0, sl < t1 ? pcur0 - A : 16 * wl + g, c, fth);
            key_row_rotation(xr, 1, sl + 8 < t1 ? pcur1 - A : 16 * wl + g + 8, c, fth);
            pack(xr, kt, pk);
        }
        float scc[kV11ScoreChains][4] = {};
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            const uint32_t a[4] = {pk[0][2 * kk], pk[1][2 * kk], pk[0][2 * kk + 1], pk[1][2 * kk + 1]};
            dev::mma16816<__half>(scc[kk % kV11ScoreChains], a, qa[kk][0], qa[kk][1]);
        }
        float sc[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            sc[e] = scc[0][e];
#pragma unroll
            for (int ch = 1; ch < kV11ScoreChains; ch++) sc[e] += scc[ch][e];
        }
        /* the first half of V^T's fragments now: their shared-memory latency hides under the softmax (v10, run 76) */
        uint32_t va[4][4];
#pragma unroll
        for (int mb = 0; mb < 4; mb++) dev::ldsm_x4_trans(va[mb], vt + lrow * 128 + (((2 * mb + lsel) ^ (lrow & 7)) << 4));
        if (x + 1 < nsteps) { /* the next step's rebuild runs under this step's softmax and P . V */
            const int sn = (x + 1) % NST;
            dev::mbar_wait(full + sn, ((x + 1) / NST) & 1);
            issue(sn);
        }
        if (issuer && x > 0 && x - 1 + NST < nsteps) { /* refill the previous step's stage (all 8 warps are done) */
            const int sp = (x - 1) % NST;
            dev::mbar_wait(empty + sp, ((x - 1) / NST) & 1);
            load(x - 1 + NST);
        }
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) v[e] = sl + 8 * (e >> 1) < t1 ? sc[e] * p.score_scale : -INFINITY;
        bool big = false;
#pragma unroll
        for (int e = 0; e < 4; e++) big = big || v[e] > m_run[e & 1] + 8.0f;
        const bool reduce = __any_sync(0xffffffffu, big);
        float pr[4];
#pragma unroll
        for (int e = 0; e < 2; e++) {
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
                    for (int mb = 0; mb < 8; mb++) o[mb][e] *= corr, o[mb][e + 2] *= corr;
                }
            }
            const float mu = m_run[e] == -INFINITY ? 0.0f : m_run[e];
            pr[e] = dev::ex2(v[e] - mu), pr[e + 2] = dev::ex2(v[e + 2] - mu);
            l_run[e] += pr[e] + pr[e + 2];
        }
        const uint32_t b0 = dev::movm_trans(Num<T>::pack(pr[0], pr[1])), b1 = dev::movm_trans(Num<T>::pack(pr[2], pr[3]));
#pragma unroll
        for (int hb = 0; hb < 2; hb++) { /* V^T's two 64-row halves (one box each), four m-tiles at a time */
            if (hb == 1)
#pragma unroll
                for (int mb = 0; mb < 4; mb++)
                    dev::ldsm_x4_trans(va[mb], vt + kV11Box + lrow * 128 + (((2 * mb + lsel) ^ (lrow & 7)) << 4));
#pragma unroll
            for (int mb = 0; mb < 4; mb++) dev::mma16816<T>(o[4 * hb + mb], va[mb], b0, b1);
        }
        __syncwarp();
        if (lane == 0) dev::mbar_arrive(empty + s);
        wait_acc(); /* the next step's rebuild (nothing in flight after the last step) */
    }
    dev::cp_async_wait<0>();
    dev::launch_dependents();

    /* records (over the stages: every copy has been consumed): warpgroup cw's warp wl, head j at
     * recs + ((cw 4 + wl) n_rep + j)(2 + R) */
    __syncthreads();
    float *recs = reinterpret_cast<float *>(smem);
    store_warp_records<R>(recs, warp, n_rep, g, c, m_run, l_run, o);
    __syncthreads();
    for (int hd = 0; hd < kV11G; hd++) /* each KV head's query heads from its warpgroup's four warps */
        combine_cta_partials<R>(p, b, (kV11G * grp + hd) * n_rep, split, 4, recs + hd * 4 * n_rep * (2 + R), bad_pad, p.direct);
    if (p.pair) combine_cluster_pair<R>(p, b, kV11G * grp * n_rep, kV11G * n_rep);
#else
    poison_unsupported_build(p, blockIdx.z, blockIdx.x * kV11G * p.n_rep, blockIdx.y);
#endif
}

} // namespace

namespace palu_decode __attribute__((visibility("hidden"))) {

/* ---- v11 launch ---- */

const char *v11_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                            int *warps, size_t *smem, char *why, size_t why_len)
{
    const int64_t n_rep = a->heads / a->kv_heads;
    if (a->group_size != kV11G)
        return snprintf(why, why_len, "group_size %lld (v11 takes 2)", (long long)a->group_size), why;
    if (n_rep < 1 || n_rep > kV11MaxRep)
        return snprintf(why, why_len, "n_rep = heads / kv_heads = %lld (v11 takes 1 to %d)", (long long)n_rep,
                        kV11MaxRep), why;
    if (a->head_dim != kV11D)
        return snprintf(why, why_len, "head_dim %lld (v11 takes 128)", (long long)a->head_dim), why;
    for (int64_t g = 0; g < a->n_groups; g++)
        if (a->k_ranks[g] != kV11R || a->v_ranks[g] != kV11R)
            return snprintf(why, why_len, "ranks k %lld / v %lld in group %lld (v11 takes 128 / 128)",
                            (long long)a->k_ranks[g], (long long)a->v_ranks[g], (long long)g), why;
    if (a->k_bias != NULL) return snprintf(why, why_len, "a key bias (v11 takes none)"), why;
    if (!aligned16(a->k_latent) || !aligned16(a->v_latent) || !aligned16(a->k_up) || !aligned16(a->q) ||
        !aligned16(a->inv_freq) || (a->k_pairs && !aligned16(a->k_pairs)) || a->k_token_stride % 8 != 0 || a->v_token_stride % 8 != 0 ||
        (a->batch > 1 && (a->k_batch_stride % 8 != 0 || a->v_batch_stride % 8 != 0)))
        return snprintf(why, why_len, "latent rows, k_up, q, inv_freq or k_pairs not 16-byte aligned (v11 copies them in "
                                      "16-byte pieces: base pointers, token and batch strides must be multiples of 16 "
                                      "bytes)"), why;
    const char *no = sm90a_unsupported("v11", device, why, why_len);
    if (no == NULL) no = smem_unsupported("v11", kV11Smem, max_rk, max_rv, smem_optin, why, why_len);
    if (no == NULL) *warps = kV11Warps, *smem = kV11Smem;
    return no;
}

template <typename T>
palu_status launch_v11(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                       bool *ran)
{
    V4Maps maps;
    memset(&maps, 0, sizeof maps);
    *ran = tma_allowed(pl, stream) && latent_tma_maps(p, 64, kV11Rows, CU_TENSOR_MAP_SWIZZLE_128B, &maps);
    if (*ran) { /* one CTA per group of kV11G KV heads */
        const bool ib = p.k_pairs != nullptr; /* the interpolative key basis: half the rebuild */
        auto kernel = p.n_rep == 4   ? (ib ? decode_v11_kernel<T, 4, true> : decode_v11_kernel<T, 4, false>)
                      : p.n_rep == 1 ? (ib ? decode_v11_kernel<T, 1, true> : decode_v11_kernel<T, 1, false>)
                                     : (ib ? decode_v11_kernel<T, 0, true> : decode_v11_kernel<T, 0, false>);
        return launch_decode_grid(kernel, kV11Smem, kV11G, p, pl, stream, maps);
    }
    return tma_only_refusal(a, "v11");
}

palu_status dispatch_v11(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                         bool *ran)
{
    *ran = false;
    switch (a->dtype) {
    case PALU_DTYPE_F16: return launch_v11<__half>(a, p, pl, stream, ran);
    case PALU_DTYPE_BF16: return launch_v11<__nv_bfloat16>(a, p, pl, stream, ran);
    default: return palu_fail(PALU_ERR_TYPE, "dtype %s is not supported by v11", palu_dtype_name(a->dtype));
    }
}

} // namespace palu_decode
