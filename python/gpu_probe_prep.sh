#!/usr/bin/env bash
# One H200 call: upper bounds of preparing v9's and v10's per-layer tables once (notes, "Eighteenth session"). Timing
# probes, wrong results by design: PALU_PROBE_NOPREP skips the R(k) table's and the U_tau images' arithmetic (their
# stores stay), PALU_PROBE_NOUK also skips Uk's load, PALU_PROBE_NOPOS takes the positions out of v9's copy warp.
# Kernel times of every set in SETS (the first being main's), alternately in two rounds; no tests (the probes fail
# them). Object sets built beforehand (SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR -DPALU_PROBE_X).
#   SETS="build/objs_m18 build/objs_noprep build/objs_nouk build/objs_nopos" bash python/gpu_probe_prep.sh (~4 min)
source python/gpu_lib.sh
SETS=${SETS:?object sets to time}
time_sets "$SETS" --impl v9 --shapes llama2-7b --batches 1,8 --tokens 16384,65536
time_sets "$SETS" --impl v10 --shapes llama3-8b --batches 1,8 --tokens 16384,65536
step "done"
