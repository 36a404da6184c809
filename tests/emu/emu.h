// CPU lock-step emulator prelude for kernels/latent_decode.cu (force-included with -DPALU_EMULATE; driver:
// emu_main.cpp, runner: run.sh, what it is for: README.md).
// Every CUDA thread is a std::thread; CTA and warp barriers are std::barriers; warp collectives (ldmatrix,
// mma, movmatrix, shfl, vote) exchange operands through a per-warp table exactly as the PTX ISA defines the fragment
// layouts; cp.async copies are queued per thread and applied at wait_group (late, so a missing wait shows; EMU_EARLY
// applies them at issue to probe write-after-read hazards); TMA fills complete their mbarrier when a lane waits
// after all of the fill's bytes were issued, with the hardware's rules checked (expect_tx bytes, 128-byte
// destinations, swizzle atoms, 16-byte aligned box starts).
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>
#include <map>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <deque>
#include <mutex>
#include <cstdio>
#include "palu.h"

#undef __global__
#define __global__
#define __launch_bounds__(...)
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
#undef __shared__
#define __shared__
#undef __grid_constant__
#define __grid_constant__
using std::max;
using std::min;

// Emulated tensor map: what cuTensorMapEncodeTiled would encode, for dev::tma_load_*.
struct TmaMap {
    const char *base; uint64_t dims[3]; uint64_t strides[2]; uint32_t box[3]; int rank, esize, swz;
    char pad[64];
};
inline bool emu_encode_map(TmaMap *m, CUtensorMapDataType dt, cuuint32_t rank, const void *base, const cuuint64_t *dims,
                           const cuuint64_t *strides, const cuuint32_t *box, const cuuint32_t *, CUtensorMapSwizzle sw) {
    memset(m, 0, sizeof *m);
    m->base = (const char *)base; m->rank = (int)rank;
    m->esize = dt == CU_TENSOR_MAP_DATA_TYPE_INT32 ? 4 : 2;
    m->swz = sw == CU_TENSOR_MAP_SWIZZLE_128B ? 128 : sw == CU_TENSOR_MAP_SWIZZLE_64B ? 64 : 0;
    if ((uintptr_t)base & 15) return false;
    for (cuuint32_t i = 0; i < rank; i++) { m->dims[i] = dims[i]; m->box[i] = box[i]; }
    for (cuuint32_t i = 0; i + 1 < rank; i++) { if (strides[i] % 16) return false; m->strides[i] = strides[i]; }
    if ((box[0] * m->esize) % 16 || (m->swz && box[0] * m->esize > (uint32_t)m->swz)) return false;
    return true;
}

extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;
// each emulated CTA's dynamic shared memory (the CTAs of a cluster run at once, each thread sees its own CTA's)
extern thread_local char *emu_smem;
namespace dev { inline char *dyn_smem() { return emu_smem; } }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }

struct EmuWarp {
    std::unique_ptr<std::barrier<>> bar;
    uint64_t slot[32][8];
    std::mutex mu;                                                   // guards `masked`
    std::map<uint32_t, std::unique_ptr<std::barrier<>>> masked;      // barriers of partial-warp collectives, by mask
};
struct EmuCta {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<EmuWarp>> warps;
    std::mutex mu;                                                   // guards `named`
    std::map<int, std::unique_ptr<std::barrier<>>> named;            // bar.sync id, n (ids >= 1), made at first use
};
extern thread_local EmuCta *emu_cta;
// a thread-block cluster (clusters along y, as the pair launch makes them): its CTAs run at once, and
// barrier.cluster is a barrier of all their threads
struct EmuCluster {
    std::unique_ptr<std::barrier<>> bar;
};
extern thread_local EmuCluster *emu_cluster;
extern thread_local unsigned emu_cluster_rank;
extern bool emu_async_early; // apply cp.async at issue (WAR probing) instead of at wait

