// Driver: random decode cases through the real launcher (kernels/latent_decode.cu compiled with -DPALU_EMULATE),
// checked against an independent double-precision reference of z.
#include "emu.h"
#include "latent_decode.cuh"
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;
constexpr size_t kEmuSmem = 256 * 1024;
thread_local char *emu_smem;
std::mutex dev::emu_bar_mu;
std::map<const void *, dev::EmuBar> dev::emu_bars;
thread_local EmuCta *emu_cta;
thread_local EmuCluster *emu_cluster;
thread_local unsigned emu_cluster_rank;
bool emu_async_early = false;
namespace dev {
thread_local std::deque<std::vector<Pending>> emu_groups;
thread_local std::vector<Pending> emu_open;
thread_local std::deque<std::vector<EmuWgmma>> emu_wg_groups;
thread_local std::vector<EmuWgmma> emu_wg_open;
}
static int g_smem_optin = 227 * 1024;

extern "C" {
cudaError_t cudaGetDevice(int *d) { *d = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int) {
    *v = a == cudaDevAttrMultiProcessorCount ? (getenv("EMU_SMS") ? atoi(getenv("EMU_SMS")) : 4) : a == cudaDevAttrComputeCapabilityMajor ? (getenv("EMU_CC") ? atoi(getenv("EMU_CC")) : 9)
       : a == cudaDevAttrComputeCapabilityMinor ? 0 : g_smem_optin; return cudaSuccess; }
cudaError_t cudaLaunchKernelExC(const cudaLaunchConfig_t *, const void *, void **) { abort(); }
cudaError_t cudaFuncSetAttribute(const void *, cudaFuncAttribute, int) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus *s) { *s = cudaStreamCaptureStatusNone; return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t) { return "emulated"; }
}

void emu_run(std::function<void()> body, dim3 grid, dim3 block, size_t smem, unsigned cluster_y) {
    if (smem > kEmuSmem) { fprintf(stderr, "smem %zu too large\n", smem); abort(); }
    if (cluster_y < 1 || grid.y % cluster_y) { fprintf(stderr, "grid.y %u is not a multiple of the cluster %u\n", grid.y, cluster_y); abort(); }
    // one cluster at a time (a plain launch: clusters of one CTA); its CTAs run at once, each on its own shared memory
    std::vector<char *> smems(cluster_y);
    for (auto &m : smems) m = static_cast<char *>(aligned_alloc(1024, kEmuSmem));
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y0 = 0; y0 < grid.y; y0 += cluster_y)
            for (unsigned x = 0; x < grid.x; x++) {
                EmuCluster cluster;
                cluster.bar = std::make_unique<std::barrier<>>(block.x * cluster_y);
                std::vector<std::unique_ptr<EmuCta>> ctas;
                for (unsigned r = 0; r < cluster_y; r++) {
                    memset(smems[r], 0xA5, smem); // garbage, like real shared memory
                    ctas.push_back(std::make_unique<EmuCta>());
                    EmuCta &cta = *ctas.back();
                    cta.bar = std::make_unique<std::barrier<>>(block.x);
                    for (unsigned w = 0; w < (block.x + 31) / 32; w++) {
                        cta.warps.push_back(std::make_unique<EmuWarp>());
                        cta.warps.back()->bar = std::make_unique<std::barrier<>>(32);
                    }
                }
                std::vector<std::thread> th;
                for (unsigned r = 0; r < cluster_y; r++)
                    for (unsigned t = 0; t < block.x; t++)
                        th.emplace_back([&, r, t, x, y = y0 + r, z]() {
                            threadIdx = make_uint3(t, 0, 0); blockIdx = make_uint3(x, y, z);
                            blockDim = block; gridDim = grid;
                            emu_cta = ctas[r].get(), emu_smem = smems[r];
                            emu_cluster = &cluster, emu_cluster_rank = r;
                            dev::emu_groups.clear(); dev::emu_open.clear();
                            dev::emu_wg_groups.clear(); dev::emu_wg_open.clear();
                            body();
                            if (!dev::emu_open.empty() || !dev::emu_groups.empty()) { fprintf(stderr, "cp.async left pending\n"); abort(); }
                            if (!dev::emu_wg_open.empty() || !dev::emu_wg_groups.empty()) { fprintf(stderr, "wgmma left pending\n"); abort(); }
                        });
                for (auto &t : th) t.join();
            }
    for (auto m : smems) free(m);
}

template <typename T> static uint16_t bits(float f) { T t = T(f); uint16_t u; memcpy(&u, &t, 2); return u; }
template <typename T> static float val(uint16_t u) { T t; memcpy(&t, &u, 2); return (float)t; }

