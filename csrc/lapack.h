/* lapack.h -- the LAPACK/BLAS routines palu_c calls, as a table of function pointers.
 *
 * Route: SciPy exports its OpenBLAS-backed LAPACK/BLAS as capsules in
 * scipy.linalg.cython_lapack.__pyx_capi__ / cython_blas.__pyx_capi__. Those functions take every
 * argument by pointer (Fortran convention, column-major, 32-bit integers) but carry no hidden
 * string-length arguments. The binding (py_lapack.c) fills `palu_lapack` once, at import, before any
 * numeric function can run; afterwards the table is read-only, so reading it without the GIL is safe.
 * Numeric files call e.g. palu_lapack.dgesdd(...) and never see Python.
 *
 * All matrices handed to these routines are column-major. A row-major (m, n) C array is the
 * column-major (n, m) matrix of its transpose; the numeric files use that identity instead of copying.
 */
#ifndef PALU_LAPACK_H
#define PALU_LAPACK_H

#ifdef __cplusplus
extern "C" {
#endif

typedef void palu_sgesdd_fn(char *jobz, int *m, int *n, float *a, int *lda, float *s, float *u, int *ldu,
                            float *vt, int *ldvt, float *work, int *lwork, int *iwork, int *info);
typedef void palu_dgesdd_fn(char *jobz, int *m, int *n, double *a, int *lda, double *s, double *u, int *ldu,
                            double *vt, int *ldvt, double *work, int *lwork, int *iwork, int *info);
typedef void palu_sgesvd_fn(char *jobu, char *jobvt, int *m, int *n, float *a, int *lda, float *s, float *u,
                            int *ldu, float *vt, int *ldvt, float *work, int *lwork, int *info);
typedef void palu_dgesvd_fn(char *jobu, char *jobvt, int *m, int *n, double *a, int *lda, double *s, double *u,
                            int *ldu, double *vt, int *ldvt, double *work, int *lwork, int *info);
typedef void palu_sgeqrf_fn(int *m, int *n, float *a, int *lda, float *tau, float *work, int *lwork, int *info);
typedef void palu_dgeqrf_fn(int *m, int *n, double *a, int *lda, double *tau, double *work, int *lwork,
                            int *info);
typedef void palu_sorgqr_fn(int *m, int *n, int *k, float *a, int *lda, float *tau, float *work, int *lwork,
                            int *info);
typedef void palu_dorgqr_fn(int *m, int *n, int *k, double *a, int *lda, double *tau, double *work, int *lwork,
                            int *info);
typedef void palu_sgetrf_fn(int *m, int *n, float *a, int *lda, int *ipiv, int *info);
typedef void palu_dgetrf_fn(int *m, int *n, double *a, int *lda, int *ipiv, int *info);
typedef void palu_slaswp_fn(int *n, float *a, int *lda, int *k1, int *k2, int *ipiv, int *incx);
typedef void palu_dlaswp_fn(int *n, double *a, int *lda, int *k1, int *k2, int *ipiv, int *incx);
typedef void palu_dpotrf_fn(char *uplo, int *n, double *a, int *lda, int *info);
typedef void palu_sgemm_fn(char *transa, char *transb, int *m, int *n, int *k, float *alpha, float *a, int *lda,
                           float *b, int *ldb, float *beta, float *c, int *ldc);
typedef void palu_dgemm_fn(char *transa, char *transb, int *m, int *n, int *k, double *alpha, double *a, int *lda,
                           double *b, int *ldb, double *beta, double *c, int *ldc);
typedef void palu_dtrsm_fn(char *side, char *uplo, char *transa, char *diag, int *m, int *n, double *alpha,
                           double *a, int *lda, double *b, int *ldb);
typedef void palu_dtrmm_fn(char *side, char *uplo, char *transa, char *diag, int *m, int *n, double *alpha,
                           double *a, int *lda, double *b, int *ldb);

typedef struct palu_lapack_api {
    palu_sgesdd_fn *sgesdd;
    palu_dgesdd_fn *dgesdd;
    palu_sgesvd_fn *sgesvd;
    palu_dgesvd_fn *dgesvd;
    palu_sgeqrf_fn *sgeqrf;
    palu_dgeqrf_fn *dgeqrf;
    palu_sorgqr_fn *sorgqr;
    palu_dorgqr_fn *dorgqr;
    palu_sgetrf_fn *sgetrf;
    palu_dgetrf_fn *dgetrf;
    palu_slaswp_fn *slaswp;
    palu_dlaswp_fn *dlaswp;
    palu_dpotrf_fn *dpotrf;
    palu_sgemm_fn *sgemm;
    palu_dgemm_fn *dgemm;
    palu_dtrsm_fn *dtrsm;
    palu_dtrmm_fn *dtrmm;
} palu_lapack_api;

/* Filled once at import by py_lapack.c; read-only afterwards. */
extern palu_lapack_api palu_lapack;

#ifdef __cplusplus
}
#endif
#endif /* PALU_LAPACK_H */
