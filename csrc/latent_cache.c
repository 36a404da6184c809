/* latent_cache.c -- host latent KV cache of one Palu attention layer (see latent_cache.h for the layout).
 *
 * Shape legend: B batch, T tokens of one append, C capacity, W window capacity, NG groups, r_g group rank,
 * R summed rank of a side, Wd code words per token, S scales per token.
 *
 * Every change that needs memory allocates the new buffers first and only then touches the cache, so an
 * allocation failure leaves the cache as it was. Buffers are zero-filled on allocation (calloc): slots past
 * `length` hold zeros, never stale or uninitialised bytes.
 */
#include "latent_cache.h"
#include "quant.h"

#include <stdlib.h>
#include <string.h>

/* The buffers of one (B, C, W) allocation; index 0 keys, 1 values. */
typedef struct storage {
    int32_t *positions;
    float *latent[2];
    uint32_t *codes[2];
    float *scales[2], *zeros[2], *window[2];
} storage;

static palu_latent_side *side_of(palu_latent_cache *c, int i) { return i == 0 ? &c->k : &c->v; }
static const palu_latent_side *cside_of(const palu_latent_cache *c, int i) { return i == 0 ? &c->k : &c->v; }

static int64_t words_per_token(const palu_latent_side *s) { return s->word_off[s->n_groups]; }
static int64_t scales_per_token(const palu_latent_side *s) { return s->scale_off[s->n_groups]; }
static int64_t group_quant_size(const palu_latent_cache *c, const palu_latent_side *s, int64_t g)
{
    return c->quant_group > 0 ? c->quant_group : s->ranks[g];
}

static void storage_free(storage *st)
{
    free(st->positions);
    for (int i = 0; i < 2; i++) {
        free(st->latent[i]);
        free(st->codes[i]);
        free(st->scales[i]);
        free(st->zeros[i]);
        free(st->window[i]);
    }
    memset(st, 0, sizeof *st);
}

/* calloc of a * b * c elements of `size` bytes, NULL on overflow or failure. */
static void *calloc3(int64_t a, int64_t b, int64_t c, size_t size)
{
    if (a <= 0 || b <= 0 || c <= 0) return NULL;
    uint64_t n = (uint64_t)a;
    if ((uint64_t)b > UINT64_MAX / n) return NULL;
    n *= (uint64_t)b;
    if ((uint64_t)c > UINT64_MAX / n) return NULL;
    n *= (uint64_t)c;
    if (n > SIZE_MAX / size) return NULL;
    return calloc((size_t)n, size);
}

static palu_status storage_alloc(const palu_latent_cache *c, int64_t B, int64_t C, int64_t W, storage *st)
{
    memset(st, 0, sizeof *st);
    int ok = (st->positions = (int32_t *)calloc3(B, C, 1, sizeof(int32_t))) != NULL;
    for (int i = 0; i < 2 && ok; i++) {
        const palu_latent_side *s = cside_of(c, i);
        if (c->bits == 0) {
            ok = (st->latent[i] = (float *)calloc3(B, C, s->width, sizeof(float))) != NULL;
        } else {
            ok = (st->codes[i] = (uint32_t *)calloc3(B, C, words_per_token(s), sizeof(uint32_t))) != NULL &&
                 (st->scales[i] = (float *)calloc3(B, C, scales_per_token(s), sizeof(float))) != NULL &&
                 (st->zeros[i] = (float *)calloc3(B, C, scales_per_token(s), sizeof(float))) != NULL &&
                 (st->window[i] = (float *)calloc3(B, W, s->width, sizeof(float))) != NULL;
        }
    }
    if (!ok) {
        storage_free(st);
        return palu_fail(PALU_ERR_NOMEM, "cannot allocate the latent cache buffers for batch %lld, capacity %lld "
                                         "slots (window %lld)", (long long)B, (long long)C, (long long)W);
    }
    return PALU_OK;
}

/* Copy the filled slots of the cache into `dst` (capacity C, window W): new sequence i <- old index[i]
 * (identity when index is NULL), for n sequences. */
