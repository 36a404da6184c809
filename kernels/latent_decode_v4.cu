/* latent_decode_v4.cu -- decode kernels v4 (16-token warp tiles, 8-12 warps per CTA; auto's choice where v9 does not
 * apply) and v5 (v4 with the key rebuild on wgmma, sm_90a, on request), which share their per-warp code (V4Warp), and
 * their launchers. The design is in the comments below, the history in docs/design/latent_decode_notes.md; what all
 * decode kernels share is in latent_decode_common.cuh, and latent_decode.cu plans and dispatches them.
 *
 * Shape legend: as latent_decode.cu (B batch, T slots, H query heads, Hkv KV heads, n_rep = H / Hkv, D head_dim,
 * rk / rv ranks of the CTA's group, TT tokens per tile).
 */
#include "latent_decode_common.cuh"

using namespace palu_decode;

namespace {

/* ---- v4: v3 with 16-token warp tiles and 8-12 warps per CTA (latency hiding by occupancy) ------------------- */

/* Why v4. The v3 profile (docs/design/profiles/ncu_v3_*.txt) shows a latency-bound kernel: 230 registers and
 * 113 KB per 4-warp CTA hold 8 warps per SM (1.9 per scheduler, 0.47 eligible, 35% of the issue slots busy).
 * v4 keeps v3's math and fragment layouts (see there) and changes the resources:
 *   - one m16 tile (16 tokens) per warp tile instead of two: half the rebuild accumulators, HK fragments and
 *     score fragments, so the thread fits 128 registers at rk = rv <= 64 (168 at 128);
 *   - CTAs of 8 warps (rk <= 64, two CTAs per SM: 16 warps) or 12 warps (rk = 128, one CTA: 12 warps) that
 *     share Uk, the bias and the R(tau) table;
 *   - per warp two 16-token key stages (keys + positions) and ONE value stage. The waits sit where the data is
 *     used: a tile's keys are waited for at its top (fetched one whole tile earlier), its values just before the
 *     PV product (fetched at the end of the previous tile, so they have the rebuild, RoPE, scores and softmax of
 *     this tile to land). v3w waited for everything (cp.async.wait_group 0) at the top of each tile, right after
 *     issuing the values at the end of the previous one, so every tile exposed a whole DRAM latency: that is
 *     why its 12 warps gained 0-3%.
 * Cost: the per-tile work (query advance and packing, softmax, tile set-up) is spread over 16 tokens instead of
 * 32, and every warp reads all of Uk per 16 tokens instead of per 32 (shared-memory traffic; the notes have the
 * budget). To keep the query's share as in v3, one anchor serves two tiles: the R(tau) table has 32 rows, a
 * tile starting 0 or 16 slots after the anchor reads rows [0, 16) or [16, 32), and the query advances by R(32)
 * after the second (re-anchored precisely after kV4Reanchor advances: the same 256 slots as v3).
 * Resources (nvcc 13.0, sm_90a, ptxas -v; D = 128):  rk = rv = 64: 128 registers (16 B spilled: 4 loop-invariant
 * words reloaded once per tile), 92.5 KB, 2 CTAs x 8 warps = 16 warps per SM;  128: 168 registers (no spill
 * without bias), 208 KB, 1 CTA x 12 warps;  v3 had 230 / 243 registers, 8 / 4 warps per SM. Static SASS of the
 * consecutive path per 16 tokens: ~735 (64/64; v3 645), ~1130 (128/128; v3 926). Shared-memory traffic per 16
 * tokens rises to ~272 wavefronts at 64/64 (v3 ~224; the DRAM bytes take 222 SM-cycles at the floor). */
constexpr int kV4Tile = 16;

/* One thread's share of a warp's 16-token tile copies, with the address arithmetic hoisted out of the tile loop.
 * Copy x of tile it reads 16 bytes at row (it * kV4Tile + r0 + dr(x)) and 16-byte chunk c0 + dc(x) of the
 * warp's slot range, where dr and dc depend on x only (the callers' maps make them compile-time constants after
 * unrolling), so a copy costs one IMAD.WIDE, one compare and the LDGSTS. The first v4/v5 computed each source
 * as (slot * token_stride) in 64 bits with its bounds per copy: ~220 of v5's ~750 instructions per 16 tokens
 * (nvdisasm of the loop, 2026-11-29). Rows at or past `lim` (the range's end) are zero-filled (src-size 0) with
 * `base`, a valid address, as the source. */
struct CopyRows {
    const char *base, *p0; /* the latent matrix (always valid); this thread's row r0, chunk c0 of tile 0 */
    int row_bytes, lim;    /* bytes between latent rows (token stride); rows of the range left after r0 */
    __device__ __forceinline__ CopyRows(const void *base_, long long token_stride_elems, int first_slot, int r0,
                                        int c0, int range_len)
        : base(static_cast<const char *>(base_)),
          p0(base + ((long long)(first_slot + r0) * token_stride_elems + c0 * 8) * 2),
          row_bytes((int)(token_stride_elems * 2)), lim(range_len - r0)
    {
    }
    /* Copy into dst the 16 bytes of tile it, row offset dr, chunk offset dc (both relative to r0, c0). FULL: the
     * caller knows the whole tile lies inside the range (every tile but a range's last), so no bound and no
     * select: the select of a 64-bit source per copy was most of what remained after the hoisting. */
    template <bool FULL> __device__ __forceinline__ void copy(void *dst, int it, int dr, int dc) const
    {
        const int row = it * kV4Tile + dr;
        const char *src = p0 + (long long)row * row_bytes + dc * 16;
        if (FULL) {
            dev::cp_async16(dst, src, true);
        } else {
            const bool ok = row < lim;
            dev::cp_async16(dst, ok ? src : base, ok);
        }
    }
};
template <bool B> struct Flag {
    static constexpr bool value = B;
};
template <int N> struct IntC {
    static constexpr int value = N;
};
constexpr int kV4Span = 2 * kV4Tile; /* slots one query anchor covers: two tiles (R(tau) table rows) */
constexpr int kV4MaxRep = 8;         /* query heads per KV head (n_rep) v2-v5 take */
static_assert((kV4Span & (kV4Span - 1)) == 0, "turn_entry needs a power-of-two span");
constexpr int kV4Reanchor = 8;       /* advances by R(32) before a precise re-anchor (256 slots, as v3) */

/* v4's HK and HV tiles: unpadded rows with their 16-byte chunks XOR-swizzled, not rows padded by 16 bytes (v2-v3,
 * v4 until run 18). Why: ncu's source page counted the shared-memory wavefronts of v4's 16-byte cp.async at
 * 2.5-2.75x their ideal (run 15: 10 and 11 wavefronts per 512-byte LDGSTS where 4 suffice), about a third of all
 * of v4's wavefronts: padded rows start 16 bytes further into a 128-byte line each, so most rows straddle two lines.
 * Unpadded rows sit in whole lines; the swizzle keeps each ldmatrix phase (8 rows, one 16-byte chunk each) on 8
 * different bank groups: chunk c of row r lives at chunk c ^ (r & 7) for rows of >= 8 chunks, and at c ^
 * ((r >> 1) & 3) for rows of 4 chunks (64 bytes: two rows per line, bit 0 of r picks the half). Measured (run 18,
 * against the padded rows in the same run): kernel -1.6% at Llama-3-8B B8 64K, -2.4% at Llama-2-7B B8 64K. */
template <int C> __device__ __forceinline__ int v4_swz(int row, int chunk)
{
    static_assert(C == 4 || C >= 8, "rows of 4 or >= 8 16-byte chunks");
    return C >= 8 ? chunk ^ (row & 7) : chunk ^ ((row >> 1) & 3);
}

/* Shared memory of a v4 CTA: Uk (padded rows as v2), bias, turn[i] = (hi, lo turn split, cos, sin of
 * 32 * inv_freq_i), rtab[tau][i] = (cos, sin)(tau * inv_freq_i) for tau < 32 (row stride: V4Warp::RTST; allocated
 * at the fp32 size), the query rows of the CTA's heads (n_rep x D; used by the rk <= 64 kernels), then from a
 * 128-byte boundary per warp: two key stages (16 swizzled rows of HK, 16 positions;
 * each stage a whole number of 128-byte lines) and one value tile (16 swizzled rows of HV). */
template <int D, int RK, int RV> struct V4Layout {
    static constexpr int HALF = D / 2;
    static constexpr int UKST = (RK + 8) * 2, RTST = HALF * 8 + 64;
    static constexpr int HKST = RK * 2, HVST = RV * 2; /* swizzled rows (v4_swz) */
    static constexpr size_t UK = 0;
    static constexpr size_t BIAS = UK + (size_t)D * UKST;
    static constexpr size_t TURN = BIAS + (size_t)D * 4;
    static constexpr size_t RTAB = TURN + (size_t)HALF * 16;
    static constexpr size_t round(size_t n) { return (n + 127) / 128 * 128; } /* swizzled rows in whole lines */
    static constexpr size_t Q = RTAB + (size_t)kV4Span * RTST; /* the CTA's query rows (n_rep x D, 2-byte dtype) */
    static constexpr size_t WARPS = round(Q + (size_t)kV4MaxRep * D * 2);
    static constexpr size_t KPOS = (size_t)kV4Tile * HKST;              /* positions inside a key stage */
    static constexpr size_t KSTAGE = round(KPOS + kV4Tile * 4);
    static constexpr size_t VTILE = 2 * KSTAGE;                           /* value tile inside a warp's area */
    static constexpr size_t PER_WARP = VTILE + (size_t)kV4Tile * HVST;
    static constexpr size_t total(int warps) { return WARPS + (size_t)warps * PER_WARP; }
    static constexpr size_t BARS = 0; /* no mbarriers: the cp.async build */
};

/* v4's shared memory with tensor-memory-access tile loads (TMA; V4Layout otherwise): the same CTA tables, then per
 * warp two key stages and the value tile as whole swizzle atoms (TMA's SWIZZLE_128B / 64B address bits are those of
 * the shared-memory address, so each box must start on 1024 bytes; rk = 64 or 32 makes a 16-row tile 2048 or 1024
 * bytes), the two stages' positions (by cp.async, 128 bytes apart) and three mbarriers (key stages 0, 1, value
 * tile). The kernel rounds the dynamic shared-memory base up to 1024 bytes (hence + 1024 in total). */
template <int D, int RK, int RV> struct V4TmaLayout {
    using B = V4Layout<D, RK, RV>;
    static constexpr size_t up(size_t n) { return (n + 1023) / 1024 * 1024; }
    static constexpr int UKST = B::UKST, HKST = B::HKST, HVST = B::HVST;
    static constexpr size_t UK = B::UK, BIAS = B::BIAS, TURN = B::TURN, RTAB = B::RTAB, Q = B::Q;
    static constexpr size_t WARPS = up(Q + (size_t)kV4MaxRep * D * 2);
    static constexpr size_t KSTAGE = (size_t)kV4Tile * HKST, VTILE = 2 * KSTAGE;
    static constexpr size_t KPOS = VTILE + (size_t)kV4Tile * HVST; /* positions of key stage s at KPOS + 128 s */
    static constexpr size_t BARS = KPOS + 2 * 128; /* after the two stages' positions */
    static constexpr size_t PER_WARP = up(BARS + 3 * 8);
    static constexpr size_t total(int warps) { return WARPS + (size_t)warps * PER_WARP + 1024; }
    static_assert(KSTAGE % 1024 == 0 && RK == RV, "whole swizzle atoms; one box shape for keys and values");
};

/* The per-warp stages v4 and v5 share, once a 16-token tile's rebuilt keys sit in registers as fp32 in the
 * mma.sync m16n8 C layout (rows g / g + 8 = tokens; v4's rebuild accumulators and, per warp, v5's wgmma
 * accumulators alike): the query's anchoring and advance, RoPE on the keys by the R(tau) table (or each key's
 * precise angle), the transposed scores S^T = K . Qr^T, the online softmax, P^T by movmatrix, z^T += HV^T . P^T
 * and the partial record. The kernels keep what differs: the tile loads, their waits and the key rebuild.
 * Every member is force-inlined and every array index is a compile-time constant after unrolling, so the state
 * stays in registers as when this code was written out in each kernel (ptxas before / after the factoring: 96 of
 * the 105 entry points identical, the rest within 2 registers; docs/design/latent_decode_notes.md, v5). */
template <typename T, int D, int RV, bool SWZ = false> struct V4Warp {
    static constexpr int HALF = D / 2, PASSES = D / 32, RVT = RV / 16, TT = kV4Tile;
    /* fp16: RoPE on packed half2 (HMUL2 + HFMA2 per two keys' entries: half the FP instructions of fp32 RoPE,
     * and the R(tau) table in halves: half its shared-memory reads). The keys are rounded to fp16 for the score
     * MMA anyway; this adds the roundings of cos/sin and of the product (measured error in the notes). */
    static constexpr bool HROPE = Num<T>::kHalfRope;
    /* HV row stride (SWZ: v4's swizzled rows, V4Layout; else v5's padded rows, V5Layout), and the R(tau) table's
     * row stride. fp32 rows (8 B per frequency) keep v3's 64-byte pad: a row is 16 x 8 + 4 words apart mod 32, so
     * the LDS.128 of 8 rows x 4 lanes fill 4 wavefronts, the minimum. Half rows (4 B per frequency) with that
     * same stride put rows 0, 2, 4, 6 on the same 8 banks: the table's LDS.64 took 4 wavefronts where 2 suffice
     * (ncu source page, run 15: 1.05 M of 2.68 M LDS.64 wavefronts "excessive"), so they are padded by 32 B
     * instead: 8 words apart mod 32, rows 0-3 and 4-7 each cover the 32 banks once (run 17: -12% shared-memory
     * wavefronts, v4 kernel -6% at Llama-3-8B B1 64K). Both fit the fp32-sized table the layouts allocate. */
    static constexpr int HVST = SWZ ? RV * 2 : (RV + 8) * 2, RTST = HROPE ? HALF * 4 + 32 : HALF * 8 + 64;

    /* R(tau) table entry (tau, frequency i): fp32 (cos, sin) at byte 8 i of row tau; with HROPE, per frequency
     * pair i / 2 the halves (cos_i, cos_i+1, sin_i, sin_i+1) at byte 8 (i / 2) */
    static __device__ __forceinline__ void store_rtab(char *rtab, int tau, int i, float c, float s)
    {
        char *row = rtab + tau * RTST;
        if constexpr (HROPE) {
            __half *e = reinterpret_cast<__half *>(row + (i >> 1) * 8) + (i & 1);
            e[0] = __float2half_rn(c), e[2] = __float2half_rn(s);
        } else {
            *reinterpret_cast<float2 *>(row + i * 8) = make_float2(c, s);
        }
    }
    /* The CTA's bias (0 without one), turn[i] = (hi, lo turn split, cos, sin of kV4Span inv_freq_i) and the R(tau)
     * table for tau < kV4Span, written by all threads (v4 and v5 prologues; the caller synchronizes).
     * NT > 0: the CTA's threads, a multiple of HALF, so that every thread fills the table rows of one frequency:
     * its turn split is computed once and its rows are independent (unrolled), not a chain of loads and FP64
     * conversions per entry. The tables sit on the path to the first tile: -0.7 us per call at batch 1 (run 36).
     * NT = 0: the rolled loop over all entries. The 12-warp v4 kernels (rk = 128, 168 registers) keep it: the
     * unrolled prologue changed ptxas's allocation of their decode loop (fp16 128/128: 8 -> 16 spilled loads)
     * and made the G = 2 rows 4-8% slower (run 36); the 8-warp kernels' spills did not change. v5 keeps it too. */
    template <int NT>
    static __device__ __forceinline__ void build_tables(const DecodeParams &p, int kvh, float *bias, float4 *turn,
                                                        char *rtab)
    {
        for (int d = threadIdx.x; d < D; d += blockDim.x) bias[d] = p.k_bias ? p.k_bias[(size_t)kvh * D + d] : 0.0f;
        if constexpr (NT > 0) {
            static_assert(NT % HALF == 0, "each thread fills the rows of one frequency");
            const int i = threadIdx.x % HALF;
            const float inv_freq = p.inv_freq[i];
            if (threadIdx.x < HALF) turn[i] = turn_entry(inv_freq, (float)kV4Span);
            const float2 tr = turn_split(inv_freq);
#pragma unroll
            for (int tau = threadIdx.x / HALF; tau < kV4Span; tau += NT / HALF) {
                float c, s;
                rope_cos_sin(tau, tr, &c, &s);
                store_rtab(rtab, tau, i, c, s);
            }
        } else {
            for (int i = threadIdx.x; i < HALF; i += blockDim.x) turn[i] = turn_entry(p.inv_freq[i], (float)kV4Span);
            for (int e = threadIdx.x; e < kV4Span * HALF; e += blockDim.x) {
                const int tau = e / HALF, i = e - tau * HALF;
                float c, s;
                rope_cos_sin(tau, turn_split(p.inv_freq[i]), &c, &s);
                store_rtab(rtab, tau, i, c, s);
            }
        }
    }
    /* The state is the kernel's own variables, held here by reference (as the lambdas held them before): a struct
     * that owned the arrays would stay in memory until the loops are unrolled and change the early optimizations
     * (measured: different registers and spills). */
    float (&qrlo)[PASSES][4]; /* the rotated query qr = R(anchor)^T q, as v3: pass kk holds dims 16kk + {2c, */
    float (&qrhi)[PASSES][4]; /* 2c+1, 8+2c, 8+2c+1} (lo) and the same + HALF (hi) of head row gq (0 past n_rep) */
    int &anchor, &age;        /* INT_MIN: qr not set */
    float (&zacc)[RVT][4];
    float (&m_run)[2], (&l_run)[2]; /* heads 2c, 2c + 1 */
    const float4 *turn;
    const char *rtab;
    const T *qptr; /* the query row of head gq (row n_rep - 1 past n_rep), from dim 2c */
    int lane, gq, cq, n_rep;
    /* the current tile: positions (shared memory), valid rows, consecutive?, offset from the anchor, table rows */
    const int *tpos;
    int nvalid, off;
    bool consec;
    const char *rt;

    __device__ __forceinline__ void anchor_query(int a) /* precise angle, as v3 */
    {
#pragma unroll
        for (int kk = 0; kk < PASSES; kk++)
#pragma unroll
            for (int x = 0; x < 4; x++) {
                const int o = 16 * kk + 8 * (x >> 1) + (x & 1);
                const float lo = gq < n_rep ? Num<T>::to_f(qptr[o]) : 0.0f;
                const float hi = gq < n_rep ? Num<T>::to_f(qptr[o + HALF]) : 0.0f;
                const float4 tf = turn[o + 2 * cq];
                float c, s;
                rope_cos_sin(a, make_float2(tf.x, tf.y), &c, &s);
                qrlo[kk][x] = lo * c + hi * s;
                qrhi[kk][x] = hi * c - lo * s;
            }
    }

    /* Set up a tile of nvalid_ >= 1 valid rows whose positions sit at tpos_: is it consecutive, and re-anchor the
     * query if its keys cannot use the table. Keys rotate by R(pos - anchor) from table rows [off, off + 16):
     * needs off 0 or 16 (a consecutive tile) or anchor 0 (any other tile: its keys take their own precise angle) */
    __device__ __forceinline__ void begin_tile(const int *tpos_, int nvalid_)
    {
        tpos = tpos_, nvalid = nvalid_;
        const int mypos = tpos[lane & (TT - 1)];
        const int p0 = dev::shfl_int(mypos, 0);
        consec = dev::all_lanes((lane & (TT - 1)) >= nvalid || mypos == p0 + (lane & (TT - 1)));
        off = anchor == INT_MIN ? -1 : p0 - anchor;
        if (consec ? off != 0 && off != TT : anchor != 0) {
            anchor_query(consec ? p0 : 0);
            anchor = consec ? p0 : 0, age = 0, off = 0;
        }
        rt = rtab + (consec ? off : 0) * RTST;
    }

    /* Pass kk (dims 16kk.. and their partners + HALF): RoPE on the keys, then their scores into sacc. acc(q, r) is
     * entry r of the kernel's accumulator fragment of 8-column block 2kk + (q & 1) + (q >> 1) D/16 (q < 2: the lo
     * dims, q >= 2: their rotate_half partners). sacc: S^T (16 tokens x 8 heads), entries (token g, head 2c),
     * (g, 2c+1), (g+8, 2c), (g+8, 2c+1). CONSEC (Flag<true> or Flag<false>) is the tile's `consec`, known at
     * compile time: the kernels branch once per tile into two copies of their passes instead of once per 8
     * columns (16 branches per tile). */
    template <class CONSEC, class Acc>
    __device__ __forceinline__ void rope_scores(float (&sacc)[4], int kk, CONSEC, Acc &&acc)
    {
        if constexpr (HROPE)
            rope_scores_half<CONSEC::value>(sacc, kk, acc);
        else
            rope_scores_f32<CONSEC::value>(sacc, kk, acc);
    }
    template <bool CONSEC, class Acc> __device__ __forceinline__ void rope_scores_f32(float (&sacc)[4], int kk, Acc &&acc)
    {
        /* RoPE by pos - anchor: pair i = 16kk + 8qq + 2c + e, token tau = g + 8u in fragment entries 2u + e */
#pragma unroll
        for (int qq = 0; qq < 2; qq++) {
            const int i0 = 16 * kk + 8 * qq + 2 * cq;
#pragma unroll
            for (int u = 0; u < 2; u++) {
                float cs[2], sn[2];
                if (CONSEC) {
                    const float4 r = *reinterpret_cast<const float4 *>(rt + (gq + 8 * u) * RTST + i0 * 8);
                    cs[0] = r.x, sn[0] = r.y, cs[1] = r.z, sn[1] = r.w;
                } else {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const float4 tf = turn[i0 + e];
                        rope_cos_sin(tpos[gq + 8 * u], make_float2(tf.x, tf.y), &cs[e], &sn[e]);
                    }
                }
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int r = 2 * u + e;
                    const float lo = acc(qq, r), hi = acc(qq + 2, r);
                    acc(qq, r) = lo * cs[e] - hi * sn[e];
                    acc(qq + 2, r) = hi * cs[e] + lo * sn[e];
                }
            }
        }
        /* scores, transposed: the rotated keys are the A operand as they sit (C layout = A layout: rows tokens
         * g / g + 8, k = dims 2c.. of column tile 2kk / 2kk + 1), the rotated query the B operand (k = dims, n =
         * head g): k steps kk (dims 16kk..) and their partners + HALF */
        const uint32_t klo[4] = {Num<T>::pack(acc(0, 0), acc(0, 1)), Num<T>::pack(acc(0, 2), acc(0, 3)),
                                 Num<T>::pack(acc(1, 0), acc(1, 1)), Num<T>::pack(acc(1, 2), acc(1, 3))};
        const uint32_t khi[4] = {Num<T>::pack(acc(2, 0), acc(2, 1)), Num<T>::pack(acc(2, 2), acc(2, 3)),
                                 Num<T>::pack(acc(3, 0), acc(3, 1)), Num<T>::pack(acc(3, 2), acc(3, 3))};
        dev::mma16816<T>(sacc, klo, Num<T>::pack(qrlo[kk][0], qrlo[kk][1]), Num<T>::pack(qrlo[kk][2], qrlo[kk][3]));
        dev::mma16816<T>(sacc, khi, Num<T>::pack(qrhi[kk][0], qrhi[kk][1]), Num<T>::pack(qrhi[kk][2], qrhi[kk][3]));
    }

    /* rope_scores with HROPE: entries 2u and 2u + 1 (pairs i0, i0 + 1 of token g + 8u) rotate as one half2, which
     * is already the MMA operand register 2qq + u of the keys */
    template <bool CONSEC, class Acc> __device__ __forceinline__ void rope_scores_half(float (&sacc)[4], int kk, Acc &&acc)
    {
        uint32_t klo[4], khi[4];
#pragma unroll
        for (int qq = 0; qq < 2; qq++) {
            const int i0 = 16 * kk + 8 * qq + 2 * cq;
#pragma unroll
            for (int u = 0; u < 2; u++) {
                __half2 c2, s2;
                if (CONSEC) {
                    const uint2 r = *reinterpret_cast<const uint2 *>(rt + (gq + 8 * u) * RTST + i0 * 4);
                    memcpy(&c2, &r.x, 4), memcpy(&s2, &r.y, 4);
                } else {
                    float cs[2], sn[2];
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const float4 tf = turn[i0 + e];
                        rope_cos_sin(tpos[gq + 8 * u], make_float2(tf.x, tf.y), &cs[e], &sn[e]);
                    }
                    c2 = __floats2half2_rn(cs[0], cs[1]), s2 = __floats2half2_rn(sn[0], sn[1]);
                }
                const __half2 lo = __floats2half2_rn(acc(qq, 2 * u), acc(qq, 2 * u + 1));
                const __half2 hi = __floats2half2_rn(acc(qq + 2, 2 * u), acc(qq + 2, 2 * u + 1));
                const __half2 nlo = __hfma2(lo, c2, __hneg2(__hmul2(hi, s2)));
                const __half2 nhi = __hfma2(hi, c2, __hmul2(lo, s2));
                memcpy(&klo[2 * qq + u], &nlo, 4), memcpy(&khi[2 * qq + u], &nhi, 4);
            }
        }
        dev::mma16816<T>(sacc, klo, Num<T>::pack(qrlo[kk][0], qrlo[kk][1]), Num<T>::pack(qrlo[kk][2], qrlo[kk][3]));
        dev::mma16816<T>(sacc, khi, Num<T>::pack(qrhi[kk][0], qrhi[kk][1]), Num<T>::pack(qrhi[kk][2], qrhi[kk][3]));
    }

    /* after the second tile of an anchor: advance the query by R(32) to the next pair, or let it re-anchor */
    __device__ __forceinline__ void advance_query()
    {
        if (consec && off == TT) {
            if (age + 1 < kV4Reanchor) {
#pragma unroll
                for (int kk = 0; kk < PASSES; kk++)
#pragma unroll
                    for (int x = 0; x < 4; x++) {
                        const float2 cs32 =
                            reinterpret_cast<const float2 *>(turn + 16 * kk + 8 * (x >> 1) + 2 * cq + (x & 1))[1];
                        const float lo = qrlo[kk][x], hi = qrhi[kk][x];
                        qrlo[kk][x] = lo * cs32.x + hi * cs32.y;
                        qrhi[kk][x] = hi * cs32.x - lo * cs32.y;
                    }
                anchor += kV4Span, age++;
            } else {
                anchor = INT_MIN;
            }
        }
    }

    /* Online softmax per head 2c + e (column e of S^T): its 16 tokens sit in entries e and 2 + e of the 8 lanes
     * with this c, so the max goes over lane bits 2..4; l_run is this lane's share (summed at the end). Rescales
     * z and returns P^T's two 8x8 blocks (tokens 0-7, 8-15) transposed: the B operand of the PV product (k =
     * tokens 2c, 2c+1 (+8), n = head g). */
    __device__ __forceinline__ void softmax(const float (&sacc)[4], float score_scale, uint32_t &pb0, uint32_t &pb1)
    {
        float alpha[2], pv[4];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const float v0 = gq < nvalid ? sacc[e] * score_scale : -INFINITY;
            const float v1 = gq + 8 < nvalid ? sacc[2 + e] * score_scale : -INFINITY;
            float mx = fmaxf(v0, v1);
            mx = fmaxf(mx, dev::shfl_xor(mx, 4));
            mx = fmaxf(mx, dev::shfl_xor(mx, 8));
            mx = fmaxf(mx, dev::shfl_xor(mx, 16));
            const float m_new = fmaxf(m_run[e], mx); /* finite: every tile holds a valid slot */
            alpha[e] = dev::ex2(m_run[e] - m_new);
            pv[e] = dev::ex2(v0 - m_new);
            pv[2 + e] = dev::ex2(v1 - m_new);
            l_run[e] = l_run[e] * alpha[e] + (pv[e] + pv[2 + e]);
            m_run[e] = m_new;
        }
