/* latent_attention.c -- scalar CPU reference of one decode step of attention over a latent KV cache.
 *
 * Shape legend: B batch, T cached slots, H query heads, Hkv KV heads, n_rep = H / Hkv, D head_dim, half = D/2,
 * G KV heads per group, NG groups, rk / rv ranks of a group, Rk / Rv summed ranks. See latent_attention.h.
 *
 * Loop order: sequence b -> group g -> KV head of the group -> its n_rep query heads. The RoPE table of b's
 * valid slots is built once per sequence and shared by all heads; a KV head's rotated keys (T, D) once and
 * shared by its query heads. Values stay latent until the end (exact because softmax weights sum to 1).
 */
#include "latent_attention.h"
#include "latent_cache.h"

#include <math.h>
#include <stdlib.h>

static palu_status validate(const palu_latent_attn_shape *s, const float *q, const float *k_latent,
                            const float *v_latent, const int32_t *positions, int64_t pos_stride,
                            const int32_t *pad_start, const float *k_up, const float *v_up, const float *inv_freq,
                            float attention_scaling, float scaling, const float *out)
{
    if (s == NULL) return palu_fail(PALU_ERR_VALUE, "`shape` is NULL");
    if (s->batch < 1 || s->tokens < 1 || s->heads < 1 || s->kv_heads < 1 || s->head_dim < 1 || s->group_size < 1)
        return palu_fail(PALU_ERR_VALUE,
                         "sizes must be >= 1, got batch=%lld tokens=%lld heads=%lld kv_heads=%lld head_dim=%lld "
                         "group_size=%lld",
                         (long long)s->batch, (long long)s->tokens, (long long)s->heads, (long long)s->kv_heads,
                         (long long)s->head_dim, (long long)s->group_size);
    if (s->tokens > INT32_MAX || s->head_dim > INT32_MAX || s->heads > INT32_MAX)
        return palu_fail(PALU_ERR_VALUE, "tokens, heads and head_dim must each fit a 32-bit BLAS index");
    if (s->head_dim % 2 != 0)
        return palu_fail(PALU_ERR_VALUE, "head_dim must be even (RoPE rotates its two halves), got %lld",
                         (long long)s->head_dim);
    if (s->heads % s->kv_heads != 0)
        return palu_fail(PALU_ERR_VALUE, "heads (%lld) must be a multiple of kv_heads (%lld)", (long long)s->heads,
                         (long long)s->kv_heads);
    if (s->kv_heads % s->group_size != 0)
        return palu_fail(PALU_ERR_VALUE, "group_size (%lld) must divide kv_heads (%lld)", (long long)s->group_size,
                         (long long)s->kv_heads);
    /* Scratch is (T, D) floats; refuse sizes whose byte counts would not fit a size_t. */
    if ((uint64_t)s->tokens > (uint64_t)(SIZE_MAX / sizeof(double)) / (uint64_t)s->head_dim)
        return palu_fail(PALU_ERR_VALUE, "tokens x head_dim = %lld x %lld is too large", (long long)s->tokens,
                         (long long)s->head_dim);
    if (!s->k_ranks || !s->v_ranks || !q || !k_latent || !v_latent || !positions || !pad_start || !k_up || !v_up ||
        !inv_freq || !out)
        return palu_fail(PALU_ERR_VALUE, "a required pointer (ranks, q, latents, positions, pad_start, k_up, v_up, "
                                         "inv_freq or out) is NULL");
    int64_t groups = s->kv_heads / s->group_size;
    for (int64_t g = 0; g < groups; g++) {
        if (s->k_ranks[g] < 1)
            return palu_fail(PALU_ERR_VALUE, "k rank of group %lld must be >= 1, got %lld", (long long)g,
                             (long long)s->k_ranks[g]);
        if (s->v_ranks[g] < 1)
            return palu_fail(PALU_ERR_VALUE, "v rank of group %lld must be >= 1, got %lld", (long long)g,
                             (long long)s->v_ranks[g]);
    }
    if (!isfinite(attention_scaling) || !isfinite(scaling))
        return palu_fail(PALU_ERR_VALUE, "attention_scaling (%g) and scaling (%g) must be finite",
                         (double)attention_scaling, (double)scaling);
    for (int64_t b = 0; b < s->batch; b++) {
        int32_t ps = pad_start[b];
        if (ps < 0 || ps >= s->tokens)
            return palu_fail(PALU_ERR_VALUE,
                             "pad_start[%lld] = %d is out of range; it must be in [0, tokens - 1] = [0, %lld] so "
                             "that at least one slot is attended",
                             (long long)b, (int)ps, (long long)(s->tokens - 1));
        for (int64_t t = ps; t < s->tokens; t++)
            if (positions[b * pos_stride + t] < 0)
                return palu_fail(PALU_ERR_VALUE, "positions[%lld, %lld] = %d is negative (valid slots need a position >= 0)",
                                 (long long)b, (long long)t, (int)positions[b * pos_stride + t]);
    }
    return PALU_OK;
}

