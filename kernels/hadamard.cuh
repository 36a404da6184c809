/* hadamard.cuh -- the Hadamard-type transform on the GPU: one C-callable launcher (no CUDA types here, so
 * the C bindings include this header without CUDA headers).
 *
 * Design. The transform and its conventions are csrc/hadamard.h's: y = x @ H^T with
 * H = (S_K / sqrt(K)) (x) P, the plan (Sylvester, Paley or Householder block P) chosen by
 * palu_hadamard_plan_init, so the GPU and the CPU reference (palu_hadamard_rows, the `_ref` twin and the
 * oracle of tests/gpu) compute the same matrix. Each CTA owns whole rows (short rows are packed, about 4096
 * elements per CTA): it loads them to shared memory in fp32 (16-byte accesses of 8 elements when n, the row
 * strides and the pointers allow it; for powers of two the three lowest butterfly stages are done on those 8
 * values in registers on the way in), applies P per block of p channels (Paley: residue table built in
 * shared memory by every CTA, nothing precomputed or allocated on the host; Householder: one warp per block
 * sum), runs the remaining Sylvester stages across blocks (up to three per __syncthreads, each thread
 * butterflying 8 elements in registers), scales and writes back in the input dtype. fp32 arithmetic.
 *
 * Shape legend: rows independent vectors of n elements; p inner block order; K = n / p.
 *
 * Cost (H200, 2^27 elements, CUDA-event medians; copy = a device copy of the same bytes): powers of two
 * 64..16384 run at 0.32-0.46 of copy bandwidth in bf16 and 0.51-0.72 in fp32 (instruction-bound, not
 * memory-bound); Paley and Householder lengths at 0.04-0.19 (O(p) work per element in the Paley block).
 * Tried and dropped: padding shared memory by 8 words per 64 to remove the 4-way bank conflicts of the
 * span-8 pass made powers of two 7-14% slower (the extra index arithmetic costs more than the conflicts).
 *
 * Limits: n is bounded by the shared memory of one CTA: 4 bytes per element (8 for Paley lengths, which
 * need a second buffer) plus a small table; on an H200 (227 KB opt-in) n <= 32768 for powers of two,
 * about 58000 for Householder lengths and 29000 for Paley lengths; beyond -> PALU_ERR_UNSUPPORTED.
 * Rows are independent: one NaN/Inf spreads through its own row only.
 */
#ifndef PALU_HADAMARD_CUH
#define PALU_HADAMARD_CUH

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Launchers */

/* Transform `rows` rows of n elements: out[r, :] = x[r, :] @ H^T (transpose = 0) or x[r, :] @ H
 * (transpose = 1, the inverse). Rows are contiguous along the last axis; x_row_stride / out_row_stride are
 * the distances between row starts in ELEMENTS (>= 0 for x, which may repeat rows; >= n for out, unless
 * rows == 1). x and out may not overlap partially (out == x with equal strides is fine: each CTA reads all
 * its rows before writing them). dtype: PALU_DTYPE_F32, F16 or BF16 (anything else ->
 * PALU_ERR_UNSUPPORTED naming it). `device` is the CUDA ordinal the pointers and the stream live on (made
 * current for the launch, then restored); `stream` is a cudaStream_t (NULL = legacy default stream, only
 * when the caller asked for it). Never allocates, never synchronizes; the error of the launch itself is
 * checked (PALU_ERR_CUDA), errors of the running kernel surface at the caller's next synchronization.
 * rows == 0 launches nothing. */
palu_status palu_hadamard_cuda(const void *x, int64_t x_row_stride, void *out, int64_t out_row_stride, int64_t rows,
                               int64_t n, palu_dtype dtype, int transpose, int device, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* PALU_HADAMARD_CUH */
