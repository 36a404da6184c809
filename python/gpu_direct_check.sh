#!/usr/bin/env bash
# One H200 call for branch direct-out (the decode kernel writes the output where a call has one partial per head,
# and no merge is launched): the whole GPU suite and memcheck on the new object set (NEW), then call times of NEW
# against main's (BASE) alternately, and one eager benchmark table on NEW.
#   NEW=build/objs_do BASE=build/objs_m10 bash python/gpu_direct_check.sh
source python/gpu_lib.sh
step "link ${NEW:?}"; link_objects "$NEW"
gpu_suite
step "sanitize"
sanitize "(v9 or v10 or v4) and float16 and (b3-t7 or b2-t257 or beyond_one_wave)" "v9 and float16 and b3-t7" \
  "v9 and float16 and b3-t7"
time_sets "$NEW ${BASE:?}" --impl auto --shapes llama2-7b,llama3-8b --batches 1,8,32 --tokens 4096,16384,65536
step "link $NEW"; link_objects "$NEW"
step "benchmark, eager"
bench_once "direct" && mv "$OUT/bench.tmp.md" "$OUT/bench_attention_h200.md" && \
  grep -E "(llama3-8b|llama2-7b) \| (1|8) \| (4K|16K|64K|128K) \| 1 " "$OUT/bench_attention_h200.md" | cut -d'|' -f2-8,12,13
step "done"
