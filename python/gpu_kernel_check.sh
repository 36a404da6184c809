#!/usr/bin/env bash
# One call on the GPU machine for the latent decode kernels: build with CUDA (+ the ptxas resource report of
# kernels/latent_decode.cu), tests/gpu/test_latent_decode_cuda.py, the benchmark python/bench_attention.py, then
# compute-sanitizer memcheck + racecheck on a reduced set, and (NCU=1) an Nsight Compute profile of the auto kernel
# (NCU_IMPL=v5 etc. for another). Logs go to $OUT (or ./gpu_logs), 8 files (+2 with NCU=1, +2 with GRAPHS=1):
# build.log ptxas.txt kernel_tests.txt errors.txt bench.txt bench_attention_h200.md memcheck.txt racecheck.txt
# [ncu_<impl>_llama3-8b_65536_b1_g1.txt ncu_stalls_<impl>.txt] [bench_graphs.txt bench_attention_graphs_h200.md]
#   usage (device tool):  bash python/gpu_kernel_check.sh            (about 5-7 minutes on an H200)
#   QUICK=1 bash python/gpu_kernel_check.sh                          (benchmark at 4K/16K, batch 1 only)
#   IMPLS=auto,v5,v3 (default; auto is v4 where it applies, v5 only on request)  NCU=1 (profile auto)
#   NCU_IMPL=v5 (profile that one instead)  GRAPHS=1 (graph-replay bench too)
#   SKIP_BUILD=1 (reuse the in-place build of a previous call on a still-warm machine)  TESTS=0 (no kernel tests)
set -uo pipefail
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() { echo "=== $1 ($(date +%T))"; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
step "machine + build (CUDA)"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"; nvcc --version | tail -1
  PALU_C_CUDA=1 python3 setup.py build_ext --inplace --force; } > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
grep -iE "warning|error" "$OUT/build.log" | grep -v "^palu_c" | head -20
python3 -c "import palu_c; print(palu_c.build_info())" 2>&1 | tee -a "$OUT/build.log"
nvcc -c kernels/latent_decode.cu -o /tmp/latent_decode_ptxas.o -O3 -std=c++17 --expt-relaxed-constexpr \
  -gencode arch=compute_90a,code=sm_90a -I csrc -I kernels -Xptxas -v > "$OUT/ptxas.txt" 2>&1
grep -E "spill|Used" "$OUT/ptxas.txt" | sort | uniq -c | head -20
fi

if [ "${TESTS:-1}" = 1 ]; then

step "kernel tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -rs -x --tb=short \
  > "$OUT/kernel_tests.txt" 2>&1
rc=$?; tail -15 "$OUT/kernel_tests.txt"; [ $rc -eq 0 ] || status=1

step "errors per kernel (poisoned test, relative Frobenius error: whole output, worst head)"
PALU_REPORT_ERRORS=1 timeout 120 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py \
  -k poisoned 2>&1 | grep "^ERRORS" | sort -k2,4 > "$OUT/errors.txt"
python3 - "$OUT/errors.txt" <<'PY'
import collections, sys
worst = collections.defaultdict(lambda: [0.0, 0.0])
for line in open(sys.argv[1]):
    _, shape, dtype, impl, used, glob, head = line.split()
    w = worst[(dtype, used)]
    w[0], w[1] = max(w[0], float(glob)), max(w[1], float(head))
for (dtype, used), (g, h) in sorted(worst.items()):
    print(f"{dtype:9s} {used}: max whole-output error {g:.2e}, max worst-head error {h:.2e}")
PY
fi

