#!/usr/bin/env bash
# One H200 call that counts the eager benchmark's intermittent v9 fault (notes "The benchmark's intermittent fault")
# under three configurations, N benchmarks each, every benchmark in its own process:
#   tma   prebuilt objects OBJ as they are (v9 loads by TMA, the merge is a programmatic dependent launch)
#   cpa   the same build with PALU_C_V4_TMA=0 (v9 and v4 copy by cp.async)
#   nopdl objects NOPDL_OBJ built with -DPALU_C_NO_PDL (the merge launched plainly after the decode kernel)
# A failing benchmark's failure line goes to the log. tma and cpa alternate on one build; nopdl runs after.
#   OBJ=build/objs_m4 NOPDL_OBJ=build/objs_nopdl N=8 bash python/gpu_fault_hunt.sh
source python/gpu_lib.sh
N=${N:-8}
bench() { bench_once "$@"; rm -f "$OUT/bench.tmp.md"; } # config name, then env assignments
step "link ${OBJ:?}"; link_objects "$OBJ"
for i in $(seq 1 "$N"); do bench tma PALU_C_V4_TMA=1; bench cpa PALU_C_V4_TMA=0; done
step "link ${NOPDL_OBJ:?}"; link_objects "$NOPDL_OBJ"
for i in $(seq 1 "$N"); do bench nopdl PALU_C_V4_TMA=1; done
step "done"
