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

static float dot_f32(const float *a, const float *b, int64_t n)
{
    float acc = 0.0f;
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
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

/* The decode step itself, over any latent source (arguments validated by the callers). */
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

    /* One allocation: weights p (T) and the p-weighted value latent (max_rv) in double, then cos and sin tables
     * (T, half), rotated keys (T, D) and the dequantization scratch of a group's key and value rows (T x max_rk,
     * T x max_rv) in float; the doubles first for alignment. */
    size_t n_dbl = (size_t)T + (size_t)max_rv;
    size_t n_flt = (size_t)T * (size_t)D * 2 + (size_t)T * (size_t)(max_rk + max_rv);
    double *scratch = (double *)malloc(n_dbl * sizeof(double) + n_flt * sizeof(float));
    if (scratch == NULL) return palu_fail(PALU_ERR_NOMEM, "cannot allocate %zu bytes of scratch",
                                          n_dbl * sizeof(double) + n_flt * sizeof(float));
    double *p = scratch, *hv_avg = scratch + T;
    float *cos_t = (float *)(scratch + n_dbl), *sin_t = cos_t + (size_t)T * half, *keys = sin_t + (size_t)T * half;
    float *k_scratch = keys + (size_t)T * D, *v_scratch = k_scratch + (size_t)T * max_rk;

    for (int64_t b = 0; b < B; b++) {
        const int64_t t0 = pad_start[b];
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
                for (int64_t t = t0; t < T; t++) {
                    const float *hk = k_rows + (t - t0) * k_stride;
                    float *key = keys + t * D;
                    for (int64_t d = 0; d < D; d++) key[d] = dot_f32(uk + d * rk, hk, rk) + (bk ? bk[d] : 0.0f);
                    const float *c = cos_t + t * half, *sn = sin_t + t * half;
                    for (int64_t i = 0; i < half; i++) {
                        float lo = key[i], hi = key[i + half];
                        key[i] = lo * c[i] - hi * sn[i];
                        key[i + half] = hi * c[i] + lo * sn[i];
                    }
                }
                for (int64_t r = 0; r < n_rep; r++) {
                    const int64_t h = kvh * n_rep + r;
                    const float *qh = q + (b * H + h) * D;
                    float *oh = out + (b * H + h) * D;
                    /* Scores into p (double storage of float32 scores), then a max-shifted softmax. */
                    double smax = -INFINITY;
                    for (int64_t t = t0; t < T; t++) {
                        float sc = dot_f32(qh, keys + t * D, D) * scaling;
                        p[t] = (double)sc;
                        if (p[t] > smax) smax = p[t];
                    }
                    double sum = 0.0;
                    for (int64_t t = t0; t < T; t++) {
                        p[t] = exp(p[t] - smax);
                        sum += p[t];
                    }
                    for (int64_t i = 0; i < rv; i++) hv_avg[i] = 0.0;
                    for (int64_t t = t0; t < T; t++) {
                        const float *hv = v_rows + (t - t0) * v_stride;
                        for (int64_t i = 0; i < rv; i++) hv_avg[i] += p[t] * (double)hv[i];
                    }
                    for (int64_t i = 0; i < rv; i++) hv_avg[i] /= sum;
                    for (int64_t d = 0; d < D; d++) {
                        const float *row = uv + d * rv;
                        float acc = 0.0f;
                        for (int64_t i = 0; i < rv; i++) acc += row[i] * (float)hv_avg[i];
                        oh[d] = acc + (bv ? bv[d] : 0.0f);
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
