/* latent_decode_v9.cu -- decode kernel v9 (absorbed RoPE: MHA, group size 1, head_dim 128, ranks 64, sm_90a) and
 * its launcher. The design is in the comment above the kernel, its history in docs/design/latent_decode_notes.md;
 * what it shares with the other decode kernels (parameter block, device helpers, RoPE angle, plan, TMA maps,
 * launch) is in latent_decode_common.cuh, and latent_decode.cu plans and dispatches it.
 *
 * Shape legend: B batch, T slots, H query heads (= KV heads here), D head_dim, R = rk = rv rank, S steps of 64 slots
 * per block, NST stages of latents in flight.
 */
#include "latent_decode_common.cuh"

using namespace palu_decode;

namespace {

/* ---- v9: absorbed RoPE for one query head per latent (MHA, G = 1), D = 128, rk = rv = 64 (sm_90a) ----------------
 *
 * No key is rebuilt. The score of the key in slot A + k + 64 tau of a block (k < 64 rows, tau < kV9S steps) whose
 * position is a_k + 64 tau is
 *     q . R(a_k + 64 tau) U c = (R(a_k)^T q) . (R(64 tau) U) c = W_tau[k] . c,    W_tau = Qa . U_tau,
 * with Qa (64 x D) the query rotated to the block's 64 anchors a_k = position of slot A + k, and U_tau = R(64 tau) U
 * (D x rk; R(64 tau) applied to U's rotate_half pairs). So one 64-slot step is one warpgroup MMA (m64n64, K = D, both
 * operands in shared memory) that gives one rk-vector per slot, then one rk-long dot product per slot. Those dot
 * products run on mma.sync as the diagonal of W (16 rows) . C^T (16 slots) per warp, with W's fp32 accumulators
 * packed as the A operand; P . V runs on mma.sync with P as a quad-diagonal B operand (column g of O^T is quad g's),
 * so no warp-wide reduction is on any step's chain: each quad (rows g, g + 8 of a warp) keeps its own softmax state
 * in lane g / 2, the one that holds its diagonal scores. Per 16 slots and warp that is ~100 instructions, where v4
 * spends ~580 on the rebuild, RoPE of every key element and the scores.
 *
 * A slot whose position is not its row's anchor + 64 tau (irregular positions: a jump inside a block, or a row whose
 * first slot is left padding) gets its exact score from a slow path: its quad rebuilds the key from U (the tau = 0
 * image) and rotates it by its own angle. Padding and slots past the sequence are masked as in v4.
 *
 * CTA = 13 warps, one per SM (226 KB of shared memory with TMA): warps 0-7 two consumer warpgroups (the MMAs,
 * scores, softmax, P . V), group cw taking steps tau = cw and cw + 2 of every block with its own softmax state (one
 * warpgroup's per-step chain was the bottleneck: notes "Two consumer warpgroups"); warp 8 the copies (TMA boxes
 * through five stages, or cp.async through four under CUDA-graph capture: V9Layout); warps 9-12
 * the anchored query of the next block (double-buffered; qfull / qempty mbarriers) from an R(k) table (k < 64) when
 * the block's anchors are consecutive, else from each anchor's own angle. The prologue builds U_tau and the tables
 * with the consumer and anchor warps; the copy warp starts streaming once the prologue's Uk has landed (the quiet
 * start: 0.4-0.6% faster at batch 4 and 8, flat at batch 1, run 163). The 64 quads' states are combined in
 * shared memory into one partial per CTA.
 *
 * Measured first as a standalone probe (python/probe_absorbed.cu at commit b5fe0ea, runs 45-48, notes "The absorbed
 * probe"): at Llama-2-7B shapes 97-102% of the DRAM floor at 64K slots. This kernel: 103% at batch 8 from 64K, 92-99%
 * at batch 1 (run 64, notes "Two consumer warpgroups"). GQA (n_rep > 1) is not taken: W is per query head, so its
 * tensor work grows with n_rep (n_rep = 4 would need ~1.4x the floor's time on the tensor cores alone). */
constexpr int kV9D = 128, kV9R = 64;
constexpr int kV9S = 4;           /* 64-slot steps per block (one Qa); U_tau images for tau < kV9S */
constexpr int kV9Rows = 64;       /* slots per step: the wgmma M */
constexpr int kV9Groups = 2;      /* consumer warpgroups (warps 0 .. 7): group cw takes steps tau = cw, cw + 2 */
constexpr int kV9CopyWarp = 4 * kV9Groups;
constexpr int kV9AnchorWarps = 4; /* warps 9 .. 12 */
constexpr int kV9Warps = kV9CopyWarp + 1 + kV9AnchorWarps;
static_assert(kV9S == 2 * kV9Groups, "each consumer warpgroup takes two steps of a block (its W double-buffered)");

/* Shared memory of a v9 CTA. TMA: latent rows of 128 bytes, their 16-byte chunks swizzled (chunk c of row r at
 * c ^ (r & 7), TMA's SWIZZLE_128B; boxes on 1024-byte boundaries); cp.async (under CUDA-graph capture, where no
 * tensor map may hold the call's length): rows padded to 144 bytes. Either way ldmatrix's 8 rows x 16 bytes fall on
 * 32 different banks. */
template <bool TMA> struct V9Layout {
    /* steps of latents in flight: two are being read at any time (one per consumer warpgroup); the padded rows of
     * the cp.async build leave room for four. Five is odd, so a stage alternates between the warpgroups; its `full`
     * barrier does not: there are NFULL = 2 NST of them (step st signals full[st % NFULL]), so each belongs to one
     * warpgroup, which waits on every one of its phases in turn (why a parity wait needs that: `process`) */
    static constexpr int NST = TMA ? 5 : 4;
    static constexpr int NFULL = NST % 2 ? 2 * NST : NST;
    static constexpr int HALF = kV9D / 2, ROWB = TMA ? kV9R * 2 : kV9R * 2 + 16;
    static constexpr int RTS = HALF + 8;                        /* R(k) table row stride (float2): 576 bytes */
    static constexpr size_t ALIGN = TMA ? 1024 : 128;
    static constexpr size_t TILE = (size_t)kV9Rows * ROWB;
    static constexpr size_t STAGE = (2 * TILE + ALIGN - 1) / ALIGN * ALIGN; /* K, then V */
    static constexpr size_t UT = (size_t)kV9D * kV9R * 2, QA = (size_t)kV9Rows * kV9D * 2;
    static constexpr size_t U = NST * STAGE;
    static constexpr size_t QAB = U + kV9S * UT;             /* two Qa images (the prologue stages Uk in the first) */
    static constexpr size_t ANCH = QAB + 2 * QA;             /* int anchors[2][64], then int regular[2] */
    static constexpr size_t TAB = ANCH + 2 * kV9Rows * 4 + 16; /* (cos, sin)(k theta_i), k < 64 */
    static constexpr size_t TURN = TAB + (size_t)kV9Rows * RTS * 8; /* (cos, sin)(64 tau theta_i), tau < kV9S */
    static constexpr size_t QB = TURN + (size_t)kV9S * HALF * 8; /* R(a_0)^T q per frequency */
    static constexpr size_t BARS = QB + (size_t)HALF * 8;      /* full[NFULL], empty per stage; qfull, qempty per Qa */
    static constexpr size_t TOTAL = BARS + (NFULL + NST + 4) * 8 + ALIGN; /* + the base's alignment */
    static_assert(32 * kV9Groups * (2 + kV9R) * 4 <= U, "the records fit in the stages");
    static_assert(TOTAL <= 227 * 1024, "one CTA per SM");
    static_assert(STAGE % 16 == 0 && U % 128 == 0 && QAB % 128 == 0, "copy and descriptor alignment");
    /* byte offset of 16-byte chunk `chunk` of latent row `row` in a tile */
    static __device__ __forceinline__ int at(int row, int chunk) { return row * ROWB + ((TMA ? chunk ^ (row & 7) : chunk) << 4); }
};

/* the dynamic shared memory a v9 launch asks for: the larger of its two builds */
constexpr size_t kV9Smem = V9Layout<true>::TOTAL > V9Layout<false>::TOTAL ? V9Layout<true>::TOTAL : V9Layout<false>::TOTAL;

#ifdef PALU_V5_WGMMA /* used by the sm_90a build of the kernel only */
constexpr uint32_t kV9Sbo = (kV9D / 8) * 128; /* core-matrix images (U_tau, Qa): 8-row groups 2 KB apart */
/* byte offset of element (row, k) of a K-major no-swizzle core-matrix image (8 rows x 16 bytes per core matrix) */
__device__ __forceinline__ uint32_t v9_cm(int row, int k)
{
    return (uint32_t)((row >> 3) * kV9Sbo + (k >> 3) * 128 + (row & 7) * 16 + (k & 7) * 2);
}
#endif


/* DIRECT (p.direct, a template argument here alone): v9's main loop is scheduled anew by ptxas whenever its
 * epilogue changes, and the runtime branch cost it 0.7% per token at batch 1 and 8 (run 130: 115 -> 118 registers,
 * the SASS reordered throughout), where the other kernels showed nothing; the instance without it is the kernel
 * as before. */
template <typename T, bool TMA, bool DIRECT>
__global__ void __launch_bounds__(kV9Warps * 32, 1) decode_v9_kernel(const DecodeParams p, const __grid_constant__ V4Maps maps)
{
#ifdef PALU_V5_WGMMA
    using L = V9Layout<TMA>;
    constexpr int D = kV9D, R = kV9R, HALF = L::HALF, S = kV9S, NST = L::NST, NF = L::NFULL, M = kV9Rows;
    constexpr int PT = 32 * (kV9Warps - 1); /* the prologue's threads: all but the copy warp */
    char *smem = dev::dyn_smem();
    smem += (L::ALIGN - (dev::smem_u32(smem) & (L::ALIGN - 1))) & (L::ALIGN - 1); /* stays a shared-space pointer */
    const int h = blockIdx.x, split = blockIdx.y, b = blockIdx.z; /* n_rep = G = 1: KV head = group = query head */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, T_len = p.T;
    const int ps = p.pad_start[b];
    const bool bad_pad = ps < 0 || ps >= T_len;
    const int len = bad_pad ? 0 : T_len - ps;
    const int chunk = ((len + p.splits - 1) / p.splits + M * S - 1) / (M * S) * (M * S);
    const int t0 = ps + split * chunk, t1 = bad_pad ? t0 : min(T_len, t0 + chunk);
    const int nblocks = t1 > t0 ? (t1 - t0 + M * S - 1) / (M * S) : 0;
    const int32_t *pos = p.positions + (size_t)b * p.pbs;
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + L::BARS), *empty = full + NF, *qfull = empty + NST;
    uint64_t *qempty = qfull + 2;
    int *anch = reinterpret_cast<int *>(smem + L::ANCH), *fullreg = anch + 2 * M; /* per Qa buffer */
    if (tid == 0) {
        /* full: TMA, lane 0's expect_tx; cp.async, each lane's completion */
        for (int f = 0; f < NF; f++) dev::mbar_init(full + f, TMA ? 1 : 32);
        for (int s = 0; s < NST; s++) dev::mbar_init(empty + s, 4 * 32); /* per lane: `process` */
        for (int x = 0; x < 2; x++)
            dev::mbar_init(qfull + x, 32 * kV9AnchorWarps), dev::mbar_init(qempty + x, 32 * 4 * kV9Groups);
        dev::mbar_init_fence();
    }
    __syncthreads();

