#!/usr/bin/env bash
# One H200 call for branch v9-lane-arrivals (consumer lanes arrive for themselves where they read plain shared memory
# that a later plain store rewrites, so that racecheck follows v9's hand-offs; notes "v9's anchors and racecheck"):
# the v9 tests, racecheck over v9's, v10's and v11's multi-block cases (v9's fail on main: runs 145, 148), the fault's
# reproducer, then v9's call times against main's objects, alternately in two rounds. Objects built beforehand
# (SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR, on the branch and on main) and carried.
#   OBJ=build/objs_la3 BASE=build/objs_main bash python/gpu_v9_lane_arrivals.sh   (~7 minutes)
source python/gpu_lib.sh
OBJ=${OBJ:?prebuilt kernel objects of the branch}
BASE=${BASE:?prebuilt kernel objects of main}
step "link $OBJ"; link_objects "$OBJ"
decode_tests "v9"
step "racecheck over the multi-block cases of v9, v10 and v11 (full report in $OUT/sanitize.txt)"
SAN_TIMEOUT=400 sanitize "" "$MULTIBLOCK_K"
grep -E "RACECHECK SUMMARY" "$OUT/sanitize.txt"
step "reproducer (python/stress_decode.py --realloc, B8 128K)"
repro --batch 8 --tokens 131072 --realloc --churn
time_sets "$OBJ $BASE" --impl v9 --shapes llama2-7b --batches 1,8 --tokens 16384,65536
step "done"
