/* cuda_check.cuh -- the one checking macro for CUDA runtime calls and launches (STYLE.md rule 5).
 *
 * PALU_CUDA_CHECK(call) returns PALU_ERR_CUDA from the enclosing function (which must return
 * palu_status) with the CUDA error string and the failing expression as the detail.
 * PALU_CUDA_CHECK_LAUNCH() does the same for cudaGetLastError() right after a kernel launch.
 */
#ifndef PALU_CUDA_CHECK_CUH
#define PALU_CUDA_CHECK_CUH

#include <cuda_runtime.h>

#include "palu.h"

#define PALU_CUDA_CHECK(call)                                                                                 \
    do {                                                                                                      \
        cudaError_t palu_err_ = (call);                                                                       \
        if (palu_err_ != cudaSuccess)                                                                         \
            return palu_fail(PALU_ERR_CUDA, "%s failed: %s (%s:%d)", #call, cudaGetErrorString(palu_err_),    \
                             __FILE__, __LINE__);                                                             \
    } while (0)

#define PALU_CUDA_CHECK_LAUNCH() PALU_CUDA_CHECK(cudaGetLastError())

#endif /* PALU_CUDA_CHECK_CUH */
