/* cuda_runtime_info.cu -- see cuda_runtime_info.cuh. */
#include <cuda_runtime.h>

#include "cuda_runtime_info.cuh"

extern "C" const char *palu_cuda_device_count(int *count)
{
    *count = 0;
    cudaError_t err = cudaGetDeviceCount(count);
    if (err != cudaSuccess) {
        *count = 0;
        (void)cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
        return cudaGetErrorString(err);
    }
    return nullptr;
}

extern "C" void palu_cuda_runtime_version(int *version)
{
    *version = 0;
    if (cudaRuntimeGetVersion(version) != cudaSuccess) *version = 0;
}