static void storage_fill(const palu_latent_cache *c, storage *dst, int64_t C, int64_t W, const int64_t *index,
                         int64_t n)
{
    const int64_t L = c->length, sealed = c->sealed, live = L - sealed;
    for (int64_t i = 0; i < n; i++) {
        const int64_t o = index ? index[i] : i;
        memcpy(dst->positions + i * C, c->positions + o * c->capacity, (size_t)L * sizeof(int32_t));
        for (int k = 0; k < 2; k++) {
            const palu_latent_side *s = cside_of(c, k);
            const int64_t R = s->width, Wd = words_per_token(s), S = scales_per_token(s);
            if (c->bits == 0) {
                memcpy(dst->latent[k] + i * C * R, s->latent + o * c->capacity * R, (size_t)(L * R) * sizeof(float));
                continue;
            }
            memcpy(dst->codes[k] + i * C * Wd, s->codes + o * c->capacity * Wd, (size_t)(sealed * Wd) * sizeof(uint32_t));
            memcpy(dst->scales[k] + i * C * S, s->scales + o * c->capacity * S, (size_t)(sealed * S) * sizeof(float));
            memcpy(dst->zeros[k] + i * C * S, s->zeros + o * c->capacity * S, (size_t)(sealed * S) * sizeof(float));
            memcpy(dst->window[k] + i * W * R, s->window + o * c->window_cap * R, (size_t)(live * R) * sizeof(float));
        }
    }
}

/* Free the cache's buffers and adopt those of `st` (st is emptied). */
static void storage_adopt(palu_latent_cache *c, storage *st, int64_t B, int64_t C, int64_t W)
{
    free(c->positions);
    c->positions = st->positions;
    for (int i = 0; i < 2; i++) {
        palu_latent_side *s = side_of(c, i);
        free(s->latent);
        free(s->codes);
        free(s->scales);
        free(s->zeros);
        free(s->window);
        s->latent = st->latent[i];
        s->codes = st->codes[i];
        s->scales = st->scales[i];
        s->zeros = st->zeros[i];
        s->window = st->window[i];
    }
    memset(st, 0, sizeof *st);
    c->batch = B;
    c->capacity = C;
    c->window_cap = c->bits ? W : 0;
}

static void side_free(palu_latent_side *s)
{
    free(s->ranks);
    free(s->word_off);
    free(s->scale_off);
    free(s->latent);
    free(s->codes);
    free(s->scales);
    free(s->zeros);
    free(s->window);
    memset(s, 0, sizeof *s);
}

static palu_status side_init(palu_latent_side *s, const char *name, int64_t n_groups, const int64_t *ranks, int bits,
                             int64_t quant_group)
{
    memset(s, 0, sizeof *s);
    for (int64_t g = 0; g < n_groups; g++) {
        if (ranks[g] < 1)
            return palu_fail(PALU_ERR_VALUE, "%s rank of group %lld must be >= 1, got %lld", name, (long long)g,
                             (long long)ranks[g]);
        if (quant_group > 0 && ranks[g] % quant_group != 0)
            return palu_fail(PALU_ERR_VALUE, "quant_group (%lld) must divide every group rank; it does not divide "
                                             "the %s rank %lld of group %lld",
                             (long long)quant_group, name, (long long)ranks[g], (long long)g);
    }
    s->n_groups = n_groups;
    s->ranks = (int64_t *)malloc((size_t)n_groups * sizeof(int64_t));
    s->word_off = (int64_t *)malloc((size_t)(n_groups + 1) * sizeof(int64_t));
    s->scale_off = (int64_t *)malloc((size_t)(n_groups + 1) * sizeof(int64_t));
    if (!s->ranks || !s->word_off || !s->scale_off) {
        side_free(s);
        return palu_fail(PALU_ERR_NOMEM, "cannot allocate the latent cache's group tables");
    }
    s->word_off[0] = s->scale_off[0] = 0;
    for (int64_t g = 0; g < n_groups; g++) {
        s->ranks[g] = ranks[g];
        s->width += ranks[g];
        int64_t q = quant_group > 0 ? quant_group : ranks[g];
        s->word_off[g + 1] = s->word_off[g] + (bits ? (int64_t)palu_quant_row_words((size_t)ranks[g], bits) : 0);
        s->scale_off[g + 1] = s->scale_off[g] + (bits ? ranks[g] / q : 0);
    }
    return PALU_OK;
}

