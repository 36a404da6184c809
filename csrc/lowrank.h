/* lowrank.h -- low-rank factorization of nn.Linear-style weights, plain or activation-aware (whitened).
 *
 * A weight W is (out, in), row-major, as torch stores nn.Linear.weight. The factorization is
 *   W ~= up @ down,  down (r, in), up (out, r),
 * so y = x W^T becomes y = (x down^T) up^T: `down` is the new projection into an r-dim latent, `up` maps
 * the latent back. sqrt(Sigma) is split evenly between the two factors, which keeps both factors'
 * magnitudes comparable (better for later quantization of either side).
 *
 * Plain: truncated SVD of W (exact; computed in float64 whatever the dtype of W, results cast back).
 * Whitened (activation-aware, as in SVD-LLM and Palu): with the calibration Gram G = X^T X (in, in) of
 * the layer inputs, minimizes ||X W^T - X down^T up^T||_F. In float64: Cholesky G = L L^T (LAPACK dpotrf);
 * if G is not positive definite, add shift*I with shift = 1e-6 * mean(diag G), x10 per retry (at most 10
 * tries) and report the shift used; SVD of M = W L; down = Sigma_r^1/2 V_r^T L^-1 (a triangular solve,
 * never an explicit inverse), up = U_r Sigma_r^1/2. Because ||X E^T|| = ||E L|| for any E, truncating the SVD
 * of W L is the exact optimum (Eckart-Young in the whitened space).
 *
 * Grouped: the out rows are split into consecutive groups of `group_rows` rows (a head group); group g gets
 * its own rank r_g and factor pair; the whitening (Cholesky of G) is shared. `down` stacks the groups'
 * down-projections (sum r_g, in); `ups` is the concatenation of each group's (group_rows, r_g) block, in group
 * order, each block row-major and contiguous.
 */
#ifndef PALU_LOWRANK_H
#define PALU_LOWRANK_H

#include <stdint.h>

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* w: (out, in) of dtype dt (float32/float64); ranks[n_groups], 1 <= ranks[g] <= min(group_rows, in);
 * out == n_groups * group_rows. gram: (in, in) float64, symmetric, or NULL for plain SVD.
 * down: (sum ranks, in) dt; ups: sum_g group_rows * ranks[g] elements of dt.
 * *shift_used: the diagonal shift added to G (0 when none, or when gram is NULL). */
palu_status palu_lowrank_factor_grouped(palu_dtype dt, const void *w, int64_t out, int64_t in, int64_t group_rows,
                                        const int64_t *ranks, int64_t n_groups, const double *gram, void *down,
                                        void *ups, double *shift_used);

/* In-place lower Cholesky factor of the (n, n) symmetric float64 matrix `g` (row-major == column-major
 * for a symmetric matrix), with the diagonal-shift retry described above. On return the lower triangle of
 * `g` (column-major) holds L; *shift_used the shift added. PALU_ERR_VALUE for a non-symmetric, negative-
 * diagonal or all-zero Gram; PALU_ERR_LINALG if no shift made it positive definite. */
palu_status palu_gram_cholesky(double *g, int64_t n, double *shift_used);

#ifdef __cplusplus
}
#endif
#endif /* PALU_LOWRANK_H */
