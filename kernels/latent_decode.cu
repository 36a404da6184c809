/* latent_decode.cu -- fused decode attention over latent keys/values (see latent_decode.cuh for the design and
 * the output contract; palu_latent_decode_attention_ref in csrc/latent_attention.c is the scalar twin).
 *
 * Shape legend: B batch, T slots, H query heads, Hkv KV heads, n_rep = H / Hkv, D head_dim, half = D / 2,
 * G KV heads per group, rk / rv ranks of the CTA's group, P partials per (sequence, query head), W floats per
 * partial (m, l, z[rv_max], padded), TT tokens per tile.
 *
 * Sections: kernel v1 (CUDA cores), the merge kernel, kernels v2 and v3 (tensor cores), the plan (implementation,
 * warps, splits, workspace), the launchers and the one dispatch switch. Kernels v4 and v5 are in latent_decode_v4.cu,
 * v9 in latent_decode_v9.cu, v10 in latent_decode_v10.cu; the device helpers, the RoPE angle and the launchers' host
 * helpers they all share are in latent_decode_common.cuh.
 */
#include "latent_decode_common.cuh"

using namespace palu_decode;

namespace {

/* ---- v1: CUDA cores ---------------------------------------------------------------------------------------- */

struct V1Layout {
    size_t uk, qs, ks, hk, hv, ss, zs, ml, al, turn, bias, pos, total; /* byte offsets */
};

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

__host__ __device__ inline V1Layout v1_layout(int D, int rk, int rv, int n_rep, size_t elem)
{
    V1Layout L;
    size_t o = 0;
    L.uk = o, o = align16(o + (size_t)D * rk * elem);
    L.qs = o, o = align16(o + (size_t)n_rep * D * 4);
    L.ks = o, o = align16(o + (size_t)kV1Tile * D * 4);
    L.hk = o, o = align16(o + (size_t)kV1Tile * rk * 4);
    L.hv = o, o = align16(o + (size_t)kV1Tile * rv * 4);
    L.ss = o, o = align16(o + (size_t)n_rep * kV1Tile * 4);
    L.zs = o, o = align16(o + (size_t)n_rep * rv * 4);
    L.ml = o, o = align16(o + (size_t)n_rep * 2 * 4);
    L.al = o, o = align16(o + (size_t)n_rep * 4);
    L.turn = o, o = align16(o + (size_t)(D / 2) * 8);
    L.bias = o, o = align16(o + (size_t)D * 4);
    L.pos = o, o = align16(o + (size_t)kV1Tile * 4);
    L.total = o;
    return L;
}

/* One CTA = (KV head, slice of the sequence, sequence); one partial per query head of the KV head. fp32 math
 * everywhere, a barrier between stages: the reference-quality kernel and the fallback for any shape. */
template <typename E>
__global__ void __launch_bounds__(kV1Threads) decode_v1_kernel(const DecodeParams p)
{
    char *smem = dev::dyn_smem();
    const int kvh = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
    const int g = kvh / p.G, j = kvh - g * p.G;
    const int rk = p.groups.rk[g], rv = p.groups.rv[g], kcol = p.groups.kcol[g], vcol = p.groups.vcol[g];
    const int D = p.D, half = D / 2, n_rep = p.n_rep, T = p.T, h0 = kvh * n_rep, tid = threadIdx.x;
    const V1Layout L = v1_layout(D, rk, rv, n_rep, sizeof(E));
    E *uk = reinterpret_cast<E *>(smem + L.uk);
    float *qs = reinterpret_cast<float *>(smem + L.qs), *ks = reinterpret_cast<float *>(smem + L.ks);
    float *hk = reinterpret_cast<float *>(smem + L.hk), *hv = reinterpret_cast<float *>(smem + L.hv);
    float *ss = reinterpret_cast<float *>(smem + L.ss), *zs = reinterpret_cast<float *>(smem + L.zs);
    float *ml = reinterpret_cast<float *>(smem + L.ml), *al = reinterpret_cast<float *>(smem + L.al);
    float2 *turn = reinterpret_cast<float2 *>(smem + L.turn);
    float *bias = reinterpret_cast<float *>(smem + L.bias);
    int *pos = reinterpret_cast<int *>(smem + L.pos);

    const int ps = p.pad_start[b];
    const bool bad_pad = ps < 0 || ps >= T;
    const int len = bad_pad ? 0 : T - ps;
    const int chunk = (len + p.splits - 1) / p.splits;
    const int t_begin = ps + split * chunk;
    const int t_end = bad_pad ? t_begin : min(T, t_begin + chunk);

    const E *ukg = static_cast<const E *>(p.k_up) + (size_t)p.G * D * kcol + (size_t)j * D * rk;
    for (int e = tid; e < D * rk; e += blockDim.x) uk[e] = ukg[e];
    const E *qg = static_cast<const E *>(p.q) + ((size_t)b * p.H + h0) * D;
    for (int e = tid; e < n_rep * D; e += blockDim.x) qs[e] = Num<E>::to_f(qg[e]);
    for (int i = tid; i < half; i += blockDim.x) turn[i] = turn_split(p.inv_freq[i]);
    for (int d = tid; d < D; d += blockDim.x) bias[d] = p.k_bias ? p.k_bias[(size_t)kvh * D + d] : 0.0f;
    for (int e = tid; e < n_rep * rv; e += blockDim.x) zs[e] = 0.0f;
    for (int r = tid; r < n_rep; r += blockDim.x) ml[2 * r] = -INFINITY, ml[2 * r + 1] = 0.0f;
    dev::sync_cta();

    const E *klg = static_cast<const E *>(p.k_latent) + (size_t)b * p.kbs + kcol;
    const E *vlg = static_cast<const E *>(p.v_latent) + (size_t)b * p.vbs + vcol;
    const int32_t *posg = p.positions + (size_t)b * p.pbs;
    for (int t0 = t_begin; t0 < t_end; t0 += kV1Tile) {
        const int nt = min(kV1Tile, t_end - t0);
        for (int e = tid; e < kV1Tile * rk; e += blockDim.x) {
            const int t = e / rk, r = e - t * rk;
            hk[e] = t < nt ? Num<E>::to_f(klg[(size_t)(t0 + t) * p.kts + r]) : 0.0f;
        }
        for (int e = tid; e < kV1Tile * rv; e += blockDim.x) {
            const int t = e / rv, r = e - t * rv;
            hv[e] = t < nt ? Num<E>::to_f(vlg[(size_t)(t0 + t) * p.vts + r]) : 0.0f;
        }
        for (int t = tid; t < kV1Tile; t += blockDim.x) pos[t] = t < nt ? posg[t0 + t] : 0;
        dev::sync_cta();
        for (int e = tid; e < kV1Tile * D; e += blockDim.x) { /* K = Uk hk + bias */
            const int t = e / D, d = e - t * D;
            const float *h = hk + t * rk;
            const E *u = uk + d * rk;
            float acc = bias[d];
            for (int r = 0; r < rk; r++) acc = fmaf(h[r], Num<E>::to_f(u[r]), acc);
            ks[e] = acc;
        }
        dev::sync_cta();
        for (int e = tid; e < kV1Tile * half; e += blockDim.x) { /* RoPE, rotate_half form */
            const int t = e / half, i = e - t * half;
            float c, s;
            rope_cos_sin(pos[t], turn[i], &c, &s);
            float *k = ks + t * D;
            const float lo = k[i], hi = k[i + half];
            k[i] = lo * c - hi * s;
            k[i + half] = hi * c + lo * s;
        }
        dev::sync_cta();
        for (int e = tid; e < n_rep * kV1Tile; e += blockDim.x) { /* scores, log2 domain */
            const int r = e / kV1Tile, t = e - r * kV1Tile;
            float acc = 0.0f;
            for (int d = 0; d < D; d++) acc = fmaf(qs[r * D + d], ks[t * D + d], acc);
            ss[e] = t < nt ? acc * p.score_scale : -INFINITY;
        }
        dev::sync_cta();
        for (int r = tid; r < n_rep; r += blockDim.x) { /* online softmax, one thread per head */
            float *sr = ss + r * kV1Tile;
            float mx = -INFINITY;
            for (int t = 0; t < nt; t++) mx = fmaxf(mx, sr[t]);
            const float m_old = ml[2 * r], m_new = fmaxf(m_old, mx);
            const float alpha = exp2f(m_old - m_new);
            float sum = 0.0f;
            for (int t = 0; t < kV1Tile; t++) {
                const float pt = t < nt ? exp2f(sr[t] - m_new) : 0.0f;
                sr[t] = pt;
                sum += pt;
            }
            ml[2 * r] = m_new;
            ml[2 * r + 1] = ml[2 * r + 1] * alpha + sum;
            al[r] = alpha;
        }
        dev::sync_cta();
        for (int e = tid; e < n_rep * rv; e += blockDim.x) { /* z = alpha z + P hv */
            const int r = e / rv, i = e - r * rv;
            const float *pr = ss + r * kV1Tile;
            float acc = zs[e] * al[r];
            for (int t = 0; t < nt; t++) acc = fmaf(pr[t], hv[t * rv + i], acc);
            zs[e] = acc;
        }
        dev::sync_cta();
    }
    /* empty slice: m = -inf, l = 0, z = 0 (the merge gives it weight 0); bad pad_start: NaN everywhere */
    const float nan = __int_as_float(0x7fc00000);
    for (int r = 0; r < n_rep; r++) {
        float *w = partial(p, b, h0 + r, split);
        for (int e = tid; e < rv + 2; e += blockDim.x) {
            float v = e == 0 ? ml[2 * r] : e == 1 ? ml[2 * r + 1] : zs[r * rv + e - 2];
            w[e] = bad_pad ? nan : v;
        }
    }
}

/* ---- merge ------------------------------------------------------------------------------------------------ */

/* z = sum_s 2^(m_s - M) z_s / sum_s 2^(m_s - M) l_s over the P partials of each (sequence, query head) and column;
 * a NaN partial (bad pad_start) makes the head NaN.
 * History: one CTA per (head, sequence) with one thread per column walking all partials took 19 us of an 85 us step
 * (Llama-3-8B B = 1, 64K slots); 512 threads per (head, sequence, column chunk) with a block reduction of (m, l)
 * and of the column sums took ~5 us of every batch-1 call (probe run 35b), most of it dependent latency: two
 * rounds of L2 loads, four CTA barriers, two serial loops over 16 warps / 32 thread groups. Run 40 measured such
 * steps at 1500-2000 SM cycles each on the H200.
 * Now one warp per (head, sequence, 4 columns), no shared memory and no barrier: lane (j, c) = (lane / 4, lane % 4)
 * loads m, l and column c of partials j, j + 8, ... (kMergeBatch per round, one round up to P = 64), reduces them
 * to one state, and three xor shuffles over j combine the 8 states; lanes j = 0 write. 4 warps per CTA cover 16
 * columns; grid (H, B, ceil(max rv / 16)). */
constexpr int kMergeBatch = 8;                                       /* partials per lane and load round */
constexpr int kMergeLaneCols = 4;                                    /* columns per warp */
constexpr int kMergeGroups = 32 / kMergeLaneCols;                    /* partial groups per column (lanes) */
constexpr int kMergeCtaCols = kMergeLaneCols * (kMergeThreads / 32); /* columns per CTA */
template <typename OT>
__global__ void __launch_bounds__(kMergeThreads) merge_kernel(const MergeParams p)
{
    dev::grid_dependency_wait(); /* launched as the decode kernel's programmatic dependent (launch_merge) */
    const unsigned lane = dev::lane_id();
    const int h = blockIdx.x, b = blockIdx.y, j = (int)(lane / kMergeLaneCols);
    int rv;
    const int col = z_head_column(p.groups, p.G, p.n_rep, h, &rv);
    const int c0 = (int)blockIdx.z * kMergeCtaCols + dev::warp_id() * kMergeLaneCols; /* the warp's first column */
    const int c = c0 + (int)(lane % kMergeLaneCols);
    if (c0 >= rv) return; /* warp-uniform: none of its columns exist */
    const bool has_col = c < rv;
    const float *base = p.ws + (size_t)(b * p.H + h) * p.partials * p.ws_stride;
    float mx = -INFINITY, l = 0.0f, z = 0.0f, bad = 0.0f;
    for (int s0 = j; s0 < p.partials; s0 += kMergeGroups * kMergeBatch) {
        float ms[kMergeBatch], ls[kMergeBatch], zs[kMergeBatch];
#pragma unroll
        for (int k = 0; k < kMergeBatch; k++) { /* every load of the round in flight at once */
            const int s = s0 + kMergeGroups * k;
            const float *r = base + (size_t)s * p.ws_stride;
            ms[k] = s < p.partials ? r[0] : -INFINITY;
            ls[k] = s < p.partials ? r[1] : 0.0f;
            zs[k] = s < p.partials && has_col ? r[2 + c] : 0.0f;
        }
        float bm = -INFINITY;
#pragma unroll
        for (int k = 0; k < kMergeBatch; k++) {
            if (isnan(ms[k]) || isnan(ls[k])) bad = 1.0f;
            bm = fmaxf(bm, ms[k]);
        }
        float bl = 0.0f, bz = 0.0f;
#pragma unroll
        for (int k = 0; k < kMergeBatch; k++) {
            const float w = ms[k] == -INFINITY ? 0.0f : dev::ex2(ms[k] - bm);
            bl = fmaf(w, ls[k], bl), bz = fmaf(w, zs[k], bz);
        }
        combine_mlz(mx, l, z, bm, bl, bz);
    }
    for (int o = kMergeLaneCols; o < 32; o <<= 1) { /* the partial groups of the same column */
        const float m2 = dev::shfl_xor(mx, o), l2 = dev::shfl_xor(l, o), z2 = dev::shfl_xor(z, o);
        bad = fmaxf(bad, dev::shfl_xor(bad, o));
        combine_mlz(mx, l, z, m2, l2, z2);
    }
    if (j == 0 && has_col) {
        OT *out = static_cast<OT *>(p.out) + (size_t)b * p.z_width + col + c;
        *out = Num<OT>::from_f(bad != 0.0f ? __int_as_float(0x7fc00000) : z / l);
    }
}

/* ---- v2: tensor cores ---------------------------------------------------------------------------------------- */

/* Shared memory of a v2 CTA: Uk of the head (D rows of rk + 8 halves: the 16-byte pad makes the 8 row addresses
 * of every ldmatrix hit 8 different bank groups), the key bias, the RoPE table (hi, lo turn split of inv_freq,
 * cos and sin of 8 * inv_freq) and, per warp, two stages of a 32-token tile: key latents, value latents (rows
 * padded likewise) and positions. */
struct V2Layout {
    size_t uk, bias, turn, stages, stage_bytes, hk, hv, pos, total;
    int ukst, hkst, hvst; /* row strides in bytes */
};

__host__ __device__ inline V2Layout v2_layout(int D, int rk, int rv, int warps)
{
    V2Layout L;
    L.ukst = (rk + 8) * 2, L.hkst = (rk + 8) * 2, L.hvst = (rv + 8) * 2;
    size_t o = 0;
    L.uk = o, o = align16(o + (size_t)D * L.ukst);
    L.bias = o, o = align16(o + (size_t)D * 4);
    L.turn = o, o = align16(o + (size_t)(D / 2) * 16);
    L.hk = 0;
    L.hv = align16((size_t)kV2Tile * L.hkst);
    L.pos = align16(L.hv + (size_t)kV2Tile * L.hvst);
    L.stage_bytes = align16(L.pos + (size_t)kV2Tile * 4);
    L.stages = o, o += (size_t)warps * 2 * L.stage_bytes;
    L.total = o;
    return L;
}

/* One CTA = (KV head, slice, sequence), `warps` warps that each stream their own part of the slice in 32-token
 * tiles (two stages, cp.async) and write their own partial. Per tile and warp (m16n8k16 fragments; g = lane / 4
 * and c = lane % 4 below):
 *   K (32 x D)  = HK (32 x rk) . Uk^T      two m16 row tiles x four n8 column tiles per pass: columns
 *                                          {2kk, 2kk+1} and their RoPE partners + D/2, so dims d and d + D/2
 *                                          land in the same thread; accumulators start at the bias
 *   RoPE on the fp32 accumulators (precise angle; consecutive positions: one angle per (token, pair) in four,
 *   the others by rotating with cos/sin(8 inv_freq))
 *   S (16 x 32) = Q (n_rep rows of 16) . K^T   the rotated accumulators, rounded to T, are S's B operand as they
 *                                          sit (rows g of tile m = tokens 16m + g, columns = dims)
 *   online softmax on S's rows g (heads), max over the quad by shuffles
 *   z^T (rv x 8) += HV^T (rv x 32) . P^T   A by ldmatrix.trans from the value tile, B = P straight from S's
 *                                          registers; the rescale of column (head) 2c+e takes head 2c+e's alpha
 *                                          from lane 4 (2c+e)
 * RKT k-steps of HK stay in registers across the D/32 passes when rk <= 16 RKT (else reloaded per pass);
 * RVT bounds rv / 16. */
template <typename T, int D, int RKT, int RVT>
__global__ void __launch_bounds__(128) decode_v2_kernel(const DecodeParams p)
{
    constexpr int HALF = D / 2, KSTEPS = D / 16, PASSES = D / 32;
    char *smem = dev::dyn_smem();
    const int kvh = blockIdx.x, split = blockIdx.y, b = blockIdx.z;
    const int g = kvh / p.G, j = kvh - g * p.G;
    const int rk = p.groups.rk[g], rv = p.groups.rv[g], kcol = p.groups.kcol[g], vcol = p.groups.vcol[g];
    const int n_rep = p.n_rep, T_len = p.T, h0 = kvh * n_rep, tid = threadIdx.x;
    const int warps = blockDim.x >> 5, warp = dev::warp_id(), lane = dev::lane_id();
    const int gq = lane >> 2, cq = lane & 3;
    const int rkt = rk / 16, rvt = rv / 16, nch = (rkt + RKT - 1) / RKT;
    const bool resident = nch == 1;
    const V2Layout L = v2_layout(D, rk, rv, warps);
    char *uk = smem + L.uk;
    float *bias = reinterpret_cast<float *>(smem + L.bias);
    float4 *turn = reinterpret_cast<float4 *>(smem + L.turn);

    const T *ukg = static_cast<const T *>(p.k_up) + (size_t)p.G * D * kcol + (size_t)j * D * rk;
    const int ukc = rk / 8; /* 16-byte chunks per row */
    for (int e = tid; e < D * ukc; e += blockDim.x) {
        const int d = e / ukc, cc = e - d * ukc;
        dev::cp_async16(uk + d * L.ukst + cc * 16, ukg + (size_t)d * rk + cc * 8, true);
    }
    dev::cp_async_commit();
    for (int d = tid; d < D; d += blockDim.x) bias[d] = p.k_bias ? p.k_bias[(size_t)kvh * D + d] : 0.0f;
    for (int i = tid; i < HALF; i += blockDim.x) {
        turn[i] = turn_entry(p.inv_freq[i], 8.0f);
    }
    dev::cp_async_wait<0>();
    dev::sync_cta();

    /* this warp's slots [wb, we): the slice of pidx among splits * warps, in whole tiles */
    const int ps = p.pad_start[b];
    const bool bad_pad = ps < 0 || ps >= T_len;
    const int len = bad_pad ? 0 : T_len - ps, nparts = p.splits * warps, pidx = split * warps + warp;
    const int chunk = ((len + nparts - 1) / nparts + kV2Tile - 1) / kV2Tile * kV2Tile;
    const int wb = ps + pidx * chunk;
    const int we = bad_pad ? wb : min(T_len, wb + chunk);
    const int ntiles = we > wb ? (we - wb + kV2Tile - 1) / kV2Tile : 0;

    /* Q as the A operand: row g = head h0 + g (rows >= n_rep and g + 8 are zero); qa/qb = dims 16ks + 2c (+8) */
    uint32_t qa[KSTEPS], qb[KSTEPS];
    {
        const T *qr = static_cast<const T *>(p.q) + ((size_t)b * p.H + h0 + min(gq, n_rep - 1)) * D + 2 * cq;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ks++) {
            qa[ks] = gq < n_rep ? *reinterpret_cast<const uint32_t *>(qr + 16 * ks) : 0u;
            qb[ks] = gq < n_rep ? *reinterpret_cast<const uint32_t *>(qr + 16 * ks + 8) : 0u;
        }
    }

