#!/usr/bin/env bash
# One H200 call: Nsight Compute (--set full) of one v10 call at Llama-3-8B shapes, batch 8, 64K slots, on the SVD basis
# and on the interpolative basis (run 169: why the basis that halves the rebuild made the step slower). Details and
# per-SASS source pages in $OUT (ib_svd_*, ib_interp_*); the stall reasons of both to the log.
#   OBJ=build/objs_ib2 bash python/gpu_v10_ib_ncu.sh   (~3 minutes)
source python/gpu_lib.sh
OBJ=${OBJ:?the kernel objects}
step "link $OBJ"; link_objects "$OBJ"
for basis in svd interpolative; do
  step "ncu v10 B8 64K, key basis $basis"
  ncu_profile "ib_$basis" python3 python/profile_latent_decode.py --impl v10 --shape llama3-8b --batch 8 --tokens 65536 \
    --key-basis $basis
  grep -E "Stall|stall" "$OUT/ib_${basis}_details.txt" | head -30
done
step "done"
