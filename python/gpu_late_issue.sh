#!/usr/bin/env bash
# The switches it uses are not on main: `git apply docs/design/experiments/v10-v11-late-issue.patch` first (notes, run 177).
# One H200 call: v10 and v11 with each step's rebuild issued at the top of the step (V10X_LATE_ISSUE /
# V11X_LATE_ISSUE, the first set) against main's order (the second set), notes "Twenty-first session". The first
# set's v10 / v11 / key_pairs tests, the long-prompt generate tests on both key bases, compute-sanitizer on v10's and
# v11's reduced sets, then both sets' kernel times, alternately, two rounds, on both key bases.
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_late          (here, beforehand; main's into objs_head)
#   SETS="build/objs_late build/objs_head" bash python/gpu_late_issue.sh    (~8 minutes; run 177)
source python/gpu_lib.sh
SETS=${SETS:?the object sets: the candidate first}
read -ra sets <<< "$SETS"
candidate_checks "$SETS" "8300"
step "sanitize (v10 and v11, both bases)"
SAN_TIMEOUT=200 sanitize "(v10 or v11) and float16 and (b3-t7 or b2-t257)" "(v10 or v11) and float16 and b2-t257" \
  "(v10 or v11) and float16 and b2-t257"
for round in 1 2; do
  for objs in "${sets[@]}"; do
    step "round $round: $objs (call us, kernel us, merge us, fit)"; link_objects "$objs"
    for basis in interpolative svd; do
      echo "-- v11, $basis"
      timeout 100 python3 python/profile_fixed_cost.py --impl v11 --group 2 --key-basis $basis --shapes llama3-8b,llama2-7b \
        --batches 1,8 --tokens 16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
      echo "-- v10, $basis"
      timeout 100 python3 python/profile_fixed_cost.py --impl v10 --group 1 --key-basis $basis --shapes llama3-8b \
        --batches 1,8 --tokens 16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
    done
  done
done
step "done"
