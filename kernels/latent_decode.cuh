/* latent_decode.cuh -- fused decode attention over a Palu latent KV cache on the GPU: one C-callable launcher
 * (no CUDA types here, so the C binding includes this header without CUDA headers).
 *
 * What it computes. One decode step of one attention layer for a batch of sequences that share the slot count
 * T (`length`) and differ in left padding (`pad_start[b]`): for every query head h of sequence b,
 *
 *     z[b, h] = sum_t p_t hv_t[g],   p = softmax_t(scaling * q[b, h] . K_t),   t in [pad_start[b], T)
 *     K_t     = RoPE(Uk_head @ hk_t[g] + bk_head, positions[b, t])
 *
 * with head = h / n_rep its KV head, g = head / G its group, exactly the math of the C twin
 * palu_latent_decode_attention_ref (csrc/latent_attention.h), up to one thing: the kernel stops at z, the
 * probability-weighted VALUE LATENT of each query head (normalized: the weights sum to 1). The caller applies
 * the value up-projection and the bias, o[b, h] = Uv_head @ z[b, h] + bv_head, or better folds Uv into o_proj
 * (one (hidden x n_rep*G*Rv) matmul per step); that is the C twin's output `out`.
 *
 * Output layout (the contract with the caller). z is (B, Z) with Z = n_rep * G * Rv: query heads in order,
 * head h taking rv_g(h) consecutive values. Query heads of group g are h in [g*G*n_rep, (g+1)*G*n_rep), so
 * head h starts at column n_rep*G*ov_g + (h - g*G*n_rep)*rv_g, ov_g = sum_{j<g} rv_j. With equal ranks this
 * is simply (B, H, rv). Written in float32 or in the input dtype.
 *
 * Inputs (device pointers; element strides, the last axis always contiguous):
 *   q          (B, H, D) fp16/bf16, contiguous, RoPE already applied.
 *   k_latent   (B, >=T, Rk) rows `k_token_stride` apart, sequences `k_batch_stride` apart; same dtype.
 *   v_latent   (B, >=T, Rv) likewise.
 *   positions  (B, >=T) int32, sequences `pos_batch_stride` apart; RoPE position of every slot (|pos| < 2^24).
 *   pad_start  (B,) int32 on the device: slots [0, pad_start[b]) are ignored. It is read by the kernel (no host
 *              synchronization), so it cannot be validated on the host: a value outside [0, T-1] makes that
 *              sequence's whole output NaN (loud, never silent garbage).
 *   k_up       sum_g G*D*rk_g elements of the dtype: group g's row-major (G*D, rk_g) key up-projection, groups
 *              one after another (row j*D + d = dimension d of KV head g*G + j), as the C twin.
 *   k_bias     (Hkv*D) float32 or NULL.   inv_freq (D/2) float32.
 *   k_pairs    NULL, or (NG, G*D/2) int32, 16-byte aligned: the groups' keys are in the interpolative basis
 *              (palu_c/key_basis.py): group g's rk_g / 2 RoPE pairs p = (head j, frequency f), p = j*D/2 + f, listed
 *              in its row k_pairs[g] from position G*D/2 - rk_g / 2 on, in latent order, have the unit rows of k_up
 *              (pair i's lower member, row j*D + f, is e_i; its upper member, row j*D + f + D/2, is e_{rk/2+i}); the
 *              row's first G*D/2 - rk_g / 2 entries are the other pairs. Both lists take as many pairs from each
 *              head, head after head (any order within a head). A hint: the dense k_up is exact either way, and
 *              kernels that cannot use it (all but v10 and v11 today) ignore it. Read on the device only: the caller
 *              vouches for it (palu_c derives it from k_up itself: latent_kernels.key_pairs).
 *   workspace  float32, at least palu_latent_decode_cuda_workspace(...) elements: the split partials.
 *
 * Design (the notes file docs/design/latent_decode_notes.md has each version's numbers).
 *   Grid (Hkv, splits, B): one CTA per KV head, slice of the sequence and batch entry; KV heads are the fastest
 *   grid axis so the G CTAs that read one group's latents run side by side and share them through L2. Each
 *   CTA writes a partial (running max m, sum l, unnormalized z) per query head and per slice (per warp in v2, v3
 *   and v5; v4 combines its warps' states in shared memory first);
 *   a second small kernel merges the partials (log-sum-exp) and writes z. Where a call has one partial per head
 *   (v4, v9, v10, v11 with one split), the decode kernel writes z itself and no merge runs (the merge of one
 *   partial is z / l, computed the same way). Where v10 or v11 plan exactly two splits of one partial each (batch
 *   8 of Llama-3-8B shapes on an H200), the grid runs in thread-block clusters of the two splits: after a cluster
 *   barrier split 0 combines both partials with the merge's arithmetic and writes z, and no merge runs either (the
 *   pair launch; PALU_C_PAIR_MERGE=0 in the environment launches the merge kernel instead). Scores live in the log2 domain
 *   (scaling * attention_scaling * log2 e folded into one factor; attention_scaling multiplies cos and sin,
 *   hence the rotated key, hence the score).
 *   v1 (CUDA cores, any shape that fits shared memory): Uk of the head in shared memory, tiles of 16 tokens:
 *   rebuild K in fp32, RoPE, scores, online softmax, z += p hv. Simple and exact (fp32 throughout).
 *   v2 (tensor cores, D in {64, 128}, n_rep <= 8, ranks multiples of 16, rv <= 256): each warp streams its own
 *   slice in 32-token tiles, double-buffered with cp.async (zero-fill past the end); per tile the rebuild
 *   K = HK . Uk^T runs as mma.sync m16n8k16 (fp32 accumulators seeded with the bias), RoPE rotates the fp32
 *   accumulators in registers (dims d and d+D/2 sit in the same thread), the rotated keys become the B operand
 *   of S = Q . K^T without leaving registers, online softmax on S, and z^T += HV^T . P^T (ldmatrix.trans on
 *   the value tile, P from S's registers). Keys and probabilities are rounded to the input dtype for the
 *   products (fp32 accumulation).
 *   v3 (v2's conditions plus equal ranks (32, 32), (64, 64) or (128, 128) in every group): v2 with the ranks as
 *   compile-time constants (no guards, constant strides and tile-load index math), a bias-free build with
 *   zero-seeded accumulators, one wave of CTAs, and RoPE split between the operands: for a tile of consecutive
 *   positions p0 + tau, q . R(p0 + tau) k = (R(p0)^T q) . (R(tau) k); keys rotate by R(tau) from a per-CTA table,
 *   the query rotates once per tile (fp32 registers, advanced by R(32), re-anchored with the precise angle every
 *   8 tiles or after a jump) and is rounded to the dtype for the score product; other tiles as v2.
 *   v4 (v3's shapes; auto's first choice where v9 does not apply): v3's math in 16-token warp tiles (one m16 tile: half the accumulator,
 *   HK-fragment and score registers, <= 128 per thread at rk = rv <= 64, <= 168 at 128) and CTAs of 8 warps
 *   (two per SM: 16 warps) or 12 warps (rank 128, one per SM) sharing Uk and the R(tau) table; per warp two
 *   key stages and one value tile, each waited for right where it is used (keys at the top of their tile,
 *   values before the PV product), so the copies overlap a whole tile of work. One query anchor serves two
 *   tiles (R(tau) table of 32 rows; the query advances by R(32) per pair). Goal: latency hiding by occupancy (v3 had 2 warps per scheduler and issued in 35% of the slots).
 *   v4 loads its latent tiles by TMA (one tensor copy per tile and kind, on per-warp mbarriers; tensor maps
 *   encoded per call; positions by cp.async) at rk = rv <= 64 on compute capability 9.0+ outside CUDA-graph capture,
 *   else by cp.async (a captured map would keep the capture's slot count); PALU_C_V4_TMA=0 in the environment
 *   forces cp.async.
 *   v9 (one query head per KV head, G = 1, D = 128, ranks 64, no key bias, compute capability 9.0; auto's first
 *   choice there): absorbed RoPE, no key rebuilt. For the slot at anchor a + 64 tau of a block of 64 rows,
 *   q . R(a + 64 tau) U c = (R(a)^T q) . (R(64 tau) U) c: U_tau = R(64 tau) U is built per CTA, the query is rotated to
 *   the block's 64 anchors (four producer warps, double-buffered), one wgmma per 64-slot step gives W = Qa . U_tau,
 *   each slot's score is W's row . c (the diagonal of an mma.sync product), P . V on mma.sync. One CTA of 13 warps
 *   per SM, two consumer warpgroups taking alternate steps; latents by TMA (cp.async under graph capture, where
 *   auto runs v4 instead); slots whose positions are not their row's anchor + 64 tau take an exact per-slot path.
 *   v10 (2-8 query heads per KV head, G = 1, D = 128, ranks 64, no key bias, compute capability 9.0, outside CUDA-
 *   graph capture; latent rows, k_up, q and inv_freq 16-byte aligned; auto takes it where each CTA walks >= 1024
 *   slots): per 64-slot step one wgmma rebuilds the keys from U_tau = R(64 tau) U
 *   (built per CTA), each thread rotates its two rows by R(row) (fixed angles; each slot's own offset from the
 *   block's anchor when positions are not consecutive; with k_pairs, only the 64 rebuilt dimensions by wgmma and
 *   the other 64 read from the latent), the scores of all n_rep heads are one mma.sync K . Q_A^T
 *   per 16 slots with Q_A = R(anchor)^T Q, P . V on mma.sync with P transposed in registers. One CTA of 8 warps per
 *   SM, two warpgroups taking alternate steps and loading their own stages by TMA.
 *   v11 (G = 2, D = 128, ranks 128, 1-8 query heads per KV head, no key bias, compute capability 9.0, outside CUDA-
 *   graph capture, v10's alignment; auto takes it where the call walks >= 8K (sequence, group, slot) triples): v10's
 *   step for the two KV heads of a group, one CTA of 8 warps per (sequence, group, split) with one warpgroup per KV
 *   head, both on the same TMA stage of the group's 64 x 128 latents; U unrotated (tau = 0: the anchor moves every
 *   64-slot step, each warp rotating its queries to it), slices in whole steps (>= 4 per CTA).
 *   RoPE angles (all versions): the exact product pos * inv_freq / (2 pi) is reduced to a fraction of a turn
 *   in fp32 with an FMA error term (inv_freq / 2 pi split into two floats), then __sincosf on [-pi, pi]: absolute
 *   error of cos/sin about 1e-6 at any position < 2^24 (transformers' own fp32 angle loses up to pos * 2^-24 rad).
 *   v2 takes one such evaluation per (token, pair) when the tile's positions are consecutive and derives the
 *   tokens 8, 16, 24 slots further by rotating with cos/sin(8 inv_freq) (two FMAs each; < 1e-6 more).
 *
 * Shape legend: B batch, T slots, H query heads, Hkv KV heads, n_rep = H / Hkv, D head_dim, G KV heads per
 * group, NG = Hkv / G groups, rk_g / rv_g ranks of group g, Rk / Rv their sums, Z = n_rep * G * Rv.
 */
