"""Study: the numerics of an absorbed-RoPE decode kernel for group size 2 (CPU, NumPy, seconds).

Why (docs/design/latent_decode_notes.md, "A route left for the MHA group-size-2 rows"): v9 reaches the DRAM floor at
group size 1 by never rotating a key. It rotates the query to each slot's anchor instead and multiplies it into the
key up-projection, W = Qa U, so a slot's score is one dot product W[k] . c of the slot's latent. At group size 2 on the
interpolative key basis a head's key is [U_lo c | c_stored_lo | U_hi c | c_stored_hi] (RoPE pairs lo/hi, half of them
latent columns as stored), so the absorbed form is

    W'[k] = Qa_rebuilt[k] . U_half  +  scatter(Qa_stored[k])       (one rank-128 vector per slot)
    score = W'[k] . c_k

where scatter puts the stored pairs' query values into their latent columns. A kernel would compute the first term
on wgmma (64 anchors x 64 rebuilt dimensions x 128 ranks) starting from the second as its accumulators, then the
dot products on mma.sync. The design question this script answers before any kernel is written: can W accumulate
in fp16 (32 registers per 64 x 128 tile instead of 64, what makes a double-buffered W fit), and what does rounding
W' to the dtype for the score product cost, against today's path (v11: keys rebuilt, rounded to fp16, rotated)?

Everything is random but shaped like the kernels' inputs (head_dim 128, two heads sharing a rank-128 latent, 32
stored and 32 rebuilt RoPE pairs per head, base-10000 frequencies permuted per head, consecutive positions from a
large base); references in float64. Relative errors of the scores and of the attention output over T slots, for
fp16 and bf16 storage and a plain and a sharp softmax.

Run: ``python python/study_absorbed_g2.py`` (``--tokens 4096``, ``--trials 16``, ``--seed 0``).
"""
from __future__ import annotations

import argparse

import numpy as np

D, HALF, G, R = 128, 64, 2, 128  # head_dim, RoPE pairs, heads per group, group rank
NPAIR = HALF // 2  # stored (and rebuilt) pairs per head: 32


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float64/float32 values to bfloat16 (round to nearest even), returned as float64."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def rnd(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round to the storage dtype, back in float64."""
    if dtype == "float16":
        return np.asarray(x, dtype=np.float16).astype(np.float64)
    return to_bf16(x)


def matmul_acc(a: np.ndarray, b: np.ndarray, acc: str, init: np.ndarray | None = None) -> np.ndarray:
    """a (M x K) . b (K x N) as a tensor-core product accumulates: fp32 (rounded once at the end), or fp16 (the
    accumulators rounded after every k16 step, as the emulator models wgmma's fp16 form); `init` starts them."""
    out = np.zeros((a.shape[0], b.shape[1])) if init is None else init.astype(np.float64).copy()
    if acc == "fp32":
        return (out + a @ b).astype(np.float32).astype(np.float64)
    for k0 in range(0, a.shape[1], 16):
        out = rnd(out + a[:, k0:k0 + 16] @ b[k0:k0 + 16], "float16")
    return out


