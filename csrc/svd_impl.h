/* svd_impl.h -- precision-generic body of svd.c, included once per real type (a C "template").
 *
 * Before including, define: REAL (float/double), SFX (suffix token f32/f64) and LP (the LAPACK/BLAS name
 * prefix of that precision, s or d). Not a public header.
 */

#define PALU_PASTE2(a, b) a##b
#define PALU_PASTE(a, b) PALU_PASTE2(a, b)
#define XGESDD palu_lapack.PALU_PASTE(LP, gesdd)
#define XGESVD palu_lapack.PALU_PASTE(LP, gesvd)
#define XGEQRF palu_lapack.PALU_PASTE(LP, geqrf)
#define XORGQR palu_lapack.PALU_PASTE(LP, orgqr)
#define XGETRF palu_lapack.PALU_PASTE(LP, getrf)
#define XLASWP palu_lapack.PALU_PASTE(LP, laswp)
#define XGEMM palu_lapack.PALU_PASTE(LP, gemm)

#define PALU_CAT2(a, b) a##_##b
#define PALU_CAT(a, b) PALU_CAT2(a, b)
#define FN(name) PALU_CAT(name, SFX)

/* Column-major (rows x cols) X: thin SVD X = Ux S VTx with Ux (rows x mn), VTx (mn x cols),
 * mn = min(rows, cols). Destroys X. gesdd first, gesvd on non-convergence (needs a pristine copy). */
static palu_status FN(thin_svd_colmajor)(REAL *x, const REAL *pristine, int rows, int cols, REAL *s, REAL *ux,
                                         REAL *vtx)
{
    int mn = rows < cols ? rows : cols, info = 0, lwork = -1;
    REAL wq;
    int *iwork = (int *)malloc(sizeof(int) * 8 * (size_t)mn);
    REAL *work = NULL;
    palu_status st = PALU_OK;
    if (iwork == NULL) return palu_fail(PALU_ERR_NOMEM, "out of memory for the SVD workspace (%d x %d)", rows, cols);
    char jobz = 'S';
    XGESDD(&jobz, &rows, &cols, x, &rows, s, ux, &rows, vtx, &mn, &wq, &lwork, iwork, &info);
    if (info != 0) {
        st = palu_fail(PALU_ERR_INTERNAL, "gesdd workspace query failed (info=%d)", info);
        goto done;
    }
    lwork = (int)wq + 1;
    work = (REAL *)malloc(sizeof(REAL) * (size_t)lwork);
    if (work == NULL) {
        st = palu_fail(PALU_ERR_NOMEM, "out of memory for the SVD workspace (%d x %d)", rows, cols);
        goto done;
    }
    XGESDD(&jobz, &rows, &cols, x, &rows, s, ux, &rows, vtx, &mn, work, &lwork, iwork, &info);
    if (info > 0 && pristine != NULL) {
        /* Divide and conquer did not converge: QR iteration is slower but more robust. */
        memcpy(x, pristine, sizeof(REAL) * (size_t)rows * (size_t)cols);
        char jobu = 'S', jobvt = 'S';
        lwork = -1;
        XGESVD(&jobu, &jobvt, &rows, &cols, x, &rows, s, ux, &rows, vtx, &mn, &wq, &lwork, &info);
        if (info == 0) {
            free(work);
            lwork = (int)wq + 1;
            work = (REAL *)malloc(sizeof(REAL) * (size_t)lwork);
            if (work == NULL) {
                st = palu_fail(PALU_ERR_NOMEM, "out of memory for the SVD workspace (%d x %d)", rows, cols);
                goto done;
            }
            XGESVD(&jobu, &jobvt, &rows, &cols, x, &rows, s, ux, &rows, vtx, &mn, work, &lwork, &info);
        }
    }
    if (info > 0)
        st = palu_fail(PALU_ERR_LINALG, "SVD did not converge (gesdd and gesvd, info=%d) on a %d x %d matrix", info,
                       rows, cols);
    else if (info < 0)
        st = palu_fail(PALU_ERR_INTERNAL, "SVD rejected argument %d", -info);
done:
    free(work);
    free(iwork);
    return st;
}

/* Overwrite column-major (rows x cols) Y, rows >= cols, with an orthonormal basis of its range. */
static palu_status FN(orthonormalize)(REAL *y, int rows, int cols)
{
    int info = 0, lwork = -1;
    REAL wq, wq2;
    palu_status st = PALU_OK;
    REAL *tau = (REAL *)malloc(sizeof(REAL) * (size_t)cols), *work = NULL;
    if (tau == NULL) return palu_fail(PALU_ERR_NOMEM, "out of memory for QR (%d x %d)", rows, cols);
    XGEQRF(&rows, &cols, y, &rows, tau, &wq, &lwork, &info);
    XORGQR(&rows, &cols, &cols, y, &rows, tau, &wq2, &lwork, &info);
    lwork = (int)(wq > wq2 ? wq : wq2) + 1;
    work = (REAL *)malloc(sizeof(REAL) * (size_t)lwork);
    if (work == NULL) {
        st = palu_fail(PALU_ERR_NOMEM, "out of memory for QR (%d x %d)", rows, cols);
        goto done;
    }
    XGEQRF(&rows, &cols, y, &rows, tau, work, &lwork, &info);
    if (info == 0) XORGQR(&rows, &cols, &cols, y, &rows, tau, work, &lwork, &info);
    if (info != 0) st = palu_fail(PALU_ERR_INTERNAL, "QR rejected argument %d", -info);
done:
    free(work);
    free(tau);
    return st;
}

