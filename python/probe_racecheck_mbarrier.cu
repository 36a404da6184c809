// probe_racecheck_mbarrier.cu -- does compute-sanitizer's racecheck see an mbarrier hand-off as synchronization?
// v9 hands its anchors (anch, fullreg) from the anchor warps to the consumers through plain shared stores and loads
// ordered by the qfull / qempty mbarriers (arrive, then try_wait.parity), double-buffered; racecheck flags those
// accesses (run 145) where its bar.sync-ordered accesses pass. This kernel is that protocol alone: warp 0 writes
// data[r & 1] for rounds r (waiting on empty[x] from the third round), arrives on full[x]; warp 1 waits on full[x],
// reads, arrives on empty[x]. Mode 0 is the protocol with every consumer lane arriving (empty counts 32); mode 2 is
// v9's form: __syncwarp, then lane 0 alone arrives (empty counts 1); mode 1 drops the consumer's wait (a real race;
// under racecheck it hung in run 145: the producer's parity wait lost track of the phases).
//   nvcc -arch=sm_90a -o /tmp/probe python/probe_racecheck_mbarrier.cu
//   compute-sanitizer --tool racecheck /tmp/probe 0; compute-sanitizer --tool racecheck /tmp/probe 2
#include <cstdint>
#include <cstdio>
#include <cstdlib>

__device__ __forceinline__ unsigned smem_u32(const void *p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_arrive(uint64_t *b)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, unsigned parity)
{
    asm volatile("{\n.reg .pred done;\nwait_%=:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra wait_%=;\n}\n" ::"r"(smem_u32(b)), "r"(parity) : "memory");
}

__global__ void handoff(int *out, int rounds, int mode)
{
    __shared__ uint64_t full[2], empty[2];
    __shared__ int data[2][32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (threadIdx.x == 0) {
        for (int x = 0; x < 2; x++) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 32;\n" ::"r"(smem_u32(full + x)) : "memory");
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(empty + x)), "r"(mode == 2 ? 1 : 32)
                         : "memory");
        }
    }
    __syncthreads();
    if (warp == 0) {
        for (int r = 0; r < rounds; r++) {
            const int x = r & 1;
            if (r >= 2) mbar_wait(empty + x, ((r >> 1) - 1) & 1);
            data[x][lane] = 100 * r + lane;
            mbar_arrive(full + x);
        }
    } else {
        int s = 0;
        for (int r = 0; r < rounds; r++) {
            const int x = r & 1;
            if (mode != 1) mbar_wait(full + x, (r >> 1) & 1);
            s += data[x][(lane + 1) & 31]; /* another lane's value: a cross-thread hand-off */
            if (mode == 2) {
                __syncwarp();
                if (lane == 0) mbar_arrive(empty + x);
            } else {
                mbar_arrive(empty + x);
            }
        }
        out[lane] = s;
    }
}

int main(int argc, char **argv)
{
    const int mode = argc > 1 ? atoi(argv[1]) : 0, rounds = 64;
    int *out = nullptr, host[32];
    if (cudaMalloc(&out, sizeof host) != cudaSuccess) return 1;
    handoff<<<1, 64>>>(out, rounds, mode);
    if (cudaGetLastError() != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) return 2;
    cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost);
    long want = 0;
    for (int r = 0; r < rounds; r++) want += 100 * r + 1;
    printf("mode %d: lane 0 sum %d (protocol's value %ld)\n", mode, host[0], want);
    cudaFree(out);
    return 0;
}