#ifndef PALU_LATENT_DECODE_CUH
#define PALU_LATENT_DECODE_CUH

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which kernel runs. Values are only ever appended. */
typedef enum palu_latent_decode_impl {
    PALU_LATENT_DECODE_AUTO = 0, /* v9 where supported, else v10 (long slices), v11 (>= 8K triples), v4, v3, v2, v1 */
    PALU_LATENT_DECODE_V1 = 1,   /* CUDA-core kernel (any supported shape) */
    PALU_LATENT_DECODE_V2 = 2,   /* tensor-core kernel; PALU_ERR_UNSUPPORTED naming the value otherwise */
    PALU_LATENT_DECODE_V3 = 3,   /* v2 specialized (equal ranks 32/64/128, RoPE table); likewise */
    PALU_LATENT_DECODE_V3W = 4,  /* v3 with 6 warps of one stage each (ranks 32/64), only on request; likewise */
    PALU_LATENT_DECODE_V4 = 5,   /* v3 in 16-token warp tiles, 8-12 warps per CTA (v3's shapes); likewise */
    PALU_LATENT_DECODE_V5 = 6,   /* v4 with the key rebuild on wgmma (v3's shapes, compute capability 9.0); likewise */
    /* 7 and 8 were v6 and v7 on branches (never on main): not to be reused */
    PALU_LATENT_DECODE_V9 = 9,   /* absorbed RoPE: MHA, group size 1, head_dim 128, ranks 64, no key bias, compute
                                  * capability 9.0; auto's first choice where it applies; likewise */
    PALU_LATENT_DECODE_V10 = 10  /* rebuild on wgmma, RoPE split between query and key: GQA (2-8 query heads per KV
                                  * head), group size 1, head_dim 128, ranks 64, no key bias, compute capability 9.0,
                                  * not under CUDA-graph capture (auto runs v4 there); auto takes it where each CTA
                                  * walks >= 1024 slots (shorter: v4); likewise */,
    PALU_LATENT_DECODE_V11 = 11  /* v10's step for group size 2 (two KV heads per CTA), head_dim 128, ranks 128, 1-8
                                  * query heads per KV head, no key bias, compute capability 9.0, not under CUDA-graph
                                  * capture (auto runs v4 there); auto takes it where the call walks >= 8K
                                  * (sequence, group, slot) triples (fewer: v4) */
} palu_latent_decode_impl;