/* Overwrite column-major (rows x cols) Y, rows >= cols, with P L from its pivoted LU factorization: a basis
 * of the same column space, well enough conditioned to carry on with, for a quarter of the work of an
 * orthonormal basis (geqrf + orgqr, which also run at lower BLAS efficiency). Used between power
 * iterations, where only the span matters (Halko, Martinsson & Tropp 2011, sec. 4.5); the last basis,
 * which projects A, is always orthonormalized with QR. */
static palu_status FN(lu_basis)(REAL *y, int rows, int cols)
{
    int info = 0, k1 = 1, k2 = cols, backwards = -1;
    int *ipiv = (int *)malloc(sizeof(int) * (size_t)cols);
    if (ipiv == NULL) return palu_fail(PALU_ERR_NOMEM, "out of memory for LU (%d x %d)", rows, cols);
    XGETRF(&rows, &cols, y, &rows, ipiv, &info); /* info > 0: U is singular; L is still a valid basis */
    if (info < 0) {
        free(ipiv);
        return palu_fail(PALU_ERR_INTERNAL, "getrf rejected argument %d", -info);
    }
    for (int j = 0; j < cols; j++) { /* keep the unit lower trapezoid L */
        for (int i = 0; i < j; i++) y[i + (size_t)j * rows] = 0;
        y[j + (size_t)j * rows] = 1;
    }
    XLASWP(&cols, y, &rows, &k1, &k2, ipiv, &backwards); /* P^T Y = L U  =>  apply P: swaps in reverse */
    free(ipiv);
    return PALU_OK;
}

/* Copy the leading k columns of row-major (rows x ld) src into row-major (rows x k) dst. */
static void FN(copy_cols)(REAL *dst, const REAL *src, int64_t rows, int64_t ld, int64_t k)
{
    for (int64_t i = 0; i < rows; i++) memcpy(dst + i * k, src + i * ld, sizeof(REAL) * (size_t)k);
}

/* Fix each triplet's sign: column j of row-major U (m x k) gets its largest-magnitude entry positive
 * (first one on an exact tie), row j of Vt (k x n) flips with it. An SVD is unique only up to these
 * signs, and LAPACK's choice follows the rounding of the BLAS kernel in use (CPU model, thread count,
 * the shape of the call), so without this the same weight could factor with different signs on two
 * machines or as part of a larger call. */
static void FN(fix_signs)(REAL *u, REAL *vt, int64_t m, int64_t n, int64_t k)
{
    for (int64_t j = 0; j < k; j++) {
        int64_t arg = 0;
        REAL best = -1;
        for (int64_t i = 0; i < m; i++) {
            REAL mag = u[i * k + j] < 0 ? -u[i * k + j] : u[i * k + j];
            if (mag > best) {
                best = mag;
                arg = i;
            }
        }
        if (u[arg * k + j] >= 0) continue;
        for (int64_t i = 0; i < m; i++) u[i * k + j] = -u[i * k + j];
        for (int64_t c = 0; c < n; c++) vt[j * n + c] = -vt[j * n + c];
    }
}

static palu_status FN(svd_exact)(const REAL *a, int m, int n, int k, REAL *u, REAL *s, REAL *vt)
{
    int mn = m < n ? m : n;
    size_t mnz = (size_t)m * (size_t)n;
    palu_status st = PALU_OK;
    /* A row-major (m, n) == X = A^T column-major (n, m). X = Ux S VTx  =>  A = VTx^T S Ux^T:
     * VTx (mn x m, col-major) is U row-major (m x mn); Ux (n x mn, col-major) is Vt row-major (mn x n). */
    REAL *x = (REAL *)malloc(sizeof(REAL) * mnz);
    REAL *ux = (REAL *)malloc(sizeof(REAL) * (size_t)n * (size_t)mn);
    REAL *vtx = (REAL *)malloc(sizeof(REAL) * (size_t)mn * (size_t)m);
    REAL *sx = (REAL *)malloc(sizeof(REAL) * (size_t)mn);
    if (!x || !ux || !vtx || !sx) {
        st = palu_fail(PALU_ERR_NOMEM, "out of memory for the SVD of a %d x %d matrix", m, n);
        goto done;
    }
    memcpy(x, a, sizeof(REAL) * mnz);
    st = FN(thin_svd_colmajor)(x, a, n, m, sx, ux, vtx);
    if (st != PALU_OK) goto done;
    FN(copy_cols)(u, vtx, m, mn, k);
    memcpy(s, sx, sizeof(REAL) * (size_t)k);
    memcpy(vt, ux, sizeof(REAL) * (size_t)k * (size_t)n); /* leading k rows of Vt are contiguous */
    FN(fix_signs)(u, vt, m, n, k);
done:
    free(x);
    free(ux);
    free(vtx);
    free(sx);
    return st;
}

