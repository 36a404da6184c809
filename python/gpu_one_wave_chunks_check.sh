#!/usr/bin/env bash
# One H200 call for the one-wave chunks of v9, v10 and v11 (launch_one_wave_chunks; notes "The benchmark's
# intermittent fault"): the decode and compress_kv GPU tests and memcheck on the chunked cases of NEW, then call times
# of v10 and v11 at batches whose grids run in two waves without the chunks, on BASE (before) and NEW, alternating.
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_ow2     (BASE: the same on the commit before)
#   NEW=build/objs_ow2 BASE=build/objs_base bash python/gpu_one_wave_chunks_check.sh
source python/gpu_lib.sh
step "link ${NEW:?}"; link_objects "$NEW"
step "tests"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py 2>&1 | tail -1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_compress_kv_cuda.py 2>&1 | tail -1
step "memcheck on the chunked cases"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q \
  -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "one_wave_chunks and float16" 2>&1 | tail -2
for objs in "${BASE:?}" "$NEW" "$BASE" "$NEW"; do
  step "$objs: call us, kernel us, merge us, fit"; link_objects "$objs"
  timeout 60 python3 python/profile_fixed_cost.py --impl v10 --shapes llama3-8b --batches 16,32 --tokens 16384 \
    --iters 10 2>&1 | grep -E "^\| llama"
  timeout 60 python3 python/profile_fixed_cost.py --impl v11 --group 2 --shapes llama3-8b --batches 32,64 \
    --tokens 16384 --iters 10 2>&1 | grep -E "^\| llama"
done
step "done"
