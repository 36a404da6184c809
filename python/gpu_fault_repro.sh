#!/usr/bin/env bash
# One H200 call that checks the fix of v9's fault (notes, "The fault's cause"): the reproducer
# (python/stress_decode.py --realloc: new latents after empty_cache, Llama-2-7B B8 128K) on the build before the fix
# (OLD: it should fault) and on the fixed build (OBJ: it must not), the v9 GPU tests with the new regression test,
# memcheck / racecheck / synccheck on v9, v9's times on both builds alternately, and N eager benchmarks on the fix.
#   SM90A_ONLY=1 bash python/build_cuda_objects.sh build/objs_fx
#   OLD=build/objs_m9 OBJ=build/objs_fx N=6 bash python/gpu_fault_repro.sh   (~8 minutes)
source python/gpu_lib.sh
N=${N:-6}
step "link OLD ${OLD:?}"; link_objects "$OLD"
step "reproducer on the build before the fix (should fault)"
repro --batch 8 --tokens 131072 --realloc
repro --batch 8 --tokens 131072 --realloc --churn
step "link OBJ ${OBJ:?}"; link_objects "$OBJ"
step "reproducer on the fixed build (must not fault)"
for i in 1 2; do repro --batch 8 --tokens 131072 --realloc --churn; done
repro --batch 8 --tokens 131072 --realloc
repro --shape llama3-8b --batch 8 --tokens 131072 --realloc
repro --batch 8 --tokens 131072 --group 2 --realloc
decode_tests v9
step "sanitize v9"
sanitize "v9 and float16 and (b3-t7 or b2-t257 or irregular)" "v9 and float16 and (b3-t7 or b2-t257)" \
  "v9 and float16 and (b3-t7 or b2-t257)"
time_sets "$OBJ $OLD" --impl v9 --shapes llama2-7b --batches 1,8 --tokens 16384,65536
step "link OBJ $OBJ"; link_objects "$OBJ"
bench_count "$N" fixed
