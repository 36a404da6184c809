#!/usr/bin/env bash
# The V11X_SPLIT* switches live in docs/design/experiments/v11-split.patch (not merged): apply it before building the sets.
# One H200 call: v11 on the interpolative basis with its key rebuild in a warpgroup of its own (V11X_SPLIT, the first
# set) against the fused step (main, the second set), notes "Twenty-second session". Kernel times of both sets
# alternately (two rounds), then the first set's v10 / v11 / key_pairs tests, the long-prompt generate tests on the
# interpolative basis, and memcheck / racecheck / synccheck on the interpolative cases (the hand-off is a new
# protocol).
#   SETS="build/objs_split build/objs_h16" bash python/gpu_v11_split.sh     (~6 minutes; run 180)
source python/gpu_lib.sh
SETS=${SETS:?the object sets: the candidate first}
time_sets "$SETS" --impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b --batches 1,8 \
  --tokens 16384,65536
candidate_checks "$SETS" "interpolative and 8300"
step "sanitize (interpolative cases)"
SAN_TIMEOUT=150 sanitize "interpolative and b2-t257" "interpolative and float16 and b2-t257" "interpolative and bfloat16 and b2-t257"
step "done"
