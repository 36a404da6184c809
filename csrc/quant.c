/* quant.c -- group-wise quantization and bit packing, the CPU reference path (see quant.h for the
 * formulas and docs/quant_format.md for the packed layout).
 *
 * Shape legend: x (rows, n) C-contiguous; g group size; G = n / g groups per row; W words per packed row.
 * All encoding arithmetic is done in double from the stored float32 scale and zero point, so the codes
 * depend only on (x, stored scale, stored zero) and a float64 NumPy reference reproduces them exactly.
 */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* ---- bit stream helpers (layout version 1) ---------------------------------------------------- */

/* OR code i (bits wide, already < 2^bits) into a zeroed row stream. */
static inline void put_code(uint32_t *words, size_t i, int bits, uint32_t code)
{
    size_t bit = i * (size_t)bits;
    size_t w = bit / 32;
    unsigned off = (unsigned)(bit % 32);
    words[w] |= code << off;
    if (off + (unsigned)bits > 32) words[w + 1] |= code >> (32 - off); /* straddles into the next word */
}

static inline uint32_t get_code(const uint32_t *words, size_t i, int bits)
{
    size_t bit = i * (size_t)bits;
    size_t w = bit / 32;
    unsigned off = (unsigned)(bit % 32);
    uint32_t v = words[w] >> off;
    if (off + (unsigned)bits > 32) v |= words[w + 1] << (32 - off);
    return v & ((1u << bits) - 1u);
}

size_t palu_quant_row_words(size_t n, int bits) { return (n * (size_t)bits + 31) / 32; }

void palu_quant_pack(const uint8_t *codes, size_t n, int bits, uint32_t *words)
{
    uint32_t mask = (1u << bits) - 1u;
    memset(words, 0, palu_quant_row_words(n, bits) * sizeof *words);
    for (size_t i = 0; i < n; i++) put_code(words, i, bits, codes[i] & mask);
}

void palu_quant_unpack(const uint32_t *words, size_t n, int bits, uint8_t *codes)
{
    for (size_t i = 0; i < n; i++) codes[i] = (uint8_t)get_code(words, i, bits);
}

/* ---- element access (the input/output dtype is F32 or F64, checked by the callers) ------------- */

static inline double load(const void *x, palu_dtype dt, size_t i)
{
    return dt == PALU_DTYPE_F32 ? (double)((const float *)x)[i] : ((const double *)x)[i];
}

static inline void store(void *out, palu_dtype dt, size_t i, double v)
{
    if (dt == PALU_DTYPE_F32)
        ((float *)out)[i] = (float)v;
    else
        ((double *)out)[i] = v;
}

static palu_status check_dtype(palu_dtype dt, const char *what)
{
    if (dt == PALU_DTYPE_F32 || dt == PALU_DTYPE_F64) return PALU_OK;
    return palu_fail(PALU_ERR_TYPE, "%s must be float32 or float64, got %s", what, palu_dtype_name(dt));
}

palu_status palu_quant_check(const palu_quant_params *p, size_t n)
{
    if (p->bits != 2 && p->bits != 3 && p->bits != 4 && p->bits != 8)
        return palu_fail(PALU_ERR_VALUE, "bits must be one of {2, 3, 4, 8}, got %d", p->bits);
    if (n == 0) return palu_fail(PALU_ERR_VALUE, "the last axis is empty; nothing to quantize");
    if (p->group_size == 0 || n % p->group_size != 0)
        return palu_fail(PALU_ERR_VALUE,
                         "group_size must be a positive divisor of the last-axis length %zu, got %zu", n,
                         p->group_size);
    if (!(p->clip > 0.0 && p->clip <= 1.0)) /* also refuses NaN */
        return palu_fail(PALU_ERR_VALUE, "clip must satisfy 0 < clip <= 1, got %g", p->clip);
    return PALU_OK;
}

/* ---- quantize ----------------------------------------------------------------------------------- */

/* Quantize the g elements x[base .. base+g), which sit at positions first .. first+g of their row,
 * into the zeroed row stream `words`; store the group's scale (and zero point when asymmetric). */
