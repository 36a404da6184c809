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
once into a CUDA graph and each timed call is one replay, so the CPU launch cost is out of both. A row names the
kernel that ran: where auto planned one that needs the tensor-memory accelerator and cannot have it in this mode
(:func:`runs_as`), the row says "v4 (auto, captured)" or "v4 (auto, PALU_C_V4_TMA=0)" and rests on v4's check.

Bytes counted are the fewest a call must move: ours reads the latents (B T NG (rk + rv) 2 B), positions (4 B per
slot), the key up-projections once, q, and writes z; SDPA reads K and V (B T Hkv D 2 B each), q, and writes the
output. FLOPs: ours 2 B T (Hkv D rk_g + H D + H rv_g) (key rebuild, scores, weighted values); SDPA 4 B T H D.
Floor = max(bytes / 4.3 TB/s, FLOPs / 790 TFLOP/s): the H200's measured copy bandwidth and bf16 matrix rate (other
GPUs get the same constants, so their "floor %" compares against an H200).

Key bases (``key_bases``): "svd" is the plain factorization; "interpolative" stores half of every key as the latent
itself (:mod:`palu_c.key_basis`; random RoPE pairs here, as the timing does not depend on which) and passes the pair
table, which only the kernels in ``IB_KERNELS`` use: its rows are timed for those only, labelled "<kernel> ib", with
the rebuild's FLOPs halved.

Shape legend: B batch, T slots, H query heads, Hkv KV heads, G group size, NG = Hkv / G groups, D head_dim,
r = rk_g = rv_g the group rank (ratio G D, rounded to a multiple of 16).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from . import latent_kernels as lk
from .shapes import ATTENTION_SHAPES

BW = 4.3e12     # bytes/s, device copy measured on the H200 (the device library's KINDS.md)
MATH = 790e12   # FLOP/s, bf16 matrix product measured on the H200
SHAPES = ATTENTION_SHAPES  # name -> (H, Hkv, D)
LABEL = lk.KERNEL_NAMES  # what latent_decode_workspace_size reports -> table name
NUMBER = {name: number for number, name in LABEL.items()}  # and back
CHECK_SLOTS = 2051       # the correctness case: odd, past several 256-slot blocks
KEY_BASES = ("svd", "interpolative")
IB_KERNELS = frozenset({"v10", "v11"})  # the kernels that read k_pairs (the others rebuild every key from k_up)
_SKIPPED = "skipped: out of GPU memory"  # the time cell of a row whose timing ran out of device memory


@dataclass(frozen=True)
class _Timing:
    """How each row is timed (see :func:`timed`).

    Median of `iters` calls after `warmup` calls, each after an L2 flush through `flush_buf` (`flush`: "clean" or
    "dirty"); `graphs`: each call is one CUDA-graph replay instead of an eager call.
    """

    iters: int
    warmup: int
    graphs: bool
    flush: str
    flush_buf: torch.Tensor = field(compare=False, repr=False)  # 256 MB: comparing or printing it means nothing


@dataclass(frozen=True)
class _Sweep:
    """What the table covers: per (shape, batch, context) an SDPA row, then per group size one row per kernel.

    `shapes` maps a name to (H, Hkv, D); group sizes that do not divide a shape's Hkv are skipped for it; `ratio`
    gives the latent ranks (:func:`group_rank`); `v1` adds the CUDA-core kernel where it is practical.
    """

    shapes: Mapping[str, tuple[int, int, int]]
    groups: tuple[int, ...]
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    dtype: torch.dtype
    impls: tuple[str, ...]
    ratio: float = 0.5
    v1: bool = False
    key_bases: tuple[str, ...] = ("svd",)

    def kernels(self, B: int, T: int) -> list[str]:
        """The kernels (wrapper names) timed at batch `B` and context `T`."""
        # v1 is the CUDA-core baseline: at batch > 1 or past 16K slots it only adds minutes to the run
        return [*self.impls, *(["v1"] if self.v1 and B == 1 and T <= 16384 else [])]


def group_rank(ratio: float, G: int, D: int) -> int:
    """The uniform group rank at `ratio`: ratio G D rounded to a multiple of 16 (the tensor-core k-tile), in
    [16, G D] (what ``compress_kv(search="uniform")`` gives at rank_multiple 16)."""
    return int(min(G * D, max(16, round(ratio * G * D / 16) * 16)))


