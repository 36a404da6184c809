/* palu.h -- the private header shared by palu_c's numeric C files (no Python, no NumPy here).
 *
 * Layering (STYLE.md rule 1): numeric files (svd.c, lowrank.c, quant.c, hadamard.c, rank_alloc.c ...)
 * include only this header and lapack.h; they take raw pointers, sizes and strides and return a
 * palu_status. Only the binding files (module.c, py_*.c) touch CPython or NumPy.
 *
 * Errors: a fallible function returns a palu_status other than PALU_OK after calling palu_fail(),
 * which stores a human-readable detail in a thread-local buffer (the GIL is released around numeric
 * work, so the buffer must be per thread). The binding maps the status to a Python exception class and
 * uses the detail as the message. The library never prints, never aborts.
 *
 * Shape legend used across the numeric files: m rows, n columns, k kept rank, p oversampling,
 * B batch, H heads, Hkv kv heads, T tokens, D head_dim, R rank.
 */
#ifndef PALU_H
#define PALU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. Values are only ever appended (they cross the binding boundary). */
typedef enum palu_status {
    PALU_OK = 0,
    PALU_ERR_VALUE = 1,       /* bad argument value (rank out of range, NaN input ...) -> ValueError */
    PALU_ERR_TYPE = 2,        /* wrong dtype or kind of object -> TypeError */
    PALU_ERR_NOMEM = 3,       /* allocation failed -> MemoryError */
    PALU_ERR_LINALG = 4,      /* LAPACK did not converge / matrix not factorizable -> LinAlgError */
    PALU_ERR_CUDA = 5,        /* CUDA runtime or launch error -> RuntimeError */
    PALU_ERR_UNSUPPORTED = 6, /* valid but unsupported combination -> NotImplementedError */
    PALU_ERR_INTERNAL = 7     /* a bug in palu_c -> RuntimeError */
} palu_status;

/* Element types of the numeric core. Values are only ever appended. */
typedef enum palu_dtype {
    PALU_DTYPE_F32 = 0,
    PALU_DTYPE_F64 = 1,
    PALU_DTYPE_F16 = 2,
    PALU_DTYPE_BF16 = 3
} palu_dtype;

/* Size in bytes of one element of `dt` (0 for an unknown value). */
size_t palu_dtype_size(palu_dtype dt);
/* Short lowercase name ("float32" ...), "unknown" for an unknown value. */
const char *palu_dtype_name(palu_dtype dt);

/* Record `fmt` as this thread's error detail and return `status` (for `return palu_fail(...)`). */
palu_status palu_fail(palu_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* This thread's last error detail ("" if none). Valid until the next palu_fail on this thread. */
const char *palu_last_error(void);

/* Number of NaN/Inf entries among the n elements at `x` (contiguous). */
size_t palu_count_nonfinite(const void *x, size_t n, palu_dtype dt);

/* Deterministic pseudo-random numbers (splitmix64 seeding + xoshiro256**), used where an algorithm
 * needs randomness (randomized SVD test matrices). Same seed -> same stream on every platform. */
typedef struct palu_rng {
    uint64_t s[4];
} palu_rng;
void palu_rng_seed(palu_rng *rng, uint64_t seed);
uint64_t palu_rng_next(palu_rng *rng);
/* Fill x[0..n) with standard normal samples (Box-Muller on 53-bit uniforms). */
void palu_rng_normal_f64(palu_rng *rng, double *x, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* PALU_H */