    float zacc[RVT][4];
#pragma unroll
    for (int u = 0; u < RVT; u++) zacc[u][0] = zacc[u][1] = zacc[u][2] = zacc[u][3] = 0.0f;
    float m_run = -INFINITY, l_run = 0.0f;

    char *stage0 = smem + L.stages + (size_t)warp * 2 * L.stage_bytes;
    const T *klg = static_cast<const T *>(p.k_latent) + (size_t)b * p.kbs + kcol;
    const T *vlg = static_cast<const T *>(p.v_latent) + (size_t)b * p.vbs + vcol;
    const int32_t *posg = p.positions + (size_t)b * p.pbs;
    auto load_tile = [&](int it, char *st) {
        const int tb = wb + it * kV2Tile, kc = rk / 8, vc = rv / 8;
        for (int e = lane; e < kV2Tile * kc; e += 32) {
            const int r = e / kc, cc = e - r * kc;
            const bool ok = tb + r < we;
            dev::cp_async16(st + L.hk + r * L.hkst + cc * 16, ok ? klg + (size_t)(tb + r) * p.kts + cc * 8 : klg, ok);
        }
        for (int e = lane; e < kV2Tile * vc; e += 32) {
            const int r = e / vc, cc = e - r * vc;
            const bool ok = tb + r < we;
            dev::cp_async16(st + L.hv + r * L.hvst + cc * 16, ok ? vlg + (size_t)(tb + r) * p.vts + cc * 8 : vlg, ok);
        }
        const bool ok = tb + lane < we;
        dev::cp_async4(st + L.pos + lane * 4, ok ? posg + tb + lane : posg, ok);
        dev::cp_async_commit();
    };