namespace dev {
inline int lane_id() { return threadIdx.x & 31; }
inline int warp_id() { return threadIdx.x >> 5; }
inline EmuWarp &W() { return *emu_cta->warps[warp_id()]; }
inline void sync_cta() { emu_cta->bar->arrive_and_wait(); }
inline void sync_warp() { W().bar->arrive_and_wait(); }
template <typename F> inline void exchange(uint64_t *mine, int n, F f) {
    EmuWarp &w = W();
    memcpy(w.slot[lane_id()], mine, n * 8);
    w.bar->arrive_and_wait();
    f(w);
    w.bar->arrive_and_wait();
}
// a collective over the lanes of `mask` only (quad shuffles of v9's exact-score path): its own barrier per mask
template <typename F> inline void exchange_masked(uint32_t mask, uint64_t *mine, int n, F f) {
    if (mask == 0xffffffffu) { exchange(mine, n, f); return; }
    EmuWarp &w = W();
    std::barrier<> *b;
    {
        std::lock_guard<std::mutex> lk(w.mu);
        auto &slot = w.masked[mask];
        if (!slot) slot = std::make_unique<std::barrier<>>(__builtin_popcount(mask));
        b = slot.get();
    }
    memcpy(w.slot[lane_id()], mine, n * 8);
    b->arrive_and_wait();
    f(w);
    b->arrive_and_wait();
}
inline float shfl(float v, int src) {
    uint64_t m = 0; memcpy(&m, &v, 4); float r;
    exchange(&m, 1, [&](EmuWarp &w) { memcpy(&r, &w.slot[src & 31][0], 4); });
    return r;
}
inline int shfl_int(int v, int src) { float f; memcpy(&f, &v, 4); f = shfl(f, src); int r; memcpy(&r, &f, 4); return r; }
inline float shfl_xor(float v, int m) { return shfl(v, lane_id() ^ m); }
inline bool all_lanes(bool pred) {
    uint64_t m = pred; bool r = true;
    exchange(&m, 1, [&](EmuWarp &w) { for (int l = 0; l < 32; l++) r = r && w.slot[l][0]; });
    return r;
}
inline void cluster_sync() { emu_cluster->bar->arrive_and_wait(); }
inline unsigned cluster_ctarank() { return emu_cluster_rank; }
inline float ld_cg(const float *p) { return *p; }
inline void grid_dependency_wait() {}
inline void launch_dependents() {}
inline float ex2(float x) { return exp2f(x); }
inline void sincos_turn(float x, float *s, float *c) { *s = sinf(x); *c = cosf(x); }

struct Pending { void *dst; const void *src; int n; bool valid; };
extern thread_local std::deque<std::vector<Pending>> emu_groups;
extern thread_local std::vector<Pending> emu_open;
inline void apply(const Pending &p) { if (p.valid) memcpy(p.dst, p.src, p.n); else memset(p.dst, 0, p.n); }
inline void cp_async16(void *dst, const void *src, bool valid) {
    if (((uintptr_t)dst & 15) || (valid && ((uintptr_t)src & 15))) { fprintf(stderr, "cp_async16 misaligned\n"); abort(); }
    Pending p{dst, src, 16, valid};
    if (emu_async_early) apply(p); else emu_open.push_back(p);
}
inline void cp_async4(void *dst, const void *src, bool valid) {
    Pending p{dst, src, 4, valid};
    if (emu_async_early) apply(p); else emu_open.push_back(p);
}
inline void cp_async_commit() { emu_groups.push_back(emu_open); emu_open.clear(); }
template <int N> inline void cp_async_wait() {
    while ((int)emu_groups.size() > N) { for (auto &p : emu_groups.front()) apply(p); emu_groups.pop_front(); }
}
inline void ldsm_common(uint32_t (&r)[4], const void *p, bool trans) {
    if ((uintptr_t)p & 15) { fprintf(stderr, "ldmatrix row misaligned\n"); abort(); }
    uint64_t m = (uint64_t)(uintptr_t)p;
    int lane = lane_id();
    exchange(&m, 1, [&](EmuWarp &w) {
        for (int k = 0; k < 4; k++) {
            if (!trans) {
                const uint16_t *row = (const uint16_t *)(uintptr_t)w.slot[8 * k + lane / 4][0];
                r[k] = row[2 * (lane % 4)] | ((uint32_t)row[2 * (lane % 4) + 1] << 16);
            } else {
                const uint16_t *r0 = (const uint16_t *)(uintptr_t)w.slot[8 * k + 2 * (lane % 4)][0];
                const uint16_t *r1 = (const uint16_t *)(uintptr_t)w.slot[8 * k + 2 * (lane % 4) + 1][0];
                r[k] = r0[lane / 4] | ((uint32_t)r1[lane / 4] << 16);
            }
        }
    });
}
inline uint32_t movm_trans(uint32_t a) { // PTX movmatrix.m8n8.trans.b16
    uint64_t m = a; uint32_t r = 0; int lane = lane_id();
    exchange(&m, 1, [&](EmuWarp &w) {
        for (int i = 0; i < 2; i++) { // out (row lane/4, col 2(lane%4)+i) = in (row 2(lane%4)+i, col lane/4)
            int row = 2 * (lane % 4) + i, col = lane / 4;
            uint32_t v = (uint32_t)w.slot[row * 4 + col / 2][0];
            uint32_t h = col % 2 ? v >> 16 : v & 0xffff;
            r |= h << (16 * i);
        }
    });
    return r;
}
inline void ldsm_x4(uint32_t (&r)[4], const void *p) { ldsm_common(r, p, false); }
inline void ldsm_x4_trans(uint32_t (&r)[4], const void *p) { ldsm_common(r, p, true); }
template <typename T> inline float h2f(uint16_t u) { T t; memcpy(&t, &u, 2); return (float)t; }
template <typename T> inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    uint64_t m[6] = {a[0], a[1], a[2], a[3], b0, b1};
    int lane = lane_id(), g = lane / 4, c = lane % 4;
    float out[4];
    exchange(m, 6, [&](EmuWarp &w) {
        auto A = [&](int row, int k) { // PTX m16n8k16 A fragment
            int l = (row % 8) * 4 + (k % 8) / 2, reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
            uint32_t v = (uint32_t)w.slot[l][reg];
            return h2f<T>((uint16_t)(k % 2 ? v >> 16 : v & 0xffff));
        };
        auto B = [&](int k, int n) {
            int l = n * 4 + (k % 8) / 2, reg = 4 + (k >= 8 ? 1 : 0);
            uint32_t v = (uint32_t)w.slot[l][reg];
            return h2f<T>((uint16_t)(k % 2 ? v >> 16 : v & 0xffff));
        };
        for (int i = 0; i < 4; i++) {
            int row = g + (i >= 2 ? 8 : 0), col = 2 * c + (i % 2);
            double acc = d[i];
            for (int k = 0; k < 16; k++) acc += (double)A(row, k) * (double)B(k, col);
            out[i] = (float)acc;
        }
    });
    for (int i = 0; i < 4; i++) d[i] = out[i];
}
// a shared-window address, as on the hardware: the byte offset from the dynamic shared memory's base (wgmma
// descriptors hold 14 bits of it >> 4; alignment arithmetic on it works as on a GPU, the base being 1024-aligned)
// In a cluster launch the hardware's shared address also carries the CTA's rank in the cluster from bit 24 (the
// compiler forms the dynamic shared memory's address as rank << 24 | offset; SASS of the pair launch's v10): code
// that packs an address into a narrower field must mask it (a wgmma descriptor's 14 bits)
inline unsigned smem_u32(const void *p) { return (emu_cluster_rank << 24) | (unsigned)((const char *)p - emu_smem); }
// mbarriers and TMA, the hardware's phase rule: a phase completes once it has had `count` arrivals (plain arrives,
// arrive.expect_tx, cp.async arrive-on) and every byte of transaction it expects has been issued; TMA boxes land on
// it late, when some lane waits on the barrier (so a missing wait shows), or at an arrive that completes it.
// try_wait.parity(P) returns once the completed-phase count's parity differs from P, as on the hardware.
// the map is copied: it is a kernel parameter in the issuing thread's frame, and that thread may exit (v9's copy
// warp does) before the box lands
struct EmuTmaCopy { void *dst; TmaMap map; int c[3]; };
struct EmuBar { int count = 1, arrivals = 0, completed = 0; uint32_t expect = 0, issued = 0; std::vector<EmuTmaCopy> copies; };
extern std::mutex emu_bar_mu;
extern std::map<const void *, EmuBar> emu_bars;
inline void tma_apply(const EmuTmaCopy &c);
inline EmuBar &bar_of(uint64_t *bar) {
    auto it = emu_bars.find(bar);
    if (it == emu_bars.end()) { fprintf(stderr, "mbarrier used before init\n"); abort(); }
    return it->second;
}
inline void bar_try_complete(EmuBar &b) { // under emu_bar_mu
    if (b.issued > b.expect) { fprintf(stderr, "TMA bytes exceed expect_tx\n"); abort(); }
    if (b.arrivals > b.count) { fprintf(stderr, "mbarrier phase over-arrived\n"); abort(); }
    if (b.arrivals < b.count || b.issued != b.expect) return;
    for (auto &c : b.copies) tma_apply(c);
    b.copies.clear(); b.arrivals = 0; b.expect = b.issued = 0; b.completed++;
}
inline void mbar_init(uint64_t *bar, int count = 1) {
    std::lock_guard<std::mutex> lk(emu_bar_mu); emu_bars[bar] = EmuBar(); emu_bars[bar].count = count;
}
inline void mbar_init_fence() {}
inline void mbar_expect(uint64_t *bar, uint32_t bytes) { // arrive.expect_tx: the phase waits for `bytes` more
    std::lock_guard<std::mutex> lk(emu_bar_mu);
    EmuBar &b = bar_of(bar);
    b.expect += bytes; b.arrivals++;
    if (bytes == 0) bar_try_complete(b);
}
inline void mbar_arrive_n(uint64_t *bar, uint32_t n) {
    std::lock_guard<std::mutex> lk(emu_bar_mu);
    EmuBar &b = bar_of(bar);
    b.arrivals += (int)n;
    if (b.copies.empty()) bar_try_complete(b); // (with boxes in flight it completes at a wait: they land late)
}
inline void mbar_arrive(uint64_t *bar) { mbar_arrive_n(bar, 1); }
inline void tma_issue(void *dst, const void *map, int c0, int c1, int c2, uint64_t *bar) {
    const TmaMap *m = (const TmaMap *)map;
    std::lock_guard<std::mutex> lk(emu_bar_mu);
    EmuBar &b = bar_of(bar);
    if (b.expect == 0) { fprintf(stderr, "TMA without expect_tx\n"); abort(); }
    uint32_t bytes = m->esize; for (int i = 0; i < m->rank; i++) bytes *= m->box[i];
    if (m->swz && ((uintptr_t)dst & (m->swz == 128 ? 1023 : 511))) { fprintf(stderr, "TMA box not on a swizzle atom\n"); abort(); }
    if ((uintptr_t)dst & 127) { fprintf(stderr, "TMA destination not on 128 bytes\n"); abort(); }
    {   // the box's first global byte must be 16-byte aligned (hardware: illegal instruction otherwise)
        uint64_t a = (uint64_t)(uintptr_t)m->base + (uint64_t)c0 * m->esize;
        if (m->rank >= 2) a += (uint64_t)c1 * m->strides[0];
        if (m->rank == 3) a += (uint64_t)c2 * m->strides[1];
        if (a & 15) { fprintf(stderr, "TMA box start not 16-byte aligned\n"); abort(); }
    }
    static bool said = false;
    if (!said && getenv("EMU_TRACE")) { said = true; fprintf(stderr, "TMA path taken\n"); }
    b.copies.push_back({dst, *m, {c0, c1, c2}}); b.issued += bytes;
    if (emu_async_early) tma_apply(b.copies.back()); // EMU_EARLY: the box lands at issue (write-after-read probing;
                                                     // it lands again, unchanged, when the phase completes)
}
inline void tma_apply(const EmuTmaCopy &c) { // (under emu_bar_mu)
    const TmaMap *m = &c.map;
    const uint32_t rowb = m->box[0] * m->esize, rows = m->rank >= 2 ? m->box[1] : 1;
    for (uint32_t r = 0; r < rows; r++)
        for (uint32_t e = 0; e < m->box[0]; e++) {
            const uint64_t col = (uint64_t)c.c[0] + e, row = (uint64_t)c.c[1] + r, bb = m->rank == 3 ? (uint64_t)c.c[2] : (uint64_t)c.c[1];
            bool in = col < m->dims[0];
            const char *src = m->base + col * m->esize;
            if (m->rank == 3) { in = in && row < m->dims[1] && bb < m->dims[2]; src += row * m->strides[0] + bb * m->strides[1]; }
            if (m->rank == 2) { in = in && (uint64_t)c.c[1] < m->dims[1]; src += (uint64_t)c.c[1] * m->strides[0]; }
            uint32_t o = r * rowb + e * m->esize;
            if (m->swz == 128) o ^= ((o >> 7) & 7) << 4;
            if (m->swz == 64) o ^= ((o >> 7) & 3) << 4;
            char *d = (char *)c.dst + o;
            if (in) memcpy(d, src, m->esize); else memset(d, 0, m->esize);
        }
}
inline void tma_load_3d(void *dst, const void *map, int c0, int c1, int c2, uint64_t *bar) { tma_issue(dst, map, c0, c1, c2, bar); }
// EMU_SLOW_WARPS=lo-hi: warps lo..hi of every CTA sleep EMU_SLOW_US microseconds (default 20000, longer than an
// emulated step) before each mbarrier wait, so that the others run ahead of them: a protocol that only holds while
// the warps keep pace (v9's parity wait on a stage shared by two warpgroups) then breaks in the emulator too
inline bool emu_slow_warp() {
    static const int lo = getenv("EMU_SLOW_WARPS") ? atoi(getenv("EMU_SLOW_WARPS")) : -1;
    static const int hi = getenv("EMU_SLOW_WARPS") && strchr(getenv("EMU_SLOW_WARPS"), '-')
                              ? atoi(strchr(getenv("EMU_SLOW_WARPS"), '-') + 1) : lo;
    const int w = (int)(threadIdx.x >> 5);
    return lo >= 0 && w >= lo && w <= hi;
}
inline void mbar_wait(uint64_t *bar, uint32_t parity) {
    static const int slow_us = getenv("EMU_SLOW_US") ? atoi(getenv("EMU_SLOW_US")) : 20000;
    if (emu_slow_warp()) std::this_thread::sleep_for(std::chrono::microseconds(slow_us));
    // a phase that never completes is a protocol bug (a lost arrival, two fills in one phase): say so, do not hang
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(getenv("EMU_WAIT_S") ? atoi(getenv("EMU_WAIT_S")) : 120);
    for (;;) {
        if (std::chrono::steady_clock::now() > deadline) {
            fprintf(stderr, "mbarrier wait timed out (barrier at shared byte %u, thread %u of CTA %u,%u,%u, parity %u): a deadlock\n", smem_u32(bar), threadIdx.x,
                    blockIdx.x, blockIdx.y, blockIdx.z, parity);
            if (getenv("EMU_DUMP_BARS")) { // every barrier's state (all CTAs in flight share one map)
                std::lock_guard<std::mutex> lk(emu_bar_mu);
                for (auto &kv : emu_bars)
                    fprintf(stderr, "  bar %p: count %d arrivals %d completed %d expect %u issued %u copies %zu\n", kv.first,
                            kv.second.count, kv.second.arrivals, kv.second.completed, kv.second.expect, kv.second.issued,
                            kv.second.copies.size());
            }
            abort();
        }
        {
            std::lock_guard<std::mutex> lk(emu_bar_mu);
            EmuBar &b = bar_of(bar);
            // the hardware answers from the barrier's state alone: a wait whose parity is already that of a completed
            // phase returns at once and lands nothing, even with a later phase's boxes in flight (so a wait for phase
            // k while phase k - 1 is still open passes, the blind spot of a parity wait: v9's fault, notes)
            if ((uint32_t)(b.completed & 1) != parity) return;
            bar_try_complete(b);
            if ((uint32_t)(b.completed & 1) != parity) return;
        }
        std::this_thread::yield();
    }
}
// cp.async.mbarrier.arrive.noinc: an arrival once this thread's earlier copies landed (applied here, then arrive)
inline void cp_async_mbar_arrive(uint64_t *bar) {
    for (auto &p : emu_open) apply(p);
    emu_open.clear();
    while (!emu_groups.empty()) { for (auto &p : emu_groups.front()) apply(p); emu_groups.pop_front(); }
    mbar_arrive(bar);
}
inline uint32_t half2_satfinite(float lo, float hi) { // cvt.rn.satfinite.f16x2.f32
    auto one = [](float f) {
        __half h = __float2half_rn(std::isnan(f) ? f : std::max(-65504.0f, std::min(65504.0f, f)));
        uint16_t u; memcpy(&u, &h, 2); return (uint32_t)u;
    };
    return one(lo) | (one(hi) << 16);
}