int main(int argc, char **argv) {
    // args: dtype(16|b16) impl B H Hkv D G T C consec bias seed ranks_k... -- ranks_v...
    if (argc < 13) { fprintf(stderr, "usage\n"); return 2; }
    const bool bf = std::string(argv[1]) == "bf16";
    int impl = atoi(argv[2]), B = atoi(argv[3]), H = atoi(argv[4]), Hkv = atoi(argv[5]), D = atoi(argv[6]);
    int G = atoi(argv[7]), T = atoi(argv[8]), C = atoi(argv[9]), consec = atoi(argv[10]), use_bias = atoi(argv[11]);
    unsigned seed = atoi(argv[12]);
    if (getenv("EMU_EARLY")) emu_async_early = true;
    if (getenv("EMU_SMEM")) g_smem_optin = atoi(getenv("EMU_SMEM"));
    std::vector<int64_t> kr, vr;
    int i = 13;
    for (; i < argc && std::string(argv[i]) != "--"; i++) kr.push_back(atoi(argv[i]));
    for (i++; i < argc; i++) vr.push_back(atoi(argv[i]));
    const int NG = Hkv / G, n_rep = H / Hkv;
    int64_t Rk = 0, Rv = 0; for (int g = 0; g < NG; g++) Rk += kr[g], Rv += vr[g];
    std::mt19937 gen(seed);
    std::normal_distribution<float> N(0, 1);
    std::uniform_int_distribution<int> U(0, 1 << 20);
    auto conv = [&](float f) { return bf ? bits<__nv_bfloat16>(f) : bits<__half>(f); };
    auto back = [&](uint16_t u) { return bf ? val<__nv_bfloat16>(u) : val<__half>(u); };
    std::vector<uint16_t> q(B * H * D), kl((size_t)B * C * Rk), vl((size_t)B * C * Rv), kup;
    const float qs = getenv("EMU_QSCALE") ? atof(getenv("EMU_QSCALE")) : 1.f;
    for (auto &x : q) x = conv(qs * N(gen));
    for (auto &x : kl) x = conv(N(gen));
    for (auto &x : vl) x = conv(N(gen));
    for (int g = 0; g < NG; g++) for (int e = 0; e < G * D * kr[g]; e++) kup.push_back(conv(N(gen) / sqrtf((float)kr[g])));
    // EMU_IB=1: every group's k_up in the interpolative basis (latent_decode.cuh, k_pairs): rk/2 random RoPE pairs,
    // as many from each head, head after head in latent order (random within a head), get the unit rows; k_pairs lists the other pairs ascending, then those. The reference
    // below reads the dense k_up as always.
    std::vector<int32_t> kpairs;
    if (getenv("EMU_IB")) {
        int64_t off = 0;
        for (int g = 0; g < NG; g++) {
            const int half = D / 2, ns = kr[g] / 2; // as many stored pairs from each head, head after head
            std::vector<int32_t> stored, rebuilt;
            for (int j = 0; j < G; j++) {
                std::vector<int32_t> perm(half);
                for (int k = 0; k < half; k++) perm[k] = j * half + k;
                std::shuffle(perm.begin(), perm.end(), gen);
                stored.insert(stored.end(), perm.begin(), perm.begin() + ns / G);
                rebuilt.insert(rebuilt.end(), perm.begin() + ns / G, perm.end());
            }
            std::sort(rebuilt.begin(), rebuilt.end());
            for (int i = 0; i < ns; i++) {
                const int j = stored[i] / (D / 2), f = stored[i] % (D / 2);
                for (int half = 0; half < 2; half++) {
                    uint16_t *row = kup.data() + off + (size_t)(j * D + f + half * D / 2) * kr[g];
                    for (int r = 0; r < kr[g]; r++) row[r] = conv(r == i + half * ns ? 1.f : 0.f);
                }
            }
            kpairs.insert(kpairs.end(), rebuilt.begin(), rebuilt.end());
            kpairs.insert(kpairs.end(), stored.begin(), stored.end());
            off += (int64_t)G * D * kr[g];
        }
    }
    std::vector<int32_t> pos((size_t)B * C), pad(B);
    for (int b = 0; b < B; b++) {
        pad[b] = T > 1 ? U(gen) % std::min(T, 40) : 0;
        if (b == 0) pad[b] = 0;
        int base = consec >= 2 ? 100000 + U(gen) % 1000 : 0;
        for (int t = 0; t < C; t++) pos[(size_t)b * C + t] = consec ? (t < pad[b] ? 1 : base + t - pad[b]) : U(gen) % 200000;
        if (consec == 3) for (int t = 0; t < C; t++) { int &x = pos[(size_t)b * C + t];
            if (t >= C / 3) x += 7919; if (t >= C / 2 && t < C / 2 + 40) x = U(gen) % 200000; if (t >= 2 * C / 3) x = std::max(0, x - 3000); }
    }
    std::vector<float> inv(D / 2), bias(Hkv * D);
    for (int k = 0; k < D / 2; k++) inv[k] = powf(10000.f, -2.0f * k / D);
    for (auto &x : bias) x = use_bias ? 0.5f * N(gen) : 0.f;
    const float scaling = 1.0f / sqrtf((float)D), att = 1.1f;
    const int64_t Z = (int64_t)n_rep * G * Rv;
    std::vector<float> out(B * Z, NAN);

    palu_latent_decode_args a; memset(&a, 0, sizeof a);
    a.batch = B, a.heads = H, a.kv_heads = Hkv, a.head_dim = D, a.group_size = G, a.length = T, a.n_groups = NG;
    a.k_ranks = kr.data(), a.v_ranks = vr.data(), a.dtype = bf ? PALU_DTYPE_BF16 : PALU_DTYPE_F16, a.impl = impl;
    a.q = q.data(), a.k_latent = kl.data(), a.k_batch_stride = C * Rk, a.k_token_stride = Rk;
    a.v_latent = vl.data(), a.v_batch_stride = C * Rv, a.v_token_stride = Rv;
    a.positions = pos.data(), a.pos_batch_stride = C, a.pad_start = pad.data(), a.k_up = kup.data();
    a.k_pairs = kpairs.empty() ? nullptr : kpairs.data();
    a.k_bias = use_bias ? bias.data() : nullptr, a.inv_freq = inv.data(), a.attention_scaling = att, a.scaling = scaling;
    a.out = out.data(), a.out_dtype = PALU_DTYPE_F32;
    int64_t wsf = 0; int used = 0;
    if (palu_latent_decode_cuda_workspace(&a, 0, &wsf) || palu_latent_decode_cuda_impl(&a, 0, &used)) {
        printf("plan error: %s\n", palu_last_error()); return 1; }
    std::vector<float> ws(wsf, NAN);
    a.workspace = ws.data(), a.workspace_floats = wsf;
    if (palu_latent_decode_cuda(&a, 0, nullptr)) { printf("launch error: %s\n", palu_last_error()); return 1; }

    // reference in double
    double num = 0, den = 0, worst = 0; bool nan = false;
    int kc = 0, vc = 0;
    for (int g = 0; g < NG; g++) {
        const int rk = kr[g], rv = vr[g];
        for (int j = 0; j < G; j++) {
            const int kvh = g * G + j;
            const uint16_t *U_ = kup.data() + (size_t)G * D * kc + (size_t)j * D * rk;
            for (int b = 0; b < B; b++) {
                std::vector<double> K((size_t)T * D);
                for (int t = pad[b]; t < T; t++) {
                    for (int d = 0; d < D; d++) {
                        double acc = bias[kvh * D + d];
                        for (int r = 0; r < rk; r++) acc += (double)back(kl[((size_t)b * C + t) * Rk + kc + r]) * back(U_[d * rk + r]);
                        K[(size_t)t * D + d] = acc;
                    }
                    for (int k = 0; k < D / 2; k++) {
                        double ang = (double)pos[(size_t)b * C + t] * (double)inv[k];
                        double c = cos(ang) * att, s = sin(ang) * att, lo = K[t * D + k], hi = K[t * D + k + D / 2];
                        K[t * D + k] = lo * c - hi * s; K[t * D + k + D / 2] = hi * c + lo * s;
                    }
                }
                for (int r = 0; r < n_rep; r++) {
                    const int h = kvh * n_rep + r;
                    std::vector<double> s(T); double mx = -INFINITY;
                    for (int t = pad[b]; t < T; t++) {
                        double acc = 0; for (int d = 0; d < D; d++) acc += (double)back(q[((size_t)b * H + h) * D + d]) * K[t * D + d];
                        s[t] = acc * scaling; mx = std::max(mx, s[t]);
                    }
                    double sum = 0; for (int t = pad[b]; t < T; t++) { s[t] = exp(s[t] - mx); sum += s[t]; }
                    const int64_t col = (int64_t)n_rep * G * vc + (int64_t)(h - g * G * n_rep) * rv;
                    double hn = 0, he = 0;
                    for (int k = 0; k < rv; k++) {
                        double z = 0; for (int t = pad[b]; t < T; t++) z += s[t] / sum * back(vl[((size_t)b * C + t) * Rv + vc + k]);
                        double got = out[(size_t)b * Z + col + k];
                        if (std::isnan(got)) nan = true;
                        num += (got - z) * (got - z); den += z * z; hn += z * z; he += (got - z) * (got - z);
                    }
                    worst = std::max(worst, sqrt(he / hn));
                }
            }
        }
        kc += kr[g]; vc += vr[g];
    }
    printf("impl=%d ws=%lld rel=%.3e worst_head=%.3e nan=%d\n", used, (long long)wsf, sqrt(num / den), worst, (int)nan);
    return nan || sqrt(num / den) > (impl == 1 ? 1e-4 : (bf ? 1e-2 : 2e-3));
}
