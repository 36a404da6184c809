#!/usr/bin/env bash
# One H200 call (run 183, notes "Twenty-second session"): v11 on the interpolative basis in blocks of two steps
# (V11X_BLOCK2, branch v11-block2 / docs/design/experiments/v11-block2.patch; the first set) against main (the second
# set): kernel times alternately, the first set's decode and long-prompt generate tests, then the benchmark table
# of the faster set that passes (python/results/bench_attention_h200.md).
#   SETS="build/objs_b2 build/objs_main" bash python/gpu_v11_block2.sh     (~5 minutes)
# The patch's second commit takes the blocks to n_rep 1 only (Llama-2-7B shapes) with a prologue that costs no extra
# pass: time it with DECIDE_SHAPES=llama2-7b (its Llama-3-8B instances are main's code).
source python/gpu_lib.sh
SETS=${SETS:?the object sets: the candidate first}
read -r cand base <<< "$SETS"
time_sets "$SETS" --impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b --batches 1,8 \
  --tokens 16384,65536 | tee "$OUT/times.txt"
candidate_checks "$SETS" "interpolative and 8300" | tee "$OUT/checks.txt"
# the candidate wins where its B8 64K kernel time of EACH shape (both rounds summed) is lower and its tests pass
# (run 183 summed the two shapes, so Llama-2-7B's -1% outweighed Llama-3-8B's +1.2% and the table was the
# candidate's: kept apart as python/results/bench_attention_h200_run183_block2.md)
rows=()
for shape in ${DECIDE_SHAPES:-llama3-8b llama2-7b}; do rows+=("times.txt $shape"); done  # DECIDE_SHAPES: the shapes whose code the candidate changes
win=$(faster_set "$cand" "$base" checks.txt "${rows[@]}")
step "benchmark table ($win)"; link_objects "$win"
bench_table bench_attention_h200.md --dtype float16 --impls auto --key-basis both
step "done"
