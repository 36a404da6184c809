/* rank_alloc.h -- choosing one integer rank per item under a global cost budget (Palu / FLRC rank search).
 *
 * Overview
 * --------
 * N items (a head group's K or V projection, a weight matrix ...) each get a rank r_i. Item i has an
 * importance score s_i >= 0 (e.g. Fisher information), a size (the largest rank it can take) and a cost
 * c_i > 0 per rank (for a weight matrix (rows, cols) factored as up (rows, r) x down (r, cols), one rank
 * costs rows + cols parameters). Ranks come in units of m = multiple_of ranks (16 keeps fp16 tensor-core
 * tiles full). Two methods share one set of bounds and guarantees:
 *
 *   PALU_RANK_METHOD_PROPORTIONAL  Palu's rule: budget shares proportional to the scores, water-filled
 *                                  against the bounds, floored to units, leftover units by largest remainder.
 *   PALU_RANK_METHOD_GREEDY        spectrum-aware: units go one at a time to the largest marginal gain per
 *                                  cost, score x energy of the next singular values (needs the spectra).
 *
 * Legend and bounds (everything below is in units; rank = units * m)
 * -------------------------------------------------------------------
 *   m    = multiple_of, 1 <= m <= 2^53
 *   K_i  = floor(sizes[i] / m)                 cap: the largest multiple of m that is <= sizes[i]
 *   L_i  = min(ceil(minimum / m), K_i)         floor: `minimum` rounded UP to a multiple of m, except that
 *                                              an item whose cap is below that keeps its cap (the cap wins)
 *   u_i  = c_i * m                             cost of one unit of item i
 *   B    = budget (cost units)
 * Every result satisfies L_i <= units_i <= K_i. If sum_i u_i L_i > B the call fails (PALU_ERR_VALUE, the
 * detail says by how much the budget falls short).
 *
 * Guarantees (both methods)
 * -------------------------
 *   * ranks[i] is a multiple of m with L_i*m <= ranks[i] <= K_i*m (so ranks[i] <= sizes[i]);
 *   * sum_i c_i ranks[i] <= B: never over;
 *   * maximal: B - sum_i c_i ranks[i] < u_j for every item j with units_j < K_j (no further unit fits);
 *   * deterministic: ties are always broken towards the lower index.
 * Cost sums and fit tests are done in double-double arithmetic (about 106 bits: products by fma, sums by
 * error-free transformations), so the two budget guarantees hold for the exact real-number sum except in
 * ties closer than ~1e-30 relative; with integer costs and budget and totals below 2^53 they are exact.
 *
 * PROPORTIONAL, exactly
 * ---------------------
 *  1. Weights w_i = s_i / max_j s_j; if every score is 0, w_i = 1 (equal shares).
 *  2. Water-filling. For a set S of items with weights w > 0 and a budget B_S, find lambda >= 0 with
 *         sum_{i in S} clamp(lambda * w_i, c_i L_i m, c_i K_i m) = B_S
 *     (lambda * w_i is item i's share of the budget in cost units, clamped between the cost of its floor
 *     and of its cap). The target rank is t_i = share_i / c_i, exactly L_i m or K_i m where clamped.
 *     With minimum = 0 this is the classic rule: items whose proportional target exceeds their cap are
 *     fixed at the cap and their excess is redistributed proportionally among the others until no cap
 *     binds. The floor takes part in the same water-filling (rather than raising ranks after rounding)
 *     so that the minimum never pushes the allocation over the budget. If B_S covers every cap, all of
 *     S is at its cap.
 *  3. Items with score 0 (when some score is positive) get budget only once every positive-score item is
 *     at its cap: with Z the zero-score items and P the others, P is water-filled with
 *     B - sum_{Z} c_i L_i m while Z stays at its floors; if that covers every cap of P, P sits at its caps
 *     and Z is water-filled with equal weights and the rest, B - sum_{P} c_i K_i m.
 *  4. units_i = floor(t_i / m) clamped to [L_i, K_i]; remainder f_i = t_i / m - floor(t_i / m) (0 for
 *     items clamped in step 2). In exact arithmetic this costs at most B; if rounding of t_i made it cost
 *     more, units are taken back from the items with the smallest remainder (ties: higher index first)
 *     until it fits.
 *  5. Leftover units: order the items by decreasing f_i, ties by lower index. Pass over that order giving
 *     ONE unit to each item that is below its cap and whose unit still fits the remaining budget; repeat
 *     passes (same order) until a pass gives nothing. The first pass is Palu's "leftover units by largest
 *     remainder"; later passes spend what items at their cap or too expensive to fit left behind.
 *     (Implementation: runs of passes in which every remaining item receives a unit are applied in one
 *     step, so this phase costs O(N^2) in the worst case and usually O(N).)
 *
 * GREEDY, exactly
 * ---------------
 *  Needs spectra[i] (typically the singular values of item i's, possibly whitened, matrix, non-increasing
 *  but not required to be) with spectra_len[i] >= K_i m entries, all finite and >= 0. Every item starts at
 *  L_i. The gain of item i's next unit (from rank r = units_i m) is
 *        g_i = s_i * sum_{k=r}^{r+m-1} spectra[i][k]^2 / (m * c_i)      (0 when s_i = 0)
 *  computed as s_i * (sequential sum of squares) / ((double)m * c_i). Repeatedly the unit with the largest
 *  g_i (ties: lower index) among items below their cap whose unit fits the remaining budget is added,
 *  until no unit fits. Since the remaining budget only shrinks, a unit that does not fit is dropped for
 *  good, so a binary max-heap does this in O(total_units log N + sum_i K_i m) time. With equal costs and
 *  non-increasing spectra this maximizes sum_i s_i * sum_{k < r_i} spectra[i][k]^2 over all allowed ranks.
 *
 * Errors (PALU_ERR_VALUE unless noted; the detail names the argument): n == 0; a score NaN/Inf/negative;
 * a size < 1 or > 2^53; a cost NaN/Inf/<= 0 or costs times sizes overflowing float64; budget NaN/Inf/
 * negative; multiple_of outside [1, 2^53]; minimum < 0; budget below the cost of the floors; GREEDY
 * without spectra, PROPORTIONAL with spectra, a spectrum shorter than its item's cap or with a NaN/Inf/
 * negative entry; an unknown method. PALU_ERR_NOMEM when scratch memory cannot be allocated.
 */