    /* The anchor warps' first loads (their query values and frequency, block 0's positions) go out before the
     * prologue, so that their round trip overlaps it rather than queueing behind the first stages' burst, which now
     * starts right after the prologue's barrier (the quiet start); the first Qa, and with it every consumer's first
     * step, waits for them. (Run 135 measured this flat while the copy warp still started at once.) */
    constexpr int PV = M * S / 32; /* positions of a block's 64 S slots per lane: slot A + lane + 32 i */
    const bool anchor_warp = warp > kV9CopyWarp;
    const int qw = anchor_warp ? warp - kV9CopyWarp - 1 : 0, fi = 16 * qw + (lane & 15);
    const T *qv = static_cast<const T *>(p.q) + ((size_t)b * p.H + h) * D;
    float qlo = 0.0f, qhi = 0.0f, fr = 0.0f;
    int pv[PV];
    auto load_block = [&](int blk) {
#pragma unroll
        for (int i = 0; i < PV; i++) pv[i] = pos[min(t0 + blk * M * S + lane + 32 * i, T_len - 1)];
    };
    if (anchor_warp) {
        qlo = Num<T>::to_f(qv[fi]), qhi = Num<T>::to_f(qv[fi + HALF]), fr = p.inv_freq[fi];
        if (nblocks > 0) load_block(0);
    }

