/* rank_alloc.c -- per-item ranks under a global cost budget: proportional (Palu) and greedy (see rank_alloc.h).
 *
 * Legend: N items, m = multiple_of, K_i cap units, L_i floor units, c_i cost per rank, u_i = c_i m cost per
 * unit, B budget. Everything is counted in units (rank = units * m) until the final write-out.
 */
#include "rank_alloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define RANK_MAX_SIZE (INT64_C(1) << 53) /* ranks stay exact in float64 */

/* ---- double-double cost arithmetic -------------------------------------------------------------------------
 * Fit tests compare sums of products c_i * r_i against B. Plain float64 would let an allocation exceed the
 * budget by an ulp; hi + lo pairs with error-free products (fma) and sums keep ~106 bits. */
typedef struct dd {
    double hi, lo;
} dd;

static dd dd_prod(double a, double b)
{
    double p = a * b;
    return (dd){p, fma(a, b, -p)};
}

static dd dd_add(dd a, dd b)
{
    double s = a.hi + b.hi;
    double bv = s - a.hi;
    double e = (a.hi - (s - bv)) + (b.hi - bv) + a.lo + b.lo;
    double hi = s + e;
    return (dd){hi, e - (hi - s)};
}

/* a <= b, exact up to the dd representation error: when a.hi and b are within a factor 2 the subtraction
 * is exact (Sterbenz); otherwise its gap dwarfs |a.lo| <= ulp(a.hi)/2. */
static int dd_le(dd a, double b) { return a.lo <= b - a.hi; }

/* ---- shared per-call state ---------------------------------------------------------------------------------- */
typedef struct rank_work {
    size_t n;
    int64_t m;
    double budget;
    const double *cost;  /* (N,) per rank; borrowed from the problem or `ones` */
    int64_t *cap;        /* (N,) K_i, owned */
    int64_t *lo;         /* (N,) L_i, owned */
    dd *unit;            /* (N,) u_i = c_i m, exact, owned */
    int64_t *units;      /* (N,) the allocation in units, owned */
    dd spent;            /* sum_i c_i units_i m */
} rank_work;

static dd work_cost_of(const rank_work *w, size_t i, int64_t units)
{
    return dd_prod(w->cost[i], (double)(units * w->m));
}

static void work_recount(rank_work *w)
{
    dd s = {0.0, 0.0};
    for (size_t i = 0; i < w->n; i++) s = dd_add(s, work_cost_of(w, i, w->units[i]));
    w->spent = s;
}

static int work_unit_fits(const rank_work *w, size_t i) { return dd_le(dd_add(w->spent, w->unit[i]), w->budget); }

/* ---- proportional ------------------------------------------------------------------------------------------ */
typedef struct rank_event {
    double lambda; /* where item idx enters (kind 0) or leaves (kind 1) the linear part of its share */
    size_t idx;
    int kind;
} rank_event;

static int event_cmp(const void *pa, const void *pb)
{
    const rank_event *a = pa, *b = pb;
    if (a->lambda != b->lambda) return a->lambda < b->lambda ? -1 : 1;
    if (a->idx != b->idx) return a->idx < b->idx ? -1 : 1;
    return a->kind - b->kind;
}

typedef struct rank_key {
    double key;
    size_t idx;
} rank_key;

/* Larger key first, then lower index. */
static int key_desc_cmp(const void *pa, const void *pb)
{
    const rank_key *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return a->idx < b->idx ? -1 : (a->idx > b->idx);
}

/* Water-fill the `ns` items sel[] (weights w[i] > 0) with budget `bs`: writes the target rank t[i] of each.
 * f(lambda) = sum clamp(lambda w_i, A_i, U_i) is piecewise linear and non-decreasing; a sweep over the sorted
 * breakpoints finds the segment where it crosses bs, and lambda is then solved from that segment's split into
 * capped / floored / free items (recomputed from scratch rather than accumulated, for accuracy). */
