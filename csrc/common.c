/* common.c -- error detail, dtype table, finiteness check and the deterministic RNG (see palu.h). */
#include "palu.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char palu_error_detail[1024];

palu_status palu_fail(palu_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(palu_error_detail, sizeof palu_error_detail, fmt, ap);
    va_end(ap);
    return status;
}

const char *palu_last_error(void) { return palu_error_detail; }

/* The one table of dtype facts. */
static const struct {
    size_t size;
    const char *name;
} palu_dtype_table[] = {
    [PALU_DTYPE_F32] = {4, "float32"},
    [PALU_DTYPE_F64] = {8, "float64"},
    [PALU_DTYPE_F16] = {2, "float16"},
    [PALU_DTYPE_BF16] = {2, "bfloat16"},
};

size_t palu_dtype_size(palu_dtype dt)
{
    if ((unsigned)dt >= sizeof palu_dtype_table / sizeof palu_dtype_table[0]) return 0;
    return palu_dtype_table[dt].size;
}

const char *palu_dtype_name(palu_dtype dt)
{
    if ((unsigned)dt >= sizeof palu_dtype_table / sizeof palu_dtype_table[0]) return "unknown";
    return palu_dtype_table[dt].name;
}

size_t palu_count_nonfinite(const void *x, size_t n, palu_dtype dt)
{
    size_t bad = 0;
    if (dt == PALU_DTYPE_F32) {
        const float *p = (const float *)x;
        for (size_t i = 0; i < n; i++) bad += !isfinite(p[i]);
    } else if (dt == PALU_DTYPE_F64) {
        const double *p = (const double *)x;
        for (size_t i = 0; i < n; i++) bad += !isfinite(p[i]);
    }
    return bad;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void palu_rng_seed(palu_rng *rng, uint64_t seed)
{
    uint64_t st = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&st);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t palu_rng_next(palu_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void palu_rng_normal_f64(palu_rng *rng, double *x, size_t n)
{
    const double two_pi = 6.283185307179586;
    for (size_t i = 0; i < n; i += 2) {
        /* uniforms in (0, 1]: never log(0) */
        double u1 = ((double)(palu_rng_next(rng) >> 11) + 1.0) * 0x1.0p-53;
        double u2 = (double)(palu_rng_next(rng) >> 11) * 0x1.0p-53;
        double r = sqrt(-2.0 * log(u1));
        x[i] = r * cos(two_pi * u2);
        if (i + 1 < n) x[i + 1] = r * sin(two_pi * u2);
    }
}
