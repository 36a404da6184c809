#!/usr/bin/env bash
# One H200 call for v11 on keys in the interpolative basis (notes, "Twentieth session"): link the prebuilt objects,
# the v10 / v11 / key_pairs GPU tests, the long-prompt generate tests of compress_kv(key_basis="interpolative")
# (G 1 and 2), memcheck / racecheck / synccheck on v11's interpolative cases, v11's kernel times on both bases (two
# rounds, both shapes, batch 1 and 8, 16K and 64K), and the eager benchmark table with the "v10 ib" / "v11 ib" rows.
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_ib5        (here, beforehand)
#   OBJ=build/objs_ib5 bash python/gpu_v11_ib.sh                          (~5 minutes; run 174)
source python/gpu_lib.sh
OBJ=${OBJ:?the kernel objects}
step "link $OBJ"; link_objects "$OBJ"
decode_tests "v11 or key_pairs or v10_interpolative"
step "compress_kv generate tests (interpolative, long prompt)"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_compress_kv_cuda.py -k "equals_the_reference_path and interpolative and 8300" 2>&1 | tail -2
step "sanitize (v11 interpolative cases)"
sanitize "v11_interpolative_matches and float16 and (b3-t7 or b2-t257)" "v11_interpolative_matches and float16 and b2-t257" \
  "v11_interpolative_matches and float16 and b2-t257"
step "v11 on both key bases"
time_bases --impl v11 --group 2 --shapes llama3-8b,llama2-7b --batches 1,8 --tokens 16384,65536
step "benchmark, eager (both key bases)"
bench_table bench_attention_h200.md --dtype float16 --impls auto --key-basis both
grep -E "\| v1[01] ib \|" "$OUT/bench_attention_h200.md" | cut -d'|' -f2-8,12,13
step "done"
