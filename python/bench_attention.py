"""One decode step of one attention layer: the fused latent kernel (palu_c.latent_kernels) vs PyTorch SDPA over a
full fp16/bf16 KV cache, side by side (kernels/latent_decode.cu; notes in docs/design/latent_decode_notes.md).

Shapes: Llama-2-7B (32 heads, MHA, D 128) and Llama-3-8B (32 query / 8 KV heads, GQA, D 128); context 4K, 16K,
64K, 128K; batch 1 and 8; Palu at ratio 0.5 (rk_g = rv_g = 0.5 * G * D) with group sizes 1, 2, 4.

Method (METHOD.md): correctness first (every (model, group size) against a float64 reference of z at 2K slots,
batch 2, unequal padding); then each timed call runs after an L2 flush outside the timed region (--flush clean,
the default: a 256 MB buffer READ, so the L2 holds clean lines; --flush dirty: the buffer rewritten, which leaves
~50 MB of dirty lines whose write-backs then land inside the timed call and add the same ~12-16 us to both
sides: ncu, which flushes clean, measured v4 at 63.7 us where dirty-flush events said 86 us) and a ~1 ms GPU sleep (so the Python wrapper's launch latency is hidden, not timed), timed alone
with CUDA events; median of --iters calls after --warmup calls. With --graphs both our step (decode kernel +
merge, as called through palu_c.latent_kernels) and SDPA are captured once into a CUDA graph and each timed call
is one graph replay (the flush and the sleep stay outside the graph), so the CPU launch cost is out of both. Bytes counted are the
fewest a call must move: ours reads the latents (B * T * NG * (rk + rv) * 2 B), positions (4 B per slot), the
key up-projections once, q, and writes z; SDPA reads K and V (B * T * Hkv * D * 2 B each), q, and writes the
output. FLOPs: ours 2 * B * T * (Hkv * D * rk_g + H * D + H * rv_g) (key rebuild, scores, weighted values); SDPA
2 * B * T * H * D * 2. Floor = max(bytes / 4.3 TB/s, FLOPs / 790 TFLOP/s) (the H200's measured copy bandwidth
and bf16 matrix rate here). The ours row's "floor %" = floor / time.

    python python/bench_attention.py                          # full table (H200: about 2-3 minutes)
    python python/bench_attention.py --quick                  # 4K/16K, batch 1 only
    python python/bench_attention.py --out python/results/bench_attention_h200.md
    python python/bench_attention.py --graphs --impls auto,v3      # CUDA-graph replay timing
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from palu_c import latent_kernels as lk  # noqa: E402
from report import emit  # noqa: E402

BW = 4.3e12     # bytes/s, device copy measured on the H200 (KINDS.md)
MATH = 790e12   # FLOP/s, bf16 matrix product measured on the H200
MODELS = {"llama2-7b": (32, 32, 128), "llama3-8b": (32, 8, 128)}
LABEL = lk.KERNEL_NAMES  # what latent_decode_workspace_size reports -> table name


def auto_kernels(H, Hkv, D, G, batches, contexts, dtype, ratio=0.5):
    """The kernels (names) auto plans for this model and group size at the timed batches and contexts."""
    r = int(ratio * G * D)
    names = []
    for B in batches:
        for T in contexts:
            try:
                used = lk.latent_decode_workspace_size(B, H, Hkv, D, G, T, [r] * (Hkv // G), [r] * (Hkv // G), dtype,
                                                       "cuda", "auto")[1]
            except NotImplementedError:
                continue
            names.append(LABEL[used])
    return list(dict.fromkeys(names))


def latent_case(B, H, Hkv, D, G, T, dtype, gen, ratio=0.5, pad_max=0):
    NG = Hkv // G
    r = int(ratio * G * D)
    kr, vr = [r] * NG, [r] * NG
    C = -(-T // 256) * 256
    dev = "cuda"
    kl = torch.randn((B, C, r * NG), device=dev, dtype=dtype, generator=gen)
    vl = torch.randn((B, C, r * NG), device=dev, dtype=dtype, generator=gen)
    q = torch.randn((B, H, D), device=dev, dtype=dtype, generator=gen)
    k_up = (torch.randn((G * D * r * NG,), device=dev, dtype=torch.float32, generator=gen) / math.sqrt(r)).to(dtype)
    pad = torch.zeros(B, dtype=torch.int32, device=dev)
    if pad_max:
        pad[1:] = torch.randint(0, pad_max, (B - 1,), device=dev, dtype=torch.int32, generator=gen)
    pos = (torch.arange(C, device=dev, dtype=torch.int32)[None, :] - pad[:, None]).clamp_min(0).to(torch.int32)
    inv_freq = 10000.0 ** (-torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D)
    return dict(q=q, kl=kl, vl=vl, k_up=k_up, pad=pad, pos=pos, inv_freq=inv_freq, kr=kr, vr=vr, G=G, T=T, Hkv=Hkv)


def call(c, impl, out=None, ws=None):
    D = c["q"].shape[2]
    return lk.latent_decode_attention_cuda(c["q"], c["kl"], c["vl"], c["pos"], c["pad"], c["T"], c["k_up"], c["kr"],
                                           c["vr"], c["G"], c["inv_freq"], scaling=D ** -0.5, impl=impl, out=out,
                                           workspace=ws)


def reference_z(c):
    """float64 z from the definition (keys rebuilt per head, RoPE in float64, softmax, weighted value latents)."""
    q = c["q"].double()
    B, H, D = q.shape
    T, G, Hkv = c["T"], c["G"], c["Hkv"]
    n_rep, half, r = H // Hkv, D // 2, c["kr"][0]
    ang = c["pos"][:, :T].double()[:, :, None] * c["inv_freq"].double()
    cos, sin = torch.cos(ang), torch.sin(ang)
    valid = torch.arange(T, device="cuda")[None, :] >= c["pad"].long()[:, None]
    ups = c["k_up"].double().reshape(Hkv // G, G * D, r)
    zs = []
    for g in range(Hkv // G):
        hk = c["kl"][:, :T, g * r:(g + 1) * r].double()
        hv = c["vl"][:, :T, g * r:(g + 1) * r].double()
        for j in range(G):
            K = hk @ ups[g, j * D:(j + 1) * D].T
            lo, hi = K[..., :half], K[..., half:]
            K = torch.cat([lo * cos - hi * sin, hi * cos + lo * sin], -1)
            for rr in range(n_rep):
                s = torch.einsum("btd,bd->bt", K, q[:, (g * G + j) * n_rep + rr]) * D ** -0.5
                p = torch.softmax(s.masked_fill(~valid, -math.inf), -1)
                zs.append(torch.einsum("bt,btr->br", p, hv))
    return torch.cat(zs, 1)


FLUSH_MODE = "clean"


def timed(fn, flush, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if FLUSH_MODE == "clean":  # evict the L2 (60 MB) by reading: clean lines, no write-backs in the timing
            flush.sum()
        else:  # rewrite: dirty lines whose write-backs land in the timed call
            flush.zero_()
        torch.cuda._sleep(2_000_000)  # ~1 ms of GPU work, so host-side launch latency stays out of the events
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times), min(times), max(times)


def graphed(fn):
    """One call of `fn` captured into a CUDA graph (warmed up on a side stream first); returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay, graph  # keep the graph (and its memory pool) alive with the replay