palu_status palu_latent_cache_init(palu_latent_cache *cache, int64_t n_groups, const int64_t *k_ranks,
                                   const int64_t *v_ranks, int bits, int64_t residual, int64_t quant_group)
{
    if (cache == NULL) return palu_fail(PALU_ERR_VALUE, "`cache` is NULL");
    memset(cache, 0, sizeof *cache);
    if (n_groups < 1 || k_ranks == NULL || v_ranks == NULL)
        return palu_fail(PALU_ERR_VALUE, "the cache needs at least one head group with its k and v ranks, got %lld "
                                         "groups", (long long)n_groups);
    if (bits != 0 && bits != 2 && bits != 3 && bits != 4 && bits != 8)
        return palu_fail(PALU_ERR_VALUE, "bits must be 2, 3, 4 or 8 (or 0 for unquantized latents), got %d", bits);
    if (residual < 0) return palu_fail(PALU_ERR_VALUE, "residual must be >= 0, got %lld", (long long)residual);
    if (quant_group < 0) return palu_fail(PALU_ERR_VALUE, "quant_group must be >= 1 (or 0 for whole groups), got %lld",
                                          (long long)quant_group);
    palu_status st = side_init(&cache->k, "k", n_groups, k_ranks, bits, quant_group);
    if (st == PALU_OK) st = side_init(&cache->v, "v", n_groups, v_ranks, bits, quant_group);
    if (st != PALU_OK) {
        side_free(&cache->k);
        return st;
    }
    cache->bits = bits;
    cache->residual = bits ? residual : 0;
    cache->quant_group = quant_group;
    return PALU_OK;
}

void palu_latent_cache_free(palu_latent_cache *cache)
{
    if (cache == NULL) return;
    free(cache->positions);
    side_free(&cache->k);
    side_free(&cache->v);
    memset(cache, 0, sizeof *cache);
}

void palu_latent_cache_reset(palu_latent_cache *cache)
{
    storage empty;
    memset(&empty, 0, sizeof empty);
    storage_adopt(cache, &empty, 0, 0, 0);
    cache->length = cache->sealed = 0;
}

static int64_t sealed_target(const palu_latent_cache *c, int64_t length)
{
    if (c->bits == 0 || length <= 0) return 0;
    if (c->residual == 0) return length;
    return c->residual * ((length - 1) / c->residual);
}

/* Quantize window slots [sealed, target) of every sequence into the code buffers, then shift the remaining
 * window slots to the front. The inputs were validated finite, so quantization cannot fail. */
static void seal_to(palu_latent_cache *c, int64_t target)
{
    const int64_t n = target - c->sealed;
    if (n <= 0) return;
    const int64_t live = c->length - target; /* window slots that stay */
    for (int k = 0; k < 2; k++) {
        palu_latent_side *s = side_of(c, k);
        const int64_t R = s->width, Wd = words_per_token(s), S = scales_per_token(s);
        for (int64_t b = 0; b < c->batch; b++) {
            float *win = s->window + b * c->window_cap * R;
            for (int64_t i = 0; i < n; i++) {
                const int64_t slot = c->sealed + i;
                const float *row = win + i * R;
                int64_t col = 0;
                for (int64_t g = 0; g < s->n_groups; g++) {
                    palu_quant_params p = {.bits = c->bits, .group_size = (size_t)group_quant_size(c, s, g),
                                           .symmetric = 0, .clip = 1.0};
                    (void)palu_quantize(row + col, PALU_DTYPE_F32, 1, (size_t)s->ranks[g], &p,
                                        s->codes + (b * c->capacity + slot) * Wd + s->word_off[g],
                                        s->scales + (b * c->capacity + slot) * S + s->scale_off[g],
                                        s->zeros + (b * c->capacity + slot) * S + s->scale_off[g]);
                    col += s->ranks[g];
                }
            }
            memmove(win, win + n * R, (size_t)(live * R) * sizeof(float));
        }
    }
    c->sealed = target;
}

