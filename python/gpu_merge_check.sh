#!/usr/bin/env bash
# One H200 call that validates a merged main on prebuilt kernel objects (OBJ, carried; SM90A_ONLY=1 bash
# python/build_cuda_objects.sh build/objs_X): v11 against v4 at group size 2 on short calls (where auto's
# v11_worth_it rule draws its line), the whole GPU suite, memcheck/racecheck on the v11 cases and synccheck on v9's,
# then the eager benchmark BENCH_RUNS times, each in its own process (the intermittent v9 fault of runs 89, 98 and
# 99 shows as a failed run; the first clean table is kept), and the CUDA-graph replay table.
#   OBJ=build/objs_m3 BENCH_RUNS=3 bash python/gpu_merge_check.sh
# Logs in $OUT: log.txt suite.txt sanitize.txt bench_attention_h200.md bench_attention_graphs_h200.md [fail_*.md]
source python/gpu_lib.sh
OBJ=${OBJ:?prebuilt kernel objects}
step "link $OBJ"; link_objects "$OBJ"
for impl in v11 v4 v11 v4; do
  step "timing $impl, group 2 (call us, kernel us, merge us, fit)"
  timeout 100 python3 python/profile_fixed_cost.py --impl $impl --group 2 --shapes llama3-8b,llama2-7b \
    --batches 1,2,4 --tokens 2048,4096,8192,16384 --iters 10 2>&1 | grep -E "^\| llama"
done
gpu_suite
step "sanitize"
sanitize "v11 and float16 and (b3-t7 or b2-t257 or uneven or refuses)" "(v11 and float16 and (b2-t257 or b3-t1000)) or ($MULTIBLOCK_K)" \
  "v9 and float16 and not new_latents"
kept=0
for i in $(seq 1 "${BENCH_RUNS:-3}"); do
  step "benchmark, eager, run $i"
  if ! bench_once "run $i"; then
    mv "$OUT/bench.tmp.md" "$OUT/fail_$i.md" 2>/dev/null
  elif [ $kept = 0 ]; then
    mv "$OUT/bench.tmp.md" "$OUT/bench_attention_h200.md"; kept=1
    grep -E "(llama3-8b|llama2-7b) \| (1|8) \| (16K|64K|128K) \| [12] " "$OUT/bench_attention_h200.md" | cut -d'|' -f2-8,12,13
  fi
  rm -f "$OUT/bench.tmp.md"
done
step "benchmark, CUDA-graph replay"
bench_table bench_attention_graphs_h200.md --dtype float16 --impls auto --graphs
step "done"
