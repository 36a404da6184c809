#!/usr/bin/env bash
# One H200 call for the quiet start (notes, "Eighteenth session", run 163): v9's copy warp waits until the prologue's
# Uk has landed (merged), and in run 163 v10's first TMA copies waited for its weights too (not merged). The v9 and
# v10 GPU tests, memcheck and racecheck on the first object set, the v9 fault's reproducer on it, then kernel times of
# every set in SETS, alternately in two rounds: v9 (Llama-2-7B) at batch 1, 4 and 8 and v10 (Llama-3-8B) at batch 1
# and 8. Object sets are built beforehand (SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR, on the change and on
# main) and carried.
#   SETS="build/objs_qs build/objs_main" bash python/gpu_quiet_start.sh   (~3 minutes)
source python/gpu_lib.sh
SETS=${SETS:?object sets to time}
check_first_set "$SETS" "v9 or v10" "(v9 or v10) and float16 and (b3-t7 or b2-t257 or irregular)" \
  "(v9 or v10) and float16 and (b3-t7 or b2-t257)" ""
step "reproducer (python/stress_decode.py --realloc, B8 128K)"
repro --batch 8 --tokens 131072 --realloc --churn
time_sets "$SETS" --impl v9 --shapes llama2-7b --batches 1,4,8 --tokens 16384,65536
time_sets "$SETS" --impl v10 --shapes llama3-8b --batches 1,8 --tokens 4096,16384,65536
step "done"
