#!/usr/bin/env bash
# One H200 call: the whole GPU test suite on prebuilt kernel objects (python/build_cuda_objects.sh build/objs_main,
# carried), then the group-2 rows (rank 128 at ratio 0.5) of python/profile_fixed_cost.py for each kernel that
# runs them (v3, v4, v5), to see which one auto should pick there. Log: $OUT/log.txt
source "$(dirname "$0")/gpu_lib.sh"
step "build (prebuilt kernel objects)"
link_objects "${OBJS:-build/objs_main}"
step "tests/gpu"
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short 2>&1 | tail -15
for impl in ${G2_IMPLS:-v4 v5 v3}; do
  step "group 2: $impl"
  timeout 120 python3 python/profile_fixed_cost.py --impl $impl --group 2 --shapes llama3-8b,llama2-7b --batches 1,8 \
    --tokens 16384,65536 --iters 10 2>&1 | grep -v Warning
done
step "done"
