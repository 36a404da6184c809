"""Per-kernel SASS instruction counts from ``cuobjdump -sass`` output (stdin): total and the opcodes asked for.

A static count, not a profile: it says what an edit added to or removed from a kernel's code (run 168: v10's stored
half cost more instructions than the rebuild it saved). Names are demangled by c++filt where it is installed.

    cuobjdump -sass build/objs_ib/latent_decode_v10.o | python python/sass_histogram.py [--grep decode_v10] \\
        [--ops HFMA2,HMUL2,F2FP,LDSM,SEL,HGMMA,HMMA,MUFU]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grep", default="", help="only functions whose mangled name contains this")
    ap.add_argument("--ops", default="HFMA2,HMUL2,HADD2,F2FP,F2F,PRMT,LDSM,LDS,SEL,HGMMA,HMMA,MUFU,FFMA,FMUL,SHFL,BAR")
    args = ap.parse_args()
    funcs: dict[str, Counter] = {}
    name = None
    for line in sys.stdin:
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            funcs[name] = Counter()
            continue
        m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]*)?", line)
        if name is not None and m:
            funcs[name][m.group(1)] += 1
    ops = [o for o in args.ops.split(",") if o]
    demangle = shutil.which("c++filt")
    print("| kernel | total | " + " | ".join(ops) + " |")
    print("|---|---|" + "---|" * len(ops))
    for fname, counts in funcs.items():
        if args.grep not in fname:
            continue
        shown = subprocess.run([demangle, fname], capture_output=True, text=True).stdout.strip() if demangle else fname
        shown = re.sub(r"\(anonymous namespace\)::|palu_decode::", "", shown)[:70]
        print(f"| {shown} | {sum(counts.values())} | " + " | ".join(str(counts[o]) for o in ops) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