    /* ---- prologue (consumer and anchor warps, PT threads): Uk staged in the first Qa buffer, the tables, then
     * (after the copy warp's branch) U_tau from the staged copy (global reads in that loop would each wait an L2
     * round trip) ---- */
    const int pt = tid < 32 * kV9CopyWarp ? tid : tid - 32;
    T *uks = reinterpret_cast<T *>(smem + L::QAB);
    float2 *tab = reinterpret_cast<float2 *>(smem + L::TAB), *turn = reinterpret_cast<float2 *>(smem + L::TURN);
    if (warp != kV9CopyWarp) {
        const T *ukg = static_cast<const T *>(p.k_up) + (size_t)D * p.groups.kcol[h]; /* [D][R], G = 1 */
        for (int e = pt; e < D * R / 8; e += PT) dev::cp_async16(uks + 8 * e, ukg + 8 * e, true);
        dev::cp_async_commit();
        static_assert(PT % HALF == 0, "one frequency per thread in the table loop");
        const float2 tr_i = turn_split(p.inv_freq[pt % HALF]); /* this thread's frequency in every entry below */
        for (int e = pt; e < M * HALF + S * HALF; e += PT) {
            const int i = e % HALF, k = e / HALF; /* k < 64: R(k) table; then tau = k - 64 for R(64 tau) */
            float c, s;
            rope_cos_sin(k < M ? k : 64 * (k - M), tr_i, &c, &s);
            if (k < M)
                tab[k * L::RTS + i] = make_float2(c, s);
            else
                turn[(k - M) * HALF + i] = make_float2(c, s);
        }
        dev::cp_async_wait<0>();
    }
    /* The quiet start: the copy warp waits here too, before its first copy. Started at once, every SM's first-stage
     * burst (five stages, ~11 MB over the GPU at batch 8) queued Uk's 16 KB behind it, and the consumers' first W
     * waited for the whole burst; now Uk lands first, and the burst streams while U_tau and the first anchored query
     * are built. Run 163: -0.4 to -0.6% at batch 4 and 8, flat at batch 1 (predicted -1 to -2 us per wave). v10's
     * first copies held back the same way lost 0.5 us a call there. One barrier instruction for every warp: a named
     * barrier that the copy warp reached from its own branch was "divergent threads in block" to synccheck (run
     * 165). */
    __syncthreads();

