"""One decode step of one attention layer on the GPU: the fused latent kernel (:mod:`palu_c.latent_kernels`) against
PyTorch SDPA over a full fp16/bf16 KV cache, side by side. The engine of ``palu-c bench`` and of
``python/bench_attention.py`` (which makes the committed tables); the kernels' notes are in
docs/design/latent_decode_notes.md.

Method (the device library's METHOD.md): correctness first (every (shape, group size) and every kernel the table will
time, by name, against a float64 reference of z at 2,051 slots, batch 2, unequal padding); then each timed call runs
after an L2 flush outside the timed region (``flush="clean"``, the default: a 256 MB buffer READ, so the L2 holds
clean lines; ``"dirty"``: the buffer rewritten, whose write-backs then land inside the timed call) and a ~1 ms GPU
sleep (so the Python wrapper's launch latency is hidden, not timed), timed alone with CUDA events; median of
``iters`` calls after ``warmup`` calls. With ``graphs`` both our step (decode kernel + merge) and SDPA are captured
once into a CUDA graph and each timed call is one replay, so the CPU launch cost is out of both.

Bytes counted are the fewest a call must move: ours reads the latents (B T NG (rk + rv) 2 B), positions (4 B per
slot), the key up-projections once, q, and writes z; SDPA reads K and V (B T Hkv D 2 B each), q, and writes the
output. FLOPs: ours 2 B T (Hkv D rk_g + H D + H rv_g) (key rebuild, scores, weighted values); SDPA 4 B T H D.
Floor = max(bytes / 4.3 TB/s, FLOPs / 790 TFLOP/s): the H200's measured copy bandwidth and bf16 matrix rate (other
GPUs get the same constants, so their "floor %" compares against an H200).

Shape legend: B batch, T slots, H query heads, Hkv KV heads, G group size, NG = Hkv / G groups, D head_dim,
r = rk_g = rv_g the group rank (ratio G D, rounded to a multiple of 16).
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import latent_kernels as lk
from .shapes import ATTENTION_SHAPES

BW = 4.3e12     # bytes/s, device copy measured on the H200 (the device library's KINDS.md)
MATH = 790e12   # FLOP/s, bf16 matrix product measured on the H200
SHAPES = ATTENTION_SHAPES  # name -> (H, Hkv, D)
LABEL = lk.KERNEL_NAMES  # what latent_decode_workspace_size reports -> table name
CHECK_SLOTS = 2051       # the correctness case: odd, past several 256-slot blocks


def group_rank(ratio: float, G: int, D: int) -> int:
    """The uniform group rank at `ratio`: ratio G D rounded to a multiple of 16 (the tensor-core k-tile), in
    [16, G D] (what ``compress_kv(search="uniform")`` gives at rank_multiple 16)."""
    return int(min(G * D, max(16, round(ratio * G * D / 16) * 16)))


def latent_case(B, H, Hkv, D, G, T, dtype, gen, ratio=0.5, pad_max=0):
    """Random inputs of one decode step over a latent cache of capacity T rounded up to 256 slots."""
    NG = Hkv // G
    r = group_rank(ratio, G, D)
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


def timed(fn: Callable[[], object], flush: torch.Tensor, iters: int, warmup: int, flush_mode: str = "clean"):
    """(median, min, max) microseconds of `fn` over `iters` calls, each after an L2 flush and a GPU sleep."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if flush_mode == "clean":  # evict the L2 (60 MB) by reading: clean lines, no write-backs in the timing
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


def auto_kernels(H, Hkv, D, G, batches, contexts, dtype, ratio=0.5):
    """The kernels (names) auto plans for this shape and group size at the timed batches and contexts."""
    r = group_rank(ratio, G, D)
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


def _time_sdpa(B, H, Hkv, D, T, dtype, gen, flush_buf, iters, warmup, flush, graphs) -> float:
    """Median us of SDPA over a random full cache in `dtype` (freed on return)."""
    k = torch.randn((B, Hkv, T, D), device="cuda", dtype=dtype, generator=gen)
    v = torch.randn_like(k)
    q = torch.randn((B, H, 1, D), device="cuda", dtype=dtype, generator=gen)
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=H != Hkv)  # noqa: E731
    keep = graphed(sdpa) if graphs else (sdpa, None)
    return timed(keep[0], flush_buf, iters, warmup, flush)[0]


