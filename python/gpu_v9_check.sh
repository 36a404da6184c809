#!/usr/bin/env bash
# One H200 call for the v9 kernel (absorbed RoPE): prebuilt kernel objects (SM90A_ONLY=1 bash
# python/build_cuda_objects.sh build/objs_v9, carried), the whole GPU suite, memcheck / racecheck on v9 cases, v9
# against v4 call times (profile_fixed_cost.py, Llama-2-7B shapes, both copy paths of v9), and the benchmark tables
# (eager and CUDA-graph replay). Logs in $OUT: log.txt suite.txt sanitize.txt bench_attention_h200.md
# bench_attention_graphs_h200.md
source python/gpu_lib.sh
OBJ=${OBJ:-build/objs_v9}
step "link $OBJ"; link_objects "$OBJ"
step "tests/gpu"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short > "$OUT/suite.txt" 2>&1
tail -3 "$OUT/suite.txt"
step "memcheck / racecheck"
sanitize "v9 and float16 and (b3-t7 or b2-t257 or irregular or refuses)" "v9 and float16 and (b2-t257 or b3-t1000)"
step "timings (Llama-2-7B shapes): v9, v9 with cp.async copies, v4"
T="--shapes llama2-7b --batches 1,8 --tokens 4096,16384,65536 --iters 10"
timeout 150 python3 python/profile_fixed_cost.py --impl v9 $T 2>&1 | grep -v Warning
PALU_C_V4_TMA=0 timeout 150 python3 python/profile_fixed_cost.py --impl v9 $T 2>&1 | grep -v Warning
timeout 150 python3 python/profile_fixed_cost.py --impl v4 $T 2>&1 | grep -v Warning
step "benchmark, eager"; bench_table bench_attention_h200.md --dtype float16 --impls auto
step "benchmark, CUDA-graph replay"; bench_table bench_attention_graphs_h200.md --dtype float16 --impls auto --graphs
step "done"