/* Dequantize sealed slot `slot` of sequence b, group g of side s into dst (r_g floats). */
static void dequant_group(const palu_latent_cache *c, const palu_latent_side *s, int64_t b, int64_t slot, int64_t g,
                          float *dst)
{
    const int64_t Wd = words_per_token(s), S = scales_per_token(s);
    palu_quant_params p = {.bits = c->bits, .group_size = (size_t)group_quant_size(c, s, g), .symmetric = 0,
                           .clip = 1.0};
    (void)palu_dequantize(s->codes + (b * c->capacity + slot) * Wd + s->word_off[g],
                          s->scales + (b * c->capacity + slot) * S + s->scale_off[g],
                          s->zeros + (b * c->capacity + slot) * S + s->scale_off[g], 1, (size_t)s->ranks[g], &p, dst,
                          PALU_DTYPE_F32);
}

/* Slot `slot` (any, < length) of sequence b, whole side, into dst (R floats). */
static void read_slot(const palu_latent_cache *c, const palu_latent_side *s, int64_t b, int64_t slot, float *dst)
{
    const int64_t R = s->width;
    if (c->bits == 0) {
        memcpy(dst, s->latent + (b * c->capacity + slot) * R, (size_t)R * sizeof(float));
    } else if (slot >= c->sealed) {
        memcpy(dst, s->window + (b * c->window_cap + slot - c->sealed) * R, (size_t)R * sizeof(float));
    } else {
        int64_t col = 0;
        for (int64_t g = 0; g < s->n_groups; g++) {
            dequant_group(c, s, b, slot, g, dst + col);
            col += s->ranks[g];
        }
    }
}

palu_status palu_latent_cache_append(palu_latent_cache *cache, int64_t batch, int64_t tokens, const float *hk,
                                     const float *hv, const int32_t *pos)
{
    if (cache == NULL || hk == NULL || hv == NULL || pos == NULL)
        return palu_fail(PALU_ERR_VALUE, "a required pointer (cache, hk, hv or pos) is NULL");
    if (batch < 1 || tokens < 1)
        return palu_fail(PALU_ERR_VALUE, "batch and tokens must be >= 1, got %lld and %lld", (long long)batch,
                         (long long)tokens);
    if (cache->length > 0 && batch != cache->batch)
        return palu_fail(PALU_ERR_VALUE, "the cache holds %lld sequences, got a batch of %lld (select or reorder the "
                                         "cache, or reset it for a new batch)",
                         (long long)cache->batch, (long long)batch);
    if (tokens > INT32_MAX - cache->length)
        return palu_fail(PALU_ERR_VALUE, "appending %lld tokens to %lld would pass 2^31 - 1 slots", (long long)tokens,
                         (long long)cache->length);
    const int64_t Rk = cache->k.width, Rv = cache->v.width;
    if (palu_count_nonfinite(hk, (size_t)(batch * tokens * Rk), PALU_DTYPE_F32) != 0)
        return palu_fail(PALU_ERR_VALUE, "hk holds NaN or Inf");
    if (palu_count_nonfinite(hv, (size_t)(batch * tokens * Rv), PALU_DTYPE_F32) != 0)
        return palu_fail(PALU_ERR_VALUE, "hv holds NaN or Inf");
    for (int64_t i = 0; i < batch * tokens; i++)
        if (pos[i] < 0)
            return palu_fail(PALU_ERR_VALUE, "positions must be >= 0, got %d at sequence %lld, token %lld", (int)pos[i],
                             (long long)(i / tokens), (long long)(i % tokens));

    if (cache->length == 0 && cache->batch != batch) palu_latent_cache_reset(cache);
    const int64_t L = cache->length, need = L + tokens;
    const int64_t win_need = cache->bits ? need - cache->sealed : 0;
    if (cache->batch == 0 || need > cache->capacity || win_need > cache->window_cap) {
        int64_t C = cache->capacity, W = cache->window_cap;
        if (need > C) C = (need + PALU_LATENT_CACHE_CHUNK - 1) / PALU_LATENT_CACHE_CHUNK * PALU_LATENT_CACHE_CHUNK;
        if (win_need > W) W = win_need;
        if (cache->bits && W < 1) W = 1;
        storage st;
        palu_status rc = storage_alloc(cache, batch, C, W, &st);
        if (rc != PALU_OK) return rc;
        if (cache->batch == batch) storage_fill(cache, &st, C, W, NULL, batch);
        storage_adopt(cache, &st, batch, C, W);
    }

    for (int64_t b = 0; b < batch; b++) {
        memcpy(cache->positions + b * cache->capacity + L, pos + b * tokens, (size_t)tokens * sizeof(int32_t));
        for (int k = 0; k < 2; k++) {
            palu_latent_side *s = side_of(cache, k);
            const int64_t R = s->width;
            const float *src = (k == 0 ? hk : hv) + b * tokens * R;
            float *dst = cache->bits == 0 ? s->latent + (b * cache->capacity + L) * R
                                          : s->window + (b * cache->window_cap + L - cache->sealed) * R;
            memcpy(dst, src, (size_t)(tokens * R) * sizeof(float));
        }
    }
    cache->length = need;
    seal_to(cache, sealed_target(cache, need));
    return PALU_OK;
}

