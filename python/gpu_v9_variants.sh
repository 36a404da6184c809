#!/usr/bin/env bash
# One H200 call for v9 experiments: the v9 GPU tests (the 128K regression test of the fault included) and
# memcheck / racecheck / synccheck on the first object set, the fault's reproducer on it, then kernel times of every
# set in SETS, alternately in two rounds. Object sets are built beforehand (SM90A_ONLY=1 bash
# python/build_cuda_objects.sh DIR, on the experiment's branch) and carried.
#   SETS="build/objs_s6 build/objs_fx" bash python/gpu_v9_variants.sh
source python/gpu_lib.sh
SETS=${SETS:?object sets to time}
check_first_set "$SETS" v9 "v9 and float16 and (b3-t7 or b2-t257 or irregular)" "v9 and (b3-t7 or b2-t257 or ($MULTIBLOCK_K))" \
  "v9 and float16 and (b3-t7 or b2-t257)"
step "reproducer (python/stress_decode.py --realloc, B8 128K)"
repro --batch 8 --tokens 131072 --realloc --churn
time_sets "$SETS" --impl v9 --shapes llama2-7b --batches 1,4,8 --tokens 16384,65536,131072
step "done"
