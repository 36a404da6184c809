#!/usr/bin/env bash
# One H200 call that settles a compile-time choice of v4 and validates the result: for each variant in VARIANTS
# (prebuilt kernel objects build/objs_<v>, python/build_cuda_objects.sh, carried) the v4 tests and the
# profile_fixed_cost.py times; then the variant with the lowest Llama-3-8B batch-8 64K kernel time is linked again
# and gets the whole GPU suite, the benchmark table (python/bench_attention.py, auto) and memcheck/racecheck.
# Logs in $OUT: log.txt bench_attention_h200.md chosen.txt
source "$(dirname "$0")/gpu_lib.sh"
best=""; best_t=1e9
for v in ${VARIANTS:-main}; do
  step "$v: build, v4 tests, times"
  link_objects "build/objs_$v"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "v4 or auto" -x --tb=short 2>&1 | tail -2 | tee "$OUT/t.tmp"
  grep -q " failed" "$OUT/t.tmp" && { echo "$v fails its tests: not a candidate"; continue; }
  timeout 150 python3 python/profile_fixed_cost.py --impl v4 --shapes llama3-8b,llama2-7b --batches 1,8 \
    --tokens 16384,65536 --iters 10 2>&1 | grep -v Warning | tee "$OUT/p.tmp"
  t=$(grep "| llama3-8b | 8 | 65536 |" "$OUT/p.tmp" | awk -F'|' '{print $6}')
  if python3 -c "import sys; sys.exit(0 if float('$t') < float('$best_t') else 1)"; then best=$v; best_t=$t; fi
done
echo "chosen: $best ($best_t us kernel at Llama-3-8B B8 64K)" | tee "$OUT/chosen.txt"
[ -n "$best" ] || exit 1
link_objects "build/objs_$best"
step "tests/gpu ($best)"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short 2>&1 | tail -8
step "benchmark ($best)"
timeout 200 python3 python/bench_attention.py --impls auto --out "$OUT/bench_attention_h200.md" > "$OUT/bench.tmp" 2>&1
echo "bench exit $?"; grep -E "llama3-8b \| (1|8) \| (16K|64K|128K) \| [12] " "$OUT/bench_attention_h200.md" | cut -d'|' -f2-8,12,13
step "memcheck / racecheck (v4 and auto, reduced set)"
sanitize "(poisoned and float16 and (v4 or auto) and (mha-d64-g1 or single-slot or odd-rank or gqa-d128-g1 or gqa-d128-g2-r128 or long-split)) or (long_ranges and v4 and float16)" \
  "(poisoned and float16 and v4 and (gqa-d128-g1 or gqa-d128-g2-r128 or long-split))"
step "done"
