#!/usr/bin/env bash
# The V11X_SPLIT* switches live in docs/design/experiments/v11-split.patch (not merged): apply it before building the sets.
# One H200 call (run 181, notes "Twenty-second session"): why v11's rebuild warpgroup (V11X_SPLIT) ran slower than
# the fused step in run 180. Kernel times, alternately, of: main (fused), SPLIT with two key tiles (V11X_KEYRING=2),
# the same with setmaxnreg (rebuild warpgroup 120 registers, scorers 196), and a probe of SPLIT whose rebuild
# warpgroup skips its wgmma (wrong keys by design: the scorers and the hand-off alone). Then the benchmark table of
# main's kernels (the first set: fp16 accumulators on), as python/results/bench_attention_h200.md.
#   SETS="build/objs_h16 build/objs_sb2 build/objs_sb2r build/objs_sb2p" bash python/gpu_v11_split2.sh   (~6 minutes)
source python/gpu_lib.sh
SETS=${SETS:?the object sets}
time_sets "$SETS" --impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b --batches 1,8 \
  --tokens 16384,65536
step "benchmark table (${SETS%% *})"; link_objects "${SETS%% *}"
bench_table bench_attention_h200.md --dtype float16 --impls auto --key-basis both
step "done"