#ifndef PALU_RANK_ALLOC_H
#define PALU_RANK_ALLOC_H

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Allocation methods. Values are only ever appended. */
typedef enum palu_rank_method {
    PALU_RANK_METHOD_PROPORTIONAL = 0,
    PALU_RANK_METHOD_GREEDY = 1
} palu_rank_method;

/* Lowercase name of `method` ("proportional", "greedy"), NULL for an unknown value. */
const char *palu_rank_method_name(palu_rank_method method);

/* One allocation problem. The arrays are read only and must stay valid for the call. */
typedef struct palu_rank_problem {
    size_t n;                     /* N, number of items, >= 1 */
    const double *scores;         /* (N,) importance, finite, >= 0 */
    const int64_t *sizes;         /* (N,) largest rank of each item, 1 <= sizes[i] <= 2^53 */
    const double *costs;          /* (N,) cost of ONE rank of item i, finite, > 0; NULL means all 1 */
    double budget;                /* B, finite, >= 0, in cost units */
    int64_t multiple_of;          /* m, 1 <= m <= 2^53: every rank is a multiple of it */
    int64_t minimum;              /* >= 0: every rank >= minimum rounded up to a multiple of m (cap wins) */
    const double *const *spectra; /* GREEDY: (N,) pointers, spectra[i] has spectra_len[i] values; else NULL */
    const int64_t *spectra_len;   /* (N,) lengths of the spectra (GREEDY only) */
} palu_rank_problem;

/* Allocate ranks for `problem` with `method`; writes ranks[0..N) (int64, in ranks, not units).
 * On error ranks[] is left unspecified and the status/detail say why (see the list above).
 * Pure computation on the caller's memory (plus O(N) scratch): safe to call without the GIL. */
palu_status palu_rank_alloc(const palu_rank_problem *problem, palu_rank_method method, int64_t *ranks);

#ifdef __cplusplus
}
#endif
#endif /* PALU_RANK_ALLOC_H */
