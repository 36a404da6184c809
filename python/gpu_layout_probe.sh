#!/usr/bin/env bash
# One H200 call: does v9 stream faster when each CTA's latents are one contiguous run (head-major, as "mha1" x 32
# sequences lays them out) than from the token-major cache (B, T, H R), where a CTA reads 128 bytes of every 4 KB row
# and the 32 heads' CTAs of a sequence share the rows? Same CTAs, same bytes, same plan (notes "Seventeenth session").
#   OBJ=build/objs_main2 bash python/gpu_layout_probe.sh   (~2 minutes)
source python/gpu_lib.sh
OBJ=${OBJ:?prebuilt kernel objects}
step "link $OBJ"; link_objects "$OBJ"
for round in 1 2; do
  step "round $round: token-major (llama2-7b B 1, 4, 8) then head-major (mha1 B 32, 128, 256)"
  timeout 100 python3 python/profile_fixed_cost.py --impl v9 --shapes llama2-7b --batches 1,4,8 --tokens 16384,65536 \
    --iters 10 2>&1 | grep -E "^\| llama"
  timeout 150 python3 python/profile_fixed_cost.py --impl v9 --shapes mha1 --batches 32,128,256 --tokens 16384,65536 \
    --iters 10 2>&1 | grep -E "^\| mha1|Error"
done
step "done"