// bar.sync id, n: a barrier of n threads per id, made at the first use in this CTA
inline void bar_named_n(int id, int n) {
    std::barrier<> *b;
    {
        std::lock_guard<std::mutex> lk(emu_cta->mu);
        auto &slot = emu_cta->named[id];
        if (!slot) slot = std::make_unique<std::barrier<>>(n);
        b = slot.get();
    }
    b->arrive_and_wait();
}
inline void bar_wg(int id) { bar_named_n(id, 128); }

// ---- wgmma (m64nNk16, A and B from shared memory through their descriptors) ----
// Each thread computes its own accumulator elements (rows 16 (warp % 4) + lane / 4 (+ 8), columns 8 i + 2 (lane % 4)
// (+ 1): the PTX fragment layout of D) from the operands in shared memory. The operands are read when the group is
// waited for, not when it is issued (late, as cp.async: a stage refilled or an image rewritten before the wait
// shows), and the accumulators are written then.
inline uint64_t wgmma_desc(const void *p, uint32_t lbo, uint32_t sbo) {
    const uint32_t a = smem_u32(p);
    return (uint64_t)((a & 0x3FFFFu) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFFu) << 16) | ((uint64_t)((sbo >> 4) & 0x3FFFu) << 32);
}
// the shared-memory byte of element (row, k) of a K-major operand: no swizzle (core matrices of 8 rows x 16 bytes,
// LBO between K-adjacent ones, SBO between 8-row groups) or the 128-byte swizzle (rows of 128 bytes, 8-row atoms
// SBO apart, 16-byte chunks XOR the row within the atom)
inline const char *wgmma_elem(uint64_t desc, int row, int k) {
    const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4, lbo = (uint32_t)((desc >> 16) & 0x3FFF) << 4;
    const uint32_t sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4, layout = (uint32_t)(desc >> 62);
    uint32_t a;
    if (layout == 0) {
        a = start + (row >> 3) * sbo + (k >> 3) * lbo + (row & 7) * 16 + (k & 7) * 2;
    } else if (layout == 1) {
        a = start + (row >> 3) * sbo + (row & 7) * 128 + k * 2;
        a ^= ((a >> 7) & 7) << 4;
    } else {
        fprintf(stderr, "wgmma descriptor layout %u not modelled\n", layout); abort();
    }
    if (a >= 256 * 1024) { fprintf(stderr, "wgmma operand outside shared memory\n"); abort(); }
    return emu_smem + a;
}
struct EmuWgmma { float *d; int n; uint64_t da, db; int scale_d; bool bf16; uint32_t *dh = nullptr; };
extern thread_local std::deque<std::vector<EmuWgmma>> emu_wg_groups;
extern thread_local std::vector<EmuWgmma> emu_wg_open;
inline void wgmma_apply(const EmuWgmma &op) {
    const int lane = lane_id(), w = warp_id() & 3, g = lane / 4, c = lane % 4;
    auto val = [&](const char *p) {
        uint16_t u; memcpy(&u, p, 2);
        return op.bf16 ? (double)h2f<__nv_bfloat16>(u) : (double)h2f<__half>(u);
    };
    for (int i = 0; i < op.n / 8; i++)
        for (int e = 0; e < 4; e++) {
            const int row = 16 * w + g + 8 * (e >> 1), col = 8 * i + 2 * c + (e & 1);
            double dot = 0.0;
            for (int k = 0; k < 16; k++) dot += val(wgmma_elem(op.da, row, k)) * val(wgmma_elem(op.db, col, k));
            if (op.dh) { /* fp16 accumulators: register 2 i + (e >> 1) holds columns 2 c, 2 c + 1 (low half first) */
                uint32_t &reg = op.dh[2 * i + (e >> 1)];
                const int sh = 16 * (e & 1);
                const double acc = (op.scale_d ? (double)h2f<__half>((uint16_t)(reg >> sh)) : 0.0) + dot;
                const __half hh = __float2half_rn((float)acc); /* one rounding per k16 step */
                uint16_t hv;
                memcpy(&hv, &hh, 2);
                reg = (reg & ~(0xFFFFu << sh)) | ((uint32_t)hv << sh);
            } else {
                op.d[4 * i + e] = (float)((op.scale_d ? op.d[4 * i + e] : 0.0) + dot);
            }
        }
}
inline void wgmma_fence() {}
inline void wgmma_commit() { emu_wg_groups.push_back(emu_wg_open); emu_wg_open.clear(); }
// wgmma.wait_group is .sync.aligned: the warp's lanes leave it together, so once one lane is past it the whole
// warp's part of the MMA has read its operands (a lane may then release them for the warp, as v10 does)
template <int N> inline void wgmma_wait() {
    while ((int)emu_wg_groups.size() > N) { for (auto &op : emu_wg_groups.front()) wgmma_apply(op); emu_wg_groups.pop_front(); }
    sync_warp();
}
inline void wgmma_wait0() { wgmma_wait<0>(); }
inline void fence_reg(float &) {}
inline void fence_reg(uint32_t &) {}
inline void fence_proxy_async() {}
template <typename T, int N> inline void wgmma_k16(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
    emu_wg_open.push_back({d, N, da, db, scale_d, std::is_same<T, __nv_bfloat16>::value});
}
inline void wgmma_k16_f16acc64(uint32_t (&d)[16], uint64_t da, uint64_t db, int scale_d) {
    emu_wg_open.push_back({nullptr, 64, da, db, scale_d, false, d});
}
} // namespace dev