#pragma unroll
        for (int u = 0; u < RVT; u++)
            zacc[u][0] *= alpha[0], zacc[u][1] *= alpha[1], zacc[u][2] *= alpha[0], zacc[u][3] *= alpha[1];
        pb0 = dev::movm_trans(Num<T>::pack(pv[0], pv[1]));
        pb1 = dev::movm_trans(Num<T>::pack(pv[2], pv[3]));
    }

    /* z^T += HV^T . P^T over the tile's 16 value rows (padded rows of HVST bytes at vtile) */
    __device__ __forceinline__ void pv_product(const char *vtile, uint32_t pb0, uint32_t pb1)
    {
        const int tok = ((lane >> 4) << 3) + (lane & 7);
#pragma unroll
        for (int u = 0; u < RVT; u++) {
            uint32_t av[4];
            const int chunk = 2 * u + ((lane >> 3) & 1);
            dev::ldsm_x4_trans(av, vtile + tok * HVST + (SWZ ? v4_swz<RV / 8>(tok, chunk) : chunk) * 16);
            dev::mma16816<T>(zacc[u], av, pb0, pb1);
        }
    }

    /* This warp's state (m, l, z) of each of its heads into the record that dst(head) points to (m, l, z[RV]);
     * NaN when `bad` (a bad pad_start) */
    template <class Dst> __device__ __forceinline__ void write_state(Dst &&dst, bool bad)
    {
        const float nan = __int_as_float(0x7fc00000);
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float l = l_run[e] + dev::shfl_xor(l_run[e], 4); /* over the 8 lanes of this c */
            l += dev::shfl_xor(l, 8);
            l += dev::shfl_xor(l, 16);
            const int head = 2 * cq + e;
            if (gq == 0 && head < n_rep) {
                float *w = dst(head);
                w[0] = bad ? nan : m_run[e];
                w[1] = bad ? nan : l;
            }
        }
