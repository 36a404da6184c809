// Probe of the pair launch's mechanism (notes, "The pair launch"): a grid (2, 2, 3) launched in clusters of (1, 2, 1)
// with ~200 KB of dynamic shared memory and 544 threads per CTA, as v10's. Each CTA records its cluster rank; every
// thread writes a value to global memory (rank 1 after a ~50 us spin, so that a missing barrier shows), then
// barrier.cluster (arrive.release, wait.acquire); rank 0 reads its partner's values with ld.global.cg and counts
// mismatches; rank 1 returns.
//   nvcc -arch=sm_90a -o /tmp/pcp python/probe_cluster_pair.cu && /tmp/pcp
#include <cstdio>
#include <cuda_runtime.h>

__global__ void pair_exchange(float *ws, int *rank_out, int *bad)
{
    extern __shared__ float smem[];
    smem[threadIdx.x] = 1.0f;
    unsigned rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
    const int cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    if (threadIdx.x == 0) rank_out[cta] = (int)rank;
    if (blockIdx.y == 1) {
        const long long t0 = clock64();
        while (clock64() - t0 < 100000) {}
    }
    ws[(size_t)cta * blockDim.x + threadIdx.x] = 1000.0f * cta + threadIdx.x + smem[threadIdx.x];
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
    if (rank != 0) return;
    const int partner = blockIdx.x + gridDim.x * ((blockIdx.y ^ 1) + gridDim.y * blockIdx.z);
    const float v = __ldcg(ws + (size_t)partner * blockDim.x + threadIdx.x);
    if (v != 1000.0f * partner + threadIdx.x + 1.0f) atomicAdd(bad, 1);
}

int main()
{
    const dim3 grid(2, 2, 3), block(544);
    const size_t smem = 200 * 1024;
    float *ws; int *ranks, *bad;
    cudaMalloc(&ws, 12 * 544 * 4); cudaMalloc(&ranks, 12 * 4); cudaMalloc(&bad, 4);
    cudaFuncSetAttribute(pair_exchange, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    for (int clustered = 0; clustered < 2; clustered++) {
        cudaMemset(ws, 0, 12 * 544 * 4); cudaMemset(ranks, 0xff, 12 * 4); cudaMemset(bad, 0, 4);
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = 1, attr[0].val.clusterDim.y = clustered ? 2 : 1, attr[0].val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = 0;
        cfg.attrs = attr, cfg.numAttrs = 1;
        cudaError_t e = cudaLaunchKernelEx(&cfg, pair_exchange, ws, ranks, bad);
        if (e == cudaSuccess) e = cudaDeviceSynchronize();
        int r[12], nbad = -1;
        cudaMemcpy(r, ranks, sizeof r, cudaMemcpyDeviceToHost); cudaMemcpy(&nbad, bad, 4, cudaMemcpyDeviceToHost);
        printf("cluster (1,%d,1): %s; ranks by CTA (x fastest):", clustered ? 2 : 1, cudaGetErrorString(e));
        for (int i = 0; i < 12; i++) printf(" %d", r[i]);
        printf("; mismatched reads %d\n", nbad);
    }
    return 0;
}