    if (warp == kV9CopyWarp) { /* ---- the copies of every step's 64 K rows and 64 V rows. (One 128-byte bulk copy per
                                * row was measured 5-8x slower (run 49): the bulk-copy unit takes small requests one
                                * at a time.) No positions: only a block with irregular positions reads them, from
                                * global memory (`process`); carried here through registers, shared memory and 32
                                * arrivals per step they cost every step ~2% (run 164) */
        if constexpr (TMA) { /* per step two boxes of 64 rows x rk (rows past the sequence read as zeros) */
            for (int st = 0; st < nblocks * S; st++) {
                const int s = st % NST;
                if (st >= NST) dev::mbar_wait(empty + s, ((st / NST) - 1) & 1);
                char *kt = smem + s * L::STAGE;
                uint64_t *fb = full + st % NF;
                if (lane == 0) {
                    dev::mbar_expect(fb, (uint32_t)(2 * L::TILE));
                    dev::tma_load_3d(kt, &maps.k, p.groups.kcol[h], t0 + M * st, b, fb);
                    dev::tma_load_3d(kt + L::TILE, &maps.v, p.groups.vcol[h], t0 + M * st, b, fb);
                }
            }
        } else { /* per step 64 K rows and 64 V rows by cp.async (rows past the sequence zero-filled), each lane's
                  * completion arriving on the stage's `full` (count 32) */
            const T *kg = static_cast<const T *>(p.k_latent) + (size_t)b * p.kbs + p.groups.kcol[h];
            const T *vg = static_cast<const T *>(p.v_latent) + (size_t)b * p.vbs + p.groups.vcol[h];
            for (int st = 0; st < nblocks * S; st++) {
                const int s = st % NST;
                if (st >= NST) dev::mbar_wait(empty + s, ((st / NST) - 1) & 1);
                char *kt = smem + s * L::STAGE, *vt = kt + L::TILE;
                const int base = t0 + M * st;
#pragma unroll 8
                for (int x = 0; x < M * R / 8 / 32; x++) { /* chunk e: row e / 8, 16-byte chunk e % 8 (coalesced) */
                    const int e = lane + 32 * x, row = e >> 3, ch = e & 7, slot = base + row;
                    const bool ok = slot < T_len;
                    dev::cp_async16(kt + L::at(row, ch), ok ? kg + (size_t)slot * p.kts + ch * 8 : kg, ok);
                    dev::cp_async16(vt + L::at(row, ch), ok ? vg + (size_t)slot * p.vts + ch * 8 : vg, ok);
                }
                dev::cp_async_mbar_arrive(full + st % NF);
            }
        }
        dev::launch_dependents();
        /* Stay until every stage's last copy has landed: this warp issued them, and an issuing thread should not
         * exit with its asynchronous copies outstanding (a candidate cause of the benchmark's intermittent
         * "unspecified launch failure", always in v9: runs 89 and 98, notes "The benchmark's intermittent fault").
         * The consumers' waits on the same phases are unaffected (a wait does not arrive). */
        const int nst = nblocks * S;
        for (int f = 0; f < NF && f < nst; f++) dev::mbar_wait(full + f, ((f + (nst - 1 - f) / NF * NF) / NF) & 1);
        return;
    }

    /* U_tau: a task is 8 consecutive dimensions d0 .. d0 + 7 of image row j (one core-matrix row) in all S images.
     * Lanes take consecutive j, so the Uk reads are conflict-free and each warp's 16-byte stores cover whole bank
     * sweeps (one thread per element, with d fixed across the warp, stored 2 bytes at 8-way conflicts: ~5 us) */
    for (int e = pt; e < R * (D / 8); e += PT) {
        const int j = e % R, d0 = 8 * (e / R);
        const bool lower = d0 < HALF; /* the 8 dimensions' rotate_half partners sit HALF above, or below */
        const T *ug = uks + d0 * R + j, *wg = ug + (lower ? HALF * R : -HALF * R);
        float u[8], w[8];
#pragma unroll
        for (int k = 0; k < 8; k++) u[k] = Num<T>::to_f(ug[k * R]), w[k] = Num<T>::to_f(wg[k * R]) * (lower ? -1.0f : 1.0f);
#pragma unroll
        for (int tau = 0; tau < S; tau++) {
            const float2 *cs = turn + tau * HALF + (lower ? d0 : d0 - HALF);
            uint32_t packed[4];
#pragma unroll
            for (int k = 0; k < 8; k += 2)
                packed[k / 2] = Num<T>::pack(u[k] * cs[k].x + w[k] * cs[k].y, u[k + 1] * cs[k + 1].x + w[k + 1] * cs[k + 1].y);
            *reinterpret_cast<uint4 *>(smem + L::U + tau * L::UT + v9_cm(j, d0)) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
        }
    }
    dev::fence_proxy_async();
    dev::bar_named_n(2, PT); /* U_tau complete; the staged Uk may be overwritten by the first Qa */