palu_status palu_latent_cache_read(const palu_latent_cache *cache, int64_t start, float *hk, float *hv, int32_t *pos)
{
    if (cache == NULL) return palu_fail(PALU_ERR_VALUE, "`cache` is NULL");
    if (start < 0 || start > cache->length)
        return palu_fail(PALU_ERR_VALUE, "start must be in [0, length] = [0, %lld], got %lld",
                         (long long)cache->length, (long long)start);
    const int64_t S = cache->length - start;
    for (int64_t b = 0; b < cache->batch && S > 0; b++) {
        if (pos) memcpy(pos + b * S, cache->positions + b * cache->capacity + start, (size_t)S * sizeof(int32_t));
        for (int k = 0; k < 2; k++) {
            const palu_latent_side *s = cside_of(cache, k);
            float *out = k == 0 ? hk : hv;
            if (out == NULL) continue;
            for (int64_t t = 0; t < S; t++) read_slot(cache, s, b, start + t, out + (b * S + t) * s->width);
        }
    }
    return PALU_OK;
}

void palu_latent_cache_rows(const palu_latent_cache *cache, palu_latent_kind kind, int64_t b, int64_t g, int64_t t0,
                            int64_t t1, float *scratch, const float **rows, int64_t *stride)
{
    const palu_latent_side *s = cside_of(cache, kind == PALU_LATENT_KEY ? 0 : 1);
    int64_t col = 0;
    for (int64_t j = 0; j < g; j++) col += s->ranks[j];
    const int64_t R = s->width, r = s->ranks[g];
    if (cache->bits == 0) {
        *rows = s->latent + (b * cache->capacity + t0) * R + col;
        *stride = R;
        return;
    }
    if (t0 >= cache->sealed) {
        *rows = s->window + (b * cache->window_cap + t0 - cache->sealed) * R + col;
        *stride = R;
        return;
    }
    for (int64_t t = t0; t < t1; t++) {
        float *dst = scratch + (t - t0) * r;
        if (t < cache->sealed)
            dequant_group(cache, s, b, t, g, dst);
        else
            memcpy(dst, s->window + (b * cache->window_cap + t - cache->sealed) * R + col, (size_t)r * sizeof(float));
    }
    *rows = scratch;
    *stride = r;
}