    if (ntiles > 0) load_tile(0, stage0);
    for (int it = 0; it < ntiles; it++) {
        const char *st = stage0 + (it & 1) * L.stage_bytes;
        if (it + 1 < ntiles) {
            load_tile(it + 1, stage0 + ((it + 1) & 1) * L.stage_bytes);
            dev::cp_async_wait<1>();
        } else {
            dev::cp_async_wait<0>();
        }
        dev::sync_warp();
        const int nvalid = min(kV2Tile, we - (wb + it * kV2Tile));
        const char *hk = st + L.hk, *hv = st + L.hv;
        const int *tpos_s = reinterpret_cast<const int *>(st + L.pos);
        const int mypos = tpos_s[lane];
        const int p0 = dev::shfl_int(mypos, 0);
        const bool consec = dev::all_lanes(lane >= nvalid || mypos == p0 + lane);
        int tpos[4];
#pragma unroll
        for (int u = 0; u < 4; u++) tpos[u] = tpos_s[gq + 8 * u];

        uint32_t af[2][RKT][4];
        auto load_a = [&](int s0) {
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int s = 0; s < RKT; s++)
                    if (s0 + s < rkt)
                        dev::ldsm_x4(af[m][s], hk + (16 * m + (lane & 15)) * L.hkst + (16 * (s0 + s) + (lane >> 4) * 8) * 2);
        };
        if (resident) load_a(0);

        float sacc[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < PASSES; kk++) {
            float acc[2][4][4]; /* [m tile][column tile 2kk, 2kk+1, +D/16, +D/16+1][fragment] */
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int dim = 16 * kk + 8 * (q & 1) + (q >> 1) * HALF + 2 * cq;
                const float b0 = bias[dim], b1 = bias[dim + 1];
#pragma unroll
                for (int m = 0; m < 2; m++) acc[m][q][0] = b0, acc[m][q][1] = b1, acc[m][q][2] = b0, acc[m][q][3] = b1;
            }
            for (int ch = 0; ch < nch; ch++) {
                if (!resident) load_a(ch * RKT);
#pragma unroll
                for (int s = 0; s < RKT; s++) {
                    const int ks = ch * RKT + s;
                    if (ks < rkt) {
                        uint32_t blo[4], bhi[4];
                        const int drow = 16 * kk + ((lane >> 4) << 3) + (lane & 7);
                        const int rcol = 16 * ks + ((lane >> 3) & 1) * 8;
                        dev::ldsm_x4(blo, uk + drow * L.ukst + rcol * 2);
                        dev::ldsm_x4(bhi, uk + (drow + HALF) * L.ukst + rcol * 2);
#pragma unroll
                        for (int m = 0; m < 2; m++) {
                            dev::mma16816<T>(acc[m][0], af[m][s], blo[0], blo[1]);
                            dev::mma16816<T>(acc[m][1], af[m][s], blo[2], blo[3]);
                            dev::mma16816<T>(acc[m][2], af[m][s], bhi[0], bhi[1]);
                            dev::mma16816<T>(acc[m][3], af[m][s], bhi[2], bhi[3]);
                        }
                    }
                }
            }
            /* RoPE: pair i = 16kk + 8qq + 2c + e, tokens g + 8u (u = 2m + row half) */
#pragma unroll
            for (int qq = 0; qq < 2; qq++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float4 tf = turn[16 * kk + 8 * qq + 2 * cq + e];
                    const float2 tr = make_float2(tf.x, tf.y);
                    float cs[4], sn[4];
                    if (consec) {
                        rope_cos_sin(p0 + gq, tr, &cs[0], &sn[0]);
#pragma unroll
                        for (int u = 1; u < 4; u++) {
                            cs[u] = cs[u - 1] * tf.z - sn[u - 1] * tf.w;
                            sn[u] = sn[u - 1] * tf.z + cs[u - 1] * tf.w;
                        }
                    } else {
#pragma unroll
                        for (int u = 0; u < 4; u++) rope_cos_sin(tpos[u], tr, &cs[u], &sn[u]);
                    }
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        const int m = u >> 1, r = (u & 1) * 2 + e;
                        const float lo = acc[m][qq][r], hi = acc[m][qq + 2][r];
                        acc[m][qq][r] = lo * cs[u] - hi * sn[u];
                        acc[m][qq + 2][r] = hi * cs[u] + lo * sn[u];
                    }
                }
            /* scores: k-steps kk (dims 16kk..) and kk + D/32 (their partners), token column tiles n = 2m + half */
            const uint32_t qlo[4] = {qa[kk], 0u, qb[kk], 0u};
            const uint32_t qhi[4] = {qa[kk + KSTEPS / 2], 0u, qb[kk + KSTEPS / 2], 0u};
#pragma unroll
            for (int n = 0; n < 4; n++) {
                const int m = n >> 1, rh = (n & 1) * 2;
                dev::mma16816<T>(sacc[n], qlo, Num<T>::pack(acc[m][0][rh], acc[m][0][rh + 1]),
                                 Num<T>::pack(acc[m][1][rh], acc[m][1][rh + 1]));
                dev::mma16816<T>(sacc[n], qhi, Num<T>::pack(acc[m][2][rh], acc[m][2][rh + 1]),
                                 Num<T>::pack(acc[m][3][rh], acc[m][3][rh + 1]));
            }
        }

        /* online softmax over this tile: row g = head, tokens 8n + 2c + e */
        float pv[4][2], mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float v = 8 * n + 2 * cq + e < nvalid ? sacc[n][e] * p.score_scale : -INFINITY;
                pv[n][e] = v;
                mx = fmaxf(mx, v);
            }
        mx = fmaxf(mx, dev::shfl_xor(mx, 1));
        mx = fmaxf(mx, dev::shfl_xor(mx, 2));
        const float m_new = fmaxf(m_run, mx); /* finite: every tile holds a valid slot */
        const float alpha = dev::ex2(m_run - m_new);
        float lsum = 0.0f;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                pv[n][e] = dev::ex2(pv[n][e] - m_new);
                lsum += pv[n][e];
            }
        l_run = l_run * alpha + lsum;
        m_run = m_new;
        const float a0 = dev::shfl(alpha, 8 * cq), a1 = dev::shfl(alpha, 8 * cq + 4);
#pragma unroll
        for (int u = 0; u < RVT; u++)
            if (u < rvt) zacc[u][0] *= a0, zacc[u][1] *= a1, zacc[u][2] *= a0, zacc[u][3] *= a1;
#pragma unroll
        for (int s = 0; s < 2; s++) {
            const uint32_t pb0 = Num<T>::pack(pv[2 * s][0], pv[2 * s][1]);
            const uint32_t pb1 = Num<T>::pack(pv[2 * s + 1][0], pv[2 * s + 1][1]);
            const int tok = 16 * s + ((lane >> 4) << 3) + (lane & 7);
#pragma unroll
            for (int u = 0; u < RVT; u++) {
                if (u < rvt) {
                    uint32_t av[4];
                    dev::ldsm_x4_trans(av, hv + tok * L.hvst + (16 * u + ((lane >> 3) & 1) * 8) * 2);
                    dev::mma16816<T>(zacc[u], av, pb0, pb1);
                }
            }
        }
        dev::sync_warp(); /* every lane is done with this stage before it is refilled */
    }

    /* partials: m, l (summed over the quad) and z^T (dims 16u + g (+8), heads 2c + e) */
    float l = l_run + dev::shfl_xor(l_run, 1);
    l += dev::shfl_xor(l, 2);
    const float nan = __int_as_float(0x7fc00000);
    if (cq == 0 && gq < n_rep) {
        float *w = partial(p, b, h0 + gq, pidx);
        w[0] = bad_pad ? nan : m_run;
        w[1] = bad_pad ? nan : l;
    }
#pragma unroll
    for (int u = 0; u < RVT; u++)
        if (u < rvt)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int head = 2 * cq + e;
                if (head < n_rep) {
                    float *w = partial(p, b, h0 + head, pidx) + 2 + 16 * u + gq;
                    w[0] = bad_pad ? nan : zacc[u][e];
                    w[8] = bad_pad ? nan : zacc[u][2 + e];
                }
            }
}

/* ---- v3: v2 with exact compile-time ranks, RoPE from a per-CTA table, the bias as the mma's C operand ---------- */


/* Shared memory of a v3 CTA: as v2 (Uk padded rows, bias, per-warp two-stage tiles) plus the rotation table
 * rtab[tau][i] = (cos, sin)(tau * inv_freq_i) for the 32 slots tau of a tile (rows padded by 64 bytes so the 8
 * rows one LDS.128 phase touches spread over all banks) and turn[i] = (hi, lo turn split, cos, sin of
 * 32 * inv_freq_i). */
template <int D, int RK, int RV> struct V3Layout {
    static constexpr int HALF = D / 2;
    static constexpr int UKST = (RK + 8) * 2, HKST = (RK + 8) * 2, HVST = (RV + 8) * 2, RTST = HALF * 8 + 64;
    static constexpr size_t UK = 0;
    static constexpr size_t BIAS = UK + (size_t)D * UKST;
    static constexpr size_t TURN = BIAS + (size_t)D * 4;
    static constexpr size_t RTAB = TURN + (size_t)HALF * 16;
    static constexpr size_t STAGES = RTAB + (size_t)kV2Tile * RTST;
    static constexpr size_t HK = 0, HV = (size_t)kV2Tile * HKST, POS = HV + (size_t)kV2Tile * HVST;
    static constexpr size_t STAGE = POS + kV2Tile * 4;
    static constexpr size_t total(int warps, int stages = 2) { return STAGES + (size_t)warps * stages * STAGE; }
};

/* Tiles re-anchor the rotated query at most this many tiles apart (bounds the drift of the fp32 recurrence). */
constexpr int kV3Reanchor = 8;
/* Warps per CTA of the one-stage variant v3w (two CTAs per SM: 12 warps, <= 168 registers). */
constexpr int kV3wWarps = 6;