def ours_cost(B, H, Hkv, D, G, T, r):
    NG = Hkv // G
    nbytes = B * T * NG * 2 * r * 2 + B * T * 4 + Hkv * D * r * 2 + B * H * D * 2 + B * H * r * 4
    flops = 2 * B * T * (Hkv * D * r + H * D + H * r)
    return nbytes, flops


def sdpa_cost(B, H, Hkv, D, T, elem=2):
    return 2 * B * T * Hkv * D * elem + 2 * B * H * D * elem, 4 * B * T * H * D


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="4K and 16K, batch 1 only")
    ap.add_argument("--v1", action="store_true", help="also time the CUDA-core kernel v1 (batch 1, <= 16K)")
    ap.add_argument("--impls", default="auto,v2",
                    help="comma-separated kernels to time besides SDPA (names of latent_kernels._IMPLS, e.g. "
                         "auto,v2,v3w); one that refuses a shape is skipped for it")
    ap.add_argument("--graphs", action="store_true",
                    help="time one CUDA-graph replay of a step (ours: kernel + merge; SDPA) instead of eager calls")
    ap.add_argument("--flush", default="clean", choices=["clean", "dirty"],
                    help="L2 flush before each timed call: read (clean) or rewrite (dirty) a 256 MB buffer")
    ap.add_argument("--out", default=None, help="write the markdown table here (atomically)")
    args = ap.parse_args(argv)
    global FLUSH_MODE
    FLUSH_MODE = args.flush
    impl_list = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impl_list if i not in lk._IMPLS]  # the wrapper's accepted names
    if not impl_list or unknown:
        print(f"bench_attention: --impls {args.impls!r}: unknown {unknown}; accepted {sorted(lk._IMPLS)}",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_attention: no CUDA device", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    props = torch.cuda.get_device_properties(0)
    contexts = [4096, 16384] if args.quick else [4096, 16384, 65536, 131072]
    batches = [1] if args.quick else [1, 8]
    lines = [f"# bench_attention: one decode step, latent kernel vs SDPA ({args.dtype})", "",
             f"GPU: {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB; torch "
             f"{torch.__version__}; median of {args.iters} CUDA-event timings after an L2 flush each ({args.flush}: "
             f"a 256 MB buffer {'read' if args.flush == 'clean' else 'rewritten'}); floors at "
             f"{BW / 1e12:.1f} TB/s and {MATH / 1e12:.0f} TFLOP/s.", "",
             "Timing mode: " + ("CUDA-graph replay of one step (ours: decode + merge; SDPA), launch cost excluded"
                                if args.graphs else "eager calls (Python wrapper + launches, hidden behind a GPU "
                                                    "sleep)"), ""]

    # ---- correctness first -------------------------------------------------------------------------------------
    ok_impls = {}
    print("correctness (float64 reference, T=2051, batch 2, unequal padding):")
    for model, (H, Hkv, D) in MODELS.items():
        for G in (1, 2, 4):
            c = latent_case(2, H, Hkv, D, G, 2051, dtype, gen, pad_max=40)
            ref = reference_z(c)
            # every kernel the table will time: the listed ones, and by name each kernel auto resolves to at the
            # timed sizes (auto takes v10 only on long slices, so this 2K case alone would not reach it)
            checked = set()
            for impl in dict.fromkeys(["v1"] + impl_list + auto_kernels(H, Hkv, D, G, batches, contexts, dtype)):
                try:
                    used = lk.latent_decode_workspace_size(2, H, Hkv, D, G, c["T"], c["kr"], c["vr"], dtype, "cuda",
                                                           impl)[1]
                except NotImplementedError:  # e.g. v3w at rank 128
                    continue
                if used in checked:  # auto resolving to a kernel checked by name already
                    continue
                checked.add(used)
                z = call(c, impl).double()
                err = (torch.linalg.norm(z - ref) / torch.linalg.norm(ref)).item()
                tol = 1e-4 if used == 1 else (1e-2 if dtype == torch.bfloat16 else 2e-3)
                good = bool(torch.isfinite(z).all()) and err <= tol
                ok_impls[(model, G, LABEL[used])] = good
                print(f"  {model} G={G} {LABEL[used]}: rel err {err:.2e} (tol {tol:.0e}) {'ok' if good else 'FAIL'}")
            del c, ref
    lines += ["Correctness (rel. error vs float64 at 2K slots): " +
              ", ".join(f"{m} G{g} {i} {'ok' if v else 'FAIL'}" for (m, g, i), v in ok_impls.items()), ""]

    flush = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device="cuda")
    mode = "graph" if args.graphs else "eager"
    hdr = (f"| model | B | T | G | kernel | time us ({mode}) | vs SDPA | MB moved | GFLOP | GB/s | floor us | "
           "floor % | bound |")
    lines += [hdr, "|" + "---|" * 13]
    for model, (H, Hkv, D) in MODELS.items():
        for B in batches:
            for T in contexts:
                # SDPA baseline over the full cache in the same dtype
                k = torch.randn((B, Hkv, T, D), device="cuda", dtype=dtype, generator=gen)
                v = torch.randn_like(k)
                qf = torch.randn((B, H, 1, D), device="cuda", dtype=dtype, generator=gen)
                gqa = H != Hkv
                sdpa = lambda: F.scaled_dot_product_attention(qf, k, v, enable_gqa=gqa)  # noqa: E731
                keep = graphed(sdpa) if args.graphs else (sdpa, None)
                t_sdpa = timed(keep[0], flush, args.iters, args.warmup)[0]
                del keep
                sb, sf = sdpa_cost(B, H, Hkv, D, T)
                sfloor = max(sb / BW, sf / MATH) * 1e6
                lines.append(f"| {model} | {B} | {T // 1024}K | - | SDPA | {t_sdpa:.1f} | 1.00x | {sb / 1e6:.0f} | "
                             f"{sf / 1e9:.1f} | {sb / t_sdpa / 1e3:.0f} | {sfloor:.1f} | {100 * sfloor / t_sdpa:.0f}% "
                             f"| memory |")
                print(lines[-1], flush=True)
                del k, v, qf
                for G in (1, 2, 4):
                    c = latent_case(B, H, Hkv, D, G, T, dtype, gen)
                    r = c["kr"][0]
                    nb, nf = ours_cost(B, H, Hkv, D, G, T, r)
                    floor = max(nb / BW, nf / MATH) * 1e6
                    bound = "memory" if nb / BW >= nf / MATH else "compute"
                    impls = impl_list + (["v1"] if args.v1 and B == 1 and T <= 16384 else [])
                    timed_used = set()
                    for impl in impls:
                        try:
                            floats, used = lk.latent_decode_workspace_size(B, H, Hkv, D, G, T, c["kr"], c["vr"],
                                                                           dtype, "cuda", impl)
                        except NotImplementedError:
                            continue
                        if used in timed_used:  # auto resolving to a kernel already in the list
                            continue
                        timed_used.add(used)
                        if not ok_impls.get((model, G, LABEL[used]), False):
                            lines.append(f"| {model} | {B} | {T // 1024}K | {G} | {LABEL[used]} | FAILED correctness | "
                                         "| | | | | | |")
                            continue
                        ws = torch.empty(floats, device="cuda")
                        out = torch.empty((B, H * r), device="cuda")
                        step = lambda: call(c, impl, out, ws)  # noqa: E731
                        keep = graphed(step) if args.graphs else (step, None)
                        t = timed(keep[0], flush, args.iters, args.warmup)[0]
                        del keep
                        # inside a capture auto runs v4 (its own plan) where it planned v9 or v10, which load by TMA
                        label = ("v4 (auto, captured)" if args.graphs and impl == "auto" and LABEL[used] in ("v9", "v10")
                                 else LABEL[used])
                        lines.append(f"| {model} | {B} | {T // 1024}K | {G} | {label} | {t:.1f} | "
                                     f"{t_sdpa / t:.2f}x | {nb / 1e6:.0f} | {nf / 1e9:.1f} | {nb / t / 1e3:.0f} | "
                                     f"{floor:.1f} | {100 * floor / t:.0f}% | {bound} |")
                        print(lines[-1], flush=True)
                    del c
                torch.cuda.empty_cache()
    lines += ["", f"Command: python python/bench_attention.py --dtype {args.dtype}"
              f"{' --quick' if args.quick else ''}{' --v1' if args.v1 else ''}{' --graphs' if args.graphs else ''} --impls {args.impls} "
              f"({time.strftime('%Y-%m-%d')})"]
    emit(lines, args.out)
    return 0 if all(ok_impls.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