    if (warp > kV9CopyWarp) { /* ---- anchored queries: warp kV9CopyWarp + 1 + qw writes frequencies 16 qw .. 16 qw + 15 (and + HALF) ---- */
        const int kr = lane >> 2, pp = lane & 3;
        const T *q = qv;
        const float2 tr = turn_split(fr);
        float2 *qb = reinterpret_cast<float2 *>(smem + L::QB);
        /* the positions of a block's slots are loaded a block ahead (block 0's before the prologue): a load on this
         * chain would wait an L2 round trip behind the stream for every block */
        for (int blk = 0; blk < nblocks; blk++) {
            const int x = blk & 1, A = t0 + blk * M * S;
            int cur[PV];
#pragma unroll
            for (int i = 0; i < PV; i++) cur[i] = pv[i];
            if (blk + 1 < nblocks) load_block(blk + 1);
            if (blk >= 2) dev::mbar_wait(qempty + x, ((blk >> 1) - 1) & 1);
            /* anchors: positions of the block's first 64 slots; consecutive ones use the R(k) table. A block whose
             * every slot is its first position + its offset lets the consumers skip the per-slot check */
            const int a_lo = cur[0], a_hi = cur[1], a0 = dev::shfl_int(a_lo, 0);
            bool first = true, rest = true; /* the block's first 64 slots, the others */
#pragma unroll
            for (int i = 0; i < PV; i++) {
                const bool ok = A + lane + 32 * i >= t1 || cur[i] == a0 + lane + 32 * i;
                if (i < 2)
                    first = first && ok;
                else
                    rest = rest && ok;
            }
            const bool reg = dev::all_lanes(first), all = dev::all_lanes(first && rest);
            if (qw == 0) anch[x * M + lane] = a_lo, anch[x * M + lane + 32] = a_hi;
            if (qw == 0 && lane == 0) fullreg[x] = all;
            if (reg) {
                float cs, sn;
                rope_cos_sin(a0, tr, &cs, &sn);
                qb[fi] = make_float2(qlo * cs + qhi * sn, qhi * cs - qlo * sn); /* two lanes, one value */
            }
            __syncwarp();
            char *qa = smem + L::QAB + x * L::QA;
            if (reg) { /* the hot path: R(k)^T (R(a_0)^T q) from the table */
#pragma unroll
                for (int ch = 2 * qw; ch < 2 * qw + 2; ch++) {
                    const int i0 = 8 * ch + 2 * pp;
                    const float2 q0 = qb[i0], q1 = qb[i0 + 1];
#pragma unroll
                    for (int m = 0; m < 8; m++) {
                        const int k = kr + 8 * m;
                        const float4 e = *reinterpret_cast<const float4 *>(tab + k * L::RTS + i0);
                        const float lo0 = q0.x * e.x + q0.y * e.y, hi0 = q0.y * e.x - q0.x * e.y;
                        const float lo1 = q1.x * e.z + q1.y * e.w, hi1 = q1.y * e.z - q1.x * e.w;
                        *reinterpret_cast<uint32_t *>(qa + v9_cm(k, i0)) = Num<T>::pack(lo0, lo1);
                        *reinterpret_cast<uint32_t *>(qa + v9_cm(k, i0 + HALF)) = Num<T>::pack(hi0, hi1);
                    }
                }
            } else { /* each anchor's own angle (rows past the range get some angle: their slots are masked); rolled */
#pragma unroll 1
                for (int it = 0; it < 16; it++) {
                    const int ch = 2 * qw + (it >> 3), m = it & 7, i0 = 8 * ch + 2 * pp, k = kr + 8 * m;
                    const int ak = dev::shfl_int(m < 4 ? a_lo : a_hi, k & 31);
                    float c0, s0, c1, s1;
                    rope_cos_sin(ak, turn_split(p.inv_freq[i0]), &c0, &s0);
                    rope_cos_sin(ak, turn_split(p.inv_freq[i0 + 1]), &c1, &s1);
                    const float ql0 = Num<T>::to_f(q[i0]), qh0 = Num<T>::to_f(q[i0 + HALF]);
                    const float ql1 = Num<T>::to_f(q[i0 + 1]), qh1 = Num<T>::to_f(q[i0 + 1 + HALF]);
                    *reinterpret_cast<uint32_t *>(qa + v9_cm(k, i0)) = Num<T>::pack(ql0 * c0 + qh0 * s0, ql1 * c1 + qh1 * s1);
                    *reinterpret_cast<uint32_t *>(qa + v9_cm(k, i0 + HALF)) = Num<T>::pack(qh0 * c0 - ql0 * s0, qh1 * c1 - ql1 * s1);
                }
            }
            dev::fence_proxy_async();
            __syncwarp();
            dev::mbar_arrive(qfull + x);
        }
        dev::launch_dependents();
        return;
    }