/* One CTA = (KV head, slice, sequence), 1-4 warps streaming 32-token tiles as in v2 (see there for the fragment
 * layout). What differs: every group has ranks exactly RK / RV (no runtime guards, constant strides); the bias
 * seeds the rebuild as the C operand; and RoPE splits the angle. For a tile whose positions are consecutive,
 * pos = p0 + tau, and q . R(pos) k = (R(p0)^T q) . (R(tau) k): the keys rotate by R(tau) from the CTA's table
 * (no transcendental per key), the n_rep queries rotate by R(p0) once per tile (fp32, kept in registers,
 * advanced by R(32) from one tile to the next and recomputed precisely every kV3Reanchor tiles or after a
 * jump). A tile with other positions anchors the query at 0 (q itself) and rotates each key by its own precise
 * angle, as v2. The rotated query is rounded to T for the score product (one more rounding than v2). */
template <typename T, int D, int RK, int RV, bool BIAS, bool ONE>
__global__ void __launch_bounds__(ONE ? 192 : 128, ONE ? 2 : 1) decode_v3_kernel(const DecodeParams p)
{
    using L = V3Layout<D, RK, RV>;
    constexpr int HALF = D / 2, PASSES = D / 32, RKT = RK / 16, RVT = RV / 16;
    constexpr int KC = RK / 8, VC = RV / 8; /* 16-byte chunks per latent row */
    char *smem = dev::dyn_smem();
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
    for (int d = tid; d < D; d += blockDim.x) bias[d] = p.k_bias ? p.k_bias[(size_t)kvh * D + d] : 0.0f;
    for (int i = tid; i < HALF; i += blockDim.x) {
        turn[i] = turn_entry(p.inv_freq[i], 32.0f);
    }
    for (int e = tid; e < kV2Tile * HALF; e += blockDim.x) {
        const int tau = e / HALF, i = e - tau * HALF;
        float c, s;
        rope_cos_sin(tau, turn_split(p.inv_freq[i]), &c, &s);
        *reinterpret_cast<float2 *>(rtab + tau * L::RTST + i * 8) = make_float2(c, s);
    }
    dev::cp_async_wait<0>();
    dev::sync_cta();

    const int ps = p.pad_start[b];
    const bool bad_pad = ps < 0 || ps >= T_len;
    const int len = bad_pad ? 0 : T_len - ps, nparts = p.splits * warps, pidx = split * warps + warp;
    const int chunk = ((len + nparts - 1) / nparts + kV2Tile - 1) / kV2Tile * kV2Tile;
    const int wb = ps + pidx * chunk;
    const int we = bad_pad ? wb : min(T_len, wb + chunk);
    const int ntiles = we > wb ? (we - wb + kV2Tile - 1) / kV2Tile : 0;

    /* this thread's query values (row gq = head h0 + gq; zero rows past n_rep): pass kk holds dims
     * 16kk + {2c, 2c+1, 8+2c, 8+2c+1} (lo) and the same + HALF (hi), rotated: qr = R(anchor)^T q */
    const T *qptr = static_cast<const T *>(p.q) + ((size_t)b * p.H + h0 + min(gq, n_rep - 1)) * D + 2 * cq;
    float qrlo[PASSES][4] = {}, qrhi[PASSES][4] = {};
    int anchor = INT_MIN, age = 0; /* INT_MIN: qr not set */

    float zacc[RVT][4];
#pragma unroll
    for (int u = 0; u < RVT; u++) zacc[u][0] = zacc[u][1] = zacc[u][2] = zacc[u][3] = 0.0f;
    float m_run = -INFINITY, l_run = 0.0f;

    static_assert(!ONE || RK <= 64, "the one-stage variant keeps the HK fragments in registers");
    char *stage0 = smem + L::STAGES + (size_t)warp * (ONE ? 1 : 2) * L::STAGE;
    const T *klg = static_cast<const T *>(p.k_latent) + (size_t)b * p.kbs + kcol;
    const T *vlg = static_cast<const T *>(p.v_latent) + (size_t)b * p.vbs + vcol;
    const int32_t *posg = p.positions + (size_t)b * p.pbs;
    auto issue_k = [&](int it, char *st) { /* key latents and positions of tile it (no commit) */
        const int tb = wb + it * kV2Tile;
#pragma unroll
        for (int x = 0; x < kV2Tile * KC / 32; x++) {
            const int e = lane + 32 * x, r = e / KC, cc = e % KC;
            const bool ok = tb + r < we;
            dev::cp_async16(st + L::HK + r * L::HKST + cc * 16, ok ? klg + (size_t)(tb + r) * p.kts + cc * 8 : klg, ok);
        }
        const bool ok = tb + lane < we;
        dev::cp_async4(st + L::POS + lane * 4, ok ? posg + tb + lane : posg, ok);
    };
    auto issue_v = [&](int it, char *st) { /* value latents of tile it (no commit) */
        const int tb = wb + it * kV2Tile;
#pragma unroll
        for (int x = 0; x < kV2Tile * VC / 32; x++) {
            const int e = lane + 32 * x, r = e / VC, cc = e % VC;
            const bool ok = tb + r < we;
            dev::cp_async16(st + L::HV + r * L::HVST + cc * 16, ok ? vlg + (size_t)(tb + r) * p.vts + cc * 8 : vlg, ok);
        }
    };
    auto load_tile = [&](int it, char *st) {
        issue_k(it, st);
        issue_v(it, st);
        dev::cp_async_commit();
    };

    /* qr = R(a)^T q with the precise angle (lo' = lo c + hi s, hi' = hi c - lo s); q is re-read (L1/L2) */
    auto anchor_query = [&](int a) {
#pragma unroll
        for (int kk = 0; kk < PASSES; kk++)
#pragma unroll
            for (int x = 0; x < 4; x++) {
                const int off = 16 * kk + 8 * (x >> 1) + (x & 1);
                const float lo = gq < n_rep ? Num<T>::to_f(qptr[off]) : 0.0f;
                const float hi = gq < n_rep ? Num<T>::to_f(qptr[off + HALF]) : 0.0f;
                const float4 tf = turn[off + 2 * cq];
                float c, s;
                rope_cos_sin(a, make_float2(tf.x, tf.y), &c, &s);
                qrlo[kk][x] = lo * c + hi * s;
                qrhi[kk][x] = hi * c - lo * s;
            }
    };

    if (ntiles > 0) load_tile(0, stage0);
    for (int it = 0; it < ntiles; it++) {
        /* two stages: prefetch the whole next tile now. One stage (ONE): the next tile's keys and positions are
         * fetched once this tile's are in registers (HK fragments, positions), its values once the PV product
         * has read this tile's */
        char *st = ONE ? stage0 : stage0 + (it & 1) * L::STAGE;
        if (!ONE && it + 1 < ntiles) {
            load_tile(it + 1, stage0 + ((it + 1) & 1) * L::STAGE);
            dev::cp_async_wait<1>();
        } else {
            dev::cp_async_wait<0>();
        }
        dev::sync_warp();
        const int nvalid = min(kV2Tile, we - (wb + it * kV2Tile));
        const char *hk = st + L::HK, *hv = st + L::HV;
        const int *tpos_s = reinterpret_cast<const int *>(st + L::POS);
        const int mypos = tpos_s[lane];
        const int p0 = dev::shfl_int(mypos, 0);
        const bool consec = dev::all_lanes(lane >= nvalid || mypos == p0 + lane);
        const int want = consec ? p0 : 0;
        if (anchor != want) {
            anchor_query(want);
            anchor = want, age = 0;
        }
        int tpos[4];
#pragma unroll
        for (int u = 0; u < 4; u++) tpos[u] = tpos_s[gq + 8 * u];

        uint32_t af[2][RKT][4];
        if (RKT <= 4) {
#pragma unroll
            for (int m = 0; m < 2; m++)
#pragma unroll
                for (int s = 0; s < RKT; s++)
                    dev::ldsm_x4(af[m][s], hk + (16 * m + (lane & 15)) * L::HKST + (16 * s + (lane >> 4) * 8) * 2);
        }
        if (ONE && it + 1 < ntiles) {
            dev::sync_warp(); /* every lane holds its fragments and positions before they are overwritten */
            issue_k(it + 1, st);
            dev::cp_async_commit();
        }

        float sacc[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < PASSES; kk++) {
            float acc[2][4][4]; /* [m tile][column tile 2kk, 2kk+1, +D/16, +D/16+1][fragment] */
            float2 bq[4] = {};
            if (BIAS) {
#pragma unroll
                for (int q = 0; q < 4; q++)
                    bq[q] = *reinterpret_cast<const float2 *>(bias + 16 * kk + 8 * (q & 1) + (q >> 1) * HALF + 2 * cq);
            }
            const int drow = 16 * kk + ((lane >> 4) << 3) + (lane & 7);
#pragma unroll
            for (int s = 0; s < RKT; s++) {
                if (RKT > 4) { /* HK fragments do not fit in registers: reload this k-step's */
#pragma unroll
                    for (int m = 0; m < 2; m++)
                        dev::ldsm_x4(af[m][s], hk + (16 * m + (lane & 15)) * L::HKST + (16 * s + (lane >> 4) * 8) * 2);
                }
                uint32_t blo[4], bhi[4];
                const int rcol = 16 * s + ((lane >> 3) & 1) * 8;
                dev::ldsm_x4(blo, uk + drow * L::UKST + rcol * 2);
                dev::ldsm_x4(bhi, uk + (drow + HALF) * L::UKST + rcol * 2);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    if (s == 0 && !BIAS) { /* zero C: no register copies at all */
#pragma unroll
                        for (int q = 0; q < 4; q++) acc[m][q][0] = acc[m][q][1] = acc[m][q][2] = acc[m][q][3] = 0.0f;
                    }
                    if (s == 0 && BIAS) {
                        mma16816c<T>(acc[m][0], af[m][s], blo[0], blo[1], bq[0].x, bq[0].y);
                        mma16816c<T>(acc[m][1], af[m][s], blo[2], blo[3], bq[1].x, bq[1].y);
                        mma16816c<T>(acc[m][2], af[m][s], bhi[0], bhi[1], bq[2].x, bq[2].y);
                        mma16816c<T>(acc[m][3], af[m][s], bhi[2], bhi[3], bq[3].x, bq[3].y);
                    } else {
                        dev::mma16816<T>(acc[m][0], af[m][s], blo[0], blo[1]);
                        dev::mma16816<T>(acc[m][1], af[m][s], blo[2], blo[3]);
                        dev::mma16816<T>(acc[m][2], af[m][s], bhi[0], bhi[1]);
                        dev::mma16816<T>(acc[m][3], af[m][s], bhi[2], bhi[3]);
                    }
                }
            }
            /* RoPE by the angle pos - anchor: pair i = 16kk + 8qq + 2c + e, tokens tau = g + 8u (u = 2m + row half) */
#pragma unroll
            for (int qq = 0; qq < 2; qq++) {
                const int i0 = 16 * kk + 8 * qq + 2 * cq;
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    float cs[2], sn[2];
                    if (consec) {
                        const float4 r = *reinterpret_cast<const float4 *>(rtab + (gq + 8 * u) * L::RTST + i0 * 8);
                        cs[0] = r.x, sn[0] = r.y, cs[1] = r.z, sn[1] = r.w;
                    } else {
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const float4 tf = turn[i0 + e];
                            rope_cos_sin(tpos[u], make_float2(tf.x, tf.y), &cs[e], &sn[e]);
                        }
                    }
                    const int m = u >> 1;
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int r = (u & 1) * 2 + e;
                        const float lo = acc[m][qq][r], hi = acc[m][qq + 2][r];
                        acc[m][qq][r] = lo * cs[e] - hi * sn[e];
                        acc[m][qq + 2][r] = hi * cs[e] + lo * sn[e];
                    }
                }
            }
            /* scores: k-steps kk (dims 16kk..) and kk + D/32 (their partners), token column tiles n = 2m + half */
            const uint32_t qlo[4] = {Num<T>::pack(qrlo[kk][0], qrlo[kk][1]), 0u, Num<T>::pack(qrlo[kk][2], qrlo[kk][3]), 0u};
            const uint32_t qhi[4] = {Num<T>::pack(qrhi[kk][0], qrhi[kk][1]), 0u, Num<T>::pack(qrhi[kk][2], qrhi[kk][3]), 0u};
