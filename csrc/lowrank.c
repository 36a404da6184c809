/* lowrank.c -- plain and whitened low-rank factorization (see lowrank.h for the method). */
#include "lowrank.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lapack.h"
#include "svd.h"

palu_status palu_gram_cholesky(double *g, int64_t n, double *shift_used)
{
    *shift_used = 0.0;
    double diag_sum = 0.0, max_abs = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = g[i * n + i];
        if (d < 0) return palu_fail(PALU_ERR_VALUE, "gram has a negative diagonal entry (%g at %lld); a Gram matrix X^T X never does", d, (long long)i);
        diag_sum += d;
        for (int64_t j = 0; j < n; j++) max_abs = fmax(max_abs, fabs(g[i * n + j]));
    }
    if (diag_sum == 0.0) return palu_fail(PALU_ERR_VALUE, "gram is all zeros: the calibration inputs were all zero");
    /* A Gram accumulated in float32 is symmetric only to rounding; anything larger is a wrong argument. */
    double tol = 1e-5 * max_abs;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++)
            if (fabs(g[i * n + j] - g[j * n + i]) > tol)
                return palu_fail(PALU_ERR_VALUE, "gram is not symmetric (entry [%lld, %lld] differs from its transpose by %g); pass X^T X", (long long)i, (long long)j, fabs(g[i * n + j] - g[j * n + i]));

    size_t nn = (size_t)n * (size_t)n;
    double *copy = (double *)malloc(sizeof(double) * nn);
    if (copy == NULL) return palu_fail(PALU_ERR_NOMEM, "out of memory for a %lld x %lld Gram", (long long)n, (long long)n);
    memcpy(copy, g, sizeof(double) * nn);
    double shift = 0.0, base = 1e-6 * diag_sum / (double)n;
    int ni = (int)n, info = 0;
    char lo = 'L';
    palu_status st = PALU_OK;
    for (int attempt = 0; attempt <= 10; attempt++) {
        if (attempt > 0) {
            shift = base * pow(10.0, attempt - 1);
            memcpy(g, copy, sizeof(double) * nn);
            for (int64_t i = 0; i < n; i++) g[i * n + i] += shift;
        }
        palu_lapack.dpotrf(&lo, &ni, g, &ni, &info);
        if (info == 0) break;
    }
    if (info > 0)
        st = palu_fail(PALU_ERR_LINALG, "gram is not positive definite even with a diagonal shift of %g; check the calibration data", shift);
    else if (info < 0)
        st = palu_fail(PALU_ERR_INTERNAL, "dpotrf rejected argument %d", -info);
    else
        *shift_used = shift;
    free(copy);
    return st;
}

/* Factor one (rows, in) float64 block (already multiplied by L when whitening) at rank r.
 * down_g (r, in) and up_g (rows, r) float64. l_chol: column-major lower Cholesky factor or NULL. */
static palu_status factor_block(const double *m_rows, int64_t rows, int64_t in, int64_t r, const double *l_chol,
                                double *down_g, double *up_g)
{
    double *sv = (double *)malloc(sizeof(double) * (size_t)r);
    if (sv == NULL) return palu_fail(PALU_ERR_NOMEM, "out of memory");
    palu_status st = palu_svd_exact(PALU_DTYPE_F64, m_rows, rows, in, r, up_g, sv, down_g);
    if (st == PALU_OK) {
        for (int64_t j = 0; j < r; j++) sv[j] = sqrt(sv[j]);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < r; j++) up_g[i * r + j] *= sv[j];
        for (int64_t j = 0; j < r; j++)
            for (int64_t c = 0; c < in; c++) down_g[j * in + c] *= sv[j];
        if (l_chol != NULL) {
            /* down = D L^-1  <=>  L^T down^T = D^T; down row-major (r, in) is down^T column-major (in, r). */
            char side = 'L', uplo = 'L', trans = 'T', diag = 'N';
            int ni = (int)in, nr = (int)r;
            double one = 1.0;
            palu_lapack.dtrsm(&side, &uplo, &trans, &diag, &ni, &nr, &one, (double *)l_chol, &ni, down_g, &ni);
        }
    }
    free(sv);
    return st;
}

