#!/usr/bin/env bash
# One H200 call for v10 on keys in the interpolative basis (notes, "Twentieth session"): link the prebuilt objects,
# the v10 GPU tests (plain and interpolative), the end-to-end generate tests of compress_kv(key_basis=...),
# memcheck / racecheck / synccheck on interpolative cases, then v10's kernel times on the SVD basis and on the
# interpolative basis alternately, two rounds (Llama-3-8B shapes, batch 1 and 8, 16K and 64K).
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_ib        (here, beforehand)
#   OBJ=build/objs_ib bash python/gpu_v10_ib.sh                          (~4 minutes; run 168)
# QUICK=1: the decode tests only (no generate tests, no sanitizers). SASS="DIR ...": first, the static SASS counts
# of v10's instances in each object set (python/sass_histogram.py), to compare edits. NCU=1: last, Nsight Compute of
# one B8 64K call on each basis and python/ncu_sass_diff.py of the two (executed instructions per opcode and line).
source python/gpu_lib.sh
OBJ=${OBJ:?the kernel objects}
for dir in ${SASS:-}; do
  step "SASS counts of $dir/latent_decode_v10.o"
  cuobjdump -sass "$dir/latent_decode_v10.o" | python3 python/sass_histogram.py --grep decode_v10
done
step "link $OBJ"; link_objects "$OBJ"
decode_tests "v10 or key_pairs"
if [ "${QUICK:-0}" != 1 ]; then
  step "compress_kv generate tests"
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_compress_kv_cuda.py -k "equals_the_reference_path and llama3" 2>&1 | tail -3
  step "sanitize (interpolative cases)"
  sanitize "interpolative and v10 and float16 and (b3-t7 or b2-t257 or irregular)" "v10_interpolative_matches and float16 and b2-t257" \
    "v10_interpolative_matches and float16 and b2-t257"
fi
step "v10 on both key bases"
time_bases --impl v10 --shapes llama3-8b --batches 1,8 --tokens 16384,65536
if [ "${NCU:-0}" = 1 ]; then
  for basis in svd interpolative; do
    step "ncu v10 B8 64K, key basis $basis"
    ncu_profile "ncu_$basis" python3 python/profile_latent_decode.py --impl v10 --shape llama3-8b --batch 8 \
      --tokens 65536 --key-basis $basis
  done
  python3 python/ncu_sass_diff.py "$OUT/ncu_svd_source.csv" "$OUT/ncu_interpolative_source.csv"
  rm -f "$OUT"/ncu_*_source.csv
fi
step "done"
