"""Perplexity of the interpolative key basis against the SVD basis, in the dtypes the latents are stored in.

The two bases give the same keys in exact arithmetic (palu_c/key_basis.py); what differs is how the fp16/bf16
rounding of the stored latent reaches the keys (python/study_key_basis.py measures that per group). This runs the
end-to-end check: the embedded SmolLM2-135M compressed at ratio 0.5 with each basis (the same ranks: the search does
not depend on the basis), cast to float16 and bfloat16, perplexity on held-out text; on CUDA where there is a
device, else on the CPU (slow in half precision: ``--windows`` bounds the work).

    python python/eval_key_basis.py [--groups 1 3] [--out python/results/key_basis_ppl_h200.md]

Texts: the package's own samples (palu_c/data: Emma for calibration, Persuasion held out), so that it runs on a
machine without the shared corpus (the GPU machine).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

import torch
from report import emit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the in-place build

import palu_c  # noqa: E402
from palu_c.demo import _sample_text, _windows  # noqa: E402
from palu_c.models import EMBEDDED_NAME, load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--search", default="fisher")
    ap.add_argument("--windows", type=int, default=None, help="at most this many evaluation windows")
    ap.add_argument("--balanced", action="store_true",
                    help="select as many RoPE pairs from every head of a group at every group size (compress_kv does "
                         "so at group size 2 only, v11's layout): a bound on that constraint's cost where a model's "
                         "KV heads do not divide by 2, as SmolLM2's 3 do not")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.balanced:  # a study switch, not an API: compress_kv's change of basis with the per-head constraint forced
        import palu_c.kv
        from palu_c.key_basis import interpolative_factors

        palu_c.kv.interpolative_factors = lambda down, up, head_dim, balanced=False: interpolative_factors(
            down, up, head_dim, balanced=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    warnings.simplefilter("ignore", palu_c.WhiteningWarning)
    torch.manual_seed(0)
    base, tok = load_model(dtype=torch.float32, device=device)
    calib = _windows(tok, _sample_text("calibration_emma.txt"), args.calib_samples, args.seq_len).to(device)
    text = _sample_text("eval_persuasion.txt")

    def ppl(model):
        return palu_c.eval.perplexity(model, tok, text, seq_len=args.seq_len, max_windows=args.windows)

    dtypes = (torch.float16, torch.bfloat16)
    rows = [("baseline", "-", "-", *(ppl(copy.deepcopy(base).to(dt)) for dt in dtypes))]
    print(rows[-1], flush=True)
    for group in args.groups:
        for basis in ("svd", "interpolative"):
            t = time.perf_counter()
            model = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.5, group_size=group, search=args.search,
                                       key_basis=basis, progress=False)
            label = f"{basis} (balanced)" if args.balanced and basis == "interpolative" else basis
            rows.append(("palu 0.5", group, label, *(ppl(copy.deepcopy(model).to(dt)) for dt in dtypes)))
            print(rows[-1], f"{time.perf_counter() - t:.0f} s", flush=True)
            del model
    lines = ["# Key basis: perplexity in the storage dtypes (SmolLM2-135M, CUDA)", "",
             f"Model: {EMBEDDED_NAME}, compressed in float32 (search {args.search}, ratio 0.5), then cast. Calibration: "
             f"{calib.shape[0]} x {args.seq_len} tokens of palu_c/data/calibration_emma.txt; evaluation: every "
             f"{args.seq_len}-token window of palu_c/data/eval_persuasion.txt (held out"
             f"{f', at most {args.windows}' if args.windows else ''}). Device: "
             f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}.", "",
             f"Command: `python python/eval_key_basis.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             "| model | group | key basis | ppl float16 | ppl bfloat16 |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {g} | {b} | {p16:.3f} | {pbf:.3f} |" for m, g, b, p16, pbf in rows]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
