#!/usr/bin/env bash
# One H200 call that validates a v9 change before it lands (notes, "Eighteenth session"): on the change's objects
# (OBJ) the whole GPU suite, memcheck / racecheck / synccheck on v9's cases, the fault's reproducer and the eager
# benchmark table (python/bench_attention.py --dtype float16 --impls auto, kept as $OUT/bench_attention_h200.md);
# then kernel times of OBJ against BASE (main's objects), alternately in two rounds. Objects built beforehand
# (SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR) and carried.
#   OBJ=build/objs_pg2 BASE=build/objs_m18 bash python/gpu_v9_merge_check.sh   (~9 minutes)
source python/gpu_lib.sh
OBJ=${OBJ:?the change\'s kernel objects}; BASE=${BASE:?main\'s kernel objects}
step "link $OBJ"; link_objects "$OBJ"
gpu_suite
step "sanitize"
sanitize "v9 and float16 and (b3-t7 or b2-t257 or irregular)" "v9 and float16 and (b3-t7 or b2-t257 or irregular)" \
  "v9 and float16 and (b3-t7 or b2-t257 or irregular)"
step "reproducer (python/stress_decode.py --realloc, B8 128K)"
repro --batch 8 --tokens 131072 --realloc --churn
step "benchmark, eager"
bench_table bench_attention_h200.md --dtype float16 --impls auto
time_sets "$OBJ $BASE" --impl v9 --shapes llama2-7b --batches 1,8 --tokens 16384,65536
step "done"
