#!/usr/bin/env bash
# One H200 call for the next session's first device time (notes "Twenty-third session"): three object sets timed
# alternately in one lease:
#   LW    the rebuild's wait at its first use in v10 and v11 (docs/design/experiments/late-wait.patch, built with
#         -DV10X_LATE_WAIT=1 -DV11X_LATE_WAIT=1),
#   LWB2  that plus v11's blocks of two steps at n_rep 1 (late-wait.patch, then v11-block2.patch, whose two conflicts
#         with it are only adjacent lines; -DV11X_BLOCK2=1 as well),
#   MAIN  main's objects,
# then the checks of the winner (decode and long-prompt generate tests, memcheck / racecheck on the interpolative
# cases) and the benchmark table of the winner that passes.
#   SETS="build/objs_lw build/objs_lwb2 build/objs_main" bash python/gpu_lw_b2.sh     (~8 minutes)
# The objects, built here (no device time; ~1.5 minutes each):
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_main
#   git worktree add /tmp/lw --detach HEAD && cd /tmp/lw && git am <main>/docs/design/experiments/late-wait.patch
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh <main>/build/objs_lw -DV10X_LATE_WAIT=1 -DV11X_LATE_WAIT=1
#   git worktree add /tmp/lwb2 --detach HEAD && cd /tmp/lwb2 && git am <main>/docs/design/experiments/late-wait-block2.patch
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh <main>/build/objs_lwb2 -DV10X_LATE_WAIT=1 -DV11X_LATE_WAIT=1 -DV11X_BLOCK2=1
# Decision: LW beats MAIN where its batch-8 64K kernel time gains on each of v11 Llama-3-8B, v11 Llama-2-7B and v10
# Llama-3-8B (both rounds summed); LWB2 then beats LW where it gains on v11 Llama-2-7B (the only instance its second
# commit changes); a winner whose tests fail gives way to MAIN.
source python/gpu_lib.sh
SETS=${SETS:?the object sets: LW LWB2 MAIN}
read -r lw lwb2 base <<< "$SETS"
time_sets "$SETS" --impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b --batches 1,8 \
  --tokens 16384,65536 | tee "$OUT/times_v11.txt"
time_sets "$lw $base" --impl v10 --group 1 --key-basis interpolative --shapes llama3-8b --batches 1,8 \
  --tokens 16384,65536 | tee "$OUT/times_v10.txt"
: > "$OUT/no_checks.txt"  # the timing decisions first; the winner's checks follow
win=$(faster_set "$lw" "$base" no_checks.txt "times_v11.txt llama3-8b" "times_v11.txt llama2-7b" "times_v10.txt llama3-8b")
[ "$win" = "$lw" ] && win=$(faster_set "$lwb2" "$lw" no_checks.txt "times_v11.txt llama2-7b")
rm -f "$OUT/no_checks.txt"
echo "fastest set: $win"
if [ "$win" != "$base" ]; then
  candidate_checks "$win" "interpolative and 8300" | tee "$OUT/checks.txt"
  step "sanitize (interpolative cases)"
  SAN_TIMEOUT=90 sanitize "interpolative and b2-t257" "interpolative and float16 and b2-t257" | tee "$OUT/san_exit.tmp"
  if grep -qE "failed|error" "$OUT/checks.txt" || grep -qE "(memcheck|racecheck) exit [^0]" "$OUT/san_exit.tmp"; then
    echo "the fastest set failed its checks: the table is main's"; win=$base
  fi
  rm -f "$OUT/san_exit.tmp"
fi
step "benchmark table ($win)"; link_objects "$win"
bench_table bench_attention_h200.md --dtype float16 --impls auto --key-basis both
step "done"
