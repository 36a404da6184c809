#!/usr/bin/env bash
# One H200 call for the last-split merge (v9, v10, v11 merge their partials in each head's last CTA: counters, no
# merge kernel; notes "The last-split merge"): its tests and the v9-v11 decode tests, memcheck / racecheck /
# synccheck on its tests, then call times at batch 1 with the last-split merge on and off (PALU_C_LAST_MERGE=0, the
# merge kernel) on the new objects, and main's objects (the loops' schedules), alternately in two rounds.
#   OBJ=build/objs_lm2 BASE=build/objs_main bash python/gpu_last_merge_check.sh   (~8 minutes)
source python/gpu_lib.sh
OBJ=${OBJ:?prebuilt kernel objects}
BASE=${BASE:?prebuilt kernel objects of main}
step "link $OBJ"; link_objects "$OBJ"
decode_tests "last_split or tickets or v9 or v10 or v11 or pair or side_stream"
step "sanitize"
sanitize "last_split and not bfloat16" "last_split and not bfloat16 and v10" "last_split and not bfloat16"
times() {  # times LABEL [VAR=VALUE...]: v9, v10, v11 at batch 1 (and v10 at batch 4: 4 splits)
  step "$1 (call us, kernel us, merge us, fit)"; shift
  env "$@" timeout 60 python3 python/profile_fixed_cost.py --impl v9 --shapes llama2-7b --batches 1 \
    --tokens 4096,16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
  env "$@" timeout 60 python3 python/profile_fixed_cost.py --impl v10 --shapes llama3-8b --batches 1,4 \
    --tokens 4096,16384,65536,131072 --iters 10 2>&1 | grep -E "^\| llama"
  env "$@" timeout 60 python3 python/profile_fixed_cost.py --impl v11 --group 2 --shapes llama3-8b,llama2-7b \
    --batches 1 --tokens 16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
}
for round in 1 2; do
  link_objects "$OBJ"
  times "round $round: $OBJ, last-split merge"
  times "round $round: $OBJ, merge kernel" PALU_C_LAST_MERGE=0
  link_objects "$BASE"
  times "round $round: $BASE"
done
step "done"