static void water_fill(const rank_work *wk, const size_t *sel, size_t ns, const double *w, double bs, double *t,
                       rank_event *ev)
{
    const double m = (double)wk->m;
    double total_lo = 0.0, total_hi = 0.0;
    for (size_t k = 0; k < ns; k++) {
        size_t i = sel[k];
        total_lo += wk->cost[i] * ((double)wk->lo[i] * m);
        total_hi += wk->cost[i] * ((double)wk->cap[i] * m);
    }
    if (bs >= total_hi || bs <= total_lo) {
        for (size_t k = 0; k < ns; k++) {
            size_t i = sel[k];
            t[i] = (double)(bs >= total_hi ? wk->cap[i] : wk->lo[i]) * m;
        }
        return;
    }
    size_t ne = 0;
    for (size_t k = 0; k < ns; k++) {
        size_t i = sel[k];
        if (wk->lo[i] == wk->cap[i]) continue; /* fixed item, never linear */
        double a = wk->cost[i] * ((double)wk->lo[i] * m), u = wk->cost[i] * ((double)wk->cap[i] * m);
        ev[ne++] = (rank_event){a / w[i], i, 0};
        ev[ne++] = (rank_event){u / w[i], i, 1};
    }
    qsort(ev, ne, sizeof *ev, event_cmp);
    /* Find consecutive breakpoints lam0 < lam1 with f(lam0) < bs <= f(lam1). */
    double lam0 = 0.0, lam1 = INFINITY, f0 = total_lo, slope = 0.0;
    for (size_t e = 0; e < ne; e++) {
        double f1 = slope > 0.0 ? f0 + slope * (ev[e].lambda - lam0) : f0;
        if (f1 >= bs) {
            lam1 = ev[e].lambda;
            break;
        }
        f0 = f1;
        lam0 = ev[e].lambda;
        slope += ev[e].kind == 0 ? w[ev[e].idx] : -w[ev[e].idx];
    }
    double fixed = 0.0, wsum = 0.0;
    for (size_t k = 0; k < ns; k++) {
        size_t i = sel[k];
        double a = wk->cost[i] * ((double)wk->lo[i] * m), u = wk->cost[i] * ((double)wk->cap[i] * m);
        if (wk->lo[i] == wk->cap[i]) fixed += a;
        else if (u / w[i] <= lam0) fixed += u;
        else if (a / w[i] >= lam1) fixed += a;
        else wsum += w[i];
    }
    double lambda = wsum > 0.0 ? (bs - fixed) / wsum : lam0;
    for (size_t k = 0; k < ns; k++) {
        size_t i = sel[k];
        double a = wk->cost[i] * ((double)wk->lo[i] * m), u = wk->cost[i] * ((double)wk->cap[i] * m);
        double share = lambda * w[i];
        if (share >= u) t[i] = (double)wk->cap[i] * m;
        else if (share <= a) t[i] = (double)wk->lo[i] * m;
        else t[i] = share / wk->cost[i];
    }
}

/* Steps 1-3 of rank_alloc.h: the continuous targets t[] (ranks). */
static void proportional_targets(const rank_work *wk, const double *scores, double *w, size_t *sel, double *t,
                                 rank_event *ev)
{
    const size_t n = wk->n;
    const double m = (double)wk->m;
    double smax = 0.0;
    for (size_t i = 0; i < n; i++) smax = scores[i] > smax ? scores[i] : smax;
    if (smax == 0.0) {
        for (size_t i = 0; i < n; i++) {
            w[i] = 1.0;
            sel[i] = i;
        }
        water_fill(wk, sel, n, w, wk->budget, t, ev);
        return;
    }
    /* sel[0..np) = positive scores, sel[np..n) = zero scores */
    size_t np = 0, nz = 0;
    double zero_lo = 0.0, pos_cap = 0.0;
    for (size_t i = 0; i < n; i++) {
        w[i] = scores[i] / smax;
        if (w[i] > 0.0) {
            sel[np++] = i;
            pos_cap += wk->cost[i] * ((double)wk->cap[i] * m);
        } else {
            sel[n - 1 - nz++] = i;
            zero_lo += wk->cost[i] * ((double)wk->lo[i] * m);
        }
    }
    /* the zero-score block was filled backwards; restore increasing index order */
    for (size_t a = np, b = n - 1; a < b; a++, b--) {
        size_t tmp = sel[a];
        sel[a] = sel[b];
        sel[b] = tmp;
    }
    double b_pos = wk->budget - zero_lo;
    if (nz == 0 || b_pos < pos_cap) {
        water_fill(wk, sel, np, w, b_pos, t, ev);
        for (size_t k = np; k < n; k++) t[sel[k]] = (double)wk->lo[sel[k]] * m;
        return;
    }
    for (size_t k = 0; k < np; k++) t[sel[k]] = (double)wk->cap[sel[k]] * m;
    for (size_t k = np; k < n; k++) w[sel[k]] = 1.0;
    water_fill(wk, sel + np, nz, w, wk->budget - pos_cap, t, ev);
}

