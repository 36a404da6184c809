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
    bench_once "$name" || mv "$OUT/bench.tmp.md" "$OUT/fail_${name}_$i.md" 2>/dev/null
    rm -f "$OUT/bench.tmp.md"
  done
done
step "done"
