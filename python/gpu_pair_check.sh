#!/usr/bin/env bash
# One H200 call for the pair launch (two splits as a cluster of two CTAs, no merge kernel; notes "The pair launch"):
# the pair tests and the v10 / v11 tests, memcheck / racecheck / synccheck on the pair tests, v10 call times with the
# pair launch on and off (PALU_C_PAIR_MERGE=0) alternately in two rounds, the eager benchmark, then the whole GPU
# suite. Kernel objects prebuilt and carried:
#   OBJ=build/objs_pr bash python/gpu_pair_check.sh   (~6 minutes)
source python/gpu_lib.sh
OBJ=${OBJ:?prebuilt kernel objects}
step "link $OBJ"; link_objects "$OBJ"
decode_tests "pair or v10 or v11"
step "sanitize"
sanitize "pair and float16" "pair and float16 and v10" "pair and float16"
for round in 1 2; do
  for on in 1 0; do
    step "round $round: PALU_C_PAIR_MERGE=$on, v10 (call us, kernel us, merge us, fit)"
    PALU_C_PAIR_MERGE=$on timeout 100 python3 python/profile_fixed_cost.py --impl v10 --shapes llama3-8b \
      --batches 1,8 --tokens 4096,16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
  done
done
step "benchmark, eager"
if bench_once "pair"; then
  mv "$OUT/bench.tmp.md" "$OUT/bench_attention_h200.md"
  grep -E "(llama3-8b|llama2-7b) \| (1|8) \| (16K|64K|128K) \| [12] " "$OUT/bench_attention_h200.md" | cut -d'|' -f2-8,12,13
fi
rm -f "$OUT/bench.tmp.md"
gpu_suite
step "done"