#pragma unroll
        for (int u = 0; u < RVT; u++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int head = 2 * cq + e;
                if (head < n_rep) {
                    float *w = dst(head) + 2 + 16 * u + gq;
                    w[0] = bad ? nan : zacc[u][e];
                    w[8] = bad ? nan : zacc[u][2 + e];
                }
            }
    }
    /* into shared memory for combine_cta_partials: head e's record at rec + e (2 + RV) */
    __device__ __forceinline__ void write_record(float *rec)
    {
        write_state([&](int head) { return rec + head * (2 + RV); }, false);
    }
    /* this warp's own partial record in the workspace */
    __device__ __forceinline__ void write_partial(const DecodeParams &p, int b, int h0, int pidx, bool bad_pad)
    {
        write_state([&](int head) { return partial(p, b, h0 + head, pidx); }, bad_pad);
    }
};

/* One CTA = (KV head, slice, sequence), V4Shape<RK>::WARPS warps, each streaming its own part of the slice in
 * 16-token tiles; the warps' states are combined into one partial per CTA. Fragments as v3 with one m tile: K (16 x D) = HK . Uk^T per pass
 * of 32 dims (four n8 column tiles: 2kk, 2kk+1 and their RoPE partners), RoPE by R(tau) from the table,
 * S (8 heads x 16 tokens) = Qr . K^T (two n8 token tiles), online softmax, z^T += HV^T . P^T (one k step). */
