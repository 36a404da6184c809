#!/usr/bin/env bash
# One H200 call that bounds what limits v10's step (notes "What bounds a v10 step"): kernel times of object sets built
# with parts of the step switched off (build flags V10X_*, compiled beforehand from a patched tree and carried),
# alternately in two rounds, plus one ncu profile (per-SASS stall samples) of the first set at Llama-3-8B B8 64K.
#   SETS="build/objs_a build/objs_b ..." bash python/gpu_v10_bounds.sh
source python/gpu_lib.sh
SETS=${SETS:?object sets to time}
time_sets "$SETS" --impl v10 --shapes llama3-8b --batches 1,8 --tokens 4096,16384,65536
if [ "${NCU:-1}" = 1 ]; then
  first=${SETS%% *}; step "ncu $first"; link_objects "$first"
  ncu_profile base python3 python/profile_latent_decode.py --shape llama3-8b --tokens 65536 --batch 8 --group 1 --impl v10
fi
step "done"