def latent_case(B, H, Hkv, D, G, T, dtype, gen, ratio=0.5, pad_max=0, key_basis="svd"):
    """Random inputs of one decode step over a latent cache of capacity T rounded up to 256 slots; with
    ``key_basis="interpolative"`` the key up-projections in that layout and the case's ``k_pairs``."""
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
    k_pairs = None
    if key_basis == "interpolative":
        ups = interpolative_layout(k_up.view(NG, G * D, r), D, gen)
        k_up, k_pairs = ups.reshape(-1), lk.key_pairs(list(ups), D)
    return dict(q=q, kl=kl, vl=vl, k_up=k_up, pad=pad, pos=pos, inv_freq=inv_freq, kr=kr, vr=vr, G=G, T=T, Hkv=Hkv,
                k_pairs=k_pairs)


def interpolative_layout(ups: torch.Tensor, D: int, gen: torch.Generator) -> torch.Tensor:
    """(NG, G D, r) up-projections with the interpolative basis's unit rows (:mod:`palu_c.key_basis`) put at r / 2
    random RoPE pairs of each group, as many from each head (the balanced selection compress_kv makes), head by head
    in latent order and in random order within a head; the other rows as given."""
    NG, rows, r = ups.shape
    G, half = rows // D, D // 2
    if (r // 2) % G:
        raise ValueError(f"interpolative_layout: rank {r} / 2 pairs do not split evenly over {G} heads")
    ups = ups.clone()
    eye = torch.eye(r, dtype=ups.dtype, device=ups.device)
    for g in range(NG):
        stored = torch.cat([j * half + torch.randperm(half, device=ups.device, generator=gen)[: r // 2 // G]
                            for j in range(G)])
        lower = stored // half * D + stored % half
        ups[g, lower] = eye[: r // 2]
        ups[g, lower + D // 2] = eye[r // 2:]
    return ups


def call(c, impl, out=None, ws=None):
    D = c["q"].shape[2]
    return lk.latent_decode_attention_cuda(c["q"], c["kl"], c["vl"], c["pos"], c["pad"], c["T"], c["k_up"], c["kr"],
                                           c["vr"], c["G"], c["inv_freq"], scaling=D ** -0.5, impl=impl, out=out,
                                           workspace=ws, k_pairs=c.get("k_pairs"))


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


def ours_cost(B, H, Hkv, D, G, T, r, key_basis="svd"):
    """(bytes, FLOPs) of one call at the fewest: the interpolative basis rebuilds G D - r of a group's G D rows."""
    NG = Hkv // G
    nbytes = B * T * NG * 2 * r * 2 + B * T * 4 + Hkv * D * r * 2 + B * H * D * 2 + B * H * r * 4
    rebuilt = NG * (G * D - r) if key_basis == "interpolative" else Hkv * D
    flops = 2 * B * T * (rebuilt * r + H * D + H * r)
    return nbytes, flops


def sdpa_cost(B, H, Hkv, D, T, elem=2):
    return 2 * B * T * Hkv * D * elem + 2 * B * H * D * elem, 4 * B * T * H * D


def runs_as(planned: str, *, captured: bool) -> str:
    """The kernel an ``impl="auto"`` call that planned `planned` really runs: v4 (on its own plan) where the planned
    kernel needs the tensor-memory accelerator and cannot have it: inside a CUDA-graph capture (v9, v10, v11) and
    with ``PALU_C_V4_TMA=0`` in the environment (v10, v11; v9 then copies by cp.async itself)."""
    if captured and planned in ("v9", "v10", "v11"):
        return "v4"
    if os.environ.get("PALU_C_V4_TMA") == "0" and planned in ("v10", "v11"):
        return "v4"
    return planned


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


def _median_us(fn: Callable[[], object], timing: _Timing) -> float:
    """Median us of `fn` timed as `timing` says (captured into a CUDA graph first with ``timing.graphs``)."""
    keep = graphed(fn) if timing.graphs else (fn, None)  # the graph must outlive its replays
    return timed(keep[0], timing.flush_buf, timing.iters, timing.warmup, timing.flush)[0]


def _time_sdpa(B: int, H: int, Hkv: int, D: int, T: int, dtype: torch.dtype, gen: torch.Generator,
               timing: _Timing) -> float:
    """Median us of SDPA over a random full cache in `dtype` (freed on return)."""
    k = torch.randn((B, Hkv, T, D), device="cuda", dtype=dtype, generator=gen)
    v = torch.randn_like(k)
    q = torch.randn((B, H, 1, D), device="cuda", dtype=dtype, generator=gen)
    return _median_us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=H != Hkv), timing)


def _time_ours(c: dict, impl: str, floats: int, timing: _Timing) -> float:
    """Median us of one decode step of kernel `impl` on case `c` (workspace and output freed on return)."""
    B, H, _ = c["q"].shape
    ws = torch.empty(floats, device="cuda")
    out = torch.empty((B, H * c["kr"][0]), device="cuda")
    return _median_us(lambda: call(c, impl, out, ws), timing)


def decode_step_report(shapes: dict, *, groups: Sequence[int] = (1, 2, 4), batches: Sequence[int] = (1, 8),
                       contexts: Sequence[int] = (4096, 16384, 65536, 131072), dtype: torch.dtype = torch.float16,
                       impls: Sequence[str] = ("auto", "v2"), ratio: float = 0.5, iters: int = 25, warmup: int = 5,
                       graphs: bool = False, flush: str = "clean", v1: bool = False, title: str = "bench_attention",
                       key_bases: Sequence[str] = ("svd",),
                       log: Callable[[str], None] = print) -> tuple[list[str], bool]:
    """The markdown report (lines) of one decode step per (shape, batch, context, group size) and whether every
    correctness check passed and every timing ran. `shapes` maps a name to (H, Hkv, D); group sizes that do not
    divide a shape's Hkv are skipped for it. A kernel that fails its check is not timed (its rows say so). A CUDA
    error while timing ends the report at that row, which names it (the context is unusable after most of them;
    runs 73, 81 and 89 lost their tables to one such error each). A row that runs out of device memory is only
    skipped (its row says so, the header counts them, and it does not fail the run): the sweep goes on. Needs a
    CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("palu_c.bench: timing the CUDA decode kernel needs a CUDA device; none is visible")
    unknown = [i for i in impls if i not in lk._IMPLS]  # the wrapper's accepted names
    if not impls or unknown:
        raise ValueError(f"palu_c.bench: unknown kernels {unknown} (accepted: {sorted(lk._IMPLS)})")
    if flush not in ("clean", "dirty"):
        raise ValueError(f"palu_c.bench: flush must be 'clean' or 'dirty', got {flush!r}")
    if not key_bases or any(k not in KEY_BASES for k in key_bases):
        raise ValueError(f"palu_c.bench: key_bases must be a non-empty selection of {KEY_BASES}, got {key_bases!r}")
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
        for G, basis in ((G, k) for G in groups for k in key_bases):
            if Hkv % G:
                continue
            c = latent_case(2, H, Hkv, D, G, CHECK_SLOTS, dtype, gen, ratio=ratio, pad_max=40, key_basis=basis)
            ref = reference_z(c)
            # every kernel the table will time: the listed ones, by name each kernel auto resolves to at the timed
            # sizes (auto takes v10 only on long slices, so this 2K case alone would not reach it), and v4, which
            # auto runs instead of a kernel that cannot load by TMA in this mode (runs_as)
            checked = set()
            for impl in dict.fromkeys(["v1", *impls, *auto_kernels(H, Hkv, D, G, batches, contexts, dtype, ratio),
                                       "v4"]):
                try:
                    used = lk.latent_decode_workspace_size(2, H, Hkv, D, G, c["T"], c["kr"], c["vr"], dtype, "cuda",
                                                           impl)[1]
                except NotImplementedError:  # e.g. v3w at rank 128
                    continue
                if impl == "auto":  # what it runs here, which the plan's number does not say under runs_as
                    used = NUMBER[runs_as(LABEL[used], captured=False)]
                if used in checked or (basis != "svd" and LABEL[used] not in IB_KERNELS):  # checked already, or
                    continue  # a kernel that ignores the pair table (its svd check covers it)
                checked.add(used)
                label = LABEL[used] + ("" if basis == "svd" else " ib")
                try:
                    z = call(c, impl).double()
                except NotImplementedError as exc:  # planned, refused at the call (v10 with PALU_C_V4_TMA=0)
                    log(f"  {model} G={G} {impl}: not run in this mode ({exc})")
                    continue
                err = (torch.linalg.norm(z - ref) / torch.linalg.norm(ref)).item()
                tol = 1e-4 if used == 1 else (1e-2 if dtype == torch.bfloat16 else 2e-3)
                good = bool(torch.isfinite(z).all()) and err <= tol
                ok_impls[(model, G, label)] = good
                log(f"  {model} G={G} {label}: rel err {err:.2e} (tol {tol:.0e}) {'ok' if good else 'FAIL'}")
            del c, ref
    lines += ["Correctness (rel. error vs float64 at 2K slots): " +
              ", ".join(f"{m} G{g} {i} {'ok' if v else 'FAIL'}" for (m, g, i), v in ok_impls.items()), ""]

    sweep = _Sweep(shapes, tuple(groups), tuple(batches), tuple(contexts), dtype, tuple(impls), ratio, v1,
                   tuple(key_bases))
    timing = _Timing(iters, warmup, graphs, flush, torch.empty(256 * 2**20 // 4, dtype=torch.float32, device="cuda"))
    ok = _timed_table(lines, sweep, timing, gen=gen, ok_impls=ok_impls, log=log)
    return lines, ok


def _timed_table(lines: list[str], sweep: _Sweep, timing: _Timing, *, gen: torch.Generator,
                 ok_impls: dict[tuple[str, int, str], bool], log: Callable[[str], None]) -> bool:
    """Append the table (header, then :func:`_time_rows`) to `lines`; whether every kernel passed its check and
    every row ran or was skipped for memory.

    A RuntimeError from the rows (torch's CUDA errors; AcceleratorError is one) ends the table at the row being
    timed, which names it; the rows so far stay. Rows skipped for memory are counted in a note above the table.
    """
    table_at = len(lines)
    mode = "graph" if timing.graphs else "eager"
    hdr = (f"| model | B | T | G | kernel | time us ({mode}) | vs SDPA | MB moved | GFLOP | GB/s | floor us | "
           "floor % | bound |")
    lines += [hdr, "|" + "---|" * 13]
    at: list[str] = []  # the row being timed (model, B, T, G, kernel), for the failure line
    ok = all(ok_impls.values())
    try:
        _time_rows(lines, at, sweep, timing, gen=gen, ok_impls=ok_impls, log=log)
    except RuntimeError as exc:  # not an OutOfMemoryError from a row's timing: _time_rows skips that row
        what = _first_line(exc)
        lines += [f"| {' | '.join(at)} | FAILED: {what} |" + " |" * max(0, 12 - len(at)), "",
                  f"The run stopped at the row above: {type(exc).__name__}: {what}"]
        log(lines[-1])
        ok = False
    # a row whose kernel has no passed check (one that failed, or one auto runs here that was never checked)
    ok = ok and not any("| FAILED correctness |" in line for line in lines[table_at:])
    skipped = sum(f"| {_SKIPPED} |" in line for line in lines[table_at:])
    if skipped:  # above the table, with the other facts of the run, so a reader does not take it as complete
        note = f"{skipped} row{'s' if skipped != 1 else ''} skipped: out of GPU memory (marked in the table)."
        lines[table_at:table_at] = [note, ""]
        log(note)
    return ok


def _first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (its type's name where it has none), fit for a table cell."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace("|", "/")


def _unless_oom(fn: Callable[..., object], *args, **kwargs) -> tuple[object, str | None]:
    """``(fn(*args, **kwargs), None)``, or ``(None, first line of the error)`` where the call ran out of device
    memory, after handing the memory it held back to the device."""
    try:
        return fn(*args, **kwargs), None
    except torch.cuda.OutOfMemoryError as exc:
        what = _first_line(exc)
    # only after the except block: until then the exception's traceback keeps the failed call's frames, and with
    # them its tensors, alive, so the cache would have nothing to release
    torch.cuda.empty_cache()
    return None, what


def _skip_row(lines: list[str], cells: Sequence[str], what: str, log: Callable[[str], None]) -> None:
    """Append the row named by `cells` (model, B, T, G, kernel) as skipped for memory: 13 columns like the others."""
    lines.append(f"| {' | '.join(cells)} | {_SKIPPED} |" + " |" * (12 - len(cells)))
    log(lines[-1])
    log(f"  ({what})")


def _device_id(props) -> str:
    """' (GPU-1234abcd)': the first 8 hex digits of the device UUID where torch reports one, so that tables from
    different machines of the same model can be told apart (the device tool lends a machine per call)."""
    uuid = getattr(props, "uuid", None)
    return f" (GPU-{str(uuid).replace('-', '')[:8]})" if uuid else ""


def _time_rows(lines: list[str], at: list[str], sweep: _Sweep, timing: _Timing, *, gen: torch.Generator,
               ok_impls: dict[tuple[str, int, str], bool], log: Callable[[str], None]) -> None:
    """Append the timed rows to `lines` (SDPA, then each kernel per group size); `at` names the row being timed.

    A row that runs out of device memory (its SDPA cache, its latent case, or its kernel's workspace) is written as
    skipped and the sweep goes on; the kernel rows of a point whose SDPA row was skipped say "n/a" for the ratio. Any
    other RuntimeError propagates: after most CUDA errors the context is unusable.
    """
    for model, (H, Hkv, D) in sweep.shapes.items():
        for B in sweep.batches:
            for T in sweep.contexts:
                at[:] = [model, str(B), f"{T // 1024}K", "-", "SDPA"]
                t_sdpa, oom = _unless_oom(_time_sdpa, B, H, Hkv, D, T, sweep.dtype, gen, timing)
                if oom is None:
                    sb, sf = sdpa_cost(B, H, Hkv, D, T)
                    sfloor = max(sb / BW, sf / MATH) * 1e6
                    lines.append(f"| {model} | {B} | {T // 1024}K | - | SDPA | {t_sdpa:.1f} | 1.00x | {sb / 1e6:.0f} "
                                 f"| {sf / 1e9:.1f} | {sb / t_sdpa / 1e3:.0f} | {sfloor:.1f} | "
                                 f"{100 * sfloor / t_sdpa:.0f}% | memory |")
                    log(lines[-1])
                else:
                    _skip_row(lines, at, oom, log)
                for G, basis in ((G, k) for G in sweep.groups for k in sweep.key_bases):
                    if Hkv % G:
                        continue
                    # the ranks latent_case draws; known without the case, which may not fit in memory
                    r = group_rank(sweep.ratio, G, D)
                    ranks = [r] * (Hkv // G)
                    c, case_oom = _unless_oom(latent_case, B, H, Hkv, D, G, T, sweep.dtype, gen, ratio=sweep.ratio,
                                              key_basis=basis)
                    nb, nf = ours_cost(B, H, Hkv, D, G, T, r, basis)
                    floor = max(nb / BW, nf / MATH) * 1e6
                    bound = "memory" if nb / BW >= nf / MATH else "compute"
                    timed_used = set()
                    for impl in sweep.kernels(B, T):
                        try:
                            floats, used = lk.latent_decode_workspace_size(B, H, Hkv, D, G, T, ranks, ranks,
                                                                           sweep.dtype, "cuda", impl)
                        except NotImplementedError:
                            continue
                        if used in timed_used:  # auto resolving to a kernel already in the list
                            continue
                        timed_used.add(used)
                        # auto runs v4 (its own plan) where the kernel it planned cannot load by TMA (runs_as)
                        ran = runs_as(LABEL[used], captured=timing.graphs) if impl == "auto" else LABEL[used]
                        if basis != "svd" and ran not in IB_KERNELS:  # it would time the svd row again
                            continue
                        ib = "" if basis == "svd" else " ib"
                        label = LABEL[used] + ib if ran == LABEL[used] else \
                            f"{ran} (auto, {'captured' if timing.graphs else 'PALU_C_V4_TMA=0'})"
                        if not ok_impls.get((model, G, ran + ib), False):
                            lines.append(f"| {model} | {B} | {T // 1024}K | {G} | {label} | FAILED correctness | "
                                         "| | | | | | |")
                            continue
                        at[:] = [model, str(B), f"{T // 1024}K", str(G), label]
                        t, oom = (None, case_oom) if case_oom else _unless_oom(_time_ours, c, impl, floats, timing)
                        if oom is not None:
                            _skip_row(lines, [*at[:4], label], oom, log)
                            continue
                        vs_sdpa = "n/a" if t_sdpa is None else f"{t_sdpa / t:.2f}x"  # no SDPA time to divide by
                        lines.append(f"| {model} | {B} | {T // 1024}K | {G} | {label} | {t:.1f} | "
                                     f"{vs_sdpa} | {nb / 1e6:.0f} | {nf / 1e9:.1f} | {nb / t / 1e3:.0f} | "
                                     f"{floor:.1f} | {100 * floor / t:.0f}% | {bound} |")
                        log(lines[-1])
                    del c
                torch.cuda.empty_cache()


__all__ = ["BW", "MATH", "SHAPES", "decode_step_report", "group_rank"]