palu_status palu_lowrank_factor_grouped(palu_dtype dt, const void *w, int64_t out, int64_t in, int64_t group_rows,
                                        const int64_t *ranks, int64_t n_groups, const double *gram, void *down,
                                        void *ups, double *shift_used)
{
    *shift_used = 0.0;
    if (dt != PALU_DTYPE_F32 && dt != PALU_DTYPE_F64)
        return palu_fail(PALU_ERR_TYPE, "weights must be float32 or float64, got %s", palu_dtype_name(dt));
    if (out < 1 || in < 1 || group_rows < 1 || n_groups < 1 || n_groups * group_rows != out)
        return palu_fail(PALU_ERR_VALUE, "%lld groups of %lld rows do not tile a weight with %lld rows", (long long)n_groups, (long long)group_rows, (long long)out);
    int64_t rank_sum = 0, max_r = group_rows < in ? group_rows : in;
    for (int64_t g = 0; g < n_groups; g++) {
        if (ranks[g] < 1 || ranks[g] > max_r)
            return palu_fail(PALU_ERR_VALUE, "rank of group %lld must be in [1, min(group_rows, in)] = [1, %lld], got %lld", (long long)g, (long long)max_r, (long long)ranks[g]);
        rank_sum += ranks[g];
    }
    size_t wsz = (size_t)out * (size_t)in, esz = palu_dtype_size(dt);
    palu_status st = PALU_OK;
    double *m = (double *)malloc(sizeof(double) * wsz);
    double *l_chol = NULL;
    double *down64 = (double *)malloc(sizeof(double) * (size_t)rank_sum * (size_t)in);
    double *up64 = (double *)malloc(sizeof(double) * (size_t)group_rows * (size_t)max_r);
    if (!m || !down64 || !up64) {
        st = palu_fail(PALU_ERR_NOMEM, "out of memory factoring a %lld x %lld weight", (long long)out, (long long)in);
        goto done;
    }
    for (size_t i = 0; i < wsz; i++)
        m[i] = dt == PALU_DTYPE_F32 ? (double)((const float *)w)[i] : ((const double *)w)[i];
    if (gram != NULL) {
        l_chol = (double *)malloc(sizeof(double) * (size_t)in * (size_t)in);
        if (l_chol == NULL) {
            st = palu_fail(PALU_ERR_NOMEM, "out of memory for the Gram factor");
            goto done;
        }
        memcpy(l_chol, gram, sizeof(double) * (size_t)in * (size_t)in);
        if ((st = palu_gram_cholesky(l_chol, in, shift_used)) != PALU_OK) goto done;
        /* M = W L. Row-major W (out, in) is W^T column-major (in, out): W^T := L^T W^T = (W L)^T. */
        char side = 'L', uplo = 'L', trans = 'T', diag = 'N';
        int ni = (int)in, no = (int)out;
        double one = 1.0;
        palu_lapack.dtrmm(&side, &uplo, &trans, &diag, &ni, &no, &one, l_chol, &ni, m, &ni);
    }
    int64_t row0 = 0, r0 = 0;
    size_t up_off = 0;
    for (int64_t g = 0; g < n_groups; g++) {
        int64_t r = ranks[g];
        double *down_g = down64 + (size_t)r0 * (size_t)in;
        if ((st = factor_block(m + (size_t)row0 * (size_t)in, group_rows, in, r, l_chol, down_g, up64)) != PALU_OK)
            goto done;
        size_t n_up = (size_t)group_rows * (size_t)r;
        for (size_t i = 0; i < n_up; i++) {
            if (dt == PALU_DTYPE_F32) ((float *)ups)[up_off + i] = (float)up64[i];
            else ((double *)ups)[up_off + i] = up64[i];
        }
        up_off += n_up;
        row0 += group_rows;
        r0 += r;
    }
    size_t n_down = (size_t)rank_sum * (size_t)in;
    if (dt == PALU_DTYPE_F32)
        for (size_t i = 0; i < n_down; i++) ((float *)down)[i] = (float)down64[i];
    else
        memcpy(down, down64, n_down * esz);
done:
    free(m);
    free(l_chol);
    free(down64);
    free(up64);
    return st;
}
