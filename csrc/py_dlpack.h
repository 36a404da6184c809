/* py_dlpack.h -- binding-side intake of DLPack capsules (STYLE.md rule 7), shared by every CUDA op.
 *
 * A GPU tensor reaches C as the capsule returned by `t.__dlpack__(stream=s)` (the Python layer passes the
 * current torch stream, so the producer makes no extra stream wait and graph capture keeps working). This
 * file takes ownership of such a capsule, validates it and describes it as a stack of rows:
 *
 *     palu_dl_tensor x = {0};
 *     if (palu_dl_take(x_capsule, "x", "hadamard_cuda", &x) < 0) goto done;   // owns x from here
 *     if (palu_dl_check(&x, kDLCUDA, 0, "x", "hadamard_cuda") < 0) goto done;
 *     if (palu_dl_as_rows(&x, 0, "x", "hadamard_cuda", &xr) < 0) goto done;
 *   done:
 *     palu_dl_release(&x);                                                     // every path
 *
 * Ownership: palu_dl_take renames the capsule "used_dltensor" / "used_dltensor_versioned" (the producer's
 * capsule destructor then leaves the tensor alone) and from then on the palu_dl_tensor owns the managed
 * tensor; palu_dl_release calls its deleter exactly once (with the GIL held) and is a no-op on a zeroed or
 * already released struct. A capsule can be consumed once: a second use is a ValueError.
 *
 * Shape legend: rows = product of all axes but the last, n = length of the last axis.
 * Binding files only (py_*.c).
 */
#ifndef PALU_PY_DLPACK_H
#define PALU_PY_DLPACK_H

#include "py_common.h"

#include <dlpack/dlpack.h>

/* One owned DLPack tensor. Zero-initialize before palu_dl_take. */
typedef struct palu_dl_tensor {
    DLManagedTensor *legacy;             /* owned when the capsule was "dltensor", else NULL */
    DLManagedTensorVersioned *versioned; /* owned when the capsule was "dltensor_versioned", else NULL */
    DLTensor *t;                         /* borrowed view into whichever of the two is owned */
    int read_only;                       /* DLPACK_FLAG_BITMASK_READ_ONLY was set (versioned only) */
} palu_dl_tensor;

/* A validated tensor seen as `rows` rows of n elements with unit stride along the last axis and one
 * uniform row stride (all leading axes collapse onto it). */
typedef struct palu_dl_rows {
    void *data;         /* first element: DLTensor.data + byte_offset */
    int64_t rows;       /* product of the leading axes (1 for a 1-D tensor) */
    int64_t n;          /* length of the last axis */
    int64_t row_stride; /* elements between the starts of consecutive rows */
    palu_dtype dtype;
    DLDevice device;
} palu_dl_rows;

/* Take ownership of the DLPack capsule `capsule` (argument `name` of `func`, both for messages).
 * Returns 0, or -1 with an exception set and nothing owned (on a major-version mismatch the deleter has
 * already been called). */
int palu_dl_take(PyObject *capsule, const char *name, const char *func, palu_dl_tensor *dl);

/* Call the deleter of the owned managed tensor, if any, and zero *dl. Never fails; GIL held. */
void palu_dl_release(palu_dl_tensor *dl);

/* Check the device type (kDLCUDA ...), ndim >= 1, and, when `writable`, that the producer did not mark it
 * read-only. 0, or -1 with a ValueError/TypeError naming the argument. */
int palu_dl_check(const palu_dl_tensor *dl, DLDeviceType device_type, int writable, const char *name,
                  const char *func);

/* The palu_dtype of a DLPack dtype (float32/64, float16, bfloat16, one lane). 0, or -1 with a TypeError. */
int palu_dl_dtype(DLDataType dt, palu_dtype *out, const char *name, const char *func);

/* Describe the tensor as rows (see palu_dl_rows). Refuses empty tensors (a zero in the shape), a last
 * axis that is not contiguous, leading axes that do not collapse onto one row stride, negative strides,
 * and, when `writable`, rows that overlap (row stride < n). NULL strides (producers before DLPack 1.2)
 * mean compact row-major. 0, or -1 with a ValueError/TypeError naming the argument. */
int palu_dl_as_rows(const palu_dl_tensor *dl, int writable, const char *name, const char *func,
                    palu_dl_rows *out);

/* Check that b has the same device, dtype and shape as a. 0, or -1 with a ValueError/TypeError. */
int palu_dl_same_layout(const palu_dl_tensor *a, const palu_dl_tensor *b, const char *name_a, const char *name_b,
                        const char *func);

#endif /* PALU_PY_DLPACK_H */