/* Where the latents of a decode step come from: a dense (B, T, R) pair of arrays or a latent cache object.
 * rows() returns group g's rows [t0, t1) of sequence b, either in place (with their stride) or dequantized
 * into `scratch` ((t1 - t0) x r_g floats). */
typedef struct latent_source {
    void (*rows)(const struct latent_source *src, palu_latent_kind kind, int64_t b, int64_t g, int64_t col,
                 int64_t t0, int64_t t1, float *scratch, const float **rows, int64_t *stride);
    const float *k_latent, *v_latent; /* dense source: (B, T, Rk) and (B, T, Rv) */
    int64_t tokens, k_width, v_width;  /* dense source: T, Rk, Rv */
    const palu_latent_cache *cache;   /* cache source */
    const int32_t *positions;         /* positions[b * pos_stride + t] */
    int64_t pos_stride;
} latent_source;

static void dense_rows(const latent_source *src, palu_latent_kind kind, int64_t b, int64_t g, int64_t col, int64_t t0,
                       int64_t t1, float *scratch, const float **rows, int64_t *stride)
{
    (void)g;
    (void)t1;
    (void)scratch;
    const int64_t R = kind == PALU_LATENT_KEY ? src->k_width : src->v_width;
    const float *base = kind == PALU_LATENT_KEY ? src->k_latent : src->v_latent;
    *rows = base + (b * src->tokens + t0) * R + col;
    *stride = R;
}

static void cache_rows(const latent_source *src, palu_latent_kind kind, int64_t b, int64_t g, int64_t col, int64_t t0,
                       int64_t t1, float *scratch, const float **rows, int64_t *stride)
{
    (void)col;
    palu_latent_cache_rows(src->cache, kind, b, g, t0, t1, scratch, rows, stride);
}

/* Hot loops. They are written in axpy form (inner loops over contiguous float32 without a reduction), so the
 * compiler vectorizes them without reassociating sums; on x86-64 with GCC each is also compiled for x86-64-v3
 * (AVX2 + FMA) and picked at load time by the CPU (function multiversioning), the portable build staying the
 * fallback. Sanitizer builds (PALU_SANITIZE) keep one version. Why not BLAS sgemm: the products are small
 * (rk x D per token) and a threaded BLAS pool handing them out costs more than it gains on a busy machine
 * (measured 24 ms vs 1.3 ms for one layer step with SciPy's OpenBLAS on 2 loaded cores). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(PALU_SANITIZE)
#define PALU_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PALU_HOT
#endif

/* keys (S, D) = rows (S, r; rows `stride` apart) . upT (r, D), upT the transposed up-projection of one head. */
PALU_HOT static void rebuild_rows(const float *rows, int64_t stride, int64_t S, int64_t r, const float *upT, int64_t D,
                                  float *keys)
{
    int64_t t = 0;
    /* four tokens at a time: every upT row loaded once serves four key rows */
    for (; t + 4 <= S; t += 4) {
        const float *h0 = rows + t * stride, *h1 = h0 + stride, *h2 = h1 + stride, *h3 = h2 + stride;
        float *k0 = keys + t * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;
        for (int64_t d = 0; d < D; d++) k0[d] = k1[d] = k2[d] = k3[d] = 0.0f;
        for (int64_t i = 0; i < r; i++) {
            const float a0 = h0[i], a1 = h1[i], a2 = h2[i], a3 = h3[i], *u = upT + i * D;
            for (int64_t d = 0; d < D; d++) {
                const float ud = u[d];
                k0[d] += a0 * ud;
                k1[d] += a1 * ud;
                k2[d] += a2 * ud;
                k3[d] += a3 * ud;
            }
        }
    }
    for (; t < S; t++) {
        const float *h = rows + t * stride;
        float *k = keys + t * D;
        for (int64_t d = 0; d < D; d++) k[d] = 0.0f;
        for (int64_t i = 0; i < r; i++) {
            const float a = h[i], *u = upT + i * D;
            for (int64_t d = 0; d < D; d++) k[d] += a * u[d];
        }
    }
}