palu_status palu_latent_cache_crop(palu_latent_cache *cache, int64_t keep)
{
    if (cache == NULL) return palu_fail(PALU_ERR_VALUE, "`cache` is NULL");
    if (keep < 0 || keep > cache->length)
        return palu_fail(PALU_ERR_VALUE, "keep must be in [0, length] = [0, %lld], got %lld",
                         (long long)cache->length, (long long)keep);
    const int64_t target = sealed_target(cache, keep);
    if (cache->bits == 0 || target >= cache->sealed) { /* the cut falls inside the window (or no quantization) */
        cache->length = keep;
        return PALU_OK;
    }
    /* keep <= sealed here: slots [target, keep) go back to the window as their dequantized values. */
    const int64_t reopen = keep - target;
    if (reopen > cache->window_cap) {
        storage st;
        palu_status rc = storage_alloc(cache, cache->batch, cache->capacity, reopen, &st);
        if (rc != PALU_OK) return rc;
        const int64_t old_len = cache->length;
        cache->length = cache->sealed; /* copy only the sealed slots (the window is rewritten below) */
        storage_fill(cache, &st, cache->capacity, reopen, NULL, cache->batch);
        cache->length = old_len;
        storage_adopt(cache, &st, cache->batch, cache->capacity, reopen);
    }
    for (int64_t b = 0; b < cache->batch; b++)
        for (int k = 0; k < 2; k++) {
            palu_latent_side *s = side_of(cache, k);
            for (int64_t t = target; t < keep; t++)
                read_slot(cache, s, b, t, s->window + (b * cache->window_cap + t - target) * s->width);
        }
    cache->sealed = target;
    cache->length = keep;
    return PALU_OK;
}

palu_status palu_latent_cache_select(palu_latent_cache *cache, const int64_t *index, int64_t n)
{
    if (cache == NULL || index == NULL) return palu_fail(PALU_ERR_VALUE, "`cache` or `index` is NULL");
    if (n < 1) return palu_fail(PALU_ERR_VALUE, "the new batch must hold at least one sequence, got %lld", (long long)n);
    if (cache->batch == 0) return PALU_OK; /* nothing allocated: nothing to re-index */
    for (int64_t i = 0; i < n; i++)
        if (index[i] < 0 || index[i] >= cache->batch)
            return palu_fail(PALU_ERR_VALUE, "index[%lld] = %lld is outside the batch [0, %lld)", (long long)i,
                             (long long)index[i], (long long)cache->batch);
    storage st;
    const int64_t W = cache->bits ? cache->window_cap : 0;
    palu_status rc = storage_alloc(cache, n, cache->capacity, W, &st);
    if (rc != PALU_OK) return rc;
    storage_fill(cache, &st, cache->capacity, W, index, n);
    storage_adopt(cache, &st, n, cache->capacity, W);
    return PALU_OK;
}

static int64_t slot_bytes_quantized(const palu_latent_cache *c)
{
    return (words_per_token(&c->k) + words_per_token(&c->v)) * 4 +
           (scales_per_token(&c->k) + scales_per_token(&c->v)) * 2 * 4;
}

int64_t palu_latent_cache_nbytes(const palu_latent_cache *cache)
{
    const int64_t B = cache->batch, L = cache->length, R = cache->k.width + cache->v.width;
    int64_t total = B * L * (int64_t)sizeof(int32_t);
    if (cache->bits == 0) return total + B * L * R * (int64_t)sizeof(float);
    return total + B * cache->sealed * slot_bytes_quantized(cache) + B * (L - cache->sealed) * R * (int64_t)sizeof(float);
}

int64_t palu_latent_cache_reserved_bytes(const palu_latent_cache *cache)
{
    const int64_t B = cache->batch, C = cache->capacity, R = cache->k.width + cache->v.width;
    int64_t total = B * C * (int64_t)sizeof(int32_t);
    if (cache->bits == 0) return total + B * C * R * (int64_t)sizeof(float);
    return total + B * C * slot_bytes_quantized(cache) + B * cache->window_cap * R * (int64_t)sizeof(float);
}
