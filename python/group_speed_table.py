"""Turn a bench_attention table into the group-size speed table that ``compress_kv(group_size=None)`` reads.

    python python/group_speed_table.py python/results/bench_attention_h200.md

reads the markdown table written by ``python/bench_attention.py`` (GPU name from its header line) and merges, for
that GPU, one row per (model shape, batch, context, group size) into ``palu_c/data/decode_group_speed.json``:
the fastest time among the kernels ``palu_c.latent_kernels`` picks by itself (``auto`` tries v9, v10, v11, v4, v3, then v2;
v1, v3w and v5 run only on request), counting the "v10 ib" / "v11 ib" rows (``--key-basis both``: keys in the
interpolative basis, what ``compress_kv``'s default ``key_basis="auto"`` gives at group sizes 1 and 2), and the SDPA time
of the same shape. Rewrites the JSON atomically. The rule that uses the table is documented in
``palu_c/group_choice.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from palu_c.shapes import ATTENTION_SHAPES  # noqa: E402

# what auto dispatch can run on a default compress_kv model; the time of a row is the fastest of them
AUTO_KERNELS = ("v9", "v10", "v11", "v4", "v3", "v2", "v10 ib", "v11 ib")
SHAPES = ATTENTION_SHAPES
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "palu_c", "data", "decode_group_speed.json")


def parse(path: str) -> tuple[str, str, list[dict]]:
    text = open(path, encoding="utf-8").read()
    m = re.search(r"^GPU: ([^,]+),", text, re.M)
    if m is None:
        raise SystemExit(f"{path}: no 'GPU: <name>,' header line; is it a bench_attention table?")
    # the table's GPU line may carry the device's UUID prefix, "NVIDIA H200 (GPU-cf3852d0)": the speed table is keyed
    # by the name alone, which is what group_choice looks up on the user's machine
    gpu = re.sub(r"\s*\(GPU-[0-9a-fA-F]+\)$", "", m.group(1).strip())
    cmd = re.search(r"^Command: (.*)$", text, re.M)
    best: dict = {}
    sdpa: dict = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or cells[0] not in SHAPES:
            continue
        model, batch, ctx, group, kernel, us = cells[:6]
        tokens = int(ctx[:-1]) * 1024 if ctx.endswith("K") else int(ctx)
        key = (model, int(batch), tokens)
        if kernel == "SDPA":
            sdpa[key] = float(us)
        elif kernel in AUTO_KERNELS:
            k = key + (int(group),)
            best[k] = min(best.get(k, float("inf")), float(us))
    rows = []
    for (model, batch, tokens, group), us in sorted(best.items()):
        heads, kv_heads, head_dim = SHAPES[model]
        rows.append(dict(model=model, heads=heads, kv_heads=kv_heads, head_dim=head_dim, batch=batch, tokens=tokens,
                         group=group, us=us, sdpa_us=sdpa.get((model, batch, tokens))))
    if not rows:
        raise SystemExit(f"{path}: no kernel rows of {AUTO_KERNELS} found")
    return gpu, (cmd.group(1) if cmd else ""), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tables", nargs="+", help="bench_attention markdown tables")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    data = {}
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            data = json.load(f)
    for path in args.tables:
        gpu, cmd, rows = parse(path)
        data[gpu] = {"source": os.path.relpath(path, os.path.join(os.path.dirname(args.out), "..", "..")),
                     "command": cmd, "rows": rows}
        print(f"{gpu}: {len(rows)} rows from {path}", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.out)), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, args.out)
    except BaseException:
        os.unlink(tmp)
        raise


if __name__ == "__main__":
    main()
