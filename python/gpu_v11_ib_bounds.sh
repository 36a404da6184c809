#!/usr/bin/env bash
# The switches it uses are not on main: `git apply docs/design/experiments/v11-ib-nst5-bounds.patch` first (notes, run 176).
# One H200 call: v11 on interpolative-basis keys with a fifth stage (kV11IbNST, the first set), its tests, its kernel
# times against the four-stage ring, and the bounds of its step: no rebuild (V11X_NOWGMMA) and the loads, barriers and
# rebuild alone (V11X_NOMATH), as run 110 measured them for the SVD basis; then Nsight Compute of one B8 64K call.
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_s21           (here, beforehand; then per variant
#   a copy of it with latent_decode_v11.o rebuilt: -DV11X_IB_NST=4, -DV11X_NOWGMMA, -DV11X_NOMATH)
#   SETS="build/objs_s21 build/objs_nst4 build/objs_nw build/objs_nm" bash python/gpu_v11_ib_bounds.sh  (~8 minutes)
source python/gpu_lib.sh
SETS=${SETS:?the object sets: first the candidate, then the baseline, then the bounds}
read -ra sets <<< "$SETS"
ARGS=(--impl v11 --group 2 --key-basis interpolative --shapes llama3-8b,llama2-7b --batches 1,8 --tokens 16384,65536)
step "link ${sets[0]}"; link_objects "${sets[0]}"
decode_tests "v11 or key_pairs"
step "compress_kv generate tests (interpolative, G 2, long prompt)"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_compress_kv_cuda.py -k "equals_the_reference_path and interpolative and 8300" 2>&1 | tail -2
for round in 1 2; do
  for i in "${!sets[@]}"; do
    [ "$round" = 2 ] && [ "$i" -ge 2 ] && continue # the bounds once
    step "round $round: ${sets[$i]} (call us, kernel us, merge us, fit)"; link_objects "${sets[$i]}"
    timeout 100 python3 python/profile_fixed_cost.py "${ARGS[@]}" --iters 10 2>&1 | grep -E "^\| llama"
  done
done
step "link ${sets[0]}"; link_objects "${sets[0]}"
step "ncu v11 ib, Llama-3-8B B8 64K"
ncu_profile v11ib python3 python/profile_latent_decode.py --impl v11 --group 2 --shape llama3-8b --batch 8 --tokens 65536 \
  --key-basis interpolative
grep -E "Stall|stall" "$OUT/v11ib_details.txt" | head -30
step "done"
