/* hadamard.c -- plan selection and the CPU transform (see hadamard.h for the construction).
 *
 * Shape legend: n length, p inner block order, K = n / p blocks, q Paley prime.
 * Every row is copied to a float64 scratch row, transformed there and rounded back once, so float32 and
 * float64 inputs share one code path and float32 results carry a single rounding.
 */
#include "hadamard.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int is_prime(size_t v)
{
    if (v < 2) return 0;
    if (v % 2 == 0) return v == 2;
    for (size_t d = 3; d <= v / d; d += 2)
        if (v % d == 0) return 0;
    return 1;
}

palu_status palu_hadamard_plan_init(palu_hadamard_plan *plan, size_t n)
{
    if (n == 0) return palu_fail(PALU_ERR_VALUE, "transform length n must be >= 1, got 0");
    size_t a = 0, m = n;
    while (m % 2 == 0) {
        m /= 2;
        a++;
    }
    memset(plan, 0, sizeof *plan);
    plan->n = n;
    if (m == 1) {
        plan->kind = PALU_HADAMARD_SYLVESTER;
        plan->p = 1;
    } else {
        plan->kind = PALU_HADAMARD_HOUSEHOLDER;
        plan->p = m;
        /* b = 0 never qualifies: p = m is odd, so q = p - 1 is even. */
        for (size_t b = 1; b <= a; b++) {
            size_t p = m << b;
            if ((p - 1) % 4 == 3 && is_prime(p - 1)) {
                plan->kind = PALU_HADAMARD_PALEY;
                plan->p = p;
                plan->q = p - 1;
                break;
            }
        }
    }
    plan->blocks = n / plan->p;
    plan->symmetric = plan->kind != PALU_HADAMARD_PALEY;
    plan->scale = 1.0 / sqrt((double)(plan->kind == PALU_HADAMARD_HOUSEHOLDER ? plan->blocks : n));
    return PALU_OK;
}

/* is_square[d] = 1 for the nonzero quadratic residues d mod q, 0 otherwise (is_square[0] = 0). */
static void quadratic_residues(size_t q, unsigned char *is_square)
{
    memset(is_square, 0, q);
    /* x and q - x have the same square: the first half of 1..q-1 hits every residue exactly once. */
    for (size_t x = 1; x <= (q - 1) / 2; x++) is_square[(x * x) % q] = 1;
}

/* v[0..p) <- (I +- C) v for the Paley conference matrix C (sign -1 for the transpose); tmp holds p values. */
static void paley_block(double *v, size_t q, const unsigned char *is_square, double sign, double *tmp)
{
    double head = 0.0;
    for (size_t j = 1; j <= q; j++) head += v[j];
    tmp[0] = head;
    for (size_t i = 0; i < q; i++) {
        /* row i + 1 of C: -1 against channel 0, chi(d) against channel 1 + ((i + d) mod q) */
        double s = -v[0];
        for (size_t d = 1; d < q; d++) {
            size_t j = i + d < q ? i + d : i + d - q;
            s += is_square[d] ? v[1 + j] : -v[1 + j];
        }
        tmp[1 + i] = s;
    }
    for (size_t i = 0; i <= q; i++) v[i] += sign * tmp[i];
}

/* v <- (S_K (x) I_p) v: the Sylvester butterfly across K blocks of stride p, unscaled. */
static void sylvester_butterfly(double *v, size_t blocks, size_t p)
{
    for (size_t h = 1; h < blocks; h *= 2) {
        for (size_t o = 0; o < blocks; o += 2 * h) {
            for (size_t b = o; b < o + h; b++) {
                double *lo = v + b * p, *hi = v + (b + h) * p;
                for (size_t i = 0; i < p; i++) {
                    double x = lo[i], y = hi[i];
                    lo[i] = x + y;
                    hi[i] = x - y;
                }
            }
        }
    }
}

static void transform_row(const palu_hadamard_plan *plan, double *v, const unsigned char *is_square, double *tmp,
                          int transpose)
{
    const size_t p = plan->p, blocks = plan->blocks;
    if (plan->kind == PALU_HADAMARD_PALEY) {
        double sign = transpose ? -1.0 : 1.0;
        for (size_t b = 0; b < blocks; b++) paley_block(v + b * p, plan->q, is_square, sign, tmp);
    } else if (plan->kind == PALU_HADAMARD_HOUSEHOLDER) {
        double coef = 2.0 / (double)p;
        for (size_t b = 0; b < blocks; b++) {
            double *blk = v + b * p, sum = 0.0;
            for (size_t i = 0; i < p; i++) sum += blk[i];
            for (size_t i = 0; i < p; i++) blk[i] -= coef * sum;
        }
    }
    sylvester_butterfly(v, blocks, p);
    for (size_t i = 0; i < plan->n; i++) v[i] *= plan->scale;
}

palu_status palu_hadamard_rows(const palu_hadamard_plan *plan, void *x, size_t rows, palu_dtype dt, int transpose)
{
    if (dt != PALU_DTYPE_F32 && dt != PALU_DTYPE_F64)
        return palu_fail(PALU_ERR_UNSUPPORTED, "dtype %s is not supported on the CPU; use float32 or float64",
                         palu_dtype_name(dt));
    if (rows == 0) return PALU_OK;
    const size_t n = plan->n;
    /* scratch: one float64 row, p float64 for the Paley product, then the q-entry residue table */
    size_t extra = plan->kind == PALU_HADAMARD_PALEY ? plan->p : 0;
    size_t nbytes = (n + extra) * sizeof(double) + plan->q;
    double *v = malloc(nbytes);
    if (v == NULL) return palu_fail(PALU_ERR_NOMEM, "could not allocate %zu bytes of scratch for n=%zu", nbytes, n);
    double *tmp = v + n;
    unsigned char *is_square = (unsigned char *)(v + n + extra);
    if (plan->kind == PALU_HADAMARD_PALEY) quadratic_residues(plan->q, is_square);

    for (size_t r = 0; r < rows; r++) {
        if (dt == PALU_DTYPE_F64) {
            double *row = (double *)x + r * n;
            memcpy(v, row, n * sizeof(double));
            transform_row(plan, v, is_square, tmp, transpose);
            memcpy(row, v, n * sizeof(double));
        } else {
            float *row = (float *)x + r * n;
            for (size_t i = 0; i < n; i++) v[i] = row[i];
            transform_row(plan, v, is_square, tmp, transpose);
            for (size_t i = 0; i < n; i++) row[i] = (float)v[i];
        }
    }
    free(v);
    return PALU_OK;
}

palu_status palu_hadamard_matrix(size_t n, void *h, palu_dtype dt)
{
    palu_hadamard_plan plan;
    palu_status st = palu_hadamard_plan_init(&plan, n);
    if (st != PALU_OK) return st;
    size_t esize = palu_dtype_size(dt);
    if (dt != PALU_DTYPE_F32 && dt != PALU_DTYPE_F64)
        return palu_fail(PALU_ERR_UNSUPPORTED, "dtype %s is not supported; use float32 or float64",
                         palu_dtype_name(dt));
    memset(h, 0, n * n * esize);
    for (size_t i = 0; i < n; i++) {
        if (dt == PALU_DTYPE_F64)
            ((double *)h)[i * n + i] = 1.0;
        else
            ((float *)h)[i * n + i] = 1.0f;
    }
    /* row i of I @ H is row i of H */
    return palu_hadamard_rows(&plan, h, n, dt, 1);
}
