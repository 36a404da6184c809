#!/usr/bin/env bash
# One H200 call that validates and times a kernel change against its baseline (A/B). Objects compiled beforehand
# and carried: NEW (default build/objs_m1) and the baseline BASE (default build/objs_m0), both by
# SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR (the baseline from a worktree of the commit before).
# Used for the one-round merge (run 42) and v4's query rows in shared memory (run 43).
#   1. the whole GPU suite on NEW;
#   2. profile_fixed_cost.py (v4; Llama-3-8B and Llama-2-7B shapes; batch 1 and 8; 1K / 16K / 64K) on BASE, NEW,
#      BASE, NEW, relinking in between (alternating, so clock and run-to-run drift hit both alike);
#   3. memcheck / racecheck on a reduced set (every test ends in the merge kernel);
#   4. the benchmark tables on NEW, eager and CUDA-graph replay.
# Logs in $OUT: log.txt suite.txt sanitize.txt bench_attention_h200.md bench_attention_graphs_h200.md
source "$(dirname "$0")/gpu_lib.sh"
NEW=${NEW:-build/objs_m1}
BASE=${BASE:-build/objs_m0}
step "link $NEW"
link_objects "$NEW"
step "tests/gpu"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short > "$OUT/suite.txt" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/suite.txt" | tail -8
for objs in "$BASE" "$NEW" "$BASE" "$NEW"; do
  step "timings, $objs"
  link_objects "$objs"
  timeout 120 python3 python/profile_fixed_cost.py --impl v4 --shapes llama3-8b,llama2-7b \
    --batches 1,8 --tokens 1024,16384,65536 --iters 10 2>&1 | grep -E "^\| (llama|shape)"
done
step "memcheck / racecheck"
sanitize "float16 and (gqa-d128-g1-r64 or long-split or bad_pad)" "float16 and (gqa-d128-g1-r64 or long-split)"
step "benchmark, eager"
bench_table bench_attention_h200.md --impls auto
step "benchmark, CUDA-graph replay"
bench_table bench_attention_graphs_h200.md --impls auto --graphs
step "done"