template <typename T, int D, int RK, int RV, bool BIAS, bool TMA>
__global__ void __launch_bounds__(V4Shape<RK>::WARPS * 32, V4Shape<RK>::MINB)
    decode_v4_kernel(const DecodeParams p, const __grid_constant__ V4Maps maps)
{
    using L = std::conditional_t<TMA, V4TmaLayout<D, RK, RV>, V4Layout<D, RK, RV>>;
    constexpr int HALF = D / 2, PASSES = D / 32, RKT = RK / 16, RVT = RV / 16, TT = kV4Tile;
    constexpr int KC = RK / 8, VC = RV / 8; /* 16-byte chunks per latent row */
    static_assert(TT * KC % 32 == 0 && TT * VC % 32 == 0, "a tile load is whole warp-wide rounds of cp.async");
    char *smem = dev::dyn_smem();
    if constexpr (TMA) smem += (1024 - (dev::smem_u32(smem) & 1023)) & 1023; /* whole swizzle atoms */
    const int kvh = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
    const int g = kvh / p.G, j = kvh - g * p.G;
    const int kcol = p.groups.kcol[g], vcol = p.groups.vcol[g];
    const int n_rep = p.n_rep, T_len = p.T, h0 = kvh * n_rep, tid = threadIdx.x;
    const int warps = blockDim.x >> 5, warp = dev::warp_id(), lane = dev::lane_id();
    const int gq = lane >> 2, cq = lane & 3;
    char *uk = smem + L::UK;
    float *bias = reinterpret_cast<float *>(smem + L::BIAS);
    float4 *turn = reinterpret_cast<float4 *>(smem + L::TURN);
    char *rtab = smem + L::RTAB;

    const T *ukg = static_cast<const T *>(p.k_up) + (size_t)p.G * D * kcol + (size_t)j * D * RK;
    for (int e = tid; e < D * KC; e += blockDim.x) {
        const int d = e / KC, cc = e - d * KC;
        dev::cp_async16(uk + d * L::UKST + cc * 16, ukg + (size_t)d * RK + cc * 8, true);
    }
    dev::cp_async_commit();

    const int ps = p.pad_start[b];
    const bool bad_pad = ps < 0 || ps >= T_len;
    const int len = bad_pad ? 0 : T_len - ps, nparts = p.splits * warps, pidx = split * warps + warp;
    const int chunk = ((len + nparts - 1) / nparts + TT - 1) / TT * TT;
    const int wb = ps + pidx * chunk;
    const int we = bad_pad ? wb : min(T_len, wb + chunk);
    const int ntiles = we > wb ? (we - wb + TT - 1) / TT : 0;

    /* the query rows live in shared memory (copied in the prologue) in the 8-warp kernels: the first tile's anchor
     * and every precise re-anchor read them there instead of waiting on a global load (an L2 round trip on the
     * warp's chain). Not in the 12-warp rank-128 kernels: there the copy moved ptxas's loop allocation (nvdisasm:
     * fp16 128/128 spill instructions 15 -> 39), as the unrolled table build did (run 36). */
    constexpr bool QS = RK <= 64;
    T *qs = reinterpret_cast<T *>(smem + L::Q);
    const T *qptr = (QS ? qs + min(gq, n_rep - 1) * D
                        : static_cast<const T *>(p.q) + ((size_t)b * p.H + h0 + min(gq, n_rep - 1)) * D) + 2 * cq;
    float qrlo[PASSES][4] = {}, qrhi[PASSES][4] = {};
    int anchor = INT_MIN, age = 0;
    float zacc[RVT][4];
#pragma unroll
    for (int u = 0; u < RVT; u++) zacc[u][0] = zacc[u][1] = zacc[u][2] = zacc[u][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    V4Warp<T, D, RV, true> pw{qrlo, qrhi, anchor, age, zacc, m_run, l_run, turn, rtab, qptr, lane, gq, cq, n_rep};

    char *wbase = smem + L::WARPS + (size_t)warp * L::PER_WARP;
    char *vtile = wbase + L::VTILE;
    const T *klg = static_cast<const T *>(p.k_latent) + (size_t)b * p.kbs + kcol;
    const T *vlg = static_cast<const T *>(p.v_latent) + (size_t)b * p.vbs + vcol;
    const int32_t *posg = p.positions + (size_t)b * p.pbs;
    /* lane's copies: chunk lane % C of rows lane / C + (32 / C) x (C = 16-byte chunks per row) */
    const CopyRows kcopy(klg, p.kts, wb, lane / KC, lane % KC, we - wb);
    const CopyRows vcopy(vlg, p.vts, wb, lane / VC, lane % VC, we - wb);
    /* destination of copy x of this lane: row lane / C + (32 / C) x, chunk lane % C, swizzled (v4_swz) */
    auto dst_off = [&](auto chunks, int x, int stride) {
        constexpr int C = decltype(chunks)::value;
        const int row = lane / C + (32 / C) * x;
        return row * stride + v4_swz<C>(row, lane % C) * 16;
    };
    auto issue_k_tile = [&](int it, auto full) {
        char *st = wbase + (it & 1) * L::KSTAGE;
#pragma unroll
        for (int x = 0; x < TT * KC / 32; x++)
            kcopy.copy<decltype(full)::value>(st + dst_off(IntC<KC>(), x, L::HKST), it, (32 / KC) * x, 0);
        if (lane < TT) {
            const int tb = wb + it * TT;
            const bool ok = tb + lane < we;
            dev::cp_async4(wbase + (it & 1) * L::KSTAGE + L::KPOS + lane * 4, ok ? posg + tb + lane : posg, ok);
        }
        dev::cp_async_commit();
    };
    auto issue_v_tile = [&](int it, auto full) {
#pragma unroll
        for (int x = 0; x < TT * VC / 32; x++)
            vcopy.copy<decltype(full)::value>(vtile + dst_off(IntC<VC>(), x, L::HVST), it, (32 / VC) * x, 0);
        dev::cp_async_commit();
    };
    /* TMA: one box per tile and kind, issued by lane 0 on the stage's mbarrier. Rows past the tensor's T slots
     * land as zeros; rows past this warp's range but below T are the next range's slots, finite, and masked like
     * the zero rows (scores by nvalid; their p = 0 meets finite values in PV). */
    uint64_t *bars = reinterpret_cast<uint64_t *>(wbase + L::BARS); /* TMA: [key stage 0, 1, value] */
    auto kpos = [&](int stage) -> char * {
        if constexpr (TMA)
            return wbase + L::KPOS + stage * 128;
        else
            return wbase + stage * L::KSTAGE + L::KPOS;
    };
    /* key latents and positions of tile it into key stage it & 1; value latents into the value tile (one group
     * each); the bound checks only on the range's last tile */
    auto issue_k = [&](int it) {
        if constexpr (TMA) {
            if (lane == 0) {
                uint64_t *bar = bars + (it & 1);
                dev::mbar_expect(bar, (uint32_t)L::KSTAGE);
                dev::tma_load_3d(wbase + (it & 1) * L::KSTAGE, &maps.k, kcol, wb + it * TT, b, bar);
            }
            /* positions by cp.async, one group per tile: a position box starts at any slot, and a TMA box whose
             * first byte is not 16-byte aligned faults with an illegal instruction (runs 26-29; the hardware rule
             * reported in triton-lang/triton#7385). The latent boxes are always aligned (16-byte row strides,
             * column offsets of 16 elements). */
            if (lane < TT) {
                const int slot = wb + it * TT + lane;
                const bool ok = slot < we;
                dev::cp_async4(kpos(it & 1) + lane * 4, ok ? posg + slot : posg, ok);
            }
            dev::cp_async_commit();
        } else if ((it + 1) * TT <= we - wb) {
            issue_k_tile(it, Flag<true>());
        } else {
            issue_k_tile(it, Flag<false>());
        }
    };
    auto issue_v = [&](int it) {
        if constexpr (TMA) {
            if (lane == 0) {
                dev::mbar_expect(bars + 2, (uint32_t)(TT * L::HVST));
                dev::tma_load_3d(vtile, &maps.v, vcol, wb + it * TT, b, bars + 2);
            }
        } else if ((it + 1) * TT <= we - wb) {
            issue_v_tile(it, Flag<true>());
        } else {
            issue_v_tile(it, Flag<false>());
        }
    };

    /* cp.async groups in commit order: Uk K0 V0 | K1 (top of tile 0) V1 (end of tile 0) | K2 V2 | ...; at the top
     * of tile it the newest groups are V(it) and K(it+1), so wait_group 2 completes K(it); before PV the newest
     * is K(it+1), so wait_group 1 completes V(it) (wait_group 0 on the last tile). TMA: the cp.async groups are
     * Uk, then the positions P(it) of each tile (P(it+1) committed at the top of tile it, so wait_group 1 there
     * completes P(it)); fill k of key stage s (tile 2k + s) completes its mbarrier's phase k, fill it of the value
     * tile phase it, so the waits are for parity (it >> 1) & 1 and it & 1. */
    if constexpr (TMA) {
        if (lane == 0) {
            for (int i = 0; i < 3; i++) dev::mbar_init(bars + i);
            dev::mbar_init_fence();
        }
        dev::sync_warp();
    }
    if (ntiles > 0) { /* the first tile's loads fly while the tables are built and Uk lands */
        issue_k(0);
        issue_v(0);
    }
    /* the query rows: loaded before the tables are built, stored after, so the loads fly meanwhile */
    constexpr int NT = V4Shape<RK>::WARPS * 32, QN = (kV4MaxRep * D + NT - 1) / NT;
    const T *qg = static_cast<const T *>(p.q) + ((size_t)b * p.H + h0) * D;
    T qv[QN];
#pragma unroll
    for (int k = 0; k < QN; k++)
        if (QS && tid + k * NT < n_rep * D) qv[k] = qg[tid + k * NT];
    V4Warp<T, D, RV, true>::template build_tables<RK <= 64 ? NT : 0>(p, kvh, bias, turn, rtab);
#pragma unroll
    for (int k = 0; k < QN; k++)
        if (QS && tid + k * NT < n_rep * D) qs[tid + k * NT] = qv[k];
    if (ntiles > 0) /* Uk (the oldest group) */
        dev::cp_async_wait<TMA ? 1 : 2>();
    else /* nothing else in flight: the records will overlay Uk */
        dev::cp_async_wait<0>();
    dev::sync_cta();
    for (int it = 0; it < ntiles; it++) {
        const bool more = it + 1 < ntiles;
        if (more) issue_k(it + 1); /* its stage held tile it-1, whose readers all passed the end-of-tile sync_warp */
        if constexpr (TMA) {
            if (more)
                dev::cp_async_wait<1>();
            else
                dev::cp_async_wait<0>();
            dev::sync_warp(); /* the positions, copied by lanes 0-15 */
            dev::mbar_wait(bars + (it & 1), (it >> 1) & 1);
        } else {
            if (more)
                dev::cp_async_wait<2>();
            else
                dev::cp_async_wait<1>();
            dev::sync_warp();
        }
        const char *hk = wbase + (it & 1) * L::KSTAGE;
        const int nvalid = min(TT, we - (wb + it * TT));
        pw.begin_tile(reinterpret_cast<const int *>(kpos(it & 1)), nvalid);
        float sacc[4] = {0.0f, 0.0f, 0.0f, 0.0f};

        uint32_t af[RKT][4]; /* HK (16 tokens x RK), resident across the passes */
#pragma unroll
        for (int s = 0; s < RKT; s++) {
            const int chunk = 2 * s + (lane >> 4);
            dev::ldsm_x4(af[s], hk + (lane & 15) * L::HKST + v4_swz<KC>(lane & 15, chunk) * 16);
        }

        /* the passes: rebuild 32 dims (and partners) on the tensor cores, RoPE, scores; one copy per tile kind */
        auto passes = [&](auto consec) {
#pragma unroll
            for (int kk = 0; kk < PASSES; kk++) {
                float acc[4][4]; /* [column tile 2kk, 2kk+1, +D/16, +D/16+1][fragment]: rows g, g+8 = tokens */
                float2 bq[4] = {};
                if (BIAS) {
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        bq[q] = *reinterpret_cast<const float2 *>(bias + 16 * kk + 8 * (q & 1) + (q >> 1) * HALF + 2 * cq);
                }
                const int drow = 16 * kk + ((lane >> 4) << 3) + (lane & 7);
#pragma unroll
                for (int s = 0; s < RKT; s++) {
                    uint32_t blo[4], bhi[4];
                    const int rcol = 16 * s + ((lane >> 3) & 1) * 8;
                    dev::ldsm_x4(blo, uk + drow * L::UKST + rcol * 2);
                    dev::ldsm_x4(bhi, uk + (drow + HALF) * L::UKST + rcol * 2);
                    if (s == 0 && !BIAS) {
#pragma unroll
                        for (int q = 0; q < 4; q++) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.0f;
                    }
                    if (s == 0 && BIAS) {
                        mma16816c<T>(acc[0], af[s], blo[0], blo[1], bq[0].x, bq[0].y);
                        mma16816c<T>(acc[1], af[s], blo[2], blo[3], bq[1].x, bq[1].y);
                        mma16816c<T>(acc[2], af[s], bhi[0], bhi[1], bq[2].x, bq[2].y);
                        mma16816c<T>(acc[3], af[s], bhi[2], bhi[3], bq[3].x, bq[3].y);
                    } else {
                        dev::mma16816<T>(acc[0], af[s], blo[0], blo[1]);
                        dev::mma16816<T>(acc[1], af[s], blo[2], blo[3]);
                        dev::mma16816<T>(acc[2], af[s], bhi[0], bhi[1]);
                        dev::mma16816<T>(acc[3], af[s], bhi[2], bhi[3]);
                    }
                }
                pw.rope_scores(sacc, kk, consec, [&](int q, int r) -> float & { return acc[q][r]; });
            }
        };
        if (pw.consec)
            passes(Flag<true>());
        else
            passes(Flag<false>());
        pw.advance_query();
        uint32_t pb0, pb1;
        pw.softmax(sacc, p.score_scale, pb0, pb1);

        if constexpr (TMA) {
            dev::mbar_wait(bars + 2, it & 1);
        } else {
            if (more) /* this tile's values (the newest group is K(it+1)) */
                dev::cp_async_wait<1>();
            else
                dev::cp_async_wait<0>();
            dev::sync_warp();
        }
        pw.pv_product(vtile, pb0, pb1);
        dev::sync_warp(); /* every lane is done with the value tile and this key stage before they are refilled */
        if (more) issue_v(it + 1);
    }
    dev::launch_dependents(); /* the merge grid may be launched now: only its launch overlaps this epilogue */

    dev::sync_cta(); /* every warp is past its last use of the stages: they hold the records now */
    float *recs = reinterpret_cast<float *>(smem);
    static_assert(L::total(V4Shape<RK>::WARPS) >= (size_t)V4Shape<RK>::WARPS * 8 * (2 + RV) * 4, "records fit");
    pw.write_record(recs + (size_t)warp * n_rep * (2 + RV));
    dev::sync_cta();
    combine_cta_partials<RV>(p, b, h0, split, warps, recs, bad_pad, p.direct);
}

/* ---- v5: v4 with the key rebuild on Hopper warpgroup MMA (wgmma, sm_90a) ------------------------------------- */

/* Why v5. The v4 profile (docs/design/profiles/ncu_v4_llama3-8b_65536_b1_g1.txt: 63.7 us against a 31 us floor,
 * L1/shared pipe ~60% busy, issue slots 46%) puts the wall in the key rebuild on mma.sync: every warp reads all of
 * Uk (rk x D) from shared memory through ldmatrix for each 16-token tile (8x the bytes of the latents), and issues
 * 64 HMMA + 32 LDSM per 16 tokens for it. v5 rebuilds the keys of 64 tokens per warpgroup with wgmma: A = HK
 * (64 tokens x rk) and B = Uk (D x rk) both read by the tensor cores straight from shared memory (Uk once per 64
 * tokens per warpgroup, no LDSM, rk/16 instructions per 64 tokens), fp32 accumulators in registers.
 * Everything after the rebuild is v4's per-warp code, unchanged: the wgmma accumulator layout of m64nNk16 is, per
 * warp, the mma.sync m16n8 C layout (PTX ISA figure "WGMMA .m64nNk16 register fragment layout for accumulator
 * matrix D": warp w of the warpgroup holds rows 16w .. 16w + 15; lane l holds d[4j + r] = row 16w + l/4 + 8 (r/2),
 * column 8j + 2 (l%4) + (r%2), j < N/8), so the thread holding column c also holds c + D/2 (its rotate_half
 * partner: same lane, 8-column block j + D/16) and RoPE, scores (K as the A operand of S^T = K . Qr^T), online
 * softmax and z^T += HV^T . P^T run per warp on its 16 rows exactly as in v4.
 * Work split: the CTA's slice is cut into one contiguous range per warp (as v4); a warpgroup's 64-token tile it
 * is the 16-token tile it of each of its 4 warps (row 16w + r of A = slot wb_w + 16 it + r), so every warp walks
 * its own consecutive slots 16 at a time and v4's query anchoring (one anchor per 32 slots, R(tau) table of 32
 * rows, advance by R(32)) carries over. Each warp writes its own partial (v4 first did; the merge takes both).
 * Shared memory, no swizzle (core matrices of 8 rows x 16 B; see dev::wgmma_desc): HK and Uk are stored K-major
 * with element (row m, k) at byte (m / 8) * SBO + (k / 8) * 128 + (m % 8) * 16 + (k % 8) * 2, LBO = 128 and
 * SBO = 16 rk, which makes 16-byte chunk e = (m / 8) * (rk / 8) * 8 + (k / 8) * 8 + m % 8 land at byte 16 e: the
 * cp.async of consecutive threads write consecutive 16 B (conflict-free) and read 8 rows x 4 chunks (whole 32 B
 * sectors). The k16 step s starts at byte 256 s of either operand. HV keeps v4's padded rows (ldmatrix.trans).
 * Pipeline per warpgroup: STAGES stages of {HK, HV, positions} of one 64-token tile, filled by the warpgroup's own
 * 128 threads with cp.async (zero-fill past each warp's range); at the top of tile it each thread waits for its
 * copies of tile it (cp.async.wait_group), makes them visible to the async proxy (fence.proxy.async.shared::cta),
 * and the warpgroup meets at a named barrier; after that barrier every warp is done with tile it - 1, so the
 * stage of tile it + STAGES - 1 (= that of it - 1) is refilled right away. Then wgmma.fence, rk/16 wgmma,
 * wgmma.commit_group, wgmma.wait_group 0, and the v4 code reads the accumulators.
 * CTA: 3 warpgroups (12 warps, 168 registers) at rk <= 64 with 3 stages, 2 warpgroups at rk = 128 with 2 stages;
 * one CTA per SM; Uk, bias and tables shared by the CTA. */
template <int RK> struct V5Shape {
    static constexpr int WGS = RK <= 64 ? 3 : 2;    /* warpgroups per CTA (one CTA per SM) */
    static constexpr int STAGES = RK <= 64 ? 3 : 2; /* 64-token tiles per warpgroup in shared memory */
    static constexpr int WARPS = 4 * WGS;
};
constexpr int kV5Rows = 64; /* tokens per warpgroup tile (the wgmma M) */

template <int D, int RK, int RV> struct V5Layout {
    static constexpr int HALF = D / 2, HVST = (RV + 8) * 2, RTST = HALF * 8 + 64;
    static constexpr int SBO = RK * 16; /* bytes between 8-row core-matrix groups of HK and Uk */
    static constexpr size_t UK = 0;     /* D x RK, core-matrix layout */
    static constexpr size_t BIAS = UK + (size_t)D * RK * 2;
    static constexpr size_t TURN = BIAS + (size_t)D * 4;
    static constexpr size_t RTAB = TURN + (size_t)HALF * 16;
    static constexpr size_t STAGE0 = (RTAB + (size_t)kV4Span * RTST + 127) / 128 * 128;
    static constexpr size_t HK = 0;                                     /* 64 x RK, core-matrix layout */
    static constexpr size_t HV = HK + (size_t)kV5Rows * RK * 2;         /* 64 padded rows */
    static constexpr size_t POS = HV + (size_t)kV5Rows * HVST;          /* 64 positions */
    static constexpr size_t STAGE = (POS + kV5Rows * 4 + 127) / 128 * 128;
    static constexpr size_t total(int wgs, int stages) { return STAGE0 + (size_t)wgs * stages * STAGE; }
};

template <typename T, int D, int RK, int RV, bool BIAS>
__global__ void __launch_bounds__(V5Shape<RK>::WARPS * 32, 1) decode_v5_kernel(const DecodeParams p)
{
    constexpr int PASSES = D / 32, RVT = RV / 16, TT = kV4Tile, NB = D / 8, S = V5Shape<RK>::STAGES;
    const int warps = blockDim.x >> 5, warp = dev::warp_id(), lane = dev::lane_id();
    const int split = blockIdx.y, b = blockIdx.z, h0 = blockIdx.x * p.n_rep;
#ifdef PALU_V5_WGMMA
    using L = V5Layout<D, RK, RV>;
    constexpr int KC = RK / 8, VC = RV / 8;
    static_assert(kV5Rows * KC % 128 == 0 && kV5Rows * VC % 128 == 0, "tile loads are whole warpgroup rounds");
    char *smem = dev::dyn_smem();
    const int kvh = blockIdx.x;
    const int g = kvh / p.G, j = kvh - g * p.G;
    const int kcol = p.groups.kcol[g], vcol = p.groups.vcol[g];
    const int n_rep = p.n_rep, T_len = p.T, tid = threadIdx.x;
    const int wg = warp >> 2, wq = warp & 3;
    const int gq = lane >> 2, cq = lane & 3;
    char *uk = smem + L::UK;
    float *bias = reinterpret_cast<float *>(smem + L::BIAS);
    float4 *turn = reinterpret_cast<float4 *>(smem + L::TURN);
    char *rtab = smem + L::RTAB;

    /* Uk of this KV head, chunk e = (d, 16-byte column cc) at byte 16 e of the core-matrix layout (see above) */
    const T *ukg = static_cast<const T *>(p.k_up) + (size_t)p.G * D * kcol + (size_t)j * D * RK;
    for (int e = tid; e < D * KC; e += blockDim.x) {
        const int r8 = e & 7, cc = (e >> 3) % KC, d = (e / (8 * KC)) * 8 + r8;
        dev::cp_async16(uk + (size_t)e * 16, ukg + (size_t)d * RK + cc * 8, true);
    }
    dev::cp_async_commit();
    V4Warp<T, D, RV>::template build_tables<0>(p, kvh, bias, turn, rtab);
    dev::cp_async_wait<0>();
    dev::fence_proxy_async(); /* Uk is read by wgmma (async proxy) */
    dev::sync_cta();

    const int ps = p.pad_start[b];
    const bool bad_pad = ps < 0 || ps >= T_len;
    const int len = bad_pad ? 0 : T_len - ps, nparts = p.splits * warps;
    const int chunk = ((len + nparts - 1) / nparts + TT - 1) / TT * TT;
    /* slot range of warp (split, w) of this CTA (empty for a bad pad_start: chunk is 0); ranges are in warp
     * order, so a warpgroup's first warp has the most tiles and its count is the warpgroup's */
    auto range_begin = [&](int w) { return ps + (split * warps + w) * chunk; };
    auto range_end = [&](int w) { return min(T_len, range_begin(w) + chunk); };
    auto tiles_of = [&](int w) {
        const int wb_ = range_begin(w), we_ = range_end(w);
        return we_ > wb_ ? (we_ - wb_ + TT - 1) / TT : 0;
    };
    const int wb = range_begin(warp), we = range_end(warp), ntiles = tiles_of(warp);
    const int ntw = tiles_of(4 * wg);

    const T *qptr = static_cast<const T *>(p.q) + ((size_t)b * p.H + h0 + min(gq, n_rep - 1)) * D + 2 * cq;
    float qrlo[PASSES][4] = {}, qrhi[PASSES][4] = {};
    int anchor = INT_MIN, age = 0;
    float zacc[RVT][4];
#pragma unroll
    for (int u = 0; u < RVT; u++) zacc[u][0] = zacc[u][1] = zacc[u][2] = zacc[u][3] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    V4Warp<T, D, RV> pw{qrlo, qrhi, anchor, age, zacc, m_run, l_run, turn, rtab, qptr, lane, gq, cq, n_rep};
    float d[NB * 4]; /* the rebuilt keys of this warp's 16 rows (wgmma accumulator layout, see above) */
#pragma unroll
    for (int x = 0; x < NB * 4; x++) d[x] = 0.0f;

    char *stages = smem + L::STAGE0 + (size_t)wg * S * L::STAGE;
    const T *klg = static_cast<const T *>(p.k_latent) + (size_t)b * p.kbs + kcol;
    const T *vlg = static_cast<const T *>(p.v_latent) + (size_t)b * p.vbs + vcol;
    const int32_t *posg = p.positions + (size_t)b * p.pbs;
    /* Each warp copies its own 16 rows of a warpgroup tile (rows 16 wq .., slots wb + 16 it ..). HK: the warp's
     * rows are the 16 KC chunks from index 16 KC wq of the core-matrix layout; lane l takes indices l + 32 x, i.e.
     * row (l & 7) + 8 (x / (KC / 4)), chunk (l >> 3) + 4 (x % (KC / 4)): consecutive lanes write consecutive 16 B.
     * HV: padded rows as v4, lane l takes chunk l % VC of rows l / VC + (32 / VC) x. */
    static_assert(KC % 4 == 0 && 32 % VC == 0, "per-warp copy maps");
    const CopyRows kcopy(klg, p.kts, wb, lane & 7, lane >> 3, we - wb);
    const CopyRows vcopy(vlg, p.vts, wb, lane / VC, lane % VC, we - wb);
    const size_t kdst = L::HK + (size_t)(16 * KC * wq + lane) * 16;
    const size_t vdst = L::HV + (size_t)(16 * wq + lane / VC) * L::HVST + (lane % VC) * 16;
    auto issue_tile = [&](char *st, int it, auto full) {
        constexpr bool F = decltype(full)::value;
#pragma unroll
        for (int x = 0; x < KC / 2; x++) kcopy.copy<F>(st + kdst + 512 * x, it, 8 * (x / (KC / 4)), 4 * (x % (KC / 4)));
#pragma unroll
        for (int x = 0; x < VC / 2; x++) vcopy.copy<F>(st + vdst + (32 / VC) * x * L::HVST, it, (32 / VC) * x, 0);
        if (lane < TT) {
            const int slot = wb + it * TT + lane;
            const bool ok = slot < we;
            dev::cp_async4(st + L::POS + (16 * wq + lane) * 4, ok ? posg + slot : posg, ok);
        }
        dev::cp_async_commit();
    };
    /* HK, HV and positions of warpgroup tile it into stage it % S, one group; bounds only on the last tile */
    auto issue = [&](int it) {
        char *st = stages + (size_t)(it % S) * L::STAGE;
        if ((it + 1) * TT <= we - wb)
            issue_tile(st, it, Flag<true>());
        else
            issue_tile(st, it, Flag<false>());
    };

    /* K (64 x D) = HK . Uk^T (+ bias) of the tile in stage st: rk/16 k16 steps, both operands from shared memory,
     * issued and committed; the accumulators d are written asynchronously until rebuild_wait */
    auto rebuild_issue = [&](const char *st) {
        if (BIAS) {
#pragma unroll
            for (int jb = 0; jb < NB; jb++) {
                const float2 bb = *reinterpret_cast<const float2 *>(bias + 8 * jb + 2 * cq);
                d[4 * jb + 0] = bb.x, d[4 * jb + 1] = bb.y, d[4 * jb + 2] = bb.x, d[4 * jb + 3] = bb.y;
            }
        }
#pragma unroll
        for (int x = 0; x < NB * 4; x++) dev::fence_reg(d[x]);
        dev::wgmma_fence();
#pragma unroll
        for (int s = 0; s < RK / 16; s++)
            dev::wgmma_k16<T, D>(d, dev::wgmma_desc(st + L::HK + 256 * s, 128, L::SBO),
                                 dev::wgmma_desc(uk + 256 * s, 128, L::SBO), BIAS || s > 0 ? 1 : 0);
        dev::wgmma_commit();
    };
    auto rebuild_wait = [&]() {
        dev::wgmma_wait0();
#pragma unroll
        for (int x = 0; x < NB * 4; x++) dev::fence_reg(d[x]);
    };
    /* The per-warp work on tile it once its keys sit in d: RoPE and scores (the last reads of d), then `between`
     * (v5's pipelined schedule issues the next rebuild there), then the query advance, softmax and PV. */
    auto warp_tile = [&](int it, auto &&between) {
        const char *st = stages + (size_t)(it % S) * L::STAGE;
        float sacc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const bool mine = it < ntiles; /* warp-uniform: this warp's 16 rows hold slots of its range */
        if (mine) {
            const int nvalid = min(TT, we - (wb + it * TT));
            pw.begin_tile(reinterpret_cast<const int *>(st + L::POS) + 16 * wq, nvalid);
            /* v4's acc[q] of pass kk = 8-column block 2kk + (q & 1) + (q >> 1) D/16 of the accumulators */
            auto passes = [&](auto consec) {
#pragma unroll
                for (int kk = 0; kk < PASSES; kk++)
                    pw.rope_scores(sacc, kk, consec, [&](int q, int r) -> float & {
                        return d[4 * (2 * kk + (q & 1) + (q >> 1) * NB / 2) + r];
                    });
            };
            if (pw.consec)
                passes(Flag<true>());
            else
                passes(Flag<false>());
        }
        between();
        if (mine) {
            pw.advance_query();
            uint32_t pb0, pb1;
            pw.softmax(sacc, p.score_scale, pb0, pb1);
            pw.pv_product(st + L::HV + (size_t)(16 * wq) * L::HVST, pb0, pb1);
        }
    };

    if constexpr (S == 3) {
        /* Pipelined: the rebuild of tile it + 1 runs on the tensor cores while the warps do tile it's softmax and
         * PV (v5 as first measured waited for its own wgmma every tile: 0.59 eligible warps per scheduler). Stages
         * hold tile it (PV), it + 1 (rebuild) and it + 2 (loading). Groups in commit order: tiles 0, 1 in the
         * prologue, tile it + 2 at the mid-tile barrier of tile it, so at that barrier the newest committed group
         * is tile it + 1: wait_group 0 completes it (one tile period of slack for the copy). After the barrier
         * every warp is past tile it's RoPE (the last reads of d) and tile it - 1's PV (the last reads of stage
         * (it + 2) % 3). */
        if (ntw > 0) issue(0);
        if (ntw > 1) issue(1);
        if (ntw > 1)
            dev::cp_async_wait<1>();
        else
            dev::cp_async_wait<0>();
        dev::fence_proxy_async(); /* this thread's cp.async writes of tile 0, for the wgmma reads */
        dev::bar_wg(1 + wg);
        /* Every rebuild is issued outside any branch, the last one (past tile ntw - 1) on a stale stage with its
         * result dropped: ptxas serializes wgmma (a wait after every instruction, C7518) when one is issued in a
         * divergent path and waited for elsewhere. */
        rebuild_issue(stages);
        for (int it = 0; it < ntw; it++) {
            rebuild_wait();
            warp_tile(it, [&]() {
                if (it + 1 < ntw) {
                    dev::cp_async_wait<0>();
                    dev::fence_proxy_async();
                    dev::bar_wg(1 + wg);
                    if (it + 2 < ntw) issue(it + 2);
                }
                rebuild_issue(stages + (size_t)((it + 1) % S) * L::STAGE);
            });
        }
        rebuild_wait();
    } else {
        /* Two stages (rk = 128): tile it + 1 loads while tile it is rebuilt and used; groups in commit order: tile
         * 0 in the prologue, tile it + 1 right after the barrier of tile it, so waiting for all completes tile it */
        if (ntw > 0) issue(0);
        for (int it = 0; it < ntw; it++) {
            dev::cp_async_wait<0>();
            dev::fence_proxy_async(); /* this thread's cp.async writes of tile it, for the wgmma reads */
            dev::bar_wg(1 + wg);      /* all 128 threads' copies of tile it landed; all warps are done with it - 1 */
            if (it + 1 < ntw) issue(it + 1);
            rebuild_issue(stages + (size_t)(it % S) * L::STAGE);
            rebuild_wait();
            warp_tile(it, [] {});
        }
    }

    /* one partial per warp: the CTA combine of v4 made compute-sanitizer racecheck report hazards between the
     * records' writes and reads in v5 at ranks 128 with a bias (H200 run 8; not understood yet, the barrier sits
     * between them in the SASS), so v5 keeps per-warp partials until that is resolved */
    pw.write_partial(p, b, h0, split * warps + warp, bad_pad);
#else
    /* Not an sm_90a build (the host plans v5 only on compute capability 9.0, where the sm_90a code runs): make the
     * output loudly NaN rather than silently wrong. */
    (void)PASSES, (void)RVT, (void)NB, (void)S, (void)TT, (void)V5Layout<D, RK, RV>::SBO;
    const int cq = lane & 3, gq = lane >> 2;
    for (int e = 0; e < 2; e++) {
        const int head = 2 * cq + e;
        if (gq == 0 && head < p.n_rep) partial(p, b, h0 + head, split * warps + warp)[0] = __int_as_float(0x7fc00000);
    }
#endif
}

} // namespace

