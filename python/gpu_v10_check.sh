#!/usr/bin/env bash
# One H200 call for the v10 kernel (GQA: rebuild on wgmma, RoPE split between query and key): prebuilt kernel objects
# (SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_v10, carried), the whole GPU suite, memcheck /
# racecheck on v10 cases, v10 against v4 call times (profile_fixed_cost.py, Llama-3-8B shapes), and the eager
# benchmark table. Logs in $OUT: log.txt suite.txt sanitize.txt bench_attention_h200.md
source python/gpu_lib.sh
OBJ=${OBJ:-build/objs_v10}
step "link $OBJ"; link_objects "$OBJ"
step "tests/gpu"
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short --maxfail=5 > "$OUT/suite.txt" 2>&1
tail -3 "$OUT/suite.txt"; grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/suite.txt" | head -20
step "memcheck / racecheck"
sanitize "v10 and float16 and (b3-t7 or b2-t257 or irregular or refuses or strided)" "v10 and float16 and (b2-t257 or b3-t1000)"
step "timings (Llama-3-8B shapes): v10, v4"
T="--shapes llama3-8b --batches 1,8 --tokens 2048,4096,8192,16384,65536 --iters 10"
timeout 120 python3 python/profile_fixed_cost.py --impl v10 $T 2>&1 | grep -v Warning
timeout 120 python3 python/profile_fixed_cost.py --impl v4 $T 2>&1 | grep -v Warning
step "benchmark, eager"; bench_table bench_attention_h200.md --dtype float16 --impls auto
step "done"
