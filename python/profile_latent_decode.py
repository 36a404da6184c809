"""One launch of the fused latent decode kernel on one shape, for Nsight Compute (ncu) profiling.

Run:  ncu --set full -k regex:latent --launch-skip 3 --launch-count 2 \
          python python/profile_latent_decode.py --shape llama3-8b --tokens 65536 --batch 1 --group 1 --impl v4
Builds random fp16 latents at ratio 0.5 (rk_g = rv_g = 0.5 G D), warms up 3 launches, then launches twice.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the in-place build

from palu_c import latent_kernels as lk  # noqa: E402
from palu_c.bench import interpolative_layout  # noqa: E402

# "mha1": one head per sequence, for layout probes: batch B x 32 of it moves Llama-2-7B batch B's bytes through the
# same CTAs, each reading its (sequence, head) latents as one contiguous run instead of 128 bytes of every 4 KB row
SHAPES = {"llama3-8b": (32, 8, 128), "llama2-7b": (32, 32, 128), "smollm2": (9, 3, 64), "mha1": (1, 1, 128)}


def decode_step(shape: str, tokens: int, batch: int, group: int, impl: str, key_basis: str = "svd"):
    """A no-argument callable running one decode step (kernel + merge) on random fp16 latents at ratio 0.5; with
    ``key_basis="interpolative"`` the up-projections in that layout (random pairs) and their pair table."""
    H, Hkv, D = SHAPES[shape]
    G, B, T = group, batch, tokens
    r = G * D // 2
    NG = Hkv // G
    dev, dt = torch.device("cuda"), torch.float16
    q = torch.randn(B, H, D, device=dev, dtype=dt)
    hk = torch.randn(B, T, NG * r, device=dev, dtype=dt)
    hv = torch.randn(B, T, NG * r, device=dev, dtype=dt)
    pos = torch.arange(T, device=dev, dtype=torch.int32).expand(B, T).contiguous()
    pad = torch.zeros(B, device=dev, dtype=torch.int32)
    ups = torch.randn(NG, G * D, r, device=dev, dtype=dt) / r ** 0.5
    k_pairs = None
    if key_basis == "interpolative":
        ups = interpolative_layout(ups, D, torch.Generator(device=dev))
        k_pairs = lk.key_pairs(list(ups), D)
    k_up = lk.pack_k_up(list(ups))
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
    return lambda: lk.latent_decode_attention_cuda(q, hk, hv, pos, pad, T, k_up, [r] * NG, [r] * NG, G, inv_freq,
                                                   impl=impl, k_pairs=k_pairs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--group", type=int, default=1)
    ap.add_argument("--impl", default="auto", choices=sorted(lk._IMPLS),
                    help="kernel (palu_c.latent_kernels names: auto, v1, v2, v3, v3w, v4, v5, v9, v10, v11)")
    ap.add_argument("--key-basis", default="svd", choices=["svd", "interpolative"])
    args = ap.parse_args()
    step = decode_step(args.shape, args.tokens, args.batch, args.group, args.impl, args.key_basis)
    for _ in range(5):
        step()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