namespace palu_decode __attribute__((visibility("hidden"))) { /* internal to the extension: no exported symbols */

/* ---- v4 launch ---- */

size_t v4_smem(int D, int rk, int rv)
{
#define PALU_V4_SMEM(d, k, v) \
    if (D == d && rk == k && rv == v) return V4Layout<d, k, v>::total(V4Shape<k>::WARPS);
    PALU_V4_SMEM(64, 32, 32) PALU_V4_SMEM(64, 64, 64) PALU_V4_SMEM(64, 128, 128)
    PALU_V4_SMEM(128, 32, 32) PALU_V4_SMEM(128, 64, 64) PALU_V4_SMEM(128, 128, 128)
#undef PALU_V4_SMEM
    return 0;
}

const char *v4_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int *warps,
                           int *ctas_per_sm, size_t *smem, char *why, size_t why_len)
{
    const char *no = v3_shape_unsupported(a, max_rk, max_rv, smem_optin, why, why_len);
    if (no != NULL) return no;
    const size_t need = v4_smem((int)a->head_dim, max_rk, max_rv);
    if ((no = smem_unsupported("v4", need, max_rk, max_rv, smem_optin, why, why_len)) != NULL) return no;
    *warps = max_rk <= 64 ? V4Shape<64>::WARPS : V4Shape<128>::WARPS;
    *ctas_per_sm = max_rk <= 64 ? V4Shape<64>::MINB : V4Shape<128>::MINB;
    *smem = need;
    return NULL;
}