static palu_status quantize_group(const void *x, palu_dtype dt, size_t base, size_t first,
                                  const palu_quant_params *p, uint32_t *words, float *scale_out, float *zero_out)
{
    size_t g = p->group_size;
    double mn = INFINITY, mx = -INFINITY;
    for (size_t i = 0; i < g; i++) {
        double v = load(x, dt, base + i);
        if (!isfinite(v)) return palu_fail(PALU_ERR_VALUE, "x contains NaN/Inf at flat index %zu", base + i);
        if (fabs(v) > FLT_MAX)
            return palu_fail(PALU_ERR_VALUE,
                             "x[%zu] = %g is beyond the float32 range the scales are stored in; rescale x",
                             base + i, v);
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
    }

    /* Code range [cmin, cmax] before the symmetric offset; every code stored is q + offset >= 0. */
    double cmin, cmax, offset;
    float scale, zero;
    if (p->symmetric) {
        double levels = (double)((1 << (p->bits - 1)) - 1); /* L */
        double absmax = fmax(fabs(mn), fabs(mx));
        scale = (float)(p->clip * absmax / levels);
        zero = 0.0f;
        cmin = -levels;
        cmax = levels;
        offset = levels;
    } else {
        double lo = p->clip * mn, hi = p->clip * mx;
        scale = (float)((hi - lo) / (double)((1 << p->bits) - 1));
        zero = (float)lo;
        cmin = 0.0;
        cmax = (double)((1 << p->bits) - 1);
        offset = 0.0;
    }
    *scale_out = scale;
    if (zero_out != NULL) *zero_out = zero;

    /* Encode from the stored float32 values so the error bound holds against what dequantize reads. */
    double s = (double)scale, z = (double)zero;
    for (size_t i = 0; i < g; i++) {
        double q = 0.0; /* a zero stored scale (constant group, underflow) encodes every element as 0 */
        if (s > 0.0) {
            q = nearbyint((load(x, dt, base + i) - z) / s); /* round half to even (default FP mode) */
            if (!(q >= cmin)) q = cmin;                     /* written so a NaN could not reach the cast */
            if (q > cmax) q = cmax;
        }
        put_code(words, first + i, p->bits, (uint32_t)(q + offset));
    }
    return PALU_OK;
}

palu_status palu_quantize(const void *x, palu_dtype dt, size_t rows, size_t n, const palu_quant_params *p,
                          uint32_t *payload, float *scales, float *zeros)
{
    palu_status st = check_dtype(dt, "x");
    if (st != PALU_OK) return st;
    if ((st = palu_quant_check(p, n)) != PALU_OK) return st;
    if ((zeros == NULL) != (p->symmetric != 0))
        return palu_fail(PALU_ERR_INTERNAL, "palu_quantize: zeros must be given exactly when asymmetric");
    size_t W = palu_quant_row_words(n, p->bits), G = n / p->group_size;
    for (size_t r = 0; r < rows; r++) {
        uint32_t *words = payload + r * W;
        memset(words, 0, W * sizeof *words); /* put_code ORs; this also zeroes the padding bits */
        for (size_t j = 0; j < G; j++) {
            size_t first = j * p->group_size;
            st = quantize_group(x, dt, r * n + first, first, p, words, &scales[r * G + j],
                                zeros ? &zeros[r * G + j] : NULL);
            if (st != PALU_OK) return st;
        }
    }
    return PALU_OK;
}

/* ---- dequantize --------------------------------------------------------------------------------- */

palu_status palu_dequantize(const uint32_t *payload, const float *scales, const float *zeros, size_t rows,
                            size_t n, const palu_quant_params *p, void *out, palu_dtype dt)
{
    palu_status st = check_dtype(dt, "out");
    if (st != PALU_OK) return st;
    if ((st = palu_quant_check(p, n)) != PALU_OK) return st;
    if ((zeros == NULL) != (p->symmetric != 0))
        return palu_fail(PALU_ERR_INTERNAL, "palu_dequantize: zeros must be given exactly when asymmetric");
    size_t W = palu_quant_row_words(n, p->bits), G = n / p->group_size, g = p->group_size;
    double offset = p->symmetric ? (double)((1 << (p->bits - 1)) - 1) : 0.0;
    for (size_t r = 0; r < rows; r++) {
        const uint32_t *words = payload + r * W;
        for (size_t j = 0; j < G; j++) {
            double s = (double)scales[r * G + j];
            double z = zeros ? (double)zeros[r * G + j] : 0.0;
            for (size_t i = j * g; i < (j + 1) * g; i++) {
                double q = (double)get_code(words, i, p->bits) - offset;
                store(out, dt, r * n + i, q * s + z);
            }
        }
    }
    return PALU_OK;
}
