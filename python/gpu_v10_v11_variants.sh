#!/usr/bin/env bash
# One H200 call for experiments that touch v10 and v11 together (notes, "Next: v10's and v11's first positions
# before the prologue"): the v10 and v11 GPU tests and memcheck / racecheck / synccheck of the first object set, then
# kernel times of every set in SETS, alternately in two rounds: v10 (Llama-3-8B, G = 1) and v11 (both shapes,
# G = 2) at batch 1 and 8. Object sets are built beforehand (SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR, on
# the experiment's branch and on main) and carried.
#   SETS="build/objs_ep build/objs_main" bash python/gpu_v10_v11_variants.sh   (~5 minutes)
source python/gpu_lib.sh
SETS=${SETS:?object sets to time}
check_first_set "$SETS" "v10 or v11" "(v10 or v11) and float16 and (b3-t7 or b2-t257 or irregular)" \
  "(v10 or v11) and float16 and b2-t257" "(v10 or v11) and float16 and b2-t257"
time_sets "$SETS" --impl v10 --shapes llama3-8b --batches 1,8 --tokens 4096,16384,65536
time_sets "$SETS" --impl v11 --group 2 --shapes llama3-8b,llama2-7b --batches 1,8 --tokens 16384,65536
step "done"