/* Step 5: passes over `order` giving one unit to each item below its cap whose unit fits, until a pass gives
 * nothing. `active` is scratch of N indices. */
static void leftover_passes(rank_work *wk, const rank_key *order, size_t *active)
{
    const size_t n = wk->n;
    size_t na = 0;
    for (size_t k = 0; k < n; k++)
        if (wk->units[order[k].idx] < wk->cap[order[k].idx]) active[na++] = order[k].idx;
    for (;;) {
        /* A unit that does not fit now never fits later: drop such items (and capped ones) for good. */
        size_t keep = 0;
        for (size_t k = 0; k < na; k++) {
            size_t i = active[k];
            if (wk->units[i] < wk->cap[i] && work_unit_fits(wk, i)) active[keep++] = i;
        }
        na = keep;
        if (na == 0) return;
        /* Several whole passes in which every active item gets a unit: apply them at once. */
        double per_pass = 0.0;
        int64_t room = INT64_MAX;
        for (size_t k = 0; k < na; k++) {
            size_t i = active[k];
            per_pass += wk->unit[i].hi;
            if (wk->cap[i] - wk->units[i] < room) room = wk->cap[i] - wk->units[i];
        }
        double left = (wk->budget - wk->spent.hi) - wk->spent.lo;
        double passes = floor(left / per_pass);
        int64_t k_passes = passes >= (double)room ? room : (int64_t)passes;
        while (k_passes > 0) {
            for (size_t k = 0; k < na; k++) wk->units[active[k]] += k_passes;
            work_recount(wk);
            if (dd_le(wk->spent, wk->budget)) break;
            for (size_t k = 0; k < na; k++) wk->units[active[k]] -= k_passes;
            work_recount(wk);
            k_passes--; /* the float estimate was one pass too optimistic */
        }
        int gave = k_passes > 0;
        for (size_t k = 0; k < na; k++) {
            size_t i = active[k];
            if (wk->units[i] < wk->cap[i] && work_unit_fits(wk, i)) {
                wk->units[i]++;
                wk->spent = dd_add(wk->spent, wk->unit[i]);
                gave = 1;
            }
        }
        if (!gave) return;
    }
}

static palu_status rank_proportional(rank_work *wk, const double *scores)
{
    palu_status st = PALU_OK;
    const size_t n = wk->n;
    const double m = (double)wk->m;
    double *w = malloc(n * sizeof *w), *t = malloc(n * sizeof *t);
    size_t *sel = malloc(n * sizeof *sel);
    rank_event *ev = malloc(2 * n * sizeof *ev);
    rank_key *order = malloc(n * sizeof *order);
    if (!w || !t || !sel || !ev || !order) {
        st = palu_fail(PALU_ERR_NOMEM, "out of memory for rank allocation scratch (N = %zu)", n);
        goto done;
    }
    proportional_targets(wk, scores, w, sel, t, ev);
    for (size_t i = 0; i < n; i++) {
        double f = t[i] / m, fl = floor(f);
        int64_t u = fl >= (double)wk->cap[i] ? wk->cap[i] : (int64_t)(fl > 0.0 ? fl : 0.0);
        double rem = f - fl;
        if (u <= wk->lo[i]) {
            if (u < wk->lo[i]) rem = 0.0; /* rounded below the floor: the floor is exact, no remainder */
            u = wk->lo[i];
        }
        if (u >= wk->cap[i]) rem = 0.0;
        wk->units[i] = u;
        order[i] = (rank_key){rem, i};
    }
    qsort(order, n, sizeof *order, key_desc_cmp);
    work_recount(wk);
    /* Exactly, the floors cost <= B; rounding of t[] can only break that by an ulp. Take units back from the
     * smallest remainders (the end of `order`) until it holds; the floors alone always fit. */
    for (size_t k = n; k-- > 0 && !dd_le(wk->spent, wk->budget);) {
        size_t i = order[k].idx;
        while (wk->units[i] > wk->lo[i] && !dd_le(wk->spent, wk->budget)) {
            wk->units[i]--;
            work_recount(wk);
        }
    }
    leftover_passes(wk, order, sel);
done:
    free(w);
    free(t);
    free(sel);
    free(ev);
    free(order);
    return st;
}

/* ---- greedy ------------------------------------------------------------------------------------------------ */
/* Max-heap of (gain, idx): a above b when a.gain > b.gain, or equal gains and a.idx < b.idx. */
static int heap_above(const rank_key *a, const rank_key *b)
{
    return a->key > b->key || (a->key == b->key && a->idx < b->idx);
}