    /* ---- consumer warpgroups: group cw = warp / 4 takes steps tau = cw and cw + 2 of every block (two steps in
     * flight per CTA, each with its W double-buffered: one warpgroup's chain of ~180 dependent instructions per step
     * kept the copies waiting, notes "Two consumer warpgroups"); its warp wl = warp % 4 owns rows 16 wl .. 16 wl + 15
     * of the step; quad g = lane / 4 owns rows 16 wl + g and + 8; its softmax state sits in lane g / 2 (which holds
     * those rows' diagonal scores), and column g of this warp's O^T accumulates its rows' values ---- */
    const int cw = warp >> 2, wl = warp & 3;
    const int g = lane >> 2, c = lane & 3, r0 = 16 * wl + g;
    const bool owner = c == (g >> 1);
    const uint64_t qa_desc0 = dev::wgmma_desc(smem + L::QAB, 128, kV9Sbo);
    const uint64_t u_desc0 = dev::wgmma_desc(smem + L::U, 128, kV9Sbo);
    auto issue = [&](float (&acc)[32], int x, int tau) {
        dev::wgmma_fence();
        const uint64_t ad = qa_desc0 + ((uint64_t)(x * L::QA) >> 4), ud = u_desc0 + ((uint64_t)(tau * L::UT) >> 4);
#pragma unroll
        for (int s = 0; s < D / 16; s++) dev::wgmma_k16<T, 64>(acc, ad + (uint64_t)(16 * s), ud + (uint64_t)(16 * s), s > 0);
        dev::wgmma_commit();
    };
    float wa[32], wb[32], o[4][4] = {};
    float m_run = -INFINITY, l_run = 0.0f;
    const int lrow = 16 * wl + (lane & 7) + ((lane >> 4) << 3); /* this lane's ldmatrix row */
    const int lsel = (lane >> 3) & 1;                              /* ... and its 16-byte chunk parity */
    const T *qg = qv; /* the query (the exact path reads it) */

    /* The exact score of row `row` of the K tile at position `ps_`: its quad rebuilds the key (lane c: frequencies
     * 16 c .. 16 c + 15 and their partners) from U (the tau = 0 image) and rotates it by its own angle. Quad-uniform
     * branch; the slow path of irregular positions only. */
    auto exact_score = [&](const char *kt, int row, int ps_) -> float {
        const char *u0 = smem + L::U;
        float acc = 0.0f;
        /* rolled loops: this path is cold, and unrolled copies of it in every step pushed the hot loop out of the
         * instruction cache (ncu of run 54: 11% of stall samples "no instruction") */
#pragma unroll 1
        for (int i = 16 * c; i < 16 * c + 16; i++) {
            float klo = 0.0f, khi = 0.0f;
#pragma unroll 1
            for (int jj = 0; jj < R; jj++) {
                const float cj = Num<T>::to_f(*reinterpret_cast<const T *>(kt + L::at(row, jj >> 3) + 2 * (jj & 7)));
                klo = fmaf(Num<T>::to_f(*reinterpret_cast<const T *>(u0 + v9_cm(jj, i))), cj, klo);
                khi = fmaf(Num<T>::to_f(*reinterpret_cast<const T *>(u0 + v9_cm(jj, i + HALF))), cj, khi);
            }
            float cs, sn;
            rope_cos_sin(ps_, turn_split(p.inv_freq[i]), &cs, &sn);
            acc = fmaf(Num<T>::to_f(qg[i]), klo * cs - khi * sn, acc);
            acc = fmaf(Num<T>::to_f(qg[i + HALF]), khi * cs + klo * sn, acc);
        }
        const unsigned quad = 0xFu << (4 * g);
        acc += __shfl_xor_sync(quad, acc, 1);
        acc += __shfl_xor_sync(quad, acc, 2);
        return acc;
    };

