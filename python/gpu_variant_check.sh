#!/usr/bin/env bash
# One H200 call that compares compile-time variants of the decode kernels side by side. The kernel objects are
# compiled beforehand on any machine with nvcc (python/build_cuda_objects.sh DIR [-DFLAG=...]; carry build/objs_*
# to the GPU machine) and linked here with PALU_C_CUDA_OBJECTS, ~10 s per variant instead of ~98 s of nvcc.
# Per variant: the kernel tests (TESTK, a pytest -k expression), profile_fixed_cost.py timings of IMPL on Llama-3-8B
# and Llama-2-7B shapes (B 1/8, 16K/64K) and ncu's per-scheduler instruction balance; then for the last variant a
# full ncu profile with per-SASS stall sampling and memcheck/racecheck on a reduced set.
# TIMED="v4 v8" times several implementations side by side (default: IMPL alone); BENCH="v4,v8" also runs the
# benchmark table (python/bench_attention.py --impls BENCH) on the last variant.
#   usage: VARIANTS="base pair" IMPL=v4 TESTK=v4 bash python/gpu_variant_check.sh
# Logs in $OUT: log.txt sanitize.txt ncu_<impl>_source.csv ncu_<impl>_details.txt [bench_attention_h200.md]
source "$(dirname "$0")/gpu_lib.sh"
IMPL=${IMPL:-v4}; TESTK=${TESTK:-$IMPL}
PROF="python3 python/profile_latent_decode.py --shape llama3-8b --tokens 65536 --batch 1 --group 1 --impl $IMPL"
BAL="smsp__inst_executed.avg,smsp__inst_executed.max,smsp__issue_active.avg,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,gpu__time_duration.sum"
timing() { for i in ${TIMED:-$IMPL}; do echo "-- $i"; timeout 150 python3 python/profile_fixed_cost.py --impl "$i" \
  --shapes llama3-8b,llama2-7b --batches 1,8 --tokens 16384,65536 --iters 10 2>&1 | grep -v Warning; done; }
for v in ${VARIANTS:-base}; do
  step "build with build/objs_$v"
  link_objects "build/objs_$v"
  step "$v: kernel tests (-k $TESTK)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "$TESTK" -x --tb=short 2>&1 | tail -3
  step "$v: timing ($IMPL)"; timing
  step "$v: balance and shared-memory wavefronts (ncu)"
  timeout 120 ncu --clock-control none -k regex:decode_v --launch-skip 3 --launch-count 1 --metrics "$BAL" $PROF 2>&1 \
    | grep -E "smsp__|gpu__time|l1tex"
done
if [ -n "${BENCH:-}" ]; then
  step "benchmark (--impls $BENCH, last variant)"
  bench_table bench_attention_h200.md --impls "$BENCH"
fi
step "ncu full $IMPL (last variant)"
ncu_profile "ncu_$IMPL" $PROF
step "memcheck / racecheck ($IMPL, last variant, reduced set)"
sanitize "(poisoned and float16 and $IMPL and (mha-d64-g1 or single-slot or odd-rank or gqa-d128-g1 or long-split)) or (long_ranges and $IMPL and float16)" \
  "(poisoned and float16 and $IMPL and (gqa-d128-g1 or long-split))"
step "done"