static void heap_sift_down(rank_key *h, size_t len, size_t k)
{
    for (;;) {
        size_t l = 2 * k + 1, r = l + 1, top = k;
        if (l < len && heap_above(&h[l], &h[top])) top = l;
        if (r < len && heap_above(&h[r], &h[top])) top = r;
        if (top == k) return;
        rank_key tmp = h[k];
        h[k] = h[top];
        h[top] = tmp;
        k = top;
    }
}

static double greedy_gain(const rank_work *wk, const palu_rank_problem *p, size_t i)
{
    if (p->scores[i] == 0.0) return 0.0; /* not 0 * Inf = NaN for a huge spectrum */
    const double *s = p->spectra[i] + wk->units[i] * wk->m;
    double energy = 0.0;
    for (int64_t k = 0; k < wk->m; k++) energy += s[k] * s[k];
    return p->scores[i] * energy / ((double)wk->m * wk->cost[i]);
}

static palu_status rank_greedy(rank_work *wk, const palu_rank_problem *p)
{
    palu_status st = PALU_OK;
    const size_t n = wk->n;
    rank_key *heap = malloc(n * sizeof *heap);
    if (!heap) {
        st = palu_fail(PALU_ERR_NOMEM, "out of memory for the greedy heap (N = %zu)", n);
        goto done;
    }
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        if (wk->units[i] < wk->cap[i]) heap[len++] = (rank_key){greedy_gain(wk, p, i), i};
    for (size_t k = len / 2; k-- > 0;) heap_sift_down(heap, len, k);
    while (len > 0) {
        size_t i = heap[0].idx;
        if (work_unit_fits(wk, i)) {
            wk->units[i]++;
            wk->spent = dd_add(wk->spent, wk->unit[i]);
            if (wk->units[i] < wk->cap[i]) {
                heap[0].key = greedy_gain(wk, p, i);
                heap_sift_down(heap, len, 0);
                continue;
            }
        }
        /* at its cap, or its unit no longer fits (and never will: the budget only shrinks) */
        heap[0] = heap[--len];
        heap_sift_down(heap, len, 0);
    }
done:
    free(heap);
    return st;
}

/* ---- validation and entry point ---------------------------------------------------------------------------- */
const char *palu_rank_method_name(palu_rank_method method)
{
    switch (method) {
    case PALU_RANK_METHOD_PROPORTIONAL: return "proportional";
    case PALU_RANK_METHOD_GREEDY: return "greedy";
    default: return NULL;
    }
}

static palu_status validate(const palu_rank_problem *p, palu_rank_method method)
{
    if (palu_rank_method_name(method) == NULL)
        return palu_fail(PALU_ERR_VALUE, "unknown method %d; use 'proportional' or 'greedy'", (int)method);
    if (p->n == 0) return palu_fail(PALU_ERR_VALUE, "`scores` is empty; pass at least one item");
    if (!isfinite(p->budget) || p->budget < 0.0)
        return palu_fail(PALU_ERR_VALUE, "`budget` must be a finite number >= 0, got %g", p->budget);
    if (p->multiple_of < 1 || p->multiple_of > RANK_MAX_SIZE)
        return palu_fail(PALU_ERR_VALUE, "`multiple_of` must be in [1, 2^53], got %lld", (long long)p->multiple_of);
    if (p->minimum < 0)
        return palu_fail(PALU_ERR_VALUE, "`minimum` must be >= 0, got %lld", (long long)p->minimum);
    double total = 0.0;
    for (size_t i = 0; i < p->n; i++) {
        if (!isfinite(p->scores[i]) || p->scores[i] < 0.0)
            return palu_fail(PALU_ERR_VALUE, "`scores`[%zu] = %g; scores must be finite and >= 0", i, p->scores[i]);
        if (p->sizes[i] < 1 || p->sizes[i] > RANK_MAX_SIZE)
            return palu_fail(PALU_ERR_VALUE, "`sizes`[%zu] = %lld; sizes must be in [1, 2^53]", i,
                             (long long)p->sizes[i]);
        double c = p->costs ? p->costs[i] : 1.0;
        if (!isfinite(c) || !(c > 0.0))
            return palu_fail(PALU_ERR_VALUE, "`costs`[%zu] = %g; costs must be finite and > 0", i, c);
        double most = c * (double)(p->sizes[i] > p->multiple_of ? p->sizes[i] : p->multiple_of);
        total += most;
        if (!isfinite(most) || !isfinite(total))
            return palu_fail(PALU_ERR_VALUE, "`costs` x `sizes` overflows float64 at item %zu; rescale the costs", i);
    }
    if (method == PALU_RANK_METHOD_PROPORTIONAL && p->spectra != NULL)
        return palu_fail(PALU_ERR_VALUE, "`spectra` is only used by method='greedy'; drop it or switch methods");
    if (method == PALU_RANK_METHOD_GREEDY) {
        if (p->spectra == NULL || p->spectra_len == NULL)
            return palu_fail(PALU_ERR_VALUE, "method='greedy' needs `spectra` (one 1-D array of singular values "
                                             "per item)");
        for (size_t i = 0; i < p->n; i++) {
            int64_t cap_rank = p->sizes[i] / p->multiple_of * p->multiple_of;
            if (p->spectra_len[i] < cap_rank)
                return palu_fail(PALU_ERR_VALUE, "`spectra`[%zu] has %lld values but the item's cap is rank %lld; "
                                 "pass at least that many", i, (long long)p->spectra_len[i], (long long)cap_rank);
            if (p->spectra_len[i] > 0 && p->spectra[i] == NULL)
                return palu_fail(PALU_ERR_VALUE, "`spectra`[%zu] is NULL", i);
            for (int64_t k = 0; k < p->spectra_len[i]; k++) {
                double v = p->spectra[i][k];
                if (!isfinite(v) || v < 0.0)
                    return palu_fail(PALU_ERR_VALUE, "`spectra`[%zu][%lld] = %g; spectra must be finite and >= 0", i,
                                     (long long)k, v);
            }
        }
    }
    return PALU_OK;
}

