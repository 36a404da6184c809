#!/usr/bin/env bash
# One H200 call closing the interpolative-basis work of the twentieth session (notes, "Twentieth session"): the whole
# GPU suite (tests/gpu), memcheck / racecheck / synccheck on v10's interpolative cases, the eager benchmark table with
# the "v10 ib" rows (python/results/bench_attention_h200.md), and v10's kernel times on both bases, two rounds. (The
# perplexity of both bases, python/eval_key_basis.py, needs the embedded model, whose 98 MB wheel cannot travel to
# that machine: it runs on the CPU here.)
#   OBJ=build/objs_ib3 bash python/gpu_v10_ib_final.sh   (~6 minutes)
source python/gpu_lib.sh
OBJ=${OBJ:?the kernel objects}
step "link $OBJ"; link_objects "$OBJ"
step "tests/gpu"
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short > "$OUT/suite.txt" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/suite.txt" | tail -12
step "sanitize (interpolative cases)"
sanitize "interpolative and v10 and float16 and (b3-t7 or b2-t257 or irregular)" "v10_interpolative_matches and float16 and b2-t257" \
  "v10_interpolative_matches and float16 and b2-t257"
step "benchmark, eager (both key bases)"
bench_table bench_attention_h200.md --dtype float16 --impls auto --key-basis both
grep -E "\| v10 ib \|" "$OUT/bench_attention_h200.md" | cut -d'|' -f2-8,12,13
step "v10 on both key bases"
time_bases --impl v10 --shapes llama3-8b --batches 1,8 --tokens 16384,65536
step "done"
