/* svd.c -- exact and randomized truncated SVD (see svd.h for the contract and the layout trick). */
#include "svd.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "lapack.h"

/* Instantiate svd_impl.h once per precision; LP is the LAPACK/BLAS name prefix (s or d). */
#define REAL float
#define SFX f32
#define LP s
#include "svd_impl.h"
#undef REAL
#undef SFX
#undef LP

#define REAL double
#define SFX f64
#define LP d
#include "svd_impl.h"
#undef REAL
#undef SFX
#undef LP

/* Shared argument checks; LAPACK takes 32-bit sizes and workspace lengths. */
static palu_status check_shape(palu_dtype dt, int64_t m, int64_t n, int64_t k)
{
    if (dt != PALU_DTYPE_F32 && dt != PALU_DTYPE_F64)
        return palu_fail(PALU_ERR_TYPE, "SVD supports float32 and float64, got %s", palu_dtype_name(dt));
    if (m < 1 || n < 1) return palu_fail(PALU_ERR_VALUE, "matrix is empty (%lld x %lld)", (long long)m, (long long)n);
    int64_t mn = m < n ? m : n;
    if (k < 1 || k > mn)
        return palu_fail(PALU_ERR_VALUE, "rank must be in [1, min(m, n)] = [1, %lld], got %lld", (long long)mn,
                         (long long)k);
    if (m > INT_MAX / 8 || n > INT_MAX / 8 || m * n > (int64_t)INT_MAX)
        return palu_fail(PALU_ERR_VALUE, "matrix %lld x %lld is too large for 32-bit LAPACK", (long long)m,
                         (long long)n);
    return PALU_OK;
}

palu_status palu_svd_exact(palu_dtype dt, const void *a, int64_t m, int64_t n, int64_t k, void *u, void *s,
                           void *vt)
{
    palu_status st = check_shape(dt, m, n, k);
    if (st != PALU_OK) return st;
    if (dt == PALU_DTYPE_F32) return svd_exact_f32(a, (int)m, (int)n, (int)k, u, s, vt);
    return svd_exact_f64(a, (int)m, (int)n, (int)k, u, s, vt);
}

palu_status palu_svd_randomized(palu_dtype dt, const void *a, int64_t m, int64_t n, int64_t k, int64_t oversample,
                                int64_t power_iters, uint64_t seed, void *u, void *s, void *vt)
{
    palu_status st = check_shape(dt, m, n, k);
    if (st != PALU_OK) return st;
    if (oversample < 0) return palu_fail(PALU_ERR_VALUE, "oversample must be >= 0, got %lld", (long long)oversample);
    if (power_iters < 0 || power_iters > 100)
        return palu_fail(PALU_ERR_VALUE, "power_iters must be in [0, 100], got %lld", (long long)power_iters);
    int64_t mn = m < n ? m : n;
    int64_t l = k + oversample < mn ? k + oversample : mn;
    /* With a sketch as wide as the matrix, randomization buys nothing: do it exactly. */
    if (l >= mn) return palu_svd_exact(dt, a, m, n, k, u, s, vt);
    if (dt == PALU_DTYPE_F32) return svd_randomized_f32(a, (int)m, (int)n, (int)k, (int)l, (int)power_iters, seed, u, s, vt);
    return svd_randomized_f64(a, (int)m, (int)n, (int)k, (int)l, (int)power_iters, seed, u, s, vt);
}