#pragma unroll
            for (int n = 0; n < 4; n++) {
                const int m = n >> 1, rh = (n & 1) * 2;
                dev::mma16816<T>(sacc[n], qlo, Num<T>::pack(acc[m][0][rh], acc[m][0][rh + 1]),
                                 Num<T>::pack(acc[m][1][rh], acc[m][1][rh + 1]));
                dev::mma16816<T>(sacc[n], qhi, Num<T>::pack(acc[m][2][rh], acc[m][2][rh + 1]),
                                 Num<T>::pack(acc[m][3][rh], acc[m][3][rh + 1]));
            }
        }
        /* the next tile of a consecutive run starts 32 slots on: advance the query by R(32), or let it re-anchor */
        if (consec) {
            if (age + 1 < kV3Reanchor) {
#pragma unroll
                for (int kk = 0; kk < PASSES; kk++)
#pragma unroll
                    for (int x = 0; x < 4; x++) {
                        const float4 tf = turn[16 * kk + 8 * (x >> 1) + 2 * cq + (x & 1)];
                        const float lo = qrlo[kk][x], hi = qrhi[kk][x];
                        qrlo[kk][x] = lo * tf.z + hi * tf.w;
                        qrhi[kk][x] = hi * tf.z - lo * tf.w;
                    }
                anchor = p0 + kV2Tile, age++;
            } else {
                anchor = INT_MIN;
            }
        }

        /* online softmax over this tile: row g = head, tokens 8n + 2c + e */
        float pv[4][2], mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float v = 8 * n + 2 * cq + e < nvalid ? sacc[n][e] * p.score_scale : -INFINITY;
                pv[n][e] = v;
                mx = fmaxf(mx, v);
            }
        mx = fmaxf(mx, dev::shfl_xor(mx, 1));
        mx = fmaxf(mx, dev::shfl_xor(mx, 2));
        const float m_new = fmaxf(m_run, mx); /* finite: every tile holds a valid slot */
        const float alpha = dev::ex2(m_run - m_new);
        float lsum = 0.0f;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                pv[n][e] = dev::ex2(pv[n][e] - m_new);
                lsum += pv[n][e];
            }
        l_run = l_run * alpha + lsum;
        m_run = m_new;
        const float a0 = dev::shfl(alpha, 8 * cq), a1 = dev::shfl(alpha, 8 * cq + 4);
#pragma unroll
        for (int u = 0; u < RVT; u++) zacc[u][0] *= a0, zacc[u][1] *= a1, zacc[u][2] *= a0, zacc[u][3] *= a1;
#pragma unroll
        for (int s = 0; s < 2; s++) {
            const uint32_t pb0 = Num<T>::pack(pv[2 * s][0], pv[2 * s][1]);
            const uint32_t pb1 = Num<T>::pack(pv[2 * s + 1][0], pv[2 * s + 1][1]);
            const int tok = 16 * s + ((lane >> 4) << 3) + (lane & 7);
#pragma unroll
            for (int u = 0; u < RVT; u++) {
                uint32_t av[4];
                dev::ldsm_x4_trans(av, hv + tok * L::HVST + (16 * u + ((lane >> 3) & 1) * 8) * 2);
                dev::mma16816<T>(zacc[u], av, pb0, pb1);
            }
        }
        dev::sync_warp(); /* every lane is done with this stage before it is refilled */
        if (ONE && it + 1 < ntiles) {
            issue_v(it + 1, st);
            dev::cp_async_commit();
        }
    }

    float l = l_run + dev::shfl_xor(l_run, 1);
    l += dev::shfl_xor(l, 2);
    const float nan = __int_as_float(0x7fc00000);
    if (cq == 0 && gq < n_rep) {
        float *w = partial(p, b, h0 + gq, pidx);
        w[0] = bad_pad ? nan : m_run;
        w[1] = bad_pad ? nan : l;
    }
#pragma unroll
    for (int u = 0; u < RVT; u++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int head = 2 * cq + e;
            if (head < n_rep) {
                float *w = partial(p, b, h0 + head, pidx) + 2 + 16 * u + gq;
                w[0] = bad_pad ? nan : zacc[u][e];
                w[8] = bad_pad ? nan : zacc[u][2 + e];
            }
        }
}

/* ---- plan ---------------------------------------------------------------------------------------------------- */

palu_status check_sizes(const palu_latent_decode_args *a)
{
    if (a == NULL) return palu_fail(PALU_ERR_VALUE, "`args` is NULL");
    if (a->batch < 1 || a->heads < 1 || a->kv_heads < 1 || a->head_dim < 2 || a->group_size < 1 || a->length < 1 ||
        a->n_groups < 1)
        return palu_fail(PALU_ERR_VALUE,
                         "sizes must be >= 1 (head_dim >= 2), got batch=%lld heads=%lld kv_heads=%lld head_dim=%lld "
                         "group_size=%lld length=%lld groups=%lld",
                         (long long)a->batch, (long long)a->heads, (long long)a->kv_heads, (long long)a->head_dim,
                         (long long)a->group_size, (long long)a->length, (long long)a->n_groups);
    if (a->head_dim % 2)
        return palu_fail(PALU_ERR_VALUE, "head_dim must be even (RoPE rotates halves), got %lld", (long long)a->head_dim);
    if (a->heads % a->kv_heads)
        return palu_fail(PALU_ERR_VALUE, "heads (%lld) must be a multiple of kv_heads (%lld)", (long long)a->heads,
                         (long long)a->kv_heads);
    if (a->kv_heads != a->n_groups * a->group_size)
        return palu_fail(PALU_ERR_VALUE, "kv_heads (%lld) must equal groups (%lld) x group_size (%lld)",
                         (long long)a->kv_heads, (long long)a->n_groups, (long long)a->group_size);
    if (a->n_groups > kMaxGroups)
        return palu_fail(PALU_ERR_UNSUPPORTED, "%lld head groups; the CUDA decode kernel takes at most %d",
                         (long long)a->n_groups, kMaxGroups);
    if (a->k_ranks == NULL || a->v_ranks == NULL) return palu_fail(PALU_ERR_VALUE, "`k_ranks` / `v_ranks` is NULL");
    for (int64_t g = 0; g < a->n_groups; g++)
        if (a->k_ranks[g] < 1 || a->v_ranks[g] < 1 || a->k_ranks[g] > 4096 || a->v_ranks[g] > 4096)
            return palu_fail(PALU_ERR_VALUE, "group %lld: ranks must be in [1, 4096], got k %lld, v %lld", (long long)g,
                             (long long)a->k_ranks[g], (long long)a->v_ranks[g]);
    if (a->batch > 65535 || a->kv_heads > INT_MAX / 2 || a->heads > 65535 || a->length > INT_MAX / 2 ||
        a->head_dim > 1024)
        return palu_fail(PALU_ERR_UNSUPPORTED,
                         "batch %lld (max 65535), heads %lld (max 65535), length %lld or head_dim %lld (max 1024) is "
                         "out of the CUDA kernel's range",
                         (long long)a->batch, (long long)a->heads, (long long)a->length, (long long)a->head_dim);
    if (a->dtype != PALU_DTYPE_F16 && a->dtype != PALU_DTYPE_BF16)
        return palu_fail(PALU_ERR_TYPE, "dtype %s is not supported by the CUDA decode kernel; use float16 or bfloat16",
                         palu_dtype_name(a->dtype));
    if (a->impl < PALU_LATENT_DECODE_AUTO ||
        (a->impl > PALU_LATENT_DECODE_V5 && a->impl != PALU_LATENT_DECODE_V9 && a->impl != PALU_LATENT_DECODE_V10 &&
         a->impl != PALU_LATENT_DECODE_V11))
        return palu_fail(PALU_ERR_VALUE,
                         "impl %d is not one of 0 (auto), 1 (v1), 2 (v2), 3 (v3), 4 (v3w), 5 (v4), 6 (v5), 9 (v9), "
                         "10 (v10), 11 (v11)",
                         a->impl);
    return PALU_OK;
}


/* Why v2 cannot run this call (NULL when it can); `smem` gets its shared memory. */
const char *v2_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int *warps,
                           size_t *smem, char *why, size_t why_len);

const char *v3_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int *warps,
                           size_t *smem, char *why, size_t why_len);
/* Shared memory of a v3 CTA with `warps` warps of `stages` stages (0 for a shape v3 has no kernel for). */
size_t v3_smem(int D, int rk, int rv, int warps, int stages = 2);

/* The kernel a call runs: its implementation number, warps per CTA (v2-v9), shared memory and partials per CTA. */
void choose(Plan *pl, int impl, int warps, size_t smem, int partials_per_cta)
{
    pl->impl = impl, pl->warps = warps, pl->smem = smem, pl->partials_per_cta = partials_per_cta;
}

/* The signature the one-CTA-per-SM kernels' support checks share (v9_unsupported and its siblings). */
typedef const char *(*SupportCheck)(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin,
                                    int device, int *warps, size_t *smem, char *why, size_t why_len);

/* One turn of v9, v10 or v11 (kernel `number`, requested as `impl`) in the plan: an explicit request it cannot run
 * fails naming the reason; auto takes it where it can run and `auto_rule(a, sm_count)` says it pays (NULL: always).
 * One partial per CTA: the CTA combines its warps' states. */