step "benchmark"
BENCH_ARGS="--impls ${IMPLS:-auto,v5,v3} --out $OUT/bench_attention_h200.md"
[ "${QUICK:-0}" = 1 ] && BENCH_ARGS="$BENCH_ARGS --quick"
timeout 300 python3 python/bench_attention.py $BENCH_ARGS > "$OUT/bench.txt" 2>&1
rc=$?; [ $rc -eq 0 ] || status=1
[ -f "$OUT/bench_attention_h200.md" ] && cp "$OUT/bench_attention_h200.md" python/results/bench_attention_h200.md
if [ "${GRAPHS:-0}" = 1 ]; then
  step "benchmark, CUDA-graph replay"
  timeout 300 python3 python/bench_attention.py $BENCH_ARGS --graphs --out "$OUT/bench_attention_graphs_h200.md" \
    > "$OUT/bench_graphs.txt" 2>&1 || status=1
fi

step "compute-sanitizer memcheck (reduced set)"
# the poisoned test runs v1, v3, v4, v5 and auto per shape: mha-d64-g1 (ranks 32) and gqa-d128-g2-r128 cover v4's
# two CTA shapes (8 warps x 2, 12 warps x 1) and v5's (3 and 2 warpgroups); long-split (D 128, ranks 64, 4099
# slots over many splits: CTAs with one partial tile or none, and the CTA combine of v4) also runs v4 since run 11
MEMCHECK_K='(poisoned and float16 and (mha-d64-g1 or single-slot or odd-rank or gqa-d128-g1 or gqa-d128-g2-r128)) or (poisoned and float16 and long-split and (v4 or v5)) or (append and 1-256-1-0) or bad_pad'
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "$MEMCHECK_K" > "$OUT/memcheck.txt" 2>&1
rc=$?; echo "memcheck exit: $rc"; [ $rc -eq 0 ] || status=1; tail -4 "$OUT/memcheck.txt"

step "compute-sanitizer racecheck (reduced set)"
RACECHECK_K='(poisoned and float16 and (mha-d64-g1 or gqa-d128-g1 or gqa-d128-g2-r128)) or (poisoned and float16 and long-split and (v4 or v5))'
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 \
  python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "$RACECHECK_K" > "$OUT/racecheck.txt" 2>&1
rc=$?; echo "racecheck exit: $rc"; [ $rc -eq 0 ] || status=1; tail -4 "$OUT/racecheck.txt"

if [ "${NCU:-0}" = 1 ]; then
  NCU_IMPL=${NCU_IMPL:-auto}
  step "ncu profile of $NCU_IMPL (Llama-3-8B, 64K slots, B=1, G=1)"
  # regex:decode_v matches the decode kernel of whichever version the impl runs (auto: v4 today, v5 once auto)
  timeout 400 ncu --clock-control none --set full -k regex:decode_v --launch-skip 3 --launch-count 1 \
    python3 python/profile_latent_decode.py --shape llama3-8b --tokens 65536 --batch 1 --group 1 --impl $NCU_IMPL \
    > "$OUT/ncu_${NCU_IMPL}_llama3-8b_65536_b1_g1.txt" 2>&1
  rc=$?; echo "ncu exit: $rc"; [ $rc -eq 0 ] || status=1
  grep -E "Duration|Registers Per|Achieved Active Warps|Issue Slots Busy|Eligible Warps|DRAM Throughput|L1/TEX Cache Throughput|Executed Instructions  " \
    "$OUT/ncu_${NCU_IMPL}_llama3-8b_65536_b1_g1.txt" | head -12
  # why warps wait: stall reasons as warps per issued instruction (the text report of --set full omits them)
  timeout 200 ncu --clock-control none -k regex:decode_v --launch-skip 3 --launch-count 1 \
    --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio \
    python3 python/profile_latent_decode.py --shape llama3-8b --tokens 65536 --batch 1 --group 1 --impl $NCU_IMPL \
    > "$OUT/ncu_stalls_${NCU_IMPL}.txt" 2>&1 || status=1
  grep "stalled" "$OUT/ncu_stalls_${NCU_IMPL}.txt" | awk '{print $NF, $1}' | sort -rn | head -8
fi

step "summary"
grep -E "passed|failed|error" "$OUT/kernel_tests.txt" | tail -2
sed -n '/^| model/,$p' "$OUT/bench.txt" | head -80
exit $status
