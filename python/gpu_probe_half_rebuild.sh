#!/usr/bin/env bash
# One H200 call: what halving the key rebuild's tensor work would buy v10 and v11 (notes, "Nineteenth session": an
# interpolative basis for the key latent makes r of a group's G*D key coordinates the latent itself, so only
# (G*D - r) x r MACs per slot remain, half at ratio 0.5). Timing probe, wrong results by design: -DPALU_PROBE_HALF_REBUILD
# runs half the rebuild's k16 steps (docs/design/experiments/probe-half-rebuild.patch). No tests. Kernel times of
# BASE (main) and PROBE, alternately in two rounds. Objects built beforehand:
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_half -DPALU_PROBE_HALF_REBUILD
#   BASE=build/objs_main PROBE=build/objs_half bash python/gpu_probe_half_rebuild.sh   (~4 minutes)
source python/gpu_lib.sh
SETS="${BASE:?main\'s objects} ${PROBE:?the probe\'s objects}"
time_sets "$SETS" --impl v11 --group 2 --shapes llama2-7b,llama3-8b --batches 1,8 --tokens 16384,65536
time_sets "$SETS" --impl v10 --shapes llama3-8b --batches 1,8 --tokens 16384,65536
step "done"