def rope(x_lo: np.ndarray, x_hi: np.ndarray, ang: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate pairs (lo, hi) by angles `ang` (broadcast): RoPE's rotate_half convention."""
    c, s = np.cos(ang), np.sin(ang)
    return x_lo * c - x_hi * s, x_lo * s + x_hi * c


def trial(rng: np.random.Generator, T: int, dtype: str, q_scale: float) -> dict[str, tuple[float, float]]:
    inv_freq = 10000.0 ** (-np.arange(HALF) / HALF)
    c = rnd(rng.standard_normal((T, R)), dtype)  # key latents, stored in the dtype
    v = rnd(rng.standard_normal((T, R)), dtype)  # value latents
    pos = 1_000_000 + np.arange(T)  # consecutive positions from a large base
    res: dict[str, list[tuple[float, float]]] = {}
    for h in range(G):
        # head h's pairs: a random permutation of the 64 frequencies; the first 32 rebuilt, the last 32 stored
        freq = inv_freq[rng.permutation(HALF)]
        f_rb, f_st = freq[:NPAIR], freq[NPAIR:]
        st_lo = np.arange(NPAIR) + NPAIR * h  # the stored pairs' latent columns (box 0: lower members)
        st_hi = st_lo + HALF  # (box 1: upper members)
        u_lo = rnd(rng.standard_normal((NPAIR, R)) / np.sqrt(R), dtype)  # U rows of the rebuilt pairs
        u_hi = rnd(rng.standard_normal((NPAIR, R)) / np.sqrt(R), dtype)
        q = rng.standard_normal(D) * q_scale
        q_rb_lo, q_st_lo, q_rb_hi, q_st_hi = q[:NPAIR], q[NPAIR:HALF], q[HALF:HALF + NPAIR], q[HALF + NPAIR:]
        scale = 1.0 / np.sqrt(D)

        # float64 reference: keys rebuilt exactly, rotated by each slot's position
        k_rb_lo, k_rb_hi = c @ u_lo.T, c @ u_hi.T
        a_rb = np.outer(pos, f_rb)
        a_st = np.outer(pos, f_st)
        r_lo, r_hi = rope(k_rb_lo, k_rb_hi, a_rb)
        s_lo, s_hi = rope(c[:, st_lo], c[:, st_hi], a_st)
        s_ref = (r_lo @ q_rb_lo + r_hi @ q_rb_hi + s_lo @ q_st_lo + s_hi @ q_st_hi) * scale

        def output(s: np.ndarray) -> np.ndarray:
            p = np.exp(s - s.max())
            return (p / p.sum()) @ v

        z_ref = output(s_ref)

        def record(name: str, s: np.ndarray) -> None:
            es = np.linalg.norm(s - s_ref) / np.linalg.norm(s_ref)
            ez = np.linalg.norm(output(s) - z_ref) / np.linalg.norm(z_ref)
            res.setdefault(name, []).append((es, ez))

        # today's path (v11 on the interpolative basis): keys rebuilt on tensor cores (fp32 accumulators, or fp16
        # ones for fp16 models), rounded to fp16, rotated by R(k) of the slot's row and the query by R(A) of the
        # step's anchor (both in fp16 operands), the score accumulated in fp32
        for acc in ("fp32", "fp16") if dtype == "float16" else ("fp32",):
            kl = rnd(matmul_acc(c, u_lo.T, acc), "float16")
            kh = rnd(matmul_acc(c, u_hi.T, acc), "float16")
            anchor = (pos // 64) * 64
            k_off = pos - anchor
            rl, rh = rope(kl, kh, np.outer(k_off, f_rb))
            sl, sh = rope(rnd(c[:, st_lo], "float16"), rnd(c[:, st_hi], "float16"), np.outer(k_off, f_st))
            rl, rh, sl, sh = (rnd(x, "float16") for x in (rl, rh, sl, sh))
            # Q_A = R(A)^T q per step anchor (one per 64 slots), fp16
            qa_rb_lo, qa_rb_hi = rope(q_rb_lo[None, :], q_rb_hi[None, :], -np.outer(anchor, f_rb))
            qa_st_lo, qa_st_hi = rope(q_st_lo[None, :], q_st_hi[None, :], -np.outer(anchor, f_st))
            qa = [rnd(x, "float16") for x in (qa_rb_lo, qa_rb_hi, qa_st_lo, qa_st_hi)]
            s = (rl * qa[0]).sum(1) + (rh * qa[1]).sum(1) + (sl * qa[2]).sum(1) + (sh * qa[3]).sum(1)
            record(f"v11 (keys rebuilt, {acc} acc)", s.astype(np.float32).astype(np.float64) * scale)

        # the absorbed form: each slot's anchor is its own position (regular positions), Qa = R(a_k)^T q rounded to
        # the dtype (the wgmma A operand), W' = Qa_rb . U_half + scatter(Qa_st), W' rounded to the dtype (the score
        # product's A operand), score = W' . c in fp32
        qa_rb_lo, qa_rb_hi = rope(q_rb_lo[None, :], q_rb_hi[None, :], -a_rb)
        qa_st_lo, qa_st_hi = rope(q_st_lo[None, :], q_st_hi[None, :], -a_st)
        qa_rb = rnd(np.concatenate([qa_rb_lo, qa_rb_hi], 1), dtype)  # T x 64
        u_half = np.concatenate([u_lo, u_hi], 0)  # 64 x R
        init = np.zeros((T, R))
        init[:, st_lo], init[:, st_hi] = qa_st_lo, qa_st_hi
        for acc in ("fp32", "fp16") if dtype == "float16" else ("fp32",):
            w = matmul_acc(qa_rb, u_half, acc, init=rnd(init, dtype))
            w = rnd(w, dtype)
            s = (w * c).sum(1).astype(np.float32).astype(np.float64)
            record(f"absorbed ({acc} W acc)", s * scale)
    return {k: np.array(v_) for k, v_ in res.items()}  # per head: (score error, output error)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"# absorbed-RoPE numerics at G = 2 (D {D}, rank {R}, {NPAIR} stored + {NPAIR} rebuilt pairs per head), "
          f"{args.tokens} slots, {args.trials} trials x {G} heads (every path on the same draws); relative errors "
          f"against float64, median / worst over the heads\n")
    print("| dtype | softmax | path | scores | output (median / worst) |")
    print("|---|---|---|---|---|")
    for dtype in ("float16", "bfloat16"):
        for q_scale, label in ((1.0, "plain"), (3.0, "sharp (q x 3)")):
            errs: dict[str, list[np.ndarray]] = {}
            for _ in range(args.trials):
                for k, e in trial(rng, args.tokens, dtype, q_scale).items():
                    errs.setdefault(k, []).append(e)
            for k, lst in errs.items():
                e = np.concatenate(lst)
                print(f"| {dtype} | {label} | {k} | {np.median(e[:, 0]):.2e} / {e[:, 0].max():.2e} | "
                      f"{np.median(e[:, 1]):.2e} / {e[:, 1].max():.2e} |")


if __name__ == "__main__":
    main()
