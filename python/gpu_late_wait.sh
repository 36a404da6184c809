#!/usr/bin/env bash
# One H200 call (notes "The rebuild's wait at its first use"): v10 and v11 with the rebuild's wait moved from the
# end of a step to the next step's pack (V10X_LATE_WAIT / V11X_LATE_WAIT, docs/design/experiments/late-wait.patch;
# the first set, built with both switches on) against main (the second set): kernel times alternately on the
# interpolative basis, the first set's decode and long-prompt generate tests, memcheck / racecheck on the
# interpolative cases, then the benchmark table of the first set where both kernels' batch-8 64K rows gained and its
# tests passed, else of main.
#   SETS="build/objs_lw build/objs_main" bash python/gpu_late_wait.sh     (~6 minutes)
source python/gpu_lib.sh
SETS=${SETS:?the object sets: the candidate first}
read -r cand base <<< "$SETS"
time_sets "$SETS" --impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b --batches 1,8 \
  --tokens 16384,65536 | tee "$OUT/times_v11.txt"
time_sets "$SETS" --impl v10 --group 1 --key-basis interpolative --shapes llama3-8b --batches 1,8 \
  --tokens 16384,65536 | tee "$OUT/times_v10.txt"
candidate_checks "$SETS" "interpolative and 8300" | tee "$OUT/checks.txt"
step "sanitize (interpolative cases)"
SAN_TIMEOUT=90 sanitize "interpolative and b2-t257" "interpolative and float16 and b2-t257"
win=$(faster_set "$cand" "$base" checks.txt "times_v11.txt llama3-8b" "times_v11.txt llama2-7b" "times_v10.txt llama3-8b")
step "benchmark table ($win)"; link_objects "$win"
bench_table bench_attention_h200.md --dtype float16 --impls auto --key-basis both
step "done"
