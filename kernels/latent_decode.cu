/* latent_decode.cu -- fused decode attention over latent keys/values (see latent_decode.cuh for the design and
 * the output contract; palu_latent_decode_attention_ref in csrc/latent_attention.c is the scalar twin).
 *
 * Shape legend: B batch, T slots, H query heads, Hkv KV heads, n_rep = H / Hkv, D head_dim, half = D / 2,
 * G KV heads per group, rk / rv ranks of the CTA's group, P partials per (sequence, query head), W floats per
 * partial (m, l, z[rv_max], padded), TT tokens per tile.
 *
 * Sections: kernel v1 (CUDA cores), the merge kernel, kernels v2, v3, v4 and v5 (tensor cores), the plan
 * (implementation, warps, splits, workspace), the launchers and the one dispatch switch. The device helpers, the
 * RoPE angle and the launchers' host helpers are in latent_decode_common.cuh (shared with latent_decode_v9.cu,
 * kernel v9).
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

/* Combine two online-softmax states (max m, sum l and one column z, both scaled to m): m == -inf is an empty state
 * (its factor must not become ex2(-inf - -inf) = NaN). */
__device__ __forceinline__ void combine_mlz(float &m, float &l, float &z, float m2, float l2, float z2)
{
    const float mn = fmaxf(m, m2);
    const float a = m == mn ? 1.0f : dev::ex2(m - mn), c = m2 == mn ? 1.0f : dev::ex2(m2 - mn);
    l = fmaf(l, a, l2 * c), z = fmaf(z, a, z2 * c), m = mn;
}

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
    const int kvh = h / p.n_rep, g = kvh / p.G, rv = p.groups.rv[g];
    const int c0 = (int)blockIdx.z * kMergeCtaCols + dev::warp_id() * kMergeLaneCols; /* the warp's first column */
    const int c = c0 + (int)(lane % kMergeLaneCols);
    if (c0 >= rv) return; /* warp-uniform: none of its columns exist */
    const bool has_col = c < rv;
    const int col = p.n_rep * p.G * p.groups.vcol[g] + (h - g * p.G * p.n_rep) * rv;
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

/* d = a . b + c with separate c (saves the register copies of seeding the accumulators with the bias). */
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

/* Warps per CTA and CTAs per SM by rank: 8 x 2 (<= 128 registers) for rk <= 64, 12 x 1 (<= 168) for 128. */
template <int RK> struct V4Shape {
    static constexpr int WARPS = RK <= 64 ? 8 : 12;
    static constexpr int MINB = RK <= 64 ? 2 : 1;
};

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
    combine_cta_partials<RV>(p, b, h0, split, warps, recs, bad_pad);
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
        (a->impl > PALU_LATENT_DECODE_V5 && a->impl != PALU_LATENT_DECODE_V9 && a->impl != PALU_LATENT_DECODE_V10))
        return palu_fail(PALU_ERR_VALUE,
                         "impl %d is not one of 0 (auto), 1 (v1), 2 (v2), 3 (v3), 4 (v3w), 5 (v4), 6 (v5), 9 (v9), "
                         "10 (v10)",
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
/* Why v4 cannot run this call (NULL when it can): v3's conditions and its CTA's shared memory. */
const char *v4_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int *warps,
                           int *ctas_per_sm, size_t *smem, char *why, size_t why_len);
/* Why v5 cannot run this call (NULL when it can): v3's shapes on a compute capability 9.0 device (sm_90a code). */
const char *v5_unsupported(const palu_latent_decode_args *a, int max_rk, int max_rv, int smem_optin, int device,
                           int *warps, size_t *smem, char *why, size_t why_len);

/* The kernel a call runs: its implementation number, warps per CTA (v2-v9), shared memory and partials per CTA. */
void choose(Plan *pl, int impl, int warps, size_t smem, int partials_per_cta)
{
    pl->impl = impl, pl->warps = warps, pl->smem = smem, pl->partials_per_cta = partials_per_cta;
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
    if (a->impl == PALU_LATENT_DECODE_V9 || a->impl == PALU_LATENT_DECODE_AUTO) { /* auto: v9 first */
        char why9[256] = "";
        int w9 = 0;
        size_t s9 = 0;
        const char *no = v9_unsupported(a, pl->max_rk, pl->max_rv, smem_optin, device, &w9, &s9, why9, sizeof why9);
        if (no != NULL && a->impl == PALU_LATENT_DECODE_V9)
            return palu_fail(PALU_ERR_UNSUPPORTED, "the decode kernel v9 does not support this call: %s", no);
        if (no == NULL) choose(pl, 9, w9, s9, 1); /* the CTA combines its quads' states */
    }
    if (a->impl == PALU_LATENT_DECODE_V10) { /* only on request: as fast as v4 at batch 8, slower at batch 1 (run 73) */
        char why10[256] = "";
        int w10 = 0;
        size_t s10 = 0;
        const char *no = v10_unsupported(a, pl->max_rk, pl->max_rv, smem_optin, device, &w10, &s10, why10, sizeof why10);
        if (no != NULL) return palu_fail(PALU_ERR_UNSUPPORTED, "the decode kernel v10 does not support this call: %s", no);
        choose(pl, 10, w10, s10, 1); /* the CTA combines its warps' states */
    }
    if (pl->impl != 9 && pl->impl != 10 &&
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
                            ? "v1, v2, v3w, v4, v5, v9 or v10 chosen"
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
    /* v9 and v10 (one CTA per SM) size their workspace as v4 would (two CTAs per SM), so that a workspace sized by a
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
    if (pl->impl >= 9) { /* one wave at one CTA per SM, and at least two 256-slot blocks per CTA */
        const int64_t wave = pl->sm_count / (a->kv_heads * a->batch);
        const int64_t by_len = (a->length + 2 * kV9BlockSlots - 1) / (2 * kV9BlockSlots);
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

palu_status launch_decode(void (*kern)(DecodeParams), const DecodeParams &p, const Plan &pl, cudaStream_t stream)
{
    return launch_decode_smem(kern, pl.smem, p, pl, stream);
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
#ifdef PALU_EMULATE
    pdl = false; /* the lock-step emulator launches through PALU_EMU_LAUNCH only */
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
    } else if (pl.impl == 9) {
        bool ran = false;
        st = dispatch_v9(a, p, pl, stream, &ran);
        if (st == PALU_OK && !ran) { /* auto under graph capture: v4 (v9's shapes are v4's; its splits fit v4's
                                      * workspace, one partial per CTA in both) */
            Plan p4 = pl;
            p4.impl = 5, p4.warps = V4Shape<64>::WARPS, p4.smem = v4_smem(128, 64, 64);
            st = dispatch_v4(a, p, p4, stream);
        }
    } else if (pl.impl == 10) {
        bool ran = false;
        st = dispatch_v10(a, p, pl, stream, &ran);
        if (st == PALU_OK && !ran) { /* (only if auto ever takes v10) where it cannot load by TMA: v4, as for v9 */
            Plan p4 = pl;
            p4.impl = 5, p4.warps = V4Shape<64>::WARPS, p4.smem = v4_smem(128, 64, 64);
            st = dispatch_v4(a, p, p4, stream);
        }
    } else {
        st = dispatch_v3(a, p, pl, stream);
    }
    if (st != PALU_OK) return st;
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