/* The maps of this call (see above); false where the cp.async build must run. */
bool v4_tma_maps(const DecodeParams &p, const Plan &pl, int rank, cudaStream_t stream, V4Maps *maps)
{
    if (rank > 64 || !tma_allowed(pl, stream)) return false;
    return latent_tma_maps(p, rank, kV4Tile, rank * 2 == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                           maps);
}

template <typename T, int D, int R, bool TMA>
palu_status launch_v4(const DecodeParams &p, const Plan &pl, const V4Maps &maps, cudaStream_t stream)
{
    auto kern = p.k_bias ? decode_v4_kernel<T, D, R, R, true, TMA> : decode_v4_kernel<T, D, R, R, false, TMA>;
    size_t smem = pl.smem;
    if constexpr (TMA) smem = V4TmaLayout<D, R, R>::total(V4Shape<R>::WARPS);
    return launch_decode_smem(kern, smem, p, pl, stream, maps);
}

struct V4Kernels {
    static constexpr const char *name = "v4";
    template <typename T, int D, int R> static palu_status launch(const DecodeParams &p, const Plan &pl,
                                                                 cudaStream_t stream)
    {
        if (pl.warps != V4Shape<R>::WARPS)
            return palu_fail(PALU_ERR_INTERNAL, "v4 planned with %d warps, its kernel takes %d", pl.warps,
                             V4Shape<R>::WARPS);
        V4Maps maps;
        memset(&maps, 0, sizeof maps);
        if constexpr (R <= 64) {
            if (v4_tma_maps(p, pl, R, stream, &maps)) return launch_v4<T, D, R, true>(p, pl, maps, stream);
        }
        return launch_v4<T, D, R, false>(p, pl, maps, stream);
    }
};

