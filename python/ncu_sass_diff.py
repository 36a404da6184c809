"""Compare two Nsight Compute per-SASS source pages (``ncu -i R --page source --csv --print-source sass``): executed
instructions per opcode and how many SASS lines run how often (per block, per step), A against B.

Used on run 170 (python/gpu_v10_ib_ncu.sh): the interpolative basis's v10 executed 18% more instructions than the
plain one, all of them in the once-per-block query code (288 lines executed once per warp and block instead of 157).

    python python/ncu_sass_diff.py A_source.csv B_source.csv [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import csv
import re
import sys


def load(path: str) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """(executions per opcode, stall samples per opcode, number of SASS lines per execution count)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[1]
    i_exec, i_src = header.index("Instructions Executed"), header.index("Source")
    i_stall = header.index("Warp Stall Sampling (All Samples)")
    ops, stalls, lines = collections.Counter(), collections.Counter(), collections.Counter()
    for row in rows[2:]:
        if len(row) <= i_exec:
            continue
        m = re.match(r"(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", row[i_src].strip())
        if not m:
            continue
        n = int(row[i_exec] or 0)
        ops[m.group(2)] += n
        stalls[m.group(2)] += int(row[i_stall] or 0)
        lines[n] += 1
    return ops, stalls, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    (a, sa, la), (b, sb, lb) = load(args.a), load(args.b)
    print(f"executed instructions: A {sum(a.values()):,}  B {sum(b.values()):,}")
    print(f"{'opcode':<10} {'A':>12} {'B':>12} {'B - A':>12}   stall samples A / B")
    for k in sorted(set(a) | set(b), key=lambda k: -(b[k] - a[k]))[: args.top]:
        print(f"{k:<10} {a[k]:>12,} {b[k]:>12,} {b[k] - a[k]:>+12,}   {sa[k]} / {sb[k]}")
    print("SASS lines by execution count (the most executed counts: per warp and step, per warp and block):")
    for n in sorted(set(la) | set(lb), reverse=True)[:6]:
        print(f"  executed {n:>9,} times: A {la[n]:>4} lines, B {lb[n]:>4} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
