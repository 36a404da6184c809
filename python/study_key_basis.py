"""Study: an interpolative basis for the key latent, on the embedded model's real weights (CPU, ~1 minute).

Why (docs/design/latent_decode_notes.md, "An interpolative key basis"): the decode kernels rebuild a group's keys as
K = U h, (G*D x r) x r MACs per cached slot, and on v10/v11 that tensor work, not DRAM, is what keeps the G = 1 GQA
and G = 2 rows under 1.8x (run 167: half the MACs cut v11's batch-8 kernel by 17-20%, v10's by 8.5-9.5%). Any
invertible r x r matrix T can be folded into the factors, down' = T down and U' = U T^-1, without changing a single
rebuilt key in exact arithmetic. Taking T = U[S] for r chosen rows S makes U'[S] the identity: those r key
coordinates ARE the latent, and only the other G*D - r rows of U' need multiplying (half at ratio 0.5).

What can go wrong is numeric: the latent is stored in fp16/bf16, and the rounding error of h' = T h reaches the keys
through U' = U T^-1, amplified by up to cond(T). This script measures, per head group of a ratio-0.5 compression
(uniform ranks, so every group has r = G*D/2), the relative error of the rebuilt keys over held-out tokens when the
latent is rounded to the storage dtype, for the current (SVD) basis and for three row selections:

- ``pivot``: r rows by QR with column pivoting of U^T (any rows);
- ``pairs``: whole RoPE pairs (d, d + D/2 of a head) chosen greedily by the volume they add (block pivoting), then
  improved by pair swaps while a swap grows |det T| by more than 1% (block maxvol). The kernels need this form:
  a pair's two coordinates rotate together, so a pair is either rebuilt or read from the latent whole;
- ``balanced``: ``pairs`` with as many pairs from every head of the group (what a kernel serving one head per
  warpgroup needs, v11's layout); the same as ``pairs`` at G = 1;
- ``first``: the first r/2 pairs of each group, fixed (the cheapest kernel; a lower bound on the damage).

Run: ``python python/study_key_basis.py`` (``--groups 1 3``, ``--dtype float16 bfloat16``, ``--tokens 512``).
"""
from __future__ import annotations

import argparse

import numpy as np
import scipy.linalg

from palu_c import key_basis


def select_pivot(up: np.ndarray) -> np.ndarray:
    _, _, piv = scipy.linalg.qr(up.T, pivoting=True, mode="economic")
    return np.sort(piv[: up.shape[1]])


def select_first(up: np.ndarray, head_dim: int) -> np.ndarray:
    pairs = key_basis.rope_pairs(up.shape[0], head_dim)
    return pairs[: up.shape[1] // 2].reshape(-1)


def storage_error(h: np.ndarray, up: np.ndarray, rnd) -> float:
    """Relative Frobenius error of the keys h @ up.T when h is stored rounded by ``rnd``."""
    keys = h @ up.T
    return float(np.linalg.norm(rnd(h) @ up.T - keys) / np.linalg.norm(keys))


def main() -> None:
    import torch

    import palu_c
    from palu_c.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--dtype", nargs="+", default=["float16", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--calib", type=int, default=8, help="calibration windows of 256 tokens")
    args = ap.parse_args()
    rounders = {name: (lambda a, t=getattr(torch, name): torch.from_numpy(a).to(t).double().numpy())
                for name in args.dtype}
    from palu_c.demo import _sample_text, _windows

    for gsize in args.groups:
        model, tok = load_model(dtype=torch.float32)
        calib = _windows(tok, _sample_text("calibration_emma.txt"), args.calib, 256)  # the demo's calibration
        held = tok(_sample_text("eval_persuasion.txt"), return_tensors="pt").input_ids[:, : args.tokens]
        inputs = {}
        hooks = [layer.self_attn.k_proj.register_forward_hook(
            lambda m, a, o, i=i: inputs.__setitem__(i, a[0][0].double().numpy()))
            for i, layer in enumerate(model.model.layers)]
        with torch.no_grad():
            model(held)
        for hk in hooks:
            hk.remove()
        palu_c.compress_kv(model, calib, ratio=0.5, group_size=gsize, search="uniform", progress=False)
        head_dim = model.palu_config.head_dim
        rows = gsize * head_dim
        kinds = ("pivot", "pairs", "balanced", "first")
        res = {name: {k: [] for k in ("svd", *kinds)} for name in args.dtype}
        conds = {k: [] for k in kinds}
        maxx = {k: [] for k in kinds}
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            down = attn.k_down.weight.detach().double().numpy()
            off = 0
            for g, r in enumerate(attn.k_ranks):
                up = attn.k_ups[g].detach().double().numpy()
                h = inputs[i] @ down[off: off + r].T
                off += r
                for name, rnd in rounders.items():
                    res[name]["svd"].append(storage_error(h, up, rnd))
                all_pairs = key_basis.rope_pairs(rows, head_dim)
                pairs = all_pairs[key_basis.select_pairs(up, head_dim)].reshape(-1)
                balanced = all_pairs[key_basis.select_pairs(up, head_dim, balanced=True)].reshape(-1) \
                    if (r // 2) % gsize == 0 else pairs
                for kind, sel in (("pivot", select_pivot(up)), ("pairs", pairs), ("balanced", balanced),
                                  ("first", select_first(up, head_dim))):
                    t = up[sel]
                    conds[kind].append(np.linalg.cond(t))
                    up2 = up @ np.linalg.inv(t)
                    maxx[kind].append(np.abs(up2).max())
                    for name, rnd in rounders.items():
                        res[name][kind].append(storage_error(h @ t.T, up2, rnd))
        n = len(conds["pivot"])
        print(f"\ngroup size {gsize}: {n} key groups, rank {rows // 2} of {rows} rows, {args.tokens} held-out tokens")
        print(f"{'selection':<8} {'cond(T) median':>14} {'max':>8} {'max|U T^-1|':>12}")
        for kind in conds:
            print(f"{kind:<8} {np.median(conds[kind]):>14.1f} {np.max(conds[kind]):>8.1f} {np.max(maxx[kind]):>12.2f}")
        for name in args.dtype:
            base = np.array(res[name]["svd"])
            print(f"{name}: key error of the stored latent, current basis median {np.median(base):.2e} "
                  f"max {base.max():.2e}; other bases as multiples of the current, per group")
            for kind in conds:
                ratio = np.array(res[name][kind]) / base
                print(f"  {kind:<8} median {np.median(ratio):6.2f}x  p90 {np.quantile(ratio, 0.9):6.2f}x  "
                      f"max {ratio.max():7.2f}x")


if __name__ == "__main__":
    main()
