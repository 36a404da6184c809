"""Is a v9 call faster when the SMs have just run v9 (run 162)? Batch 8's second wave loops 8-10% faster per CTA
than its first whatever sequences it reads (runs 154, 160; notes "Seventeenth session"). Three calls back to back
after an L2 flush and a GPU sleep (as bench_attention.py times one), each timed by CUDA events: if the second
and third are faster than the first, what the first wave lacks is something an SM keeps between CTAs (instruction
cache, TLB, clocks); if not, it is within the launch. The GPU sleeps ~2.5 ms before the three calls, so that the
host has enqueued all three by the time the first ends: run 162 slept 1 ms, too short for the rows whose call takes
less than the host's launch (there calls 2 and 3 timed the host; only batch 4 at 64K was valid).

    python3 python/probe_back_to_back.py   (after an in-place build of the extension)
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the in-place build
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_latent_decode import decode_step  # noqa: E402


def main() -> None:
    flush = torch.empty(64 * 2**20, device="cuda")
    print(f"{torch.cuda.get_device_name()}; v9, Llama-2-7B shapes, fp16; median us of 15 triples")
    print("| B | T | call 1 | call 2 | call 3 |")
    print("|---|---|---|---|---|")
    for B, T in [(1, 65536), (4, 16384), (4, 65536), (8, 16384)]:
        step = decode_step("llama2-7b", T, B, 1, "v9")
        for _ in range(3):
            step()
        times = []
        for _ in range(15):
            flush.zero_()
            torch.cuda._sleep(5_000_000)  # cycles: ~2.5 ms
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            ev[0].record()
            for k in range(3):
                step()
                ev[k + 1].record()
            torch.cuda.synchronize()
            times.append([1e3 * ev[k].elapsed_time(ev[k + 1]) for k in range(3)])
        med = [statistics.median(t[k] for t in times) for k in range(3)]
        print(f"| {B} | {T} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} |", flush=True)
        del step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