def _time_ours(c, impl, floats, flush_buf, iters, warmup, flush, graphs) -> float:
    """Median us of one decode step of kernel `impl` on case `c` (workspace and output freed on return)."""
    B, H, _ = c["q"].shape
    ws = torch.empty(floats, device="cuda")
    out = torch.empty((B, H * c["kr"][0]), device="cuda")
    step = lambda: call(c, impl, out, ws)  # noqa: E731
    keep = graphed(step) if graphs else (step, None)
    return timed(keep[0], flush_buf, iters, warmup, flush)[0]


def decode_step_report(shapes: dict, *, groups: Sequence[int] = (1, 2, 4), batches: Sequence[int] = (1, 8),
                       contexts: Sequence[int] = (4096, 16384, 65536, 131072), dtype: torch.dtype = torch.float16,
                       impls: Sequence[str] = ("auto", "v2"), ratio: float = 0.5, iters: int = 25, warmup: int = 5,
                       graphs: bool = False, flush: str = "clean", v1: bool = False, title: str = "bench_attention",
                       log: Callable[[str], None] = print) -> tuple[list[str], bool]:
    """The markdown report (lines) of one decode step per (shape, batch, context, group size) and whether every
    correctness check passed and every timing ran. `shapes` maps a name to (H, Hkv, D); group sizes that do not
    divide a shape's Hkv are skipped for it. A kernel that fails its check is not timed (its rows say so). A CUDA
    error while timing ends the report at that row, which names it (the context is unusable after most of them;
    runs 73, 81 and 89 lost their tables to one such error each). Needs a CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("palu_c.bench: timing the CUDA decode kernel needs a CUDA device; none is visible")
    unknown = [i for i in impls if i not in lk._IMPLS]  # the wrapper's accepted names
    if not impls or unknown:
        raise ValueError(f"palu_c.bench: unknown kernels {unknown} (accepted: {sorted(lk._IMPLS)})")
    if flush not in ("clean", "dirty"):
        raise ValueError(f"palu_c.bench: flush must be 'clean' or 'dirty', got {flush!r}")
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    dname = str(dtype).replace("torch.", "")
    lines = [f"# {title}: one decode step, latent kernel vs SDPA ({dname})", "",
             f"GPU: {props.name}{_device_id(props)}, {props.multi_processor_count} SMs, "
             f"{props.total_memory / 2**30:.0f} GiB; torch "
             f"{torch.__version__}; median of {iters} CUDA-event timings after an L2 flush each ({flush}: "
             f"a 256 MB buffer {'read' if flush == 'clean' else 'rewritten'}); floors at "
             f"{BW / 1e12:.1f} TB/s and {MATH / 1e12:.0f} TFLOP/s.", "",
             "Timing mode: " + ("CUDA-graph replay of one step (ours: decode + merge; SDPA), launch cost excluded"
                                if graphs else "eager calls (Python wrapper + launches, hidden behind a GPU "
                                               "sleep)"), ""]
    if ratio != 0.5:
        lines += [f"Latent ranks at ratio {ratio:g}: " + ", ".join(
            f"{m} G{G} {group_rank(ratio, G, D)}" for m, (H, Hkv, D) in shapes.items() for G in groups
            if Hkv % G == 0), ""]

    # ---- correctness first -------------------------------------------------------------------------------------
    ok_impls = {}
    log(f"correctness (float64 reference, T={CHECK_SLOTS}, batch 2, unequal padding):")
    for model, (H, Hkv, D) in shapes.items():
        for G in groups:
            if Hkv % G:
                continue
            c = latent_case(2, H, Hkv, D, G, CHECK_SLOTS, dtype, gen, ratio=ratio, pad_max=40)
            ref = reference_z(c)
            # every kernel the table will time: the listed ones, and by name each kernel auto resolves to at the
            # timed sizes (auto takes v10 only on long slices, so this 2K case alone would not reach it)
            checked = set()
            for impl in dict.fromkeys(["v1", *impls, *auto_kernels(H, Hkv, D, G, batches, contexts, dtype, ratio)]):
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
                log(f"  {model} G={G} {LABEL[used]}: rel err {err:.2e} (tol {tol:.0e}) {'ok' if good else 'FAIL'}")
            del c, ref
    lines += ["Correctness (rel. error vs float64 at 2K slots): " +
              ", ".join(f"{m} G{g} {i} {'ok' if v else 'FAIL'}" for (m, g, i), v in ok_impls.items()), ""]

    flush_buf = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device="cuda")
    mode = "graph" if graphs else "eager"
    hdr = (f"| model | B | T | G | kernel | time us ({mode}) | vs SDPA | MB moved | GFLOP | GB/s | floor us | "
           "floor % | bound |")
    lines += [hdr, "|" + "---|" * 13]
    at: list[str] = []  # the row being timed (model, B, T, G, kernel), for the failure line
    try:
        _time_rows(lines, at, shapes, groups, batches, contexts, dtype, impls, ratio, iters, warmup, graphs, flush, v1,
                   gen, flush_buf, ok_impls, log)
    except RuntimeError as exc:  # torch's CUDA errors (AcceleratorError is one); the rows so far stay
        what = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace("|", "/")
        lines += [f"| {' | '.join(at)} | FAILED: {what} |" + " |" * max(0, 12 - len(at)), "",
                  f"The run stopped at the row above: {type(exc).__name__}: {what}"]
        log(lines[-1])
        return lines, False
    return lines, all(ok_impls.values())


def _device_id(props) -> str:
    """' (GPU-1234abcd)': the first 8 hex digits of the device UUID where torch reports one, so that tables from
    different machines of the same model can be told apart (the device tool lends a machine per call)."""
    uuid = getattr(props, "uuid", None)
    return f" (GPU-{str(uuid).replace('-', '')[:8]})" if uuid else ""


def _time_rows(lines, at, shapes, groups, batches, contexts, dtype, impls, ratio, iters, warmup, graphs, flush, v1, gen,
               flush_buf, ok_impls, log) -> None:
    """Append the timed rows to `lines` (SDPA, then each kernel per group size); `at` names the row being timed."""
    for model, (H, Hkv, D) in shapes.items():
        for B in batches:
            for T in contexts:
                at[:] = [model, str(B), f"{T // 1024}K", "-", "SDPA"]
                t_sdpa = _time_sdpa(B, H, Hkv, D, T, dtype, gen, flush_buf, iters, warmup, flush, graphs)
                sb, sf = sdpa_cost(B, H, Hkv, D, T)
                sfloor = max(sb / BW, sf / MATH) * 1e6
                lines.append(f"| {model} | {B} | {T // 1024}K | - | SDPA | {t_sdpa:.1f} | 1.00x | {sb / 1e6:.0f} | "
                             f"{sf / 1e9:.1f} | {sb / t_sdpa / 1e3:.0f} | {sfloor:.1f} | {100 * sfloor / t_sdpa:.0f}% "
                             f"| memory |")
                log(lines[-1])
                for G in groups:
                    if Hkv % G:
                        continue
                    c = latent_case(B, H, Hkv, D, G, T, dtype, gen, ratio=ratio)
                    r = c["kr"][0]
                    nb, nf = ours_cost(B, H, Hkv, D, G, T, r)
                    floor = max(nb / BW, nf / MATH) * 1e6
                    bound = "memory" if nb / BW >= nf / MATH else "compute"
                    timed_used = set()
                    for impl in [*impls, *(["v1"] if v1 and B == 1 and T <= 16384 else [])]:
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
                        at[:] = [model, str(B), f"{T // 1024}K", str(G), LABEL[used]]
                        t = _time_ours(c, impl, floats, flush_buf, iters, warmup, flush, graphs)
                        # inside a capture auto runs v4 (its own plan) where it planned v9 or v10, which load by TMA
                        label = ("v4 (auto, captured)" if graphs and impl == "auto" and LABEL[used] in ("v9", "v10")
                                 else LABEL[used])
                        lines.append(f"| {model} | {B} | {T // 1024}K | {G} | {label} | {t:.1f} | "
                                     f"{t_sdpa / t:.2f}x | {nb / 1e6:.0f} | {nf / 1e9:.1f} | {nb / t / 1e3:.0f} | "
                                     f"{floor:.1f} | {100 * floor / t:.0f}% | {bound} |")
                        log(lines[-1])
                    del c
                torch.cuda.empty_cache()


__all__ = ["BW", "MATH", "SHAPES", "decode_step_report", "group_rank"]