    /* one 64-slot step on `cur` (complete): block offset tau, Qa buffer x; CHECK (a block with irregular positions)
     * checks every slot against its row's anchor + 64 tau */
    auto process = [&](auto check, const float (&cur)[32], int st, int x, int tau) {
        constexpr bool CHECK = decltype(check)::value;
        const int s = st % NST, sl0 = t0 + M * st + r0, sl1 = sl0 + 8;
        /* A parity wait tells apart only two neighbouring phases of a barrier. With one `full` barrier per stage and
         * an odd stage count, the stage's previous step (st - NST) was the other warpgroup's, and full[s] could be
         * in three: that step's copies not yet landed (TMA completes out of order, and this warpgroup's own later
         * steps can land first), this step pending, or this step landed. Waiting for this step's parity with the
         * previous phase open passed at once: the stage was read early and released, and the copy warp re-armed a
         * phase still waiting on its bytes, the benchmark's "unspecified launch failure" (an illegal mbarrier
         * arrival), and wrong output where it did not trap (notes, "The fault's cause"). With NFULL = 2 NST
         * barriers, full[st % NFULL]'s previous phase is this warpgroup's own step st - NFULL, already waited for,
         * and its next one cannot be armed before this step's release: two states, which parity tells apart. */
        dev::mbar_wait(full + st % NF, (st / NF) & 1);
        const char *kt = smem + s * L::STAGE, *vt = kt + L::TILE;
        /* diagonal scores: S = W (16 rows x rk) . C^T (rk x 16 slots), W's accumulators as the A operand */
        float sa[2][4] = {};
#pragma unroll
        for (int kk = 0; kk < R / 16; kk++) {
            const uint32_t a[4] = {Num<T>::pack(cur[8 * kk + 0], cur[8 * kk + 1]), Num<T>::pack(cur[8 * kk + 2], cur[8 * kk + 3]),
                                   Num<T>::pack(cur[8 * kk + 4], cur[8 * kk + 5]), Num<T>::pack(cur[8 * kk + 6], cur[8 * kk + 7])};
            uint32_t bm[4];
            dev::ldsm_x4(bm, kt + L::at(lrow, 2 * kk + lsel));
            dev::mma16816<T>(sa[0], a, bm[0], bm[1]);
            dev::mma16816<T>(sa[1], a, bm[2], bm[3]);
        }
        float s0 = (g & 1) ? sa[0][1] : sa[0][0], s1 = (g & 1) ? sa[1][3] : sa[1][2];
        if constexpr (CHECK) { /* the quad's two rows, rolled: one copy of the exact path per step */
            /* the two rows' positions from global memory (L2: the anchor warps read this block's a block ago) */
            const int *an = anch + x * M, pr0 = pos[min(sl0, T_len - 1)], pr1 = pos[min(sl1, T_len - 1)];
#pragma unroll 1
            for (int e = 0; e < 2; e++) {
                const int row = r0 + 8 * e, ps_ = e ? pr1 : pr0;
                if (sl0 + 8 * e < t1 && ps_ != an[row] + M * tau) {
                    const float v = exact_score(kt, row, ps_);
                    s0 = e ? s0 : v, s1 = e ? v : s1;
                }
            }
            __syncwarp();
        }
        s0 = sl0 < t1 ? s0 * p.score_scale : -INFINITY;
        s1 = sl1 < t1 ? s1 * p.score_scale : -INFINITY;
        const float m_new = fmaxf(m_run, fmaxf(s0, s1));
        const bool grow = owner && m_new > m_run;
        float corr = 1.0f;
        if (grow) corr = dev::ex2(m_run - m_new), l_run *= corr, m_run = m_new;
        if (__any_sync(0xffffffffu, grow)) { /* quads 2c and 2c + 1 own this lane's two O^T columns */
            const float c0 = dev::shfl(corr, 9 * c), c1 = dev::shfl(corr, 9 * c + 4);
#pragma unroll
            for (int mb = 0; mb < 4; mb++) o[mb][0] *= c0, o[mb][1] *= c1, o[mb][2] *= c0, o[mb][3] *= c1;
        }
        uint32_t b0 = 0u, b1 = 0u;
        if (owner && m_run != -INFINITY) {
            const float q0 = dev::ex2(s0 - m_run), q1 = dev::ex2(s1 - m_run);
            l_run += q0 + q1;
            b0 = (g & 1) ? Num<T>::pack(0.0f, q0) : Num<T>::pack(q0, 0.0f);
            b1 = (g & 1) ? Num<T>::pack(0.0f, q1) : Num<T>::pack(q1, 0.0f);
        }
#pragma unroll
        for (int mb = 0; mb < 4; mb++) {
            uint32_t a[4];
            dev::ldsm_x4_trans(a, vt + L::at(lrow, 2 * mb + lsel));
            dev::mma16816<T>(o[mb], a, b0, b1);
        }
        /* the stage is released for the copy warp. A checked step may have read the stage with plain loads (the
         * exact path's key reads, which a later step's copies overwrite): there every lane arrives for itself, as
         * racecheck follows no __syncwarp into a lone arrival (run 148); a regular step read the stage through
         * ldmatrix only, and lane 0 arrives for its warp (one arrival, not 32, in the hot loop) */
        if constexpr (CHECK) {
            dev::mbar_arrive(empty + s);
        } else {
            __syncwarp();
            if (lane == 0) dev::mbar_arrive_n(empty + s, 32);
        }
    };
    auto fence_all = [&](float (&acc)[32]) {
#pragma unroll
        for (int x = 0; x < 32; x++) dev::fence_reg(acc[x]);
    };
    if (nblocks > 0) dev::mbar_wait(qfull, 0);
    issue(wa, 0, cw); /* outside any branch (a dummy when the range is empty) */
    dev::wgmma_wait0();
    fence_all(wa);
    /* this warpgroup's two steps of block blk; wa holds the first one's W on entry and the next block's on exit.
     * The hot loop holds the regular variant only: the checked one (irregular positions) sits apart, so that no
     * cold code shares the hot loop's instruction-cache lines (notes "v9 in the library": rolling the cold paths
     * gained 12%; this split ~1% more, notes "v9's prologue and hot loop") */
    auto run_block = [&](auto check, int blk) {
        constexpr bool CHECK = decltype(check)::value;
        const int x = blk & 1, ta = cw, tb = cw + kV9Groups;
        issue(wb, x, tb); /* tb into wb, then ta on wa */
        process(check, wa, blk * S + ta, x, ta);
        dev::wgmma_wait0();
        fence_all(wb);
        /* qempty: every consumer lane arrives for itself (a __syncwarp and lane 0's lone arrival order the same reads,
         * but racecheck does not follow that chain and reports each later anchor write as a hazard: run 145,
         * python/probe_racecheck_mbarrier.cu) */
        if (!CHECK) dev::mbar_arrive(qempty + x); /* this block's Qa image is no longer read by this warpgroup (a
                                                   * checked block's anchors are) */
        const bool more = blk + 1 < nblocks; /* the next block's first W into wa */
        if (more) dev::mbar_wait(qfull + (x ^ 1), ((blk + 1) >> 1) & 1);
        issue(wa, more ? x ^ 1 : x, ta);
        process(check, wb, blk * S + tb, x, tb);
        if (CHECK) dev::mbar_arrive(qempty + x); /* this block's Qa image and anchors are no longer read */
        dev::wgmma_wait0();
        fence_all(wa);
    };
    for (int blk = 0; blk < nblocks; blk++) { /* fullreg[x] was written before qfull[x] completed */
        if (fullreg[blk & 1])
            run_block(std::false_type{}, blk);
        else
            run_block(std::true_type{}, blk);
    }
    dev::launch_dependents(); /* the merge grid may be launched now: only its launch overlaps this epilogue */

