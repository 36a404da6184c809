#!/usr/bin/env bash
# One H200 call that settles a compile-time choice of v4 and validates the result: for each variant in VARIANTS
# (prebuilt kernel objects build/objs_<v>, python/build_cuda_objects.sh, carried) the v4 tests and the
# profile_fixed_cost.py times; then the variant with the lowest Llama-3-8B batch-8 64K kernel time is linked again
# and gets the whole GPU suite, the benchmark table (python/bench_attention.py, auto) and memcheck/racecheck.
# Options: SUITE_RUNS=N runs the whole GPU suite N times (a rare failure shows with its seed: -rf), GRAPHS=1 also
# writes the CUDA-graph replay table, PROFILE=1 adds an ncu profile of v4 at Llama-3-8B B8 64K (per-SASS stalls).
# Logs in $OUT (at most 8 files come back): log.txt suite.txt sanitize.txt bench_attention_h200.md
# [bench_attention_graphs_h200.md ncu_v4_b8_details.txt ncu_v4_b8_source.csv]
source "$(dirname "$0")/gpu_lib.sh"
best=""; best_t=1e9
for v in ${VARIANTS:-main}; do
  step "$v: build, v4 tests, times"
  link_objects "build/objs_$v"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "v4 or auto" -x --tb=short 2>&1 | tail -2 | tee "$OUT/t.tmp"
  grep -q " failed" "$OUT/t.tmp" && { echo "$v fails its tests: not a candidate"; rm -f "$OUT/t.tmp"; continue; }
  rm -f "$OUT/t.tmp"
  timeout 150 python3 python/profile_fixed_cost.py --impl v4 --shapes llama3-8b,llama2-7b --batches 1,8 \
    --tokens 16384,65536 --iters 10 2>&1 | grep -v Warning | tee "$OUT/p.tmp"
  t=$(grep "| llama3-8b | 8 | 65536 |" "$OUT/p.tmp" | awk -F'|' '{print $6}')
  if python3 -c "import sys; sys.exit(0 if float('$t') < float('$best_t') else 1)"; then best=$v; best_t=$t; fi
  rm -f "$OUT/p.tmp"
done
echo "chosen: $best ($best_t us kernel at Llama-3-8B B8 64K)"
[ -n "$best" ] || exit 1
link_objects "build/objs_$best"
for r in $(seq "${SUITE_RUNS:-1}"); do
  step "tests/gpu ($best, run $r)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short > "$OUT/suite.tmp" 2>&1
  grep -E "^(FAILED|ERROR)|seed|passed|failed" "$OUT/suite.tmp" | tail -12
  { echo "=== run $r"; cat "$OUT/suite.tmp"; } >> "$OUT/suite.txt"; rm -f "$OUT/suite.tmp"
done
step "benchmark ($best)"
bench_table bench_attention_h200.md --impls auto
if [ "${GRAPHS:-0}" = 1 ]; then
  step "benchmark, CUDA-graph replay ($best)"
  bench_table bench_attention_graphs_h200.md --impls auto --graphs
fi
if [ "${PROFILE:-0}" = 1 ]; then
  step "ncu: v4 at Llama-3-8B B8 64K"
  ncu_profile ncu_v4_b8 python3 python/profile_latent_decode.py --shape llama3-8b --tokens 65536 --batch 8 --group 1 \
    --impl v4
fi
step "memcheck / racecheck (v4 and auto, reduced set)"
sanitize "(poisoned and float16 and (v4 or auto) and (mha-d64-g1 or single-slot or odd-rank or gqa-d128-g1 or gqa-d128-g2-r128 or long-split)) or (long_ranges and v4 and float16)" \
  "(poisoned and float16 and v4 and (gqa-d128-g1 or gqa-d128-g2-r128 or long-split))"
step "done"