palu_status dispatch_v4(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    return dispatch_equal_ranks<V4Kernels>(a, p, pl, stream);
}

/* ---- v5 launch ---- */

size_t v5_smem(int D, int rk, int rv)
{
#define PALU_V5_SMEM(d, k, v) \
    if (D == d && rk == k && rv == v) return V5Layout<d, k, v>::total(V5Shape<k>::WGS, V5Shape<k>::STAGES);
    PALU_V5_SMEM(64, 32, 32) PALU_V5_SMEM(64, 64, 64) PALU_V5_SMEM(64, 128, 128)
    PALU_V5_SMEM(128, 32, 32) PALU_V5_SMEM(128, 64, 64) PALU_V5_SMEM(128, 128, 128)
#undef PALU_V5_SMEM
    return 0;
}

const char *v5_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                           int *warps, size_t *smem, char *why, size_t why_len)
{
    const char *no = v3_shape_unsupported(a, max_rk, max_rv, smem_optin, why, why_len);
    if (no != NULL) return no;
    if ((no = sm90a_unsupported("v5", device, why, why_len)) != NULL) return no;
    const size_t need = v5_smem((int)a->head_dim, max_rk, max_rv);
    if ((no = smem_unsupported("v5", need, max_rk, max_rv, smem_optin, why, why_len)) != NULL) return no;
    *warps = max_rk <= 64 ? V5Shape<64>::WARPS : V5Shape<128>::WARPS;
    *smem = need;
    return NULL;
}

struct V5Kernels {
    static constexpr const char *name = "v5";
    template <typename T, int D, int R> static palu_status launch(const DecodeParams &p, const Plan &pl,
                                                                 cudaStream_t stream)
    {
        if (pl.warps != V5Shape<R>::WARPS)
            return palu_fail(PALU_ERR_INTERNAL, "v5 planned with %d warps, its kernel takes %d", pl.warps,
                             V5Shape<R>::WARPS);
        return launch_decode(p.k_bias ? decode_v5_kernel<T, D, R, R, true> : decode_v5_kernel<T, D, R, R, false>, p,
                             pl, stream);
    }
};

palu_status dispatch_v5(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    return dispatch_equal_ranks<V5Kernels>(a, p, pl, stream);
}

} // namespace palu_decode