    /* combine the 32 x kV9Groups quads (records over the stages: every copy has been consumed) */
    dev::bar_named_n(1, 128 * kV9Groups);
    float *recs = reinterpret_cast<float *>(smem);
    constexpr int REC = 2 + R;
    if (owner) recs[(warp * 8 + g) * REC] = m_run, recs[(warp * 8 + g) * REC + 1] = l_run;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        float *rec = recs + (warp * 8 + 2 * c + e) * REC + 2;
#pragma unroll
        for (int mb = 0; mb < 4; mb++) rec[16 * mb + g] = o[mb][e], rec[16 * mb + g + 8] = o[mb][2 + e];
    }
    dev::bar_named_n(1, 128 * kV9Groups);
    combine_cta_partials<R>(p, b, h, split, 32 * kV9Groups, recs, bad_pad, DIRECT); /* n_rep = 1: records REC apart */
#else
    poison_unsupported_build(p, blockIdx.z, blockIdx.x, blockIdx.y);
#endif
}

} // namespace

namespace palu_decode __attribute__((visibility("hidden"))) { /* internal to the extension: no exported symbols */

static_assert(kV9Rows * kV9S == kV9BlockSlots, "the plan's block size (latent_decode_common.cuh)");

/* ---- v9 launch ---- */

const char *v9_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                           int *warps, size_t *smem, char *why, size_t why_len)
{
    const int64_t n_rep = a->heads / a->kv_heads;
    if (n_rep != 1)
        return snprintf(why, why_len, "n_rep = heads / kv_heads = %lld (v9 takes one query head per KV head: its "
                                      "work grows with n_rep)", (long long)n_rep), why;
    static_assert(kV9D == 128 && kV9R == 64, "g1_d128_r64_unsupported's shape");
    /* latent rows are copied whole (TMA boxes, or 16-byte cp.async under capture), Uk by 16-byte cp.async */
    const char *no = g1_d128_r64_unsupported("v9", a, max_rk, max_rv, smem_optin, device, kV9Smem, why, why_len);
    if (no == NULL) *warps = kV9Warps, *smem = kV9Smem;
    return no;
}

/* v9's latent tiles by TMA (boxes of rk x 64 rows, SWIZZLE_128B) where v4 would take TMA (not under CUDA-graph
 * capture, PALU_C_V4_TMA not "0"), else by cp.async. Where it would be cp.async and the caller asked for auto,
 * nothing is launched (*ran false) and the caller runs v4: v9's cp.async build is slower than v4's (run 64:
 * Llama-2-7B B8 64K 1466 vs 1299 us; its one copy warp issues ~70 cp.async per step), so a captured graph keeps v4's
 * speed. */
template <typename T>
palu_status launch_v9(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                      bool *ran)
{
    V4Maps maps;
    memset(&maps, 0, sizeof maps);
    const bool tma = tma_allowed(pl, stream) && latent_tma_maps(p, kV9R, kV9Rows, CU_TENSOR_MAP_SWIZZLE_128B, &maps);
    *ran = tma || a->impl != PALU_LATENT_DECODE_AUTO;
    if (!*ran) return PALU_OK;
    if (tma)
        return launch_decode_smem(p.direct ? decode_v9_kernel<T, true, true> : decode_v9_kernel<T, true, false>,
                                  V9Layout<true>::TOTAL, p, pl, stream, maps);
    return launch_decode_smem(p.direct ? decode_v9_kernel<T, false, true> : decode_v9_kernel<T, false, false>,
                              V9Layout<false>::TOTAL, p, pl, stream, maps);
}

palu_status dispatch_v9(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream,
                        bool *ran)
{
    *ran = false;
    switch (a->dtype) {
    case PALU_DTYPE_F16: return launch_v9<__half>(a, p, pl, stream, ran);
    case PALU_DTYPE_BF16: return launch_v9<__nv_bfloat16>(a, p, pl, stream, ran);
    default: return palu_fail(PALU_ERR_TYPE, "dtype %s is not supported by v9", palu_dtype_name(a->dtype));
    }
}

} // namespace palu_decode