// the warp intrinsics the kernels call directly (full-warp masks, and v9's quad masks)
inline void __syncwarp(unsigned = 0xffffffffu) { dev::sync_warp(); }
inline void __syncthreads() { dev::sync_cta(); }
inline int __shfl_sync(unsigned mask, int v, int src) {
    uint64_t m = (uint32_t)v; int r = 0;
    dev::exchange_masked(mask, &m, 1, [&](EmuWarp &w) { r = (int)(uint32_t)w.slot[src & 31][0]; });
    return r;
}
inline float __shfl_sync(unsigned mask, float v, int src) {
    int i; memcpy(&i, &v, 4); i = __shfl_sync(mask, i, src); float f; memcpy(&f, &i, 4); return f;
}
inline float __shfl_xor_sync(unsigned mask, float v, int m) { return __shfl_sync(mask, v, dev::lane_id() ^ m); }
inline int __all_sync(unsigned mask, int pred) {
    uint64_t m = pred != 0; int r = 1;
    dev::exchange_masked(mask, &m, 1, [&](EmuWarp &w) { for (int l = 0; l < 32; l++) if ((mask >> l) & 1) r = r && w.slot[l][0]; });
    return r;
}
inline int __any_sync(unsigned mask, int pred) {
    uint64_t m = pred != 0; int r = 0;
    dev::exchange_masked(mask, &m, 1, [&](EmuWarp &w) { for (int l = 0; l < 32; l++) if ((mask >> l) & 1) r = r || w.slot[l][0]; });
    return r;
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    const float2 fa = __half22float2(a), fb = __half22float2(b), fc = __half22float2(c);
    return __floats2half2_rn((float)((double)fa.x * fb.x + fc.x), (float)((double)fa.y * fb.y + fc.y));
}
#define PALU_CUDA_CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) return palu_fail(PALU_ERR_CUDA, "%s", #call); } while (0)
#define PALU_CUDA_CHECK_LAUNCH() PALU_CUDA_CHECK(cudaGetLastError())

void emu_run(std::function<void()> body, dim3 grid, dim3 block, size_t smem, unsigned cluster_y = 1);
// the kernel's arguments are captured by copy: every emulated thread calls it with its own copies, as a launch would
#define PALU_EMU_LAUNCH(kernel, grid, block, smem, stream, ...) \
    do { (void)(stream); emu_run([=]() { kernel(__VA_ARGS__); }, (grid), (block), (smem)); } while (0)
// a launch in clusters of cluster_y CTAs along y (their CTAs run at once)
#define PALU_EMU_LAUNCH_CLUSTER(kernel, grid, block, smem, stream, cluster_y, ...) \
    do { (void)(stream); emu_run([=]() { kernel(__VA_ARGS__); }, (grid), (block), (smem), (cluster_y)); } while (0)
template <typename F> inline cudaError_t cudaFuncSetAttribute(F *, cudaFuncAttribute, int) { return cudaSuccess; }
// last, after every standard header (libstdc++ spells the attribute __noinline__ itself)
#define __noinline__ __attribute__((noinline))
