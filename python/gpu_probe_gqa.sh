#!/usr/bin/env bash
# One H200 call for the GQA probe (python/probe_gqa.cu): build it (NST 8 and 6, one or two score chains), check it against float64, time it
# at Llama-3-8B shapes (8 KV heads x 4 query heads, D 128, rk = rv = 64) against the DRAM floor, and profile one
# row with ncu. Log in $OUT/log.txt (ncu details in $OUT/probe_details.txt).
source python/gpu_lib.sh
step "build"; mkdir -p build
b() { nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a "$@" -I csrc -I kernels \
  -I third_party/dlpack/include python/probe_gqa.cu -lcuda; }
# wait on these pids only: a bare `wait` would also wait for gpu_lib.sh's tee
b -o build/probe_gqa_8 & p1=$!; b -DPROBE_LAZY=0 -o build/probe_gqa_l0 & p2=$!; b -DPROBE_CHAINS=2 -o build/probe_gqa_c2 & p3=$!
wait $p1 $p2 $p3
ls build/probe_gqa_8 build/probe_gqa_l0 build/probe_gqa_c2 > /dev/null || exit 1
step "check"
for n in 8 l0 c2; do for qs in 1 12; do ./build/probe_gqa_$n check $qs; echo "check exit $?"; done; done
step "time (kernel only, medians of 20)"
for n in 8 l0 c2; do
  for T in 16384 65536 131072; do
    ./build/probe_gqa_$n time 1 8 $T 16 20
    ./build/probe_gqa_$n time 8 8 $T 2 20
  done
done
./build/probe_gqa_8 time 1 8 65536 32 20
./build/probe_gqa_8 time 8 8 65536 4 20
step "ncu B8 64K"
timeout 120 ncu --clock-control none --set full -k regex:gqa_kernel --launch-skip 3 --launch-count 1 \
  -o "$OUT/probe" ./build/probe_gqa_8 time 8 8 65536 2 3 > /dev/null 2>&1; echo "ncu exit $?"
ncu -i "$OUT/probe.ncu-rep" --page details > "$OUT/probe_details.txt" 2>&1
grep -E "Duration|Registers Per|Issue Slots Busy|Eligible Warps|DRAM Throughput|L1/TEX Cache Throughput|Executed Instructions  |Shared" \
  "$OUT/probe_details.txt" | head -14
ncu -i "$OUT/probe.ncu-rep" --page source --csv --print-source sass > "$OUT/probe_source.csv" 2>&1
rm -f "$OUT/probe.ncu-rep"
step "done"