palu_status consider_one_wave_kernel(const palu_latent_decode_args *a, int device, int smem_optin, Plan *pl,
                                     int number, palu_latent_decode_impl impl, const char *name, SupportCheck check,
                                     bool (*auto_rule)(const palu_latent_decode_args *, int))
{
    char why[256] = "";
    int warps = 0;
    size_t smem = 0;
    const char *no = check(a, pl->max_rk, pl->max_rv, smem_optin, device, &warps, &smem, why, sizeof why);
    if (no != NULL && a->impl == impl)
        return palu_fail(PALU_ERR_UNSUPPORTED, "the decode kernel %s does not support this call: %s", name, no);
    if (no == NULL && (a->impl == impl || auto_rule == NULL || auto_rule(a, pl->sm_count)))
        choose(pl, number, warps, smem, 1);
    return PALU_OK;
}

palu_status make_plan(const palu_latent_decode_args *a, int device, Plan *pl)
{
    palu_status st = check_sizes(a);
    if (st != PALU_OK) return st;
    memset(pl, 0, sizeof *pl);
    for (int64_t g = 0; g < a->n_groups; g++) {
        if (a->k_ranks[g] > pl->max_rk) pl->max_rk = (int)a->k_ranks[g];
        if (a->v_ranks[g] > pl->max_rv) pl->max_rv = (int)a->v_ranks[g];
    }
    int smem_optin = 0;
    PALU_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    PALU_CUDA_CHECK(cudaDeviceGetAttribute(&pl->sm_count, cudaDevAttrMultiProcessorCount, device));
    PALU_CUDA_CHECK(cudaDeviceGetAttribute(&pl->cc_major, cudaDevAttrComputeCapabilityMajor, device));
    const int n_rep = (int)(a->heads / a->kv_heads), D = (int)a->head_dim;

    char why[256] = "", why3[256] = "", why4[256] = "";
    int warps = 0, v4_ctas = 0;
    size_t smem2 = 0;
    const bool is_auto = a->impl == PALU_LATENT_DECODE_AUTO;
    if (a->impl == PALU_LATENT_DECODE_V9 || is_auto) /* auto: v9 first */
        st = consider_one_wave_kernel(a, device, smem_optin, pl, 9, PALU_LATENT_DECODE_V9, "v9", v9_unsupported, NULL);
    if (st == PALU_OK && (a->impl == PALU_LATENT_DECODE_V10 || (is_auto && pl->impl < 9))) /* then v10 */
        st = consider_one_wave_kernel(a, device, smem_optin, pl, 10, PALU_LATENT_DECODE_V10, "v10", v10_unsupported,
                                      v10_worth_it);
    if (st == PALU_OK && (a->impl == PALU_LATENT_DECODE_V11 || (is_auto && pl->impl < 9))) /* then v11 */
        st = consider_one_wave_kernel(a, device, smem_optin, pl, 11, PALU_LATENT_DECODE_V11, "v11", v11_unsupported,
                                      v11_worth_it);
    if (st != PALU_OK) return st;
    if (pl->impl < 9 &&
        (a->impl == PALU_LATENT_DECODE_V4 || a->impl == PALU_LATENT_DECODE_AUTO)) { /* then v4 */
        int w4 = 0;
        size_t s4 = 0;
        const char *no = v4_unsupported(a, pl->max_rk, pl->max_rv, smem_optin, &w4, &v4_ctas, &s4, why4, sizeof why4);
        if (no != NULL && a->impl == PALU_LATENT_DECODE_V4)
            return palu_fail(PALU_ERR_UNSUPPORTED, "the decode kernel v4 does not support this call: %s", no);
        if (no == NULL) choose(pl, 5, w4, s4, 1); /* the CTA combines its warps' states */
    }
    if (a->impl == PALU_LATENT_DECODE_V5) { /* only on request (auto stays v4 until the H200 says otherwise) */
        char why5[256] = "";
        int w5 = 0;
        size_t s5 = 0;
        const char *no = v5_unsupported(a, pl->max_rk, pl->max_rv, smem_optin, device, &w5, &s5, why5, sizeof why5);
        if (no != NULL) return palu_fail(PALU_ERR_UNSUPPORTED, "the decode kernel v5 does not support this call: %s", no);
        choose(pl, 6, w5, s5, w5);
    }
    if (a->impl == PALU_LATENT_DECODE_V3W) { /* only on request: 6 warps, one stage each, 2 CTAs per SM */
        const char *no = v3_unsupported(a, pl->max_rk, pl->max_rv, smem_optin, &warps, &smem2, why3, sizeof why3);
        const size_t need = pl->max_rk <= 64 ? v3_smem(D, pl->max_rk, pl->max_rv, kV3wWarps, 1) : 0;
        if (no == NULL && (need == 0 || need > (size_t)smem_optin))
            no = "ranks above 64 or not enough shared memory for 6 one-stage warps";
        if (no != NULL) return palu_fail(PALU_ERR_UNSUPPORTED, "the decode kernel v3w does not support this call: %s", no);
        choose(pl, 4, kV3wWarps, need, kV3wWarps);
    }
    const char *no_v3 = a->impl == PALU_LATENT_DECODE_V1 || a->impl == PALU_LATENT_DECODE_V2 ||
                                a->impl == PALU_LATENT_DECODE_V3W || pl->impl == 5 || pl->impl == 6 || pl->impl >= 9
                            ? "v1, v2, v3w, v4, v5, v9, v10 or v11 chosen"
                            : v3_unsupported(a, pl->max_rk, pl->max_rv, smem_optin, &warps, &smem2, why3, sizeof why3);
    const char *no_v2 = no_v3 == NULL || a->impl == PALU_LATENT_DECODE_V1 || a->impl == PALU_LATENT_DECODE_V3
                            ? "not chosen"
                            : v2_unsupported(a, pl->max_rk, pl->max_rv, smem_optin, &warps, &smem2, why, sizeof why);
    if (pl->impl == 4 || pl->impl == 5 || pl->impl == 6 || pl->impl >= 9) {
        /* planned above */
    } else if (no_v3 == NULL) {
        choose(pl, 3, warps, smem2, warps);
    } else if (a->impl == PALU_LATENT_DECODE_V3) {
        return palu_fail(PALU_ERR_UNSUPPORTED, "the decode kernel v3 does not support this call: %s", no_v3);
    } else if (no_v2 == NULL) {
        choose(pl, 2, warps, smem2, warps);
    } else if (a->impl == PALU_LATENT_DECODE_V2) {
        return palu_fail(PALU_ERR_UNSUPPORTED, "the tensor-core decode kernel (v2) does not support this call: %s",
                         no_v2);
    } else {
        const size_t elem = 2;
        const V1Layout L = v1_layout(D, pl->max_rk, pl->max_rv, n_rep, elem);
        if (L.total > (size_t)smem_optin)
            return palu_fail(PALU_ERR_UNSUPPORTED,
                             "head_dim %d with ranks up to k %d / v %d and n_rep %d needs %zu bytes of shared memory "
                             "per block; device %d allows %d",
                             D, pl->max_rk, pl->max_rv, n_rep, L.total, device, smem_optin);
        choose(pl, 1, 0, L.total, 1); /* v1: kV1Threads threads */
    }
    /* Splits: enough CTAs for about two waves, but no slice shorter than min_tokens. */
    /* v3: one wave (every CTA does the same work, so a second wave only adds a tail) */
    int ctas_per_sm = pl->impl >= 2 ? (int)(228 * 1024 / (pl->smem + 1024)) : 4;
    if (pl->impl == 5 && ctas_per_sm > v4_ctas) ctas_per_sm = v4_ctas; /* its register bound */
    if (pl->impl == 6) ctas_per_sm = 1;                                   /* v5: one CTA per SM by design */
    /* v9, v10 and v11 (one CTA per SM) size their workspace as v4 would at ranks <= 64 (two CTAs per SM: as many
     * splits as v4 at rank 128 or more), so that a workspace sized by a
     * query without the pointers (which cannot see a key bias or a misaligned latent, where v4 runs instead) covers
     * both */
    if (pl->impl >= 9) ctas_per_sm = V4Shape<64>::MINB;
    const int64_t waves = pl->impl >= 3 ? 1 : 2;
    const int64_t target = waves * pl->sm_count * (ctas_per_sm < 1 ? 1 : ctas_per_sm > 8 ? 8 : ctas_per_sm);
    /* v4 rounds down, so that the grid never spills a few CTAs into a second wave (v3 rounds up: Llama-2-7B
     * B=1 at 2 CTAs per SM gets 9 x 32 = 288 CTAs for 264 slots, rank 128 at one CTA per SM 17 x 8 = 136 for 132) */
    int64_t smax = pl->impl >= 5 ? target / (a->kv_heads * a->batch)
                                 : (target + a->kv_heads * a->batch - 1) / (a->kv_heads * a->batch);
    if (smax < 1) smax = 1;
    if (smax > kMaxSplits) smax = kMaxSplits;
    /* v4, v5: at least two 16-token tiles per warp, so that the prefetch has something to hide */
    const int64_t min_tokens = pl->impl >= 5 ? 32LL * pl->warps : pl->impl >= 2 ? 64LL * pl->warps : 64;
    int64_t s = (a->length + min_tokens - 1) / min_tokens;
    if (s > smax) s = smax;
    if (s < 1) s = 1;
    if (pl->impl >= 9) { /* one wave at one CTA per SM (a batch beyond it runs in several), and at least two
                          * 256-slot blocks per CTA */
        /* v11: one CTA per group of two KV heads, >= 4 of its 64-slot steps per CTA */
        const int64_t wave = pl->sm_count / ((pl->impl == 11 ? a->kv_heads / 2 : a->kv_heads) * a->batch);
        const int64_t per_cta = pl->impl == 11 ? kV11MinSlotsPerCta : 2 * kV9BlockSlots;
        const int64_t by_len = (a->length + per_cta - 1) / per_cta;
        s = wave < 1 ? 1 : wave;
        if (s > by_len) s = by_len;
        if (s > smax) s = smax;
        if (s < 1) s = 1;
    }
    pl->splits_max = (int)smax;
    pl->splits = (int)s;
    pl->ws_stride = (pl->max_rv + 2 + 3) & ~3;
    return PALU_OK;
}

int64_t workspace_floats(const palu_latent_decode_args *a, const Plan &pl)
{
    return a->batch * a->heads * (int64_t)pl.splits_max * pl.partials_per_cta * pl.ws_stride;
}

/* Why v2 cannot run this call (NULL when it can); *warps and *smem get its CTA shape. Pointers that are NULL
 * (the workspace query) count as aligned. */
