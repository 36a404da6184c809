#!/usr/bin/env bash
# One H200 call for v11 experiments (notes, tenth session): the GPU tests and memcheck / racecheck /
# synccheck of the first object set, then kernel times of every set in SETS, alternately in two rounds. Object sets
# are built beforehand (SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR [-DV11X_...]) and carried.
#   SETS="build/objs_pp build/objs_base build/objs_nw build/objs_nm" bash python/gpu_v11_variants.sh
source python/gpu_lib.sh
SETS=${SETS:?object sets to time}
check_first_set "$SETS" v11 "v11 and float16 and (b3-t7 or b2-t257 or uneven or irregular)" \
  "v11 and float16 and (b2-t257 or b3-t1000)" "v11 and float16 and (b2-t257 or b3-t1000)"
time_sets "$SETS" --impl v11 --group 2 --shapes llama3-8b,llama2-7b --batches 1,8 --tokens 16384,65536
step "done"
