#!/usr/bin/env bash
# One H200 call: the whole GPU test suite on prebuilt kernel objects (python/build_cuda_objects.sh build/objs_main,
# carried), then the group-2 rows (rank 128 at ratio 0.5) of python/profile_fixed_cost.py for each kernel that
# runs them (v3, v4, v5), to see which one auto should pick there. Log: $OUT/log.txt
set -uo pipefail
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { echo "=== $1 ($(date +%T))"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
step "build (prebuilt kernel objects)"
PALU_C_CUDA=1 PALU_C_CUDA_OBJECTS=${OBJS:-build/objs_main} python3 setup.py build_ext --inplace --force > "$OUT/build.tmp" 2>&1 \
  || { tail -30 "$OUT/build.tmp"; exit 1; }
step "tests/gpu"
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/gpu -rs --tb=short 2>&1 | tail -15
for impl in ${G2_IMPLS:-v4 v5 v3}; do
  step "group 2: $impl"
  timeout 120 python3 python/profile_fixed_cost.py --impl $impl --group 2 --shapes llama3-8b,llama2-7b --batches 1,8 \
    --tokens 16384,65536 --iters 10 2>&1 | grep -v Warning
done
step "done"