/* scores[t] = q . keys[t] for t < S (D-long dot products; eight interleaved partial sums). */
PALU_HOT static void dot_rows(const float *q, const float *keys, int64_t S, int64_t D, float *scores)
{
    for (int64_t t = 0; t < S; t++) {
        const float *k = keys + t * D;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t d = 0;
        for (; d + 8 <= D; d += 8)
            for (int j = 0; j < 8; j++) acc[j] += q[d + j] * k[d + j];
        float tail = 0.0f;
        for (; d < D; d++) tail += q[d] * k[d];
        scores[t] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
    }
}

/* z (r) = sum_t p[t] rows[t] for t < S (rows `stride` apart). */
PALU_HOT static void weighted_rows(const float *p, const float *rows, int64_t stride, int64_t S, int64_t r, float *z)
{
    for (int64_t i = 0; i < r; i++) z[i] = 0.0f;
    for (int64_t t = 0; t < S; t++) {
        const float a = p[t], *h = rows + t * stride;
        for (int64_t i = 0; i < r; i++) z[i] += a * h[i];
    }
}

/* The decode step itself, over any latent source (arguments validated by the callers).
 *
 * Per (sequence b, group g): the group's key and value latent rows of the valid slots t in [t0, T) are fetched
 * once (in place, or dequantized into scratch). Per KV head of the group, three float32 products (the hot loops
 * above) do the work of one decode step:
 *   keys   (S, D)     = hk (S, rk) . Uk_head^T           then bias and RoPE, S = T - t0
 *   scores (n_rep, S) = q_heads (n_rep, D) . keys^T       then a max-shifted softmax in double
 *   z      (n_rep, rv) = p (n_rep, S) . hv (S, rv)        then out = Uv_head z / sum p + bias
 * so the value up-projection runs once per query head, never per token. */