const char *v2_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int *warps,
                           size_t *smem, char *why, size_t why_len)
{
    const int64_t D = a->head_dim, n_rep = a->heads / a->kv_heads;
    if (D != 64 && D != 128) return snprintf(why, why_len, "head_dim %lld (v2 takes 64 or 128)", (long long)D), why;
    if (n_rep > 8)
        return snprintf(why, why_len, "n_rep = heads / kv_heads = %lld (v2 takes at most 8)", (long long)n_rep), why;
    for (int64_t g = 0; g < a->n_groups; g++)
        if (a->k_ranks[g] % 16 || a->v_ranks[g] % 16)
            return snprintf(why, why_len, "group %lld has ranks k %lld / v %lld; v2 needs multiples of 16", (long long)g,
                            (long long)a->k_ranks[g], (long long)a->v_ranks[g]),
                   why;
    if (max_rv > 16 * 16) return snprintf(why, why_len, "value rank %d (v2 takes at most 256)", max_rv), why;
    const bool misaligned = (a->q && ((uintptr_t)a->q & 3)) || (a->k_latent && !aligned16(a->k_latent)) ||
                            (a->v_latent && !aligned16(a->v_latent)) || (a->k_up && !aligned16(a->k_up)) ||
                            a->k_token_stride % 8 || a->k_batch_stride % 8 || a->v_token_stride % 8 ||
                            a->v_batch_stride % 8;
    if (misaligned)
        return snprintf(why, why_len, "latents / k_up not 16-byte aligned, or latent strides (k %lld/%lld, v "
                        "%lld/%lld) not multiples of 8 elements", (long long)a->k_batch_stride,
                        (long long)a->k_token_stride, (long long)a->v_batch_stride, (long long)a->v_token_stride),
               why;
    for (int w = 4; w >= 1; w /= 2) {
        const size_t need = v2_layout((int)D, max_rk, max_rv, w).total;
        if (need <= (size_t)smem_optin) {
            *warps = w;
            *smem = need;
            return NULL;
        }
    }
    return snprintf(why, why_len, "ranks up to k %d / v %d need %zu bytes of shared memory with one warp; the device "
                    "allows %d", max_rk, max_rv, v2_layout((int)D, max_rk, max_rv, 1).total, smem_optin),
           why;
}


template <typename T, int D, int RKT, int RVT>
palu_status launch_v2(const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    return launch_decode(decode_v2_kernel<T, D, RKT, RVT>, p, pl, stream);
}

/* Rank buckets: HK fragments resident for rk <= 64 (RKT 4) or <= 128 (RKT 8); larger keys reload them per pass. */
template <typename T, int D> palu_status launch_v2_bucket(const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    if (pl.max_rk <= 64 && pl.max_rv <= 64) return launch_v2<T, D, 4, 4>(p, pl, stream);
    if (pl.max_rk <= 128 && pl.max_rv <= 128) return launch_v2<T, D, 8, 8>(p, pl, stream);
    return launch_v2<T, D, 4, 16>(p, pl, stream);
}

palu_status dispatch_v2(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    switch (a->dtype) {
    case PALU_DTYPE_F16:
        switch (p.D) {
        case 64: return launch_v2_bucket<__half, 64>(p, pl, stream);
        case 128: return launch_v2_bucket<__half, 128>(p, pl, stream);
        default: break;
        }
        break;
    case PALU_DTYPE_BF16:
        switch (p.D) {
        case 64: return launch_v2_bucket<__nv_bfloat16, 64>(p, pl, stream);
        case 128: return launch_v2_bucket<__nv_bfloat16, 128>(p, pl, stream);
        default: break;
        }
        break;
    default: return palu_fail(PALU_ERR_UNSUPPORTED, "dtype %s has no tensor-core kernel", palu_dtype_name(a->dtype));
    }
    return palu_fail(PALU_ERR_UNSUPPORTED, "head_dim %d has no tensor-core kernel (64 or 128)", p.D);
}

/* (RK, RV) pairs with a v3 instantiation; every group must have exactly one of them. */
constexpr int kV3Ranks[][2] = {{32, 32}, {64, 64}, {128, 128}};

size_t v3_smem(int D, int rk, int rv, int warps, int stages)
{
#define PALU_V3_SMEM(d, k, v) \
    if (D == d && rk == k && rv == v) return V3Layout<d, k, v>::total(warps, stages);
    PALU_V3_SMEM(64, 32, 32) PALU_V3_SMEM(64, 64, 64) PALU_V3_SMEM(64, 128, 128)
    PALU_V3_SMEM(128, 32, 32) PALU_V3_SMEM(128, 64, 64) PALU_V3_SMEM(128, 128, 128)
#undef PALU_V3_SMEM
    return 0;
}

} // namespace

namespace palu_decode __attribute__((visibility("hidden"))) {
/* Why the v3/v4 specialization does not fit this call's shape (NULL when it does): v2's conditions, plus equal
 * ranks in every group with (rk, rv) one of kV3Ranks. */
const char *v3_shape_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, char *why,
                                 size_t why_len)
{
    int w2 = 0;
    size_t s2 = 0;
    const char *no = v2_unsupported(a, max_rk, max_rv, smem_optin, &w2, &s2, why, why_len);
    if (no != NULL) return no;
    for (int64_t g = 0; g < a->n_groups; g++)
        if (a->k_ranks[g] != max_rk || a->v_ranks[g] != max_rv)
            return snprintf(why, why_len, "group %lld has ranks k %lld / v %lld, others k %d / v %d; v3 needs equal "
                            "ranks", (long long)g, (long long)a->k_ranks[g], (long long)a->v_ranks[g], max_rk, max_rv),
                   why;
    bool listed = false;
    for (const auto &r : kV3Ranks) listed = listed || (r[0] == max_rk && r[1] == max_rv);
    if (!listed)
        return snprintf(why, why_len, "ranks k %d / v %d (v3 takes 32/32, 64/64, 128/128)", max_rk, max_rv), why;
    return NULL;
}
} // namespace palu_decode

namespace {

/* Why v3 cannot run this call (NULL when it can): the shape (above) and shared memory for 1-4 warps. */
const char *v3_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int *warps,
                           size_t *smem, char *why, size_t why_len)
{
    const char *no = v3_shape_unsupported(a, max_rk, max_rv, smem_optin, why, why_len);
    if (no != NULL) return no;
    for (int w = 4; w >= 1; w /= 2) {
        const size_t need = v3_smem((int)a->head_dim, max_rk, max_rv, w);
        if (need > 0 && need <= (size_t)smem_optin) {
            *warps = w;
            *smem = need;
            return NULL;
        }
    }
    return snprintf(why, why_len, "ranks k %d / v %d need %zu bytes of shared memory with one warp; the device "
                    "allows %d", max_rk, max_rv, v3_smem((int)a->head_dim, max_rk, max_rv, 1), smem_optin),
           why;
}


/* v3 (impl 3) and v3w (impl 4: ONE = single-stage, more warps; ranks 32 and 64 only). The bias-free build
 * (Llama, Mistral: no k_proj bias) seeds the rebuild with zero accumulators. */
template <bool ONE> struct V3Kernels {
    static constexpr const char *name = ONE ? "v3w" : "v3";
    template <typename T, int D, int R> static palu_status launch(const DecodeParams &p, const Plan &pl,
                                                                 cudaStream_t stream)
    {
        if constexpr (ONE && R == 128) {
            return palu_fail(PALU_ERR_UNSUPPORTED, "ranks k %d / v %d have no v3w kernel", pl.max_rk, pl.max_rv);
        } else {
            return launch_decode(p.k_bias ? decode_v3_kernel<T, D, R, R, true, ONE>
                                          : decode_v3_kernel<T, D, R, R, false, ONE>,
                                 p, pl, stream);
        }
    }
};

palu_status dispatch_v3(const palu_latent_decode_args *a, const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    return pl.impl == 4 ? dispatch_equal_ranks<V3Kernels<true>>(a, p, pl, stream)
                        : dispatch_equal_ranks<V3Kernels<false>>(a, p, pl, stream);
}


palu_status check_pointers(const palu_latent_decode_args *a)
{
    if (!a->q || !a->k_latent || !a->v_latent || !a->positions || !a->pad_start || !a->k_up || !a->inv_freq ||
        !a->out || !a->workspace)
        return palu_fail(PALU_ERR_VALUE, "a required pointer (q, latents, positions, pad_start, k_up, inv_freq, out "
                                         "or workspace) is NULL");
    int64_t Rk = 0, Rv = 0;
    for (int64_t g = 0; g < a->n_groups; g++) Rk += a->k_ranks[g], Rv += a->v_ranks[g];
    if (a->k_token_stride < Rk || a->v_token_stride < Rv || a->k_batch_stride < 0 || a->v_batch_stride < 0 ||
        a->pos_batch_stride < 0 || (a->batch > 1 && (a->k_batch_stride < a->length * a->k_token_stride ||
                                                     a->v_batch_stride < a->length * a->v_token_stride ||
                                                     a->pos_batch_stride < a->length)))
        return palu_fail(PALU_ERR_VALUE,
                         "latent / position strides (k %lld/%lld, v %lld/%lld, positions %lld) do not hold rows of "
                         "Rk=%lld / Rv=%lld for %lld slots",
                         (long long)a->k_batch_stride, (long long)a->k_token_stride, (long long)a->v_batch_stride,
                         (long long)a->v_token_stride, (long long)a->pos_batch_stride, (long long)Rk, (long long)Rv,
                         (long long)a->length);
    if (!isfinite(a->scaling) || !isfinite(a->attention_scaling))
        return palu_fail(PALU_ERR_VALUE, "scaling (%g) and attention_scaling (%g) must be finite", (double)a->scaling,
                         (double)a->attention_scaling);
    if (a->out_dtype != PALU_DTYPE_F32 && a->out_dtype != a->dtype)
        return palu_fail(PALU_ERR_TYPE, "out dtype %s must be float32 or the input dtype %s",
                         palu_dtype_name(a->out_dtype), palu_dtype_name(a->dtype));
    return PALU_OK;
}

