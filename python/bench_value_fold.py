"""Benchmark: where to apply the value up-projection in one Palu decode step (CPU, float32, torch).

Per layer the cache holds value latents hv (B, T, Rv), group g in columns [g*rv, (g+1)*rv). Query head h reads
KV head kv = h // n_rep of group g = kv // G, and needs out_h = sum_t p_ht Uv_kv hv_t[g], where Uv_kv (D, rv) are
the D rows of group g's up-projection (G*D, rv) that belong to kv; then o_proj Wo (hidden, H*D) maps
concat_h out_h. Three ways to compute the value side of a step, given the probabilities p (B, H, T):

  (a) rebuild: V_t = Uv hv_t for every cached token (T x G*D x rv per group), then p @ V, then o_proj;
  (b) fold:    z_h = sum_t p_ht hv_t[g] (rv wide), out_h = Uv_kv z_h (D x rv per head), then o_proj
               (what csrc/latent_attention.c does; exact because the up-projection is linear);
  (c) fused:   z_h as in (b), then one product with W_fused (hidden, H*rv) whose head-h block is
               Wo[:, h*D:(h+1)*D] @ Uv_kv, precomputed once (no Uv at run time; Palu's offline fusion,
               arXiv 2407.21118).

Multiply-adds per sequence and step (rv = rv_g, all groups the same rank here):
  (a) T*Hkv*D*rv + H*T*D + hidden*H*D      (b) H*T*rv + H*D*rv + hidden*H*D      (c) H*T*rv + hidden*H*rv
so (c) beats (b) iff hidden*H*rv < H*D*rv + hidden*H*D, i.e. rv < hidden*D / (hidden - D) (a little above D).
The weight bytes give nearly the same threshold: rv < hidden*H*D / (hidden*H - Hkv*D).

Method. For every (shape, G) the factors are random (torch, fixed seed); before any timing the three float32
paths are checked against a float64 reference that rebuilds V per token and head with its own loop, with the
a-priori bound |y - ref| <= n * eps32 * ref_abs (ref_abs: the same computation on absolute values; n: the
summed lengths of the reductions along the path), and a negative control (a wrong head mapping) must break that
bound. The key side (keys rebuilt from hk, RoPE with float64 angles rounded to float32, scores, softmax) is
checked the same way and timed with the value side to put it in proportion. (a) and the key side rebuild V / K
one token chunk at a time (tiles of about 4 MiB), their best form on a CPU: whole-context temporaries of up to
1 GiB would be mmap'ed and page-faulted on every step. Latent buffers are views of a (8, 8192, R) capacity
buffer, as in the cache (docs/design/latent_cache.md section 2). Before every timed call a 64 MiB buffer is
rewritten, so weights and latents come from DRAM as in a real decode step (the other layers evict them); the
epilogue is also timed warm. The methods of a row take turns (one call each per round, after one warm-up
call each), so load changes on the shared machine hit them alike; times are medians over at least 3 rounds and
at most --repeats, stopping once a method has used --budget seconds.

Run:  python python/bench_value_fold.py [--threads 2] [--repeats 11] [--budget 1.0] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from report import emit
from torch.nn import functional as F

EPS32 = float(torch.finfo(torch.float32).eps)
T_CAP, B_CAP = 8192, 8  # capacity of the latent buffers the timed rows slice
CHECK_B, CHECK_T = 3, 333  # awkward sizes for the correctness check


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    group_sizes: tuple[int, ...]


SHAPES = (
    Shape("SmolLM2-135M", 576, 9, 3, 64, (1, 3)),
    Shape("Llama-3-8B", 4096, 32, 8, 128, (1, 4)),
    Shape("Llama-2-7B", 4096, 32, 32, 128, (1, 4)),
)


def group_rank(ratio: float, G: int, D: int, multiple: int = 16) -> int:
    return max(multiple, int(round(ratio * G * D / multiple)) * multiple)


class Factors:
    """Random factors of one layer: Uv/Uk per KV head (Hkv, D, r), o_proj Wo, and W_fused built in float64."""

    def __init__(self, s: Shape, G: int, rv: int, rk: int, gen: torch.Generator):
        self.s, self.G, self.rv, self.rk = s, G, rv, rk
        H, Hkv, D, hid = s.heads, s.kv_heads, s.head_dim, s.hidden
        self.ng, self.n_rep = Hkv // G, H // Hkv
        # tokens per chunk when (a) and the key side rebuild V / K: a (Hkv*D, chunk) tile of about 4 MiB stays in
        # the caches between its producer and consumer and in malloc's heap (no page faults per step)
        self.chunk = min(T_CAP, max(64, 2 ** int(math.log2(2**20 / (Hkv * D)))))
        # group g's (G*D, r) up-projection is rows [g*G*D, (g+1)*G*D) of these; viewed per KV head as (Hkv, D, r)
        self.uv = (torch.randn(Hkv * D, rv, generator=gen, dtype=torch.float64) / math.sqrt(rv)).view(Hkv, D, rv)
        self.uk = (torch.randn(Hkv * D, rk, generator=gen, dtype=torch.float64) / math.sqrt(rk)).view(Hkv, D, rk)
        self.wo = torch.randn(hid, H * D, generator=gen, dtype=torch.float64) / math.sqrt(H * D)
        self.inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        self.wf = self.fuse(self.uv)
        self.f32 = {k: getattr(self, k).float().contiguous() for k in ("uv", "uk", "wo", "wf")}

    def fuse(self, uv: torch.Tensor) -> torch.Tensor:
        s = self.s
        wo = self.wo.view(s.hidden, s.kv_heads, self.n_rep, s.head_dim)
        # block of head h = kv*n_rep + r: Wo[:, h*D:(h+1)*D] @ Uv_kv, in float64, rounded once to float32 later
        return torch.einsum("okrd,kdv->okrv", wo, uv).reshape(s.hidden, s.heads * self.rv)


# ---------------------------------------------------------------------------------------------------------------
# The timed float32 paths. p (B, H, T), hv (B, T, Rv) and hk (B, T, Rk) may be slices of larger buffers with
# contiguous rows. Per sequence b the groups are one batched matmul; the loop over b (at most 8) avoids the
# copies torch.matmul makes to merge (B, groups) batch dimensions of a strided latent view.


def reduce_latent(p: torch.Tensor, hv: torch.Tensor, f: Factors) -> torch.Tensor:
    """z_h = sum_t p_ht hv_t[g]: (Hkv, B, n_rep, rv), the same for (b) and (c)."""
    B, T = hv.shape[:2]
    zs = []
    for b in range(B):
        lat = hv[b].view(T, f.ng, f.rv).transpose(0, 1)  # (NG, T, rv)
        zs.append(torch.matmul(p[b].view(f.ng, f.G * f.n_rep, T), lat).view(f.s.kv_heads, f.n_rep, f.rv))
    return torch.stack(zs, dim=1)


def epilogue_b(z: torch.Tensor, f: Factors) -> torch.Tensor:
    Hkv, B = z.shape[:2]
    out = torch.bmm(z.view(Hkv, B * f.n_rep, f.rv), f.f32["uv"].transpose(1, 2))  # (Hkv, B*n_rep, D)
    out = out.view(Hkv, B, f.n_rep, f.s.head_dim).transpose(0, 1).reshape(B, -1)
    return F.linear(out, f.f32["wo"])


def epilogue_c(z: torch.Tensor, f: Factors) -> torch.Tensor:
    return F.linear(z.transpose(0, 1).reshape(z.shape[1], -1), f.f32["wf"])


def value_a(p: torch.Tensor, hv: torch.Tensor, f: Factors) -> torch.Tensor:
    B, T = hv.shape[:2]
    D, Hkv = f.s.head_dim, f.s.kv_heads
    uv_g = f.f32["uv"].view(f.ng, f.G * D, f.rv)
    outs = []
    for b in range(B):
        acc = torch.zeros(Hkv, D, f.n_rep)
        for t0 in range(0, T, f.chunk):
            t1 = min(t0 + f.chunk, T)
            # V^T head-major (NG, G*D, tc) = (Hkv, D, tc): contiguous, so p @ V needs no copy
            vt = torch.matmul(uv_g, hv[b, t0:t1].view(t1 - t0, f.ng, f.rv).permute(1, 2, 0)).view(Hkv, D, t1 - t0)
            acc.baddbmm_(vt, p[b, :, t0:t1].view(Hkv, f.n_rep, t1 - t0).transpose(1, 2))
        outs.append(acc.transpose(1, 2).reshape(-1))
    return F.linear(torch.stack(outs), f.f32["wo"])


def value_b(p: torch.Tensor, hv: torch.Tensor, f: Factors) -> torch.Tensor:
    return epilogue_b(reduce_latent(p, hv, f), f)


def value_c(p: torch.Tensor, hv: torch.Tensor, f: Factors) -> torch.Tensor:
    return epilogue_c(reduce_latent(p, hv, f), f)


def key_side(q: torch.Tensor, hk: torch.Tensor, pos: torch.Tensor, f: Factors, scaling: float) -> torch.Tensor:
    """p (B, H, T) = softmax(scaling * q . RoPE(Uk hk_t, pos_t)), keys rebuilt head-major and transposed (Hkv, D,
    tc) one token chunk at a time."""
    B, T = hk.shape[:2]
    D, Hkv, half = f.s.head_dim, f.s.kv_heads, f.s.head_dim // 2
    uk_g = f.f32["uk"].view(f.ng, f.G * D, f.rk)
    ps = []
    for b in range(B):
        qs = q[b].view(Hkv, f.n_rep, D) * scaling
        scores = torch.empty(Hkv, f.n_rep, T)
        for t0 in range(0, T, f.chunk):
            t1 = min(t0 + f.chunk, T)
            ang = f.inv_freq[:, None] * pos[b, t0:t1].to(torch.float64)[None, :]  # float64 angle, as the C path
            cos, sin = torch.cos(ang).float(), torch.sin(ang).float()  # (D/2, tc)
            kt = torch.matmul(uk_g, hk[b, t0:t1].view(t1 - t0, f.ng, f.rk).permute(1, 2, 0)).view(Hkv, D, t1 - t0)
            lo, hi = kt[:, :half], kt[:, half:]
            rot = torch.cat((lo * cos - hi * sin, hi * cos + lo * sin), dim=1)
            scores[..., t0:t1] = torch.bmm(qs, rot)
        ps.append(torch.softmax(scores, dim=-1).view(-1, T))
    return torch.stack(ps)


# ---------------------------------------------------------------------------------------------------------------
# float64 references with their own loops (per sequence, per head), on values and on absolute values


def value_reference(p, hv, f: Factors, uv=None):
    uv = f.uv if uv is None else uv
    s = f.s
    B, T = hv.shape[:2]
    p, hv = p.double(), hv.double()
    y = torch.zeros(B, s.hidden, dtype=torch.float64)
    y_abs = torch.zeros_like(y)
    for b in range(B):
        cat, cat_abs = [], []
        for h in range(s.heads):
            kv = h // f.n_rep
            g = kv // f.G
            lat = hv[b, :, g * f.rv:(g + 1) * f.rv]  # (T, rv)
            v = lat @ uv[kv].T  # (T, D): V rebuilt per token
            cat.append(p[b, h] @ v)
            cat_abs.append(p[b, h].abs() @ (lat.abs() @ uv[kv].abs().T))
        y[b] = f.wo @ torch.cat(cat)
        y_abs[b] = f.wo.abs() @ torch.cat(cat_abs)
    return y, y_abs


def key_reference(q, hk, pos, f: Factors, scaling: float):
    s = f.s
    B, T = hk.shape[:2]
    D, half = s.head_dim, s.head_dim // 2
    p = torch.zeros(B, s.heads, T, dtype=torch.float64)
    s_err = torch.zeros(B, s.heads, dtype=torch.float64)  # bound on the float32 score error, max over t
    n = f.rk + 2 + D + 4  # key dot + RoPE + score dot + cos/sin/scaling roundings
    for b in range(B):
        ang = pos[b].double()[:, None] * f.inv_freq[None, :]
        c, sn = torch.cos(ang), torch.sin(ang)  # (T, D/2)
        for h in range(s.heads):
            kv = h // f.n_rep
            g = kv // f.G
            lat = hk[b, :, g * f.rk:(g + 1) * f.rk].double()
            k = lat @ f.uk[kv].T
            k_abs = lat.abs() @ f.uk[kv].abs().T
            rot = torch.cat((k[:, :half] * c - k[:, half:] * sn, k[:, half:] * c + k[:, :half] * sn), dim=1)
            rot_abs = torch.cat((k_abs[:, :half] * c.abs() + k_abs[:, half:] * sn.abs(),
                                 k_abs[:, half:] * c.abs() + k_abs[:, :half] * sn.abs()), dim=1)
            qd = q[b, h].double()
            p[b, h] = torch.softmax(scaling * (rot @ qd), dim=0)
            s_err[b, h] = (n * EPS32 * scaling * (rot_abs @ qd.abs())).max()
    return p, s_err


def check_value(f: Factors, gen: torch.Generator) -> list[str]:
    s = f.s
    # a slice of a larger buffer, as the timed rows (and the cache's capacity) have it
    hv = torch.randn(CHECK_B + 1, CHECK_T + 50, f.ng * f.rv, generator=gen)[:CHECK_B, :CHECK_T]
    p = torch.softmax(3 * torch.randn(CHECK_B, s.heads, CHECK_T, generator=gen), dim=-1)
    ref, ref_abs = value_reference(p, hv, f)
    # gamma_n bound, n = reduction over T + rv + rv (c's W_fused rounding) + H*D or H*rv (o_proj or W_fused)
    n = CHECK_T + 2 * f.rv + s.heads * max(s.head_dim, f.rv) + 4
    bound = n * EPS32 * ref_abs
    lines = []
    for name, fn in (("a", value_a), ("b", value_b), ("c", value_c)):
        err = (fn(p, hv, f).double() - ref).abs()
        worst = float((err / (EPS32 * ref_abs)).max())
        if not bool((err <= bound).all()):
            raise AssertionError(f"{s.name} G={f.G} ({name}): error exceeds n*eps*|ref| with n = {n} "
                                 f"(max err/(eps*|ref|) = {worst:.1f})")
        lines.append(f"({name}) {worst:.1f}")
    # negative control: the wrong KV head's rows must be caught by the same bound
    wrong, _ = value_reference(p, hv, f, uv=f.uv.roll(1, dims=0))
    if bool(((wrong - ref).abs() <= bound).all()):
        raise AssertionError(f"{s.name} G={f.G}: the check does not detect a wrong head mapping")
    return lines + [f"n = {n}"]


def check_key(f: Factors, gen: torch.Generator) -> str:
    s = f.s
    hk = torch.randn(CHECK_B + 1, CHECK_T + 50, f.ng * f.rk, generator=gen)[:CHECK_B, :CHECK_T]
    q = torch.randn(CHECK_B, s.heads, s.head_dim, generator=gen)
    pos = torch.arange(CHECK_T, dtype=torch.int32).repeat(CHECK_B, 1) + 4000  # large positions: RoPE phase
    scaling = s.head_dim ** -0.5
    ref, s_err = key_reference(q, hk, pos, f, scaling)
    # |dp| <= p_ref * (expm1(2 * max score error) + (T + 4) eps): exp and the normalizer, in float32
    bound = ref * (torch.expm1(2 * s_err)[..., None] + (CHECK_T + 4) * EPS32)
    err = (key_side(q, hk, pos, f, scaling).double() - ref).abs()
    if not bool((err <= bound).all()):
        raise AssertionError(f"{s.name} G={f.G} key side: probabilities outside the a-priori bound")
    return f"max err/bound {float((err / bound).max()):.3f}"


# ---------------------------------------------------------------------------------------------------------------
# timing

_FLUSH = torch.zeros(16 * 1024 * 1024)  # 64 MiB, twice the 32 MiB L3 of the test machine


def timed(fns: dict, repeats: int, budget: float, flush: bool = True) -> dict[str, float]:
    """Median seconds per call of each function. The functions take turns (one call each per round), so a load
    change on the shared machine hits all of them alike; at least 3 rounds, at most `repeats`, stopping once
    the calls have used `budget` seconds per function."""
    for fn in fns.values():
        fn()  # warm-up: allocator, thread pool, MKL kernels
    times = {name: [] for name in fns}
    for rnd in range(repeats):
        for name, fn in fns.items():
            if flush:
                _FLUSH.add_(1.0)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        if rnd >= 2 and sum(map(sum, times.values())) > budget * len(fns):
            break
    return {name: statistics.median(v) for name, v in times.items()}


def macs(f: Factors, T: int, B: int) -> dict[str, int]:
    s, rv, rk = f.s, f.rv, f.rk
    H, Hkv, D, hid = s.heads, s.kv_heads, s.head_dim, s.hidden
    red = H * T * rv
    return {"a": B * (T * Hkv * D * rv + H * T * D + hid * H * D), "b": B * (red + H * D * rv + hid * H * D),
            "c": B * (red + hid * H * rv), "key": B * (T * Hkv * D * rk + 2 * T * Hkv * D + H * T * D)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=11, help="at most this many timed calls per method")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per method and row before stopping")
    parser.add_argument("--ratio", type=float, default=0.5, help="kept fraction of each group's G*D dimensions")
    parser.add_argument("--tokens", default="512,2048,8192")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--shapes", default=",".join(s.name for s in SHAPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.budget <= 0 or not 0 < args.ratio <= 1:
        raise ValueError("--threads and --repeats must be >= 1, --budget > 0 and --ratio in (0, 1]")
    tokens = [int(t) for t in args.tokens.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    if not all(1 <= t <= T_CAP for t in tokens) or not all(1 <= b <= B_CAP for b in batches):
        raise ValueError(f"--tokens must lie in [1, {T_CAP}] and --batches in [1, {B_CAP}]")
    known = {s.name: s for s in SHAPES}
    unknown = [n for n in args.shapes.split(",") if n not in known]
    if unknown:
        raise ValueError(f"--shapes: unknown {unknown}; choose among {list(known)}")
    shapes = [known[n] for n in args.shapes.split(",")]
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)

    static_rows, rows, checks = [], [], []
    with torch.inference_mode():
        for s in shapes:
            for G in s.group_sizes:
                rv = rk = group_rank(args.ratio, G, s.head_dim)
                f = Factors(s, G, rv, rk, gen)
                chunk = f.chunk
                f.chunk = 100  # also check several chunks with a ragged last one (333 = 3*100 + 33)
                check_value(f, gen)
                check_key(f, gen)
                f.chunk = chunk
                vcheck = check_value(f, gen)
                kcheck = check_key(f, gen)
                checks.append(f"- {s.name} G={G} rv={rv}: value max err/(eps*|ref|): {', '.join(vcheck)}; "
                              f"wrong-head control caught; key side {kcheck}")
                print(checks[-1], flush=True)

                H, Hkv, D, hid = s.heads, s.kv_heads, s.head_dim, s.hidden
                epi = {}
                for B in (1, 8):
                    z = torch.randn(Hkv, B, f.n_rep, rv, generator=gen)
                    for cold in (True, False):
                        t = timed({"b": lambda: epilogue_b(z, f), "c": lambda: epilogue_c(z, f)},
                                  args.repeats * 4, args.budget, flush=cold)
                        epi[B, cold] = (t["b"], t["c"])
                thr_flop = hid * D / (hid - D)
                thr_byte = hid * H * D / (hid * H - Hkv * D)
                static_rows.append({
                    "shape": s.name, "G": G, "rv": rv, "Rv": f.ng * rv, "thr_flop": thr_flop, "thr_byte": thr_byte,
                    "pred": "c" if rv < thr_flop else "b", "epi": epi,
                    "flop_cb": hid * H * rv / (H * D * rv + hid * H * D),
                    "w_ab": 4 * (Hkv * D * rv + hid * H * D), "w_c": 4 * hid * H * rv,
                    "p_wo": hid * H * D, "p_uv": Hkv * D * rv, "p_wf": hid * H * rv})

                hv_cap = torch.randn(B_CAP, T_CAP, f.ng * rv, generator=gen)
                hk_cap = torch.randn(B_CAP, T_CAP, f.ng * rk, generator=gen)
                for T in tokens:
                    for B in batches:
                        hv, hk = hv_cap[:B, :T], hk_cap[:B, :T]
                        p = torch.softmax(3 * torch.randn(B, H, T, generator=gen), dim=-1)
                        q = torch.randn(B, H, D, generator=gen)
                        pos = torch.arange(T, dtype=torch.int32).repeat(B, 1)
                        t = timed({"a": lambda: value_a(p, hv, f), "b": lambda: value_b(p, hv, f),
                                   "c": lambda: value_c(p, hv, f), "key": lambda: key_side(q, hk, pos, f, D ** -0.5)},
                                  args.repeats, args.budget)
                        rows.append({"shape": s.name, "G": G, "rv": rv, "T": T, "B": B, "t": t,
                                     "macs": macs(f, T, B)})
                        print(f"  {s.name:<13} G={G} rv={rv:<4} T={T:<5} B={B}  a {t['a'] * 1e3:8.3f}  "
                              f"b {t['b'] * 1e3:8.3f}  c {t['c'] * 1e3:8.3f}  key {t['key'] * 1e3:8.3f} ms",
                              flush=True)
                del hv_cap, hk_cap

    load1 = os.getloadavg()
    elapsed = time.perf_counter() - t_start
    header = (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared); "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average (1/5/15 min) "
              f"{load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f} at start, {load1[0]:.2f}/{load1[1]:.2f}/"
              f"{load1[2]:.2f} at end; {elapsed:.0f} s in all")
    if args.threads < (os.cpu_count() or 1) and load0[0] >= 1.0:
        header += (f". Run with --threads {args.threads} because the machine was busy (1-min load {load0[0]:.2f} "
                   f"on {os.cpu_count()} cores): absolute times are those of {args.threads} thread(s)")
    lines = [
        "# bench_value_fold: value up-projection in one decode step, CPU float32", "", header, "",
        f"Command: `python python/bench_value_fold.py {' '.join(os.sys.argv[1:])}`".rstrip(), "",
        "Ways (see the script's docstring): (a) rebuild V for every cached token, p @ V, o_proj; (b) fold: "
        "z_h = p_h @ hv[g], Uv_kv z_h per head, o_proj (palu_c's C path today); (c) fused: z_h, then one product "
        f"with W_fused = o_proj x Uv per head. ratio {args.ratio}: rv_g = ratio*G*D rounded to 16, keys the "
        "same rank. Times: median wall time of one call with weights and latents evicted from the caches "
        "beforehand (64 MiB rewrite); B = sequences in the batch, T = cached tokens.", "",
        "Rule: per sequence and step, (c) costs hidden*sum_h rv_g(h) multiply-adds after the reduction, (b) "
        "H*D*rv_g + hidden*H*D; with one rank per layer (c) is cheaper iff rv_g < hidden*D/(hidden-D) (about D: "
        "72 for SmolLM2, 132.1 for the Llamas); the reduction z_h = p_h @ hv[g] is common to both.", "",
        "## Correctness (before timing)", "",
        f"B={CHECK_B}, T={CHECK_T}, against float64 references that rebuild V / K per token and head. Bound: "
        "|y - ref| <= n * eps32 * ref_abs elementwise (ref_abs: same computation on absolute values; n stated); "
        "keys: |p - p_ref| <= p_ref * (expm1(2 * score error bound) + (T + 4) * eps32), positions 4000..4332. "
        "Shown: the largest observed error in units of eps32 * ref_abs (must stay <= n).", ""] + checks + [
        "",
        "## Per layer: the rule, the epilogue alone, weights and parameters", "",
        "Epilogue = everything after z (the only part where (b) and (c) differ): (b) Uv_kv z_h per head + "
        "o_proj; (c) W_fused z. rv* (FLOPs) = hidden*D/(hidden-D), rv* (bytes) = hidden*H*D/(hidden*H-Hkv*D): "
        "(c) is cheaper iff rv_g < rv*. FLOP c/b and bytes c/b: the epilogue's analytic ratios (weights "
        "float32, read once per step whatever B). Measured c/b: cold = caches flushed before each call (as in "
        "decode, where the other layers evict this one's weights), warm = weights cache-resident. 'measured' "
        "takes the cold ratios: c if both batches are below 0.9, b if both are above 1.1, else tie. "
        "Parameters of (c): W_fused = hidden x H*rv_g; '+kept beside' = added while o_proj and Uv stay (the "
        "prefill / PyTorch path uses them), '+replacing' = o_proj and Uv dropped.", "",
        "| shape | G | rv_g | Rv | rv* FLOPs | rv* bytes | predicted | FLOP c/b | bytes c/b | (b) B=1 cold us | "
        "(c) B=1 cold us | c/b B=1 cold | (b) B=8 cold us | (c) B=8 cold us | c/b B=8 cold | c/b B=1 warm | "
        "c/b B=8 warm | measured | agrees | weights (a),(b) MB | weights (c) MB | W_fused / o_proj | "
        "+params kept beside | +params replacing |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in static_rows:
        e = r["epi"]
        cold = [e[B, True][1] / e[B, True][0] for B in (1, 8)]
        measured = "c" if max(cold) < 0.9 else "b" if min(cold) > 1.1 else "tie"
        agrees = "tie" if measured == "tie" else "yes" if measured == r["pred"] else "NO"
        net = r["p_wf"] - r["p_wo"] - r["p_uv"]
        lines.append(
            f"| {r['shape']} | {r['G']} | {r['rv']} | {r['Rv']} | {r['thr_flop']:.1f} | {r['thr_byte']:.1f} | "
            f"{r['pred']} | {r['flop_cb']:.2f} | {r['w_c'] / r['w_ab']:.2f} | "
            f"{e[1, True][0] * 1e6:.0f} | {e[1, True][1] * 1e6:.0f} | {cold[0]:.2f} | "
            f"{e[8, True][0] * 1e6:.0f} | {e[8, True][1] * 1e6:.0f} | {cold[1]:.2f} | "
            f"{e[1, False][1] / e[1, False][0]:.2f} | {e[8, False][1] / e[8, False][0]:.2f} | {measured} | "
            f"{agrees} | {r['w_ab'] / 2**20:.2f} | {r['w_c'] / 2**20:.2f} | {r['p_wf'] / r['p_wo']:.2f} | "
            f"{r['p_wf'] / 1e6:+.2f} M | {net / 1e6:+.2f} M |")
    lines += [
        "", "## One decode step, value side (p given) and key side", "",
        "a/b, c/b: time ratio against (b) (below 1 = faster than (b)). (b) and (c) run the same reduction "
        "code, so their difference should be the epilogue's: 'c/b via epi' = 1 - (epi (b) - epi (c)) / (b), "
        "with the cold epilogue times above; a measured c/b far from it is timing noise of the shared machine. "
        "MMAC = million multiply-adds. key = keys rebuilt from hk (same rank) + RoPE (angles in float64) + "
        "scores + softmax, i.e. what produces p; b/key = value side (b) over key side.", "",
        "| shape | G | rv_g | T | B | (a) ms | (b) ms | (c) ms | a/b | c/b | c/b via epi | MMAC (a) | MMAC (b) | "
        "MMAC (c) | key ms | MMAC key | b/key |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    epi_of = {(r["shape"], r["G"]): r["epi"] for r in static_rows}
    for r in rows:
        t, m = r["t"], r["macs"]
        e = epi_of[r["shape"], r["G"]].get((r["B"], True))
        via = "" if e is None else f"{1 - (e[0] - e[1]) / t['b']:.2f}"
        lines.append(
            f"| {r['shape']} | {r['G']} | {r['rv']} | {r['T']} | {r['B']} | {t['a'] * 1e3:.3f} | "
            f"{t['b'] * 1e3:.3f} | {t['c'] * 1e3:.3f} | {t['a'] / t['b']:.2f} | {t['c'] / t['b']:.2f} | {via} | "
            f"{m['a'] / 1e6:.1f} | {m['b'] / 1e6:.2f} | {m['c'] / 1e6:.2f} | {t['key'] * 1e3:.3f} | "
            f"{m['key'] / 1e6:.1f} | {t['b'] / t['key']:.3f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
