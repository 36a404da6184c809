#!/usr/bin/env bash
# One H200 call: v10 and v11 rebuilding fp16 keys of the interpolative basis with fp16 accumulators (V10X_F16ACC /
# V11X_F16ACC, the first set) against fp32 accumulators (main, the second set), notes "Twenty-first session". In the
# order that matters most when the lease is short: one timing round of both sets, the first set's v10 / v11 /
# key_pairs tests, long-prompt generate tests on the interpolative basis and memcheck, a second timing round (fp16; the bf16 instances are unchanged).
#   SETS="build/objs_h16 build/objs_head" bash python/gpu_f16acc.sh     (~4 minutes; run 179)
source python/gpu_lib.sh
SETS=${SETS:?the object sets: the candidate first}
read -ra sets <<< "$SETS"
timing_round() {
  local objs
  for objs in "${sets[@]}"; do
    step "round $1: $objs (call us, kernel us, merge us, fit)"; link_objects "$objs"
    echo "-- v11 ib"
    timeout 100 python3 python/profile_fixed_cost.py --impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b \
      --batches 1,8 --tokens 16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
    echo "-- v10 ib"
    timeout 100 python3 python/profile_fixed_cost.py --impl v10 --group 1 --key-basis interpolative --shapes llama3-8b \
      --batches 1,8 --tokens 16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
  done
}
timing_round 1
candidate_checks "$SETS" "interpolative and 8300"
step "sanitize (interpolative cases)"
SAN_TIMEOUT=60 sanitize "interpolative and float16 and b2-t257" "" "" # memcheck only: the change moves no memory access
timing_round 2
step "done"
