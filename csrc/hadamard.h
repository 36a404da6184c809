/* hadamard.h -- orthonormal Hadamard-type transforms along the last axis (CPU reference, no Python).
 *
 * Why (ALGORITHMS.md, "Quantization of the latents"): an orthonormal rotation R of the latent spreads the
 * outliers that SVD ordering concentrates in the first latent channels before 2-4 bit quantization, and it
 * folds into the factor pair at no run-time cost. A block-diagonal Hadamard does NOT spread them when the
 * length is not a power of two (the first block keeps the leading directions), so every matrix built here
 * is dense: every output depends on every input, the leading channels included.
 *
 * Shape legend: n transform length, rows the number of independent length-n vectors (all leading axes
 * flattened), K = n / p blocks of p channels, q the Paley prime (p = q + 1).
 *
 * Convention. H is the n x n orthonormal matrix of the plan; the transform of a row vector x is
 *     y = x @ H^T          (y_i = sum_j H[i][j] x_j; the "forward" transform)
 * and the inverse is the transpose, x = y @ H (transpose = 1 below). Channel index i = i_outer * p + i_inner
 * with 0 <= i_outer < K and 0 <= i_inner < p, and
 *     H = (S_K / sqrt(K)) (x) P        (Kronecker product, i_outer the outer index)
 * where S_K is the K x K Sylvester-order Walsh-Hadamard matrix (S_1 = [1], S_2K = [[S_K, S_K], [S_K, -S_K]],
 * S_K[i][j] = (-1)^popcount(i & j)) and P is a p x p orthonormal block chosen from n = 2^a * m (m odd):
 *
 *   - m = 1 (n a power of two): p = 1, P = [1]: H = S_n / sqrt(n), symmetric, orthonormal, its own inverse.
 *   - m > 1, Paley: the smallest p = m * 2^b (1 <= b <= a) such that q = p - 1 is a prime with q = 3 (mod 4).
 *     P = (I + C) / sqrt(p) with C the skew-symmetric conference matrix
 *         C[0][0] = 0,  C[0][j] = +1 (j >= 1),  C[i][0] = -1 (i >= 1),
 *         C[i][j] = chi((j - i) mod q) for i, j >= 1,
 *     chi the quadratic character mod q (chi(0) = 0, +1 on nonzero squares, -1 otherwise); every entry of
 *     I + C is +-1 (Paley construction I), (I + C)(I + C)^T = p I. So n = 12 * 2^j uses p = 12 (q = 11),
 *     n = 20 * 2^j uses p = 20 (q = 19), 176 = 4 * 44 uses p = 44 (q = 43). H is orthonormal but NOT
 *     symmetric (P^T = (I - C) / sqrt(p)), so its inverse H^T is a different transform.
 *   - m > 1, no such p (e.g. n = 3, 6, 7, 112): p = m and P = I - (2/m) 1 1^T, the Householder reflection
 *     through the all-ones direction: symmetric, orthonormal, its own inverse, every entry non-zero
 *     (1 - 2/m on the diagonal, -2/m off it). H is then symmetric and self-inverse as well.
 *
 * Every entry of H is non-zero (a Kronecker product of matrices without zeros), so every output mixes every
 * input. The fast algorithm applies P to each contiguous block of p channels (O(p) for Householder, O(p^2)
 * for Paley, with the residue table built once per call), then the in-place Sylvester butterfly across
 * blocks (stride p, O(n log K)), then one scale: 1/sqrt(n) for Sylvester and Paley, 1/sqrt(K) for
 * Householder (whose P is already orthonormal). Cost per row: O(n log n) for powers of two and small p,
 * O(n p) when a large Paley block is chosen.
 *
 * kernels/hadamard.cu runs the same plan on the GPU; these functions are its `_ref` twin and oracle.
 */
#ifndef PALU_HADAMARD_H
#define PALU_HADAMARD_H

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The inner block kind of a plan. Values are only ever appended (the CUDA launcher switches on them). */
typedef enum palu_hadamard_kind {
    PALU_HADAMARD_SYLVESTER = 0,  /* n a power of two, p = 1 */
    PALU_HADAMARD_PALEY = 1,      /* P = (I + C) / sqrt(p), p = q + 1, q prime = 3 (mod 4) */
    PALU_HADAMARD_HOUSEHOLDER = 2 /* P = I - (2/p) 1 1^T, p = m odd > 1 */
} palu_hadamard_kind;

/* Everything the transform of one length needs; plain data, no allocation (shared with the launcher). */
typedef struct palu_hadamard_plan {
    size_t n;                /* transform length, >= 1 */
    size_t p;                /* inner block order (1 for Sylvester) */
    size_t q;                /* Paley prime p - 1 (0 for the other kinds) */
    size_t blocks;           /* K = n / p, a power of two */
    palu_hadamard_kind kind; /* which P */
    int symmetric;           /* 1 when H == H^T (Sylvester, Householder): the inverse is the transform itself */
    double scale;            /* applied once at the end: 1/sqrt(n) (Sylvester, Paley) or 1/sqrt(K) */
} palu_hadamard_plan;

/* Fill *plan for length n (n >= 1; n = 1 is the identity). PALU_ERR_VALUE for n = 0. */
palu_status palu_hadamard_plan_init(palu_hadamard_plan *plan, size_t n);

/* Transform `rows` contiguous rows of plan->n elements at `x` in place: y = x @ H^T (transpose = 0) or
 * y = x @ H (transpose = 1, the inverse). dt is PALU_DTYPE_F32 or PALU_DTYPE_F64; the arithmetic is done in
 * float64 either way, so float32 results are the float64 result rounded once. Allocates O(n) scratch per
 * call (PALU_ERR_NOMEM if that fails); PALU_ERR_UNSUPPORTED for other dtypes. rows = 0 is a no-op. NaN/Inf
 * are not checked here (the binding refuses them): one NaN spreads to the whole row. */
palu_status palu_hadamard_rows(const palu_hadamard_plan *plan, void *x, size_t rows, palu_dtype dt, int transpose);

/* Write the n x n matrix H of palu_hadamard_plan_init(n) to h (row-major, n*n elements of dtype dt,
 * F32/F64), so that hadamard(x) == x @ H^T. Computed by transforming the identity with the transposed
 * transform (I @ H = H). Same errors as palu_hadamard_rows and palu_hadamard_plan_init. */
palu_status palu_hadamard_matrix(size_t n, void *h, palu_dtype dt);

#ifdef __cplusplus
}
#endif
#endif /* PALU_HADAMARD_H */
