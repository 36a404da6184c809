#!/usr/bin/env bash
# One H200 call for v9's batch in one-wave chunks (notes "The benchmark's intermittent fault"): the decode tests,
# memcheck on the chunked case (racecheck on a small one), v9's times at Llama-2-7B shapes, then N eager benchmarks
# (each in its own process) counting the fault; the last benchmark that passed is kept as $OUT/bench_eager.md.
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_ck
#   OBJ=build/objs_ck N=12 bash python/gpu_v9_chunks_check.sh
# BENCH_ENV: VAR=VAL settings for the benchmarks only (e.g. BENCH_ENV="PALU_C_V4_TMA=0": v9 copies by cp.async;
# "CUDA_LAUNCH_BLOCKING=1": a fault names its launch), counted apart in the last line.
source python/gpu_lib.sh
N=${N:-12}
step "link ${OBJ:?}"; link_objects "$OBJ"
step "tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py 2>&1 | tail -1
step "sanitize"
sanitize "v9 and float16 and (one_wave_chunks or b3-t7)" "v9 and float16 and b3-t7"  # racecheck of the 288-CTA case: >150 s (run 109)
step "v9 times (call us, kernel us, merge us, fit)"
timeout 60 python3 python/profile_fixed_cost.py --impl v9 --shapes llama2-7b --batches 1,4,8 --tokens 16384,65536 \
  --iters 10 2>&1 | grep -E "^\| llama"
bench_count "$N" chunks ${BENCH_ENV:-}
