#!/usr/bin/env bash
# One H200 call that checks main as it stands from prebuilt kernel objects (python/build_cuda_objects.sh, carried):
# the whole GPU suite, the benchmark table (python/results/bench_attention_h200.md) and memcheck / racecheck on the
# group-size-2 interpolative cases. Logs in $OUT: log.txt suite.txt sanitize.txt bench_attention_h200.md.
#   OBJS=build/objs_main bash python/gpu_main_suite.sh     (~6 minutes; run 183)
source python/gpu_lib.sh
OBJS=${OBJS:?the kernel objects of main}
step "link $OBJS"; link_objects "$OBJS"
gpu_suite
step "benchmark table"
bench_table bench_attention_h200.md --dtype float16 --impls auto --key-basis both
step "sanitize (v11 interpolative cases)"
SAN_TIMEOUT=120 sanitize "v11 and interpolative and b2-t257" "v11 and interpolative and float16 and b2-t257"
step "done"
