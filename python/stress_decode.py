"""Repeat one decode step of the CUDA latent kernel many times and report the first fault or changed output.

    python python/stress_decode.py --shape llama2-7b --batch 8 --tokens 16384 --impl auto --calls 3000 [--bench-like]

Why: the benchmark failed intermittently (runs 73, 81, 89: once a float64 check, twice "unspecified launch failure"
in the middle of a timing loop), so a fault that appears about once per thousand calls has to be made to happen on
demand. Each call writes into the same output; every `--check-every` calls the output is compared bit for bit with
the first call's (the kernels are deterministic: fixed split order), and the stream is synchronized so a fault
surfaces near the call that caused it. `--bench-like` puts the benchmark's L2 flush and ~1 ms GPU sleep before
every call; `--churn` makes every check also do what the benchmark does between rows: a full-cache SDPA call over
freshly allocated random K/V, then new workspace and output buffers from the caching allocator (so they hold the
freed caches' data, at new addresses); `--realloc` makes every check end the case as the benchmark ends one: new
latents from a new seed, after `torch.cuda.empty_cache()` has handed the old ones back to the driver (freshly mapped
latents scramble the order in which TMA copies land: at 128K this made v9's old stage race fault within 20 calls;
notes, "The fault's cause"). Run each configuration in its own process: a fault leaves the CUDA context unusable.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the in-place build

from palu_c import latent_kernels as lk  # noqa: E402
from palu_c.bench import call, latent_case  # noqa: E402
from palu_c.shapes import ATTENTION_SHAPES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(ATTENTION_SHAPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--group", type=int, default=1)
    ap.add_argument("--impl", default="auto")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--bench-like", action="store_true", help="an L2 flush and a ~1 ms GPU sleep before each call")
    ap.add_argument("--churn", action="store_true", help="an SDPA call and new buffers at every check")
    ap.add_argument("--realloc", action="store_true",
                    help="new latents (new seed) after emptying torch's cache at every check")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("stress_decode.py: needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    if args.calls < 1 or args.check_every < 1:
        ap.error("--calls and --check-every must be >= 1")
    H, Hkv, D = ATTENTION_SHAPES[args.shape]
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    c = latent_case(args.batch, H, Hkv, D, args.group, args.tokens, torch.float16, gen)
    floats, used = lk.latent_decode_workspace_size(args.batch, H, Hkv, D, args.group, args.tokens, c["kr"], c["vr"],
                                                   torch.float16, "cuda", args.impl)
    ws = torch.empty(floats, device="cuda")
    out = torch.empty((args.batch, H * c["kr"][0]), device="cuda")
    flush = torch.empty(64 * 2**20, device="cuda")
    label = (f"{args.shape} B{args.batch} T{args.tokens} G{args.group} impl {args.impl} (kernel {used}), "
             f"{'bench-like' if args.bench_like else 'back to back'}{', churn' if args.churn else ''}"
             f"{', realloc' if args.realloc else ''}, "
             f"TMA env {os.environ.get('PALU_C_V4_TMA', '-')}")

    def synced(where: str) -> bool:
        """Synchronize; on a fault (the context is gone after it) say where it surfaced and return False."""
        try:
            torch.cuda.synchronize()
            return True
        except Exception as e:
            print(f"FAULT {where}: {label}: {str(e).splitlines()[0]}")
            return False

    call(c, args.impl, out, ws)
    torch.cuda.synchronize()
    first = out.clone()
    bad = 0
    for i in range(1, args.calls + 1):
        if args.bench_like:
            flush.sum()
            torch.cuda._sleep(2_000_000)
        call(c, args.impl, out, ws)
        if i % args.check_every == 0 or i == args.calls:
            if not synced(f"after <= {i} calls"):
                return 1
            if not torch.equal(out, first):
                bad += 1
                diff = (out - first).abs()
                print(f"CHANGED at call {i}: max |diff| {diff.max().item():.3e}, {int((diff > 0).sum())} elements, "
                      f"NaN {bool(out.isnan().any())}")
            if args.churn:
                del ws, out
                k = torch.randn((args.batch, Hkv, args.tokens, D), device="cuda", dtype=torch.float16, generator=gen)
                q = torch.randn((args.batch, H, 1, D), device="cuda", dtype=torch.float16, generator=gen)
                torch.nn.functional.scaled_dot_product_attention(q, k, k, enable_gqa=H != Hkv)
                del k, q
                ws = torch.empty(floats, device="cuda")
                out = torch.empty((args.batch, H * c["kr"][0]), device="cuda")
            if args.realloc:  # a new case at new addresses; its first call is the new bitwise reference
                del c
                torch.cuda.empty_cache()
                c = latent_case(args.batch, H, Hkv, D, args.group, args.tokens, torch.float16, gen)
                call(c, args.impl, out, ws)
                if not synced(f"at the first call on new latents after <= {i} calls"):
                    return 1
                first = out.clone()
    print(f"{'ok' if bad == 0 else 'CHANGED'}: {args.calls} calls, {bad} changed checks: {label}")
    return 0 if bad == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
