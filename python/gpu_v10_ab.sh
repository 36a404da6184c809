#!/usr/bin/env bash
# One H200 call to find v10's gap to the GQA probe (notes "v10 in the library"): kernel times of v10 from two object
# sets, alternately (BASE, NEW, BASE, NEW: drift hits both alike), the probe built and timed in the same call, and one
# ncu profile of each v10 at Llama-3-8B B8 64K. Objects compiled beforehand and carried, each by
# SM90A_ONLY=1 bash python/build_cuda_objects.sh DIR (NEW from the change, e.g. branch v10-qa; BASE from main).
# NCU=0 skips the profiles. EXTRA="DIR ..." times more object sets in the same rounds. SUITE=1 runs the whole GPU suite on BASE first. Logs in $OUT: suite.txt (SUITE=1), log.txt base_details.txt new_details.txt (ncu), base_source.csv new_source.csv (per-SASS stalls)
source python/gpu_lib.sh
NEW=${NEW:-build/objs_v10qa}
BASE=${BASE:-build/objs_v10}
if [ "${SUITE:-0}" = 1 ]; then   # the whole GPU suite on BASE first (a tree whose tests were not yet run there)
  step "tests/gpu on $BASE"; link_objects "$BASE"
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short --maxfail=5 > "$OUT/suite.txt" 2>&1
  tail -3 "$OUT/suite.txt"; grep -E "^(FAILED|ERROR)" "$OUT/suite.txt" | head -20
fi
step "probe"; mkdir -p build
nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -I csrc -I kernels \
  -I third_party/dlpack/include python/probe_gqa.cu -o build/probe_gqa -lcuda || exit 1
./build/probe_gqa check
for T in 16384 65536; do ./build/probe_gqa time 1 8 $T 16 20; ./build/probe_gqa time 8 8 $T 2 20; done
EXTRA=${EXTRA:-}   # more object sets to time (no tests, no profile), e.g. builds with a section disabled
for objs in "$BASE" "$NEW" $EXTRA "$BASE" "$NEW" $EXTRA; do
  step "v10 timings, $objs"; link_objects "$objs"
  timeout 100 python3 python/profile_fixed_cost.py --impl v10 --shapes llama3-8b --batches 1,8 \
    --tokens 4096,16384,65536 --iters 10 2>&1 | grep -E "^\| (llama|shape)"
done
step "tests (v10 and the generate path) on $NEW"; link_objects "$NEW"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "v10" 2>&1 | tail -2
[ "${NCU:-1}" = 1 ] || { step "done"; exit 0; }   # NCU=0: timings and tests only
for pair in "base:$BASE" "new:$NEW"; do
  name=${pair%%:*}; objs=${pair#*:}
  step "ncu $name"; link_objects "$objs"
  ncu_profile "$name" python3 python/profile_latent_decode.py --shape llama3-8b --tokens 65536 --batch 8 --group 1 --impl v10
done
step "done"
