#!/usr/bin/env bash
# One H200 call for a v11 change against its baseline: NEW and BASE prebuilt kernel objects, both carried
# (SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR; BASE from main). v11's GPU tests and memcheck/racecheck on
# NEW, then v11's times at group size 2 on BASE, NEW, BASE, NEW (relinked in between, so drift hits both alike).
#   NEW=build/objs_pa BASE=build/objs_main bash python/gpu_v11_ab.sh
source python/gpu_lib.sh
NEW=${NEW:?}; BASE=${BASE:?}
step "link $NEW"; link_objects "$NEW"
step "v11 tests"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k v11 2>&1 | tail -1
step "sanitize"
sanitize "v11 and float16 and (b3-t7 or b2-t257 or uneven or irregular)" "v11 and float16 and (b2-t257 or b3-t1000)"
for objs in "$BASE" "$NEW" "$BASE" "$NEW"; do
  step "v11 times, $objs (call us, kernel us, merge us, fit)"; link_objects "$objs"
  timeout 100 python3 python/profile_fixed_cost.py --impl v11 --group 2 --shapes llama3-8b,llama2-7b \
    --batches 1,8 --tokens 4096,16384,65536 --iters 10 2>&1 | grep -E "^\| llama"
done
step "done"
