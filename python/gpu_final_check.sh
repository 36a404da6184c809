#!/usr/bin/env bash
# One H200 call that settles a compile-time choice of v4 and validates the result: for each variant in VARIANTS
# (prebuilt kernel objects build/objs_<v>, python/build_cuda_objects.sh, carried) the v4 tests and the
# profile_fixed_cost.py times; then the variant with the lowest Llama-3-8B batch-8 64K kernel time is linked again
# and gets the whole GPU suite, the benchmark table (python/bench_attention.py, auto) and memcheck/racecheck.
# Logs in $OUT: log.txt bench_attention_h200.md chosen.txt
set -uo pipefail
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { echo "=== $1 ($(date +%T))"; }
build() {
  PALU_C_CUDA=1 PALU_C_CUDA_OBJECTS=build/objs_$1 python3 setup.py build_ext --inplace --force > "$OUT/build.tmp" 2>&1 \
    || { tail -30 "$OUT/build.tmp"; exit 1; }
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
best=""; best_t=1e9
for v in ${VARIANTS:-main}; do
  step "$v: build, v4 tests, times"
  build "$v"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "v4 or auto" -x --tb=short 2>&1 | tail -2 | tee "$OUT/t.tmp"
  grep -q " failed" "$OUT/t.tmp" && { echo "$v fails its tests: not a candidate"; continue; }
  timeout 150 python3 python/profile_fixed_cost.py --impl v4 --shapes llama3-8b,llama2-7b --batches 1,8 \
    --tokens 16384,65536 --iters 10 2>&1 | grep -v Warning | tee "$OUT/p.tmp"
  t=$(grep "| llama3-8b | 8 | 65536 |" "$OUT/p.tmp" | awk -F'|' '{print $6}')
  if python3 -c "import sys; sys.exit(0 if float('$t') < float('$best_t') else 1)"; then best=$v; best_t=$t; fi
done
echo "chosen: $best ($best_t us kernel at Llama-3-8B B8 64K)" | tee "$OUT/chosen.txt"
[ -n "$best" ] || exit 1
build "$best"
step "tests/gpu ($best)"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu -rs --tb=short 2>&1 | tail -4
step "benchmark ($best)"
timeout 200 python3 python/bench_attention.py --impls auto --out "$OUT/bench_attention_h200.md" > "$OUT/bench.tmp" 2>&1
echo "bench exit $?"; grep -E "llama3-8b \| (1|8) \| (16K|64K|128K) \| [12] " "$OUT/bench_attention_h200.md" | cut -d'|' -f2-8,12,13
step "memcheck / racecheck (v4 and auto, reduced set)"
K="(poisoned and float16 and (v4 or auto) and (mha-d64-g1 or single-slot or odd-rank or gqa-d128-g1 or gqa-d128-g2-r128 or long-split)) or (long_ranges and v4 and float16)"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "$K" 2>&1 | tail -2; echo "memcheck exit ${PIPESTATUS[0]}"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 \
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "(poisoned and float16 and v4 and (gqa-d128-g1 or gqa-d128-g2-r128 or long-split))" 2>&1 | tail -2; echo "racecheck exit ${PIPESTATUS[0]}"
step "done"
