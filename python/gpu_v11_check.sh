#!/usr/bin/env bash
# One H200 call for the group-size-2 kernel v11 (branch v11-g2; notes "v11: a group-size-2 kernel"): prebuilt
# objects (OBJ, carried: SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_v11), then its GPU tests, memcheck
# and racecheck on a few cases, v11 against v4 (auto's G = 2 kernel) per shape, and the bench with v11 beside auto.
#   OBJ=build/objs_v11 bash python/gpu_v11_check.sh
source python/gpu_lib.sh
OBJ=${OBJ:-build/objs_v11}
step "link $OBJ"; link_objects "$OBJ"
step "v11 tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k v11 2>&1 | tail -3
step "sanitize"
sanitize "v11 and float16 and (b3-t7 or b2-t257 or refuses)" "v11 and float16 and (b2-t257 or b3-t1000)"
for impl in v11 v4 v11 v4; do
  step "timing $impl, group 2"
  timeout 100 python3 python/profile_fixed_cost.py --impl $impl --group 2 --shapes llama3-8b,llama2-7b --batches 1,8 \
    --tokens 4096,16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
done
step "bench"; bench_table bench_v11.md --dtype float16 --impls auto,v11
grep -E "\| 2 \| v11 " "$OUT/bench_v11.md" | cut -d'|' -f2-8,12,13
step "done"