palu_status palu_rank_alloc(const palu_rank_problem *p, palu_rank_method method, int64_t *ranks)
{
    palu_status st = validate(p, method);
    if (st != PALU_OK) return st;
    const size_t n = p->n;
    rank_work wk = {.n = n, .m = p->multiple_of, .budget = p->budget};
    double *ones = NULL;
    wk.cap = malloc(n * sizeof *wk.cap);
    wk.lo = malloc(n * sizeof *wk.lo);
    wk.unit = malloc(n * sizeof *wk.unit);
    wk.units = malloc(n * sizeof *wk.units);
    if (p->costs == NULL) ones = malloc(n * sizeof *ones);
    if (!wk.cap || !wk.lo || !wk.unit || !wk.units || (p->costs == NULL && !ones)) {
        st = palu_fail(PALU_ERR_NOMEM, "out of memory for rank allocation (N = %zu)", n);
        goto done;
    }
    if (ones)
        for (size_t i = 0; i < n; i++) ones[i] = 1.0;
    wk.cost = p->costs ? p->costs : ones;
    int64_t min_units = p->minimum / wk.m + (p->minimum % wk.m != 0);
    for (size_t i = 0; i < n; i++) {
        wk.cap[i] = p->sizes[i] / wk.m;
        wk.lo[i] = min_units < wk.cap[i] ? min_units : wk.cap[i];
        wk.unit[i] = dd_prod(wk.cost[i], (double)wk.m);
        wk.units[i] = wk.lo[i];
    }
    work_recount(&wk);
    if (!dd_le(wk.spent, wk.budget)) {
        double need = wk.spent.hi + wk.spent.lo;
        st = palu_fail(PALU_ERR_VALUE, "`budget` %.17g is too small for the minimum ranks (`minimum` = %lld rounded "
                       "up to a multiple of %lld): they cost %.17g, %.17g more than the budget; lower `minimum` or "
                       "raise `budget`", wk.budget, (long long)p->minimum, (long long)wk.m, need,
                       (wk.spent.hi - wk.budget) + wk.spent.lo);
        goto done;
    }
    switch (method) {
    case PALU_RANK_METHOD_PROPORTIONAL: st = rank_proportional(&wk, p->scores); break;
    case PALU_RANK_METHOD_GREEDY: st = rank_greedy(&wk, p); break;
    default: st = palu_fail(PALU_ERR_VALUE, "unknown method %d; use 'proportional' or 'greedy'", (int)method); break;
    }
    if (st == PALU_OK)
        for (size_t i = 0; i < n; i++) ranks[i] = wk.units[i] * wk.m;
done:
    free(ones);
    free(wk.cap);
    free(wk.lo);
    free(wk.unit);
    free(wk.units);
    return st;
}