/* The most head groups one call takes (their ranks travel in the kernel's parameter block). */
#define PALU_LATENT_DECODE_MAX_GROUPS 128

/* Everything one decode-attention call needs. Sizes first (what the workspace query reads), then pointers. */
typedef struct palu_latent_decode_args {
    int64_t batch;          /* B >= 1 */
    int64_t heads;          /* H, a multiple of kv_heads */
    int64_t kv_heads;       /* Hkv = NG * G */
    int64_t head_dim;       /* D, even */
    int64_t group_size;     /* G */
    int64_t length;         /* T >= 1: slots filled */
    int64_t n_groups;       /* NG, <= PALU_LATENT_DECODE_MAX_GROUPS */
    const int64_t *k_ranks; /* host, NG entries >= 1 */
    const int64_t *v_ranks; /* host, NG entries >= 1 */
    palu_dtype dtype;       /* of q, latents, k_up: F16 or BF16 */
    int impl;               /* palu_latent_decode_impl */

    const void *q;
    const void *k_latent;
    int64_t k_batch_stride, k_token_stride; /* elements */
    const void *v_latent;
    int64_t v_batch_stride, v_token_stride;
    const int32_t *positions;
    int64_t pos_batch_stride;
    const int32_t *pad_start;
    const void *k_up;
    const int32_t *k_pairs; /* or NULL: the interpolative key basis (above) */
    const float *k_bias;    /* or NULL */
    const float *inv_freq;
    float attention_scaling; /* finite */
    float scaling;           /* finite */
    void *out;               /* (B, Z) */
    palu_dtype out_dtype;    /* F32 or the input dtype */
    float *workspace;
    int64_t workspace_floats;
} palu_latent_decode_args;

