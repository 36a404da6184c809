#!/usr/bin/env bash
# One H200 call for the next session's first device time (notes "Twenty-third session"): four nested object sets
# timed alternately in one lease, each one change on top of the one before:
#   LW     the rebuild's wait at its first use in v10 and v11 (docs/design/experiments/late-wait.patch),
#   LWU    + v11's rebuild descriptors on the uniform datapath (late-wait-uniform.patch, its first two commits),
#   LWUB2  + v11's blocks of two steps at n_rep 1 (late-wait-uniform-block2.patch, all four commits),
#   MAIN   main's objects;
# then the winner's checks (decode and long-prompt generate tests, memcheck / racecheck on the interpolative cases)
# and the benchmark table of the winner that passes.
#   SETS="build/objs_lw build/objs_lwu build/objs_lwub2 build/objs_main" bash python/gpu_lw_next.sh   (~9 minutes)
# The objects, built here (no device time; ~1.5 minutes each; M is this checkout):
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_main
#   for p in late-wait late-wait-uniform late-wait-uniform-block2; do git worktree add /tmp/$p --detach HEAD
#     (cd /tmp/$p && git am $M/docs/design/experiments/$p.patch); done
#   (cd /tmp/late-wait && SM90A_ONLY=1 bash python/build_cuda_objects.sh $M/build/objs_lw -DV10X_LATE_WAIT=1 -DV11X_LATE_WAIT=1)
#   (cd /tmp/late-wait-uniform && SM90A_ONLY=1 bash python/build_cuda_objects.sh $M/build/objs_lwu -DV10X_LATE_WAIT=1 \
#     -DV11X_LATE_WAIT=1 -DV11X_UNIFORM_DESC=1)
#   (cd /tmp/late-wait-uniform-block2 && SM90A_ONLY=1 bash python/build_cuda_objects.sh $M/build/objs_lwub2 \
#     -DV10X_LATE_WAIT=1 -DV11X_LATE_WAIT=1 -DV11X_UNIFORM_DESC=1 -DV11X_BLOCK2=1)
# Decision, in order: a set replaces the winner so far (MAIN first) where its batch-8 64K kernel time (both rounds
# summed) gains on each row its change touches: LW on v11 Llama-3-8B, v11 Llama-2-7B and v10 Llama-3-8B; LWU on both
# v11 rows; LWUB2 on v11 Llama-2-7B (its Llama-3-8B instances are LWU's). Where a set loses, the next is weighed
# against the winner so far on every row it differs in (LWU against MAIN with v10 too; LWUB2 against LW on both v11
# rows; LWUB2 not at all where MAIN still leads, since it carries LW's v10 change). A winner whose tests fail gives
# way to MAIN.
source python/gpu_lib.sh
SETS=${SETS:?the object sets: LW LWU LWUB2 MAIN}
read -r lw lwu lwub2 base <<< "$SETS"
time_sets "$SETS" --impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b --batches 1,8 \
  --tokens 16384,65536 | tee "$OUT/times_v11.txt"
time_sets "$lw $lwu $base" --impl v10 --group 1 --key-basis interpolative --shapes llama3-8b --batches 1,8 \
  --tokens 16384,65536 | tee "$OUT/times_v10.txt"
: > "$OUT/no_checks.txt"  # the timing decisions first; the winner's checks follow
v11l3="times_v11.txt llama3-8b" v11l2="times_v11.txt llama2-7b" v10l3="times_v10.txt llama3-8b"
win=$(faster_set "$lw" "$base" no_checks.txt "$v11l3" "$v11l2" "$v10l3")
if [ "$win" = "$lw" ]; then
  win=$(faster_set "$lwu" "$lw" no_checks.txt "$v11l3" "$v11l2")
else
  win=$(faster_set "$lwu" "$base" no_checks.txt "$v11l3" "$v11l2" "$v10l3")
fi
if [ "$win" = "$lwu" ]; then
  win=$(faster_set "$lwub2" "$lwu" no_checks.txt "$v11l2")
elif [ "$win" = "$lw" ]; then
  win=$(faster_set "$lwub2" "$lw" no_checks.txt "$v11l3" "$v11l2")
else
  echo "LWUB2 not weighed: it carries LW's v10 change, which lost"
fi
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
