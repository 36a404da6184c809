"""Which CUDA decode kernel serves each layer of a compress_kv model, by rank search mode.

    python python/kernel_coverage.py [--layers 4] [--ratio 0.5] [--group 1]

Compresses random-weight models of Llama-2-7B (MHA) and Llama-3-8B (GQA) shapes with each ``search`` mode of
``palu_c.compress_kv`` and prints, per layer, the kernel auto dispatch takes for a decode step (from
``palu_c.latent_kernels.latent_decode_workspace_size``) and the layer's key / value ranks. The fast kernels take only
some ranks (v9: every rank 64 at group 1 on MHA; v4: equal key and value ranks of 32, 64 or 128); any other layer runs
the general v2 kernel (notes "Where the 1.8x target stands (end of the fourth session of 2026-11-30)"). Random
weights make the Fisher scores arbitrary, so the ranks are illustrative; the structure (per-group and per-K/V ranks)
is what the search modes produce on real models too. Needs CUDA.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the in-place build

import palu_c  # noqa: E402
from palu_c.kv import SEARCH_MODES  # noqa: E402
import palu_c.latent_kernels as lk  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--group", type=int, default=1)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_coverage.py needs a CUDA device")
    from transformers import LlamaConfig, LlamaForCausalLM

    print(f"ratio {args.ratio}, group size {args.group}, fp16; per layer: kernel k[key ranks] v[value ranks]")
    for shape, kv_heads in (("llama2-7b", 32), ("llama3-8b", 8)):
        cfg = LlamaConfig(vocab_size=4096, hidden_size=4096, intermediate_size=4096, num_hidden_layers=args.layers,
                          num_attention_heads=32, num_key_value_heads=kv_heads, head_dim=128, initializer_range=0.05)
        torch.manual_seed(0)
        base = LlamaForCausalLM(cfg).cuda().eval()
        calib = torch.randint(0, cfg.vocab_size, (8, 128), device="cuda")
        for search in SEARCH_MODES:
            model = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=args.ratio, group_size=args.group,
                                       search=search, progress=False).half()
            cells = []
            for layer in model.model.layers:
                attn = layer.self_attn
                _, number = lk.latent_decode_workspace_size(1, cfg.num_attention_heads, kv_heads, 128, args.group,
                                                            16384, attn.k_ranks, attn.v_ranks, torch.float16, "cuda")
                cells.append(f"{lk.KERNEL_NAMES[number]} k{sorted(set(attn.k_ranks))} v{sorted(set(attn.v_ranks))}")
            print(f"{shape} {search}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
