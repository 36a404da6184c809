#!/usr/bin/env bash
# One H200 call for branch v9-full-ring (notes, "A fix without the extra wait"): the v9 tests, sanitizers and the
# fault's reproducer on the ring build (first set), the reproducer on the build without one-wave chunks (NC), then
# v9's kernel times of every set alternately (ring, the merged fix, the build before the fix, ring without chunks).
# (objs_nc was the ring build with the chunk launcher short-circuited; main has launched one grid since run 128.)
#   SETS="build/objs_ring build/objs_fx build/objs_m9 build/objs_nc" NC=build/objs_nc bash python/gpu_v9_ring.sh
source python/gpu_lib.sh
SETS=${SETS:?object sets to time}
check_first_set "$SETS" v9 "v9 and float16 and (b3-t7 or b2-t257 or irregular)" "v9 and float16 and (b3-t7 or b2-t257)" \
  "v9 and float16 and (b3-t7 or b2-t257)"
step "reproducer on the first set (B8 128K, three runs)"
for a in "--realloc --churn" "--realloc" "--realloc --batch 4"; do repro --batch 8 --tokens 131072 $a; done
step "link NC ${NC:?}"; link_objects "$NC"
step "reproducer without one-wave chunks (B8 128K, two runs)"
for a in "--realloc --churn" "--realloc"; do repro --batch 8 --tokens 131072 $a; done
decode_tests v9
time_sets "$SETS" --impl v9 --shapes llama2-7b --batches 1,8 --tokens 16384,65536,131072
step "done"
