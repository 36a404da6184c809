#!/usr/bin/env bash
# One H200 call that repeats the whole eager benchmark on prebuilt kernel objects, to see whether the benchmark's
# intermittent "unspecified launch failure" (always in v9 so far: runs 89 and 98; notes "The benchmark's intermittent
# fault, again") comes back. Each object set (SETS, carried) runs N benchmarks (~25 s each), alternating sets, each
# in its own process; a failing run's failure line goes to the log, its table is kept as $OUT/fail_<set>_<i>.md.
#   SETS="build/objs_tail build/objs_main" N=4 bash python/gpu_bench_repeat.sh
source python/gpu_lib.sh
SETS=${SETS:?object sets to run}
N=${N:-4}
for i in $(seq 1 "$N"); do
  for objs in $SETS; do
    name=$(basename "$objs")
    step "bench $i: $objs"; link_objects "$objs"
    timeout 120 python3 python/bench_attention.py --dtype float16 --impls auto --out "$OUT/bench.tmp.md" \
      > "$OUT/run.tmp" 2>&1
    rc=$?
    echo "exit $rc"
    if [ $rc -ne 0 ]; then
      grep -E "FAILED|stopped" "$OUT/bench.tmp.md" "$OUT/run.tmp" | head -3
      mv "$OUT/bench.tmp.md" "$OUT/fail_${name}_$i.md" 2>/dev/null
    fi
    rm -f "$OUT/bench.tmp.md" "$OUT/run.tmp"
  done
done
step "done"