static palu_status decode_core(const palu_latent_attn_shape *shape, const float *q, const latent_source *src,
                               const int32_t *pad_start, const float *k_up, const float *v_up, const float *k_bias,
                               const float *v_bias, const float *inv_freq, float attention_scaling, float scaling,
                               float *out)
{
    const int64_t B = shape->batch, T = shape->tokens, H = shape->heads, Hkv = shape->kv_heads;
    const int64_t D = shape->head_dim, G = shape->group_size, NG = Hkv / G, n_rep = H / Hkv, half = D / 2;
    int64_t max_rk = 0, max_rv = 0;
    for (int64_t g = 0; g < NG; g++) {
        if (shape->k_ranks[g] > max_rk) max_rk = shape->k_ranks[g];
        if (shape->v_ranks[g] > max_rv) max_rv = shape->v_ranks[g];
    }

    /* One float allocation: cos and sin tables (T, half), rotated keys (T, D), scores / weights (n_rep, T),
     * the weighted value latents (n_rep, max_rv) and the dequantization scratch of a group's key and value rows
     * (T x max_rk, T x max_rv), and one head's transposed key up-projection (max_rk, D). */
    size_t n_flt = (size_t)T * (size_t)D * 2 + (size_t)n_rep * (size_t)(T + max_rv) +
                   (size_t)T * (size_t)(max_rk + max_rv) + (size_t)max_rk * (size_t)D;
    float *scratch = (float *)malloc(n_flt * sizeof(float));
    if (scratch == NULL) return palu_fail(PALU_ERR_NOMEM, "cannot allocate %zu bytes of scratch", n_flt * sizeof(float));
    float *cos_t = scratch, *sin_t = cos_t + (size_t)T * half, *keys = sin_t + (size_t)T * half;
    float *p = keys + (size_t)T * D, *z = p + (size_t)n_rep * T;
    float *k_scratch = z + (size_t)n_rep * max_rv, *v_scratch = k_scratch + (size_t)T * max_rk;
    float *ukT = v_scratch + (size_t)T * max_rv;

    for (int64_t b = 0; b < B; b++) {
        const int64_t t0 = pad_start[b], S = T - t0;
        const int32_t *pos_b = src->positions + b * src->pos_stride;
        for (int64_t t = t0; t < T; t++) {
            double pos = (double)pos_b[t];
            for (int64_t i = 0; i < half; i++) {
                double angle = pos * (double)inv_freq[i];
                cos_t[t * half + i] = (float)cos(angle) * attention_scaling;
                sin_t[t * half + i] = (float)sin(angle) * attention_scaling;
            }
        }
        const float *uk_g = k_up, *uv_g = v_up;
        int64_t k_col = 0, v_col = 0;
        for (int64_t g = 0; g < NG; g++) {
            const int64_t rk = shape->k_ranks[g], rv = shape->v_ranks[g];
            const float *k_rows, *v_rows;
            int64_t k_stride, v_stride;
            src->rows(src, PALU_LATENT_KEY, b, g, k_col, t0, T, k_scratch, &k_rows, &k_stride);
            src->rows(src, PALU_LATENT_VALUE, b, g, v_col, t0, T, v_scratch, &v_rows, &v_stride);
            for (int64_t j = 0; j < G; j++) {
                const int64_t kvh = g * G + j;
                const float *uk = uk_g + j * D * rk, *uv = uv_g + j * D * rv;
                const float *bk = k_bias ? k_bias + kvh * D : NULL, *bv = v_bias ? v_bias + kvh * D : NULL;
                float *key0 = keys + t0 * D;
                for (int64_t d = 0; d < D; d++)
                    for (int64_t i = 0; i < rk; i++) ukT[i * D + d] = uk[d * rk + i];
                rebuild_rows(k_rows, k_stride, S, rk, ukT, D, key0);
                for (int64_t t = t0; t < T; t++) {
                    float *key = keys + t * D;
                    if (bk)
                        for (int64_t d = 0; d < D; d++) key[d] += bk[d];
                    const float *c = cos_t + t * half, *sn = sin_t + t * half;
                    for (int64_t i = 0; i < half; i++) {
                        float lo = key[i], hi = key[i + half];
                        key[i] = lo * c[i] - hi * sn[i];
                        key[i + half] = hi * c[i] + lo * sn[i];
                    }
                }
                const int64_t h0 = kvh * n_rep; /* this KV head's query heads h0 .. h0 + n_rep - 1 */
                for (int64_t r = 0; r < n_rep; r++) dot_rows(q + (b * H + h0 + r) * D, key0, S, D, p + r * S);
                double inv_sum[64], *inv = n_rep <= 64 ? inv_sum : NULL;
                for (int64_t r = 0; r < n_rep; r++) {
                    float *pr = p + r * S;
                    float smax = -INFINITY;
                    for (int64_t t = 0; t < S; t++) {
                        pr[t] *= scaling;
                        if (pr[t] > smax) smax = pr[t];
                    }
                    double sum = 0.0;
                    for (int64_t t = 0; t < S; t++) {
                        pr[t] = (float)exp((double)pr[t] - (double)smax);
                        sum += (double)pr[t];
                    }
                    if (inv) inv[r] = 1.0 / sum;
                    else
                        for (int64_t t = 0; t < S; t++) pr[t] = (float)((double)pr[t] / sum);
                }
                for (int64_t r = 0; r < n_rep; r++) weighted_rows(p + r * S, v_rows, v_stride, S, rv, z + r * rv);
                for (int64_t r = 0; r < n_rep; r++) {
                    float *oh = out + (b * H + h0 + r) * D;
                    const float *zr = z + r * rv;
                    const float norm = inv ? (float)inv[r] : 1.0f;
                    for (int64_t d = 0; d < D; d++) {
                        const float *row = uv + d * rv;
                        float acc = 0.0f;
                        for (int64_t i = 0; i < rv; i++) acc += row[i] * zr[i];
                        oh[d] = acc * norm + (bv ? bv[d] : 0.0f);
                    }
                }
            }
            uk_g += G * D * rk;
            uv_g += G * D * rv;
            k_col += rk;
            v_col += rv;
        }
    }
    free(scratch);
    return PALU_OK;
}

