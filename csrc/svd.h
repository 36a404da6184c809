/* svd.h -- truncated singular value decompositions of dense matrices (LAPACK/BLAS through lapack.h).
 *
 * Conventions: every matrix is a row-major C array (the layout NumPy and nn.Linear weights use).
 * A is (m, n); the decomposition returned is A ~= U diag(S) Vt with
 *   U  (m, k) row-major, orthonormal columns,
 *   S  (k,)   non-increasing, >= 0,
 *   Vt (k, n) row-major, orthonormal rows,
 * 1 <= k <= min(m, n). The input is never modified. Signs are canonical: each column of U has its
 * largest-magnitude entry positive (Vt's row flips with it), so the signs do not depend on the BLAS build.
 * Sizes must fit LAPACK's 32-bit integers.
 *
 * Row-major A is column-major A^T, so the routines factor A^T = V S U^T with LAPACK and read U and Vt
 * straight out of LAPACK's VT and U buffers: no transposition copies.
 *
 * Exact: xGESDD (divide and conquer, thin factors only); if it reports non-convergence (info > 0), the
 * routine retries with xGESVD (QR iteration) on a fresh copy before giving up with PALU_ERR_LINALG.
 * Randomized (Halko, Martinsson & Tropp 2011): l = k + oversample Gaussian test vectors (palu_rng, so a
 * seed reproduces the result), `power_iters` rounds of subspace iteration (A A^T), re-normalizing the
 * basis after every product with a pivoted LU (P L spans the same space; keeps small singular directions
 * from being lost in round-off at a quarter of QR's cost), one QR of the final basis Q, then an exact SVD
 * of the small projection Q^T A. Cost O(m n l (2 power_iters + 2)) instead of O(m n min(m, n)).
 */
#ifndef PALU_SVD_H
#define PALU_SVD_H

#include <stdint.h>

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exact thin SVD truncated to k triplets. dt: PALU_DTYPE_F32 or PALU_DTYPE_F64 (all buffers of that type). */
palu_status palu_svd_exact(palu_dtype dt, const void *a, int64_t m, int64_t n, int64_t k, void *u, void *s,
                           void *vt);

/* Randomized truncated SVD with `oversample` >= 0 extra test vectors and `power_iters` >= 0 subspace
 * iterations; same output contract as palu_svd_exact. */
palu_status palu_svd_randomized(palu_dtype dt, const void *a, int64_t m, int64_t n, int64_t k, int64_t oversample,
                                int64_t power_iters, uint64_t seed, void *u, void *s, void *vt);

#ifdef __cplusplus
}
#endif
#endif /* PALU_SVD_H */
