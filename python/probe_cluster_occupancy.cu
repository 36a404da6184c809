// How many clusters of N CTAs (one CTA per SM: ~200 KB of dynamic shared memory each) an H200 co-schedules:
// cudaOccupancyMaxActiveClusters for N = 1, 2, 4, 8. A design question for v9 at batch 1 (32 heads x 4 splits =
// 32 clusters of 4 would let a head's splits combine their partials through distributed shared memory instead of
// the merge kernel); notes, "Next: the splits of a head as one cluster".
//   nvcc -arch=sm_90a -o /tmp/pco python/probe_cluster_occupancy.cu && /tmp/pco
#include <cstdio>
#include <cuda_runtime.h>

__global__ void one_cta_per_sm(int *out)
{
    extern __shared__ int smem[];
    smem[threadIdx.x] = threadIdx.x;
    __syncthreads();
    if (out) out[blockIdx.x] = smem[0];
}

int main()
{
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return printf("no device\n"), 1;
    printf("%s: %d SMs, %zu bytes of opt-in shared memory per block\n", prop.name, prop.multiProcessorCount,
           prop.sharedMemPerBlockOptin);
    const size_t smem[] = {200 * 1024, 226 * 1024};
    for (size_t s : smem) {
        cudaError_t e = cudaFuncSetAttribute(one_cta_per_sm, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s);
        if (e == cudaSuccess) e = cudaFuncSetAttribute(one_cta_per_sm, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
        if (e != cudaSuccess) return printf("attribute: %s\n", cudaGetErrorString(e)), 1;
        for (int n : {1, 2, 4, 8, 16}) {
            cudaLaunchConfig_t cfg = {};
            cudaLaunchAttribute attr[1];
            attr[0].id = cudaLaunchAttributeClusterDimension;
            attr[0].val.clusterDim.x = n, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
            cfg.gridDim = dim3(n * 64), cfg.blockDim = dim3(416), cfg.dynamicSmemBytes = s;
            cfg.attrs = attr, cfg.numAttrs = 1;
            int clusters = -1;
            e = cudaOccupancyMaxActiveClusters(&clusters, one_cta_per_sm, &cfg);
            printf("smem %zu KB, cluster %2d: %s%d clusters = %d CTAs\n", s / 1024, n,
                   e == cudaSuccess ? "" : cudaGetErrorString(e), clusters, clusters * n);
        }
    }
    return 0;
}