void fill_params(const palu_latent_decode_args *a, const Plan &pl, DecodeParams *p, MergeParams *m)
{
    memset(p, 0, sizeof *p);
    p->q = a->q, p->k_latent = a->k_latent, p->v_latent = a->v_latent, p->k_up = a->k_up;
    p->positions = a->positions, p->pad_start = a->pad_start, p->k_bias = a->k_bias, p->inv_freq = a->inv_freq;
    p->k_pairs = a->k_pairs;
    p->ws = a->workspace;
    p->kbs = a->k_batch_stride, p->kts = a->k_token_stride, p->vbs = a->v_batch_stride, p->vts = a->v_token_stride;
    p->pbs = a->pos_batch_stride;
    p->B = (int)a->batch, p->H = (int)a->heads, p->Hkv = (int)a->kv_heads, p->D = (int)a->head_dim;
    p->G = (int)a->group_size, p->n_rep = (int)(a->heads / a->kv_heads), p->T = (int)a->length;
    p->splits = pl.splits;
    p->partials = pl.splits * pl.partials_per_cta;
    p->ws_stride = pl.ws_stride;
    p->max_rk = pl.max_rk, p->max_rv = pl.max_rv;
    p->score_scale = (float)((double)a->scaling * (double)a->attention_scaling * 1.4426950408889634);
    int kc = 0, vc = 0;
    for (int64_t g = 0; g < a->n_groups; g++) {
        p->groups.rk[g] = (int)a->k_ranks[g], p->groups.rv[g] = (int)a->v_ranks[g];
        p->groups.kcol[g] = kc, p->groups.vcol[g] = vc;
        kc += (int)a->k_ranks[g], vc += (int)a->v_ranks[g];
    }
    memset(m, 0, sizeof *m);
    m->ws = a->workspace, m->out = a->out, m->H = p->H, m->G = p->G, m->n_rep = p->n_rep;
    m->partials = p->partials, m->ws_stride = p->ws_stride, m->z_width = p->n_rep * p->G * vc;
    /* v4 (impl 5), v9, v10 and v11 combine their CTA's partials with combine_cta_partials, which writes the output
     * itself where there is one partial per head */
    p->direct = p->partials == 1 && (pl.impl == 5 || pl.impl >= 9);
    /* v10 and v11 at two splits of one partial each: the pair launch (clusters of the two splits, no merge) */
    p->pair = (pl.impl == 10 || pl.impl == 11) && pl.splits == 2 && pl.partials_per_cta == 1 && pl.cc_major >= 9 &&
              pair_launch_enabled();
    p->out = a->out, p->out_dtype = (int)a->out_dtype, p->z_width = m->z_width;
    m->groups = p->groups;
}

template <typename T> palu_status launch_v1(const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    if (pl.smem > kDefaultSmem)
        PALU_CUDA_CHECK(
            cudaFuncSetAttribute(decode_v1_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem));
    const dim3 grid((unsigned)p.Hkv, (unsigned)p.splits, (unsigned)p.B);
    PALU_EMU_LAUNCH(decode_v1_kernel<T>, grid, dim3(kV1Threads), pl.smem, stream, p);
    PALU_CUDA_CHECK_LAUNCH();
    return PALU_OK;
}

/* The merge after the decode kernel on the same stream. On compute capability 9.0+ it is a programmatic dependent
 * launch: the runtime may launch it while the decode grid drains (v4 triggers that after its main loop), and
 * merge_kernel's first act, grid_dependency_wait, holds every CTA until the decode grid has completed and its
 * partials are visible. That hides the launch gap between the two kernels (~1 us of a ~60 us step at Llama-3-8B
 * B = 1, 64K), also inside CUDA-graph capture (a programmatic edge). */
template <typename OT> palu_status launch_merge(const MergeParams &m, int B, bool pdl, cudaStream_t stream)
{
    int max_rv = 0;
    for (int g = 0; g < kMaxGroups; g++) max_rv = m.groups.rv[g] > max_rv ? m.groups.rv[g] : max_rv;
    const dim3 grid((unsigned)m.H, (unsigned)B, (unsigned)((max_rv + kMergeCtaCols - 1) / kMergeCtaCols));
    const size_t smem = 0; /* merge_kernel keeps everything in registers */
#if defined(PALU_EMULATE) || defined(PALU_C_NO_PDL)
    pdl = false; /* the lock-step emulator launches through PALU_EMU_LAUNCH only; PALU_C_NO_PDL: a build without the
                  * programmatic launch (an experiment's switch, notes "The benchmark's intermittent fault") */
#endif
    if (pdl) {
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid, cfg.blockDim = dim3(kMergeThreads), cfg.dynamicSmemBytes = smem, cfg.stream = stream;
        cfg.attrs = attr, cfg.numAttrs = 1;
        PALU_CUDA_CHECK(cudaLaunchKernelEx(&cfg, merge_kernel<OT>, m));
    } else {
        PALU_EMU_LAUNCH(merge_kernel<OT>, grid, dim3(kMergeThreads), smem, stream, m);
    }
    PALU_CUDA_CHECK_LAUNCH();
    return PALU_OK;
}

/* The plan auto runs where it planned v9, v10 or v11 and the call cannot run them (CUDA-graph capture: a tensor map
 * would keep the capture's length; a map the driver refused): v4 on its own plan (its split count) when the
 * caller's workspace holds it, else on their splits (their shapes are v4's, their splits fit v4's workspace, one
 * partial per CTA in all three). Their one-wave split count leaves v4 at half its occupancy (the graph-mode table:
 * Llama-2-7B B1 64K 222.8 us against v4's 178.8 eager). */
Plan v4_fallback(const palu_latent_decode_args *a, const Plan &pl)
{
    palu_latent_decode_args a4 = *a;
    a4.impl = PALU_LATENT_DECODE_V4;
    Plan p4;
    int device = 0;
    if (cudaGetDevice(&device) == cudaSuccess && make_plan(&a4, device, &p4) == PALU_OK && p4.impl == 5 &&
        workspace_floats(a, p4) <= a->workspace_floats)
        return p4;
    (void)cudaGetLastError();
    p4 = pl;
    p4.impl = 5, p4.warps = pl.max_rk <= 64 ? V4Shape<64>::WARPS : V4Shape<128>::WARPS; /* v11: ranks 128 */
    p4.smem = v4_smem((int)a->head_dim, pl.max_rk, pl.max_rv);
    return p4;
}

/* The one dispatch switch: (input dtype, head_dim, rank bucket) for the decode kernel, (output dtype) for the
 * merge. Unsupported values were refused by make_plan with their names; the defaults here name them again. */
palu_status dispatch(const palu_latent_decode_args *a, const Plan &pl, cudaStream_t stream)
{
    DecodeParams p;
    MergeParams m;
    fill_params(a, pl, &p, &m);
    palu_status st = PALU_ERR_INTERNAL;
    if (pl.impl == 1) {
        switch (a->dtype) {
        case PALU_DTYPE_F16: st = launch_v1<__half>(p, pl, stream); break;
        case PALU_DTYPE_BF16: st = launch_v1<__nv_bfloat16>(p, pl, stream); break;
        default: return palu_fail(PALU_ERR_TYPE, "dtype %s is not supported", palu_dtype_name(a->dtype));
        }
    } else if (pl.impl == 2) {
        st = dispatch_v2(a, p, pl, stream);
    } else if (pl.impl == 4) {
        st = dispatch_v3(a, p, pl, stream);
    } else if (pl.impl == 5) {
        st = dispatch_v4(a, p, pl, stream);
    } else if (pl.impl == 6) {
        st = dispatch_v5(a, p, pl, stream);
    } else if (pl.impl == 9 || pl.impl == 10 || pl.impl == 11) {
        bool ran = false;
        st = pl.impl == 9    ? dispatch_v9(a, p, pl, stream, &ran)
             : pl.impl == 10 ? dispatch_v10(a, p, pl, stream, &ran)
                             : dispatch_v11(a, p, pl, stream, &ran);
        if (st == PALU_OK && !ran) return dispatch(a, v4_fallback(a, pl), stream); /* auto, where they cannot run */
    } else {
        st = dispatch_v3(a, p, pl, stream);
    }
    if (st != PALU_OK) return st;
    if (p.direct || p.pair) return PALU_OK; /* the decode kernel wrote the output (fill_params) */
    const bool pdl = pl.cc_major >= 9;
    switch (a->out_dtype) {
    case PALU_DTYPE_F32: return launch_merge<float>(m, p.B, pdl, stream);
    case PALU_DTYPE_F16: return launch_merge<__half>(m, p.B, pdl, stream);
    case PALU_DTYPE_BF16: return launch_merge<__nv_bfloat16>(m, p.B, pdl, stream);
    default: return palu_fail(PALU_ERR_TYPE, "out dtype %s is not supported", palu_dtype_name(a->out_dtype));
    }
}

/* Run `fn` with `device` current, restoring the caller's device. */
template <typename F> palu_status on_device(int device, F fn)
{
    int previous = 0;
    PALU_CUDA_CHECK(cudaGetDevice(&previous));
    if (previous != device) PALU_CUDA_CHECK(cudaSetDevice(device));
    palu_status st = fn();
    if (previous != device) {
        cudaError_t err = cudaSetDevice(previous);
        if (err != cudaSuccess && st == PALU_OK)
            st = palu_fail(PALU_ERR_CUDA, "cudaSetDevice(%d) failed restoring the caller's device: %s", previous,
                           cudaGetErrorString(err));
    }
    return st;
}

} // namespace

extern "C" palu_status palu_latent_decode_cuda_workspace(const palu_latent_decode_args *a, int device, int64_t *floats)
{
    if (floats == NULL) return palu_fail(PALU_ERR_VALUE, "`floats` is NULL");
    return on_device(device, [&]() -> palu_status {
        /* auto may fall back to v1 at launch (e.g. misaligned pointers, unknown here): size for both */
        Plan pl;
        palu_status st = make_plan(a, device, &pl);
        if (st != PALU_OK) return st;
        *floats = workspace_floats(a, pl);
        if (a->impl == PALU_LATENT_DECODE_AUTO && pl.impl >= 2) {
            palu_latent_decode_args v1 = *a;
            v1.impl = PALU_LATENT_DECODE_V1;
            Plan p1;
            if (make_plan(&v1, device, &p1) == PALU_OK && workspace_floats(a, p1) > *floats)
                *floats = workspace_floats(a, p1);
        }
        return PALU_OK;
    });
}

extern "C" palu_status palu_latent_decode_cuda_impl(const palu_latent_decode_args *a, int device, int *impl)
{
    if (impl == NULL) return palu_fail(PALU_ERR_VALUE, "`impl` is NULL");
    return on_device(device, [&]() -> palu_status {
        Plan pl;
        palu_status st = make_plan(a, device, &pl);
        if (st == PALU_OK) *impl = pl.impl;
        return st;
    });
}

extern "C" palu_status palu_latent_decode_cuda(const palu_latent_decode_args *a, int device, void *stream)
{
    return on_device(device, [&]() -> palu_status {
        Plan pl;
        palu_status st = make_plan(a, device, &pl);
        if (st != PALU_OK) return st;
        if ((st = check_pointers(a)) != PALU_OK) return st;
        const int64_t need = workspace_floats(a, pl);
        if (a->workspace_floats < need)
            return palu_fail(PALU_ERR_VALUE, "workspace holds %lld floats; this call needs %lld (ask "
                                             "latent_decode_cuda_workspace)",
                             (long long)a->workspace_floats, (long long)need);
        /* A stale error left in this runtime by an earlier call would be blamed on this launch: drop it. */
        (void)cudaGetLastError();
        return dispatch(a, pl, static_cast<cudaStream_t>(stream));
    });
}