static palu_status FN(svd_randomized)(const REAL *a, int m, int n, int k, int l, int power_iters, uint64_t seed,
                                      REAL *u, REAL *s, REAL *vt)
{
    /* Work on X = A^T, column-major (n x m), which is A's buffer as is. Sketch its range (n x l). */
    palu_status st = PALU_OK;
    REAL one = 1, zero = 0;
    char N = 'N', T = 'T';
    REAL *x = (REAL *)a; /* BLAS takes non-const pointers; X is only read */
    REAL *omega = (REAL *)malloc(sizeof(REAL) * (size_t)m * (size_t)l);
    REAL *q = (REAL *)malloc(sizeof(REAL) * (size_t)n * (size_t)l);
    REAL *b = (REAL *)malloc(sizeof(REAL) * (size_t)l * (size_t)m); /* also Z = X^T Q (m x l) */
    REAL *ub = (REAL *)malloc(sizeof(REAL) * (size_t)l * (size_t)l);
    REAL *vtb = (REAL *)malloc(sizeof(REAL) * (size_t)l * (size_t)m);
    REAL *sb = (REAL *)malloc(sizeof(REAL) * (size_t)l);
    REAL *ux = (REAL *)malloc(sizeof(REAL) * (size_t)n * (size_t)l);
    double *gauss = (double *)malloc(sizeof(double) * (size_t)m * (size_t)l);
    if (!omega || !q || !b || !ub || !vtb || !sb || !ux || !gauss) {
        st = palu_fail(PALU_ERR_NOMEM, "out of memory for the randomized SVD of a %d x %d matrix", m, n);
        goto done;
    }
    palu_rng rng;
    palu_rng_seed(&rng, seed);
    palu_rng_normal_f64(&rng, gauss, (size_t)m * (size_t)l);
    for (size_t i = 0; i < (size_t)m * (size_t)l; i++) omega[i] = (REAL)gauss[i];

    XGEMM(&N, &N, &n, &l, &m, &one, x, &n, omega, &m, &zero, q, &n); /* Q = X Omega  (n x l) */
    for (int it = 0; it < power_iters; it++) {
        if ((st = FN(lu_basis)(q, n, l)) != PALU_OK) goto done;
        XGEMM(&T, &N, &m, &l, &n, &one, x, &n, q, &n, &zero, b, &m); /* Z = X^T Q  (m x l) */
        if ((st = FN(lu_basis)(b, m, l)) != PALU_OK) goto done;
        XGEMM(&N, &N, &n, &l, &m, &one, x, &n, b, &m, &zero, q, &n); /* Q = X Z  (n x l) */
    }
    if ((st = FN(orthonormalize)(q, n, l)) != PALU_OK) goto done;
    XGEMM(&T, &N, &l, &m, &n, &one, q, &n, x, &n, &zero, b, &l); /* B = Q^T X  (l x m) */
    memcpy(omega, b, sizeof(REAL) * (size_t)l * (size_t)m);     /* pristine copy for the gesvd fallback */
    if ((st = FN(thin_svd_colmajor)(b, omega, l, m, sb, ub, vtb)) != PALU_OK) goto done;
    XGEMM(&N, &N, &n, &l, &l, &one, q, &n, ub, &l, &zero, ux, &n); /* Ux = Q Ub  (n x l) */
    /* X ~= Ux S VTb  =>  A ~= VTb^T S Ux^T: VTb (l x m col-major) is U row-major (m x l); Ux is Vt (l x n). */
    FN(copy_cols)(u, vtb, m, l, k);
    memcpy(s, sb, sizeof(REAL) * (size_t)k);
    memcpy(vt, ux, sizeof(REAL) * (size_t)k * (size_t)n);
    FN(fix_signs)(u, vt, m, n, k);
done:
    free(omega);
    free(q);
    free(b);
    free(ub);
    free(vtb);
    free(sb);
    free(ux);
    free(gauss);
    return st;
}

#undef FN
#undef PALU_CAT
#undef PALU_CAT2
#undef XGESDD
#undef XGESVD
#undef XGEQRF
#undef XORGQR
#undef XGETRF
#undef XLASWP
#undef XGEMM
#undef PALU_PASTE
#undef PALU_PASTE2