/* Launchers */

/* The float32 workspace one call with these sizes needs (reads only the size fields and impl of `a`). It does
 * not depend on `length` beyond a cap, so a caller may size it once for the largest length it will use:
 * the value for any length is <= the value for a larger one. PALU_ERR_VALUE / PALU_ERR_UNSUPPORTED as the
 * launcher (naming the value). */
palu_status palu_latent_decode_cuda_workspace(const palu_latent_decode_args *a, int device, int64_t *floats);

/* Which implementation `a` runs with (1 to 6) on `device`; errors as the launcher. */
palu_status palu_latent_decode_cuda_impl(const palu_latent_decode_args *a, int device, int *impl);

/* One decode step (see above): launches the decode kernel and, unless it wrote z itself, the merge kernel on
 * `stream` (a cudaStream_t;
 * NULL is the legacy default stream, only when the caller asked for it). Never allocates, never synchronizes.
 * PALU_ERR_VALUE for inconsistent sizes, strides or a NULL pointer; PALU_ERR_TYPE for a dtype other than
 * F16/BF16 (or an out dtype other than F32 or the input dtype); PALU_ERR_UNSUPPORTED naming the value for a
 * valid combination no kernel handles (head_dim, ranks, n_rep, shared memory); PALU_ERR_CUDA for a launch
 * error. `device` is made current for the launch and restored. */
palu_status palu_latent_decode_cuda(const palu_latent_decode_args *a, int device, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* PALU_LATENT_DECODE_CUH */