palu_status palu_latent_decode_attention_ref(const palu_latent_attn_shape *shape, const float *q,
                                             const float *k_latent, const float *v_latent,
                                             const int32_t *positions, const int32_t *pad_start,
                                             const float *k_up, const float *v_up, const float *k_bias,
                                             const float *v_bias, const float *inv_freq, float attention_scaling,
                                             float scaling, float *out)
{
    palu_status st = validate(shape, q, k_latent, v_latent, positions, shape ? shape->tokens : 0, pad_start, k_up,
                              v_up, inv_freq, attention_scaling, scaling, out);
    if (st != PALU_OK) return st;
    latent_source src = {.rows = dense_rows, .k_latent = k_latent, .v_latent = v_latent, .tokens = shape->tokens,
                         .positions = positions, .pos_stride = shape->tokens};
    for (int64_t g = 0; g < shape->kv_heads / shape->group_size; g++) {
        src.k_width += shape->k_ranks[g];
        src.v_width += shape->v_ranks[g];
    }
    return decode_core(shape, q, &src, pad_start, k_up, v_up, k_bias, v_bias, inv_freq, attention_scaling, scaling,
                       out);
}

palu_status palu_latent_cache_decode_attention_ref(const palu_latent_attn_shape *shape,
                                                   const palu_latent_cache *cache, const float *q,
                                                   const int32_t *pad_start, const float *k_up, const float *v_up,
                                                   const float *k_bias, const float *v_bias, const float *inv_freq,
                                                   float attention_scaling, float scaling, float *out)
{
    if (cache == NULL || shape == NULL || shape->k_ranks == NULL || shape->v_ranks == NULL)
        return palu_fail(PALU_ERR_VALUE, "`cache`, `shape` or its rank arrays are NULL");
    if (cache->length < 1) return palu_fail(PALU_ERR_VALUE, "the cache holds no token; append the step's latents first");
    if (shape->batch != cache->batch || shape->tokens != cache->length)
        return palu_fail(PALU_ERR_VALUE, "shape says batch %lld x %lld slots, the cache holds %lld x %lld",
                         (long long)shape->batch, (long long)shape->tokens, (long long)cache->batch,
                         (long long)cache->length);
    if (shape->group_size < 1 || shape->kv_heads != cache->k.n_groups * shape->group_size)
        return palu_fail(PALU_ERR_VALUE, "kv_heads (%lld) must equal the cache's %lld head groups x group_size %lld",
                         (long long)shape->kv_heads, (long long)cache->k.n_groups, (long long)shape->group_size);
    for (int64_t g = 0; g < cache->k.n_groups; g++)
        if (shape->k_ranks[g] != cache->k.ranks[g] || shape->v_ranks[g] != cache->v.ranks[g])
            return palu_fail(PALU_ERR_VALUE, "group %lld: up-projection ranks (k %lld, v %lld) differ from the cache's "
                                             "(k %lld, v %lld)",
                             (long long)g, (long long)shape->k_ranks[g], (long long)shape->v_ranks[g],
                             (long long)cache->k.ranks[g], (long long)cache->v.ranks[g]);
    /* The cache's own latents are finite by construction (append refuses NaN/Inf) and the slots are validated
     * against the same rules as the dense entry point; its buffers stand in for the dense arrays. */
    const float *k_any = cache->bits ? cache->k.window : cache->k.latent;
    const float *v_any = cache->bits ? cache->v.window : cache->v.latent;
    palu_status st = validate(shape, q, k_any, v_any, cache->positions, cache->capacity, pad_start, k_up, v_up,
                              inv_freq, attention_scaling, scaling, out);
    if (st != PALU_OK) return st;
    latent_source src = {.rows = cache_rows, .cache = cache, .positions = cache->positions,
                         .pos_stride = cache->capacity};
    return decode_core(shape, q, &src, pad_start, k_up, v_up, k_bias, v_bias, inv_freq, attention_scaling, scaling,
                       out);
}
