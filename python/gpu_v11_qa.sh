#!/usr/bin/env bash
# One H200 call (run 182, notes "Twenty-second session"): v11 reading its per-step query fragments by ldmatrix
# (V11X_QA_LDSM=1, 4 loads a step instead of 16; the first set) against main (the second set), on both key bases,
# then the first set's decode tests and long-prompt generate tests.
#   SETS="build/objs_qa build/objs_h16" bash python/gpu_v11_qa.sh     (~5 minutes)
source python/gpu_lib.sh
SETS=${SETS:?the object sets: the candidate first}
time_sets "$SETS" --impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b --batches 1,8 \
  --tokens 16384,65536
time_sets "$SETS" --impl v11 --group 2 --key-basis svd --shapes llama3-8b,llama2-7b --batches 8 --tokens 65536
candidate_checks "$SETS" "interpolative and 8300"
step "done"
