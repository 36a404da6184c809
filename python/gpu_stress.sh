#!/usr/bin/env bash
# One H200 call hunting the benchmark's intermittent fault (notes "The benchmark's intermittent fault"): prebuilt
# kernel objects (OBJ, carried), then python/stress_decode.py over several configurations, each in its own process.
source python/gpu_lib.sh
OBJ=${OBJ:-build/objs_final}
step "link $OBJ"; link_objects "$OBJ"
N=${N:-3000}
run() { timeout 60 python3 python/stress_decode.py --calls $N "$@" 2>&1 | grep -E "^(ok|CHANGED|FAULT)|Error" | head -5; }
step "v9 bench-like"; run --shape llama2-7b --batch 8 --tokens 16384 --bench-like
step "v9 back to back"; run --shape llama2-7b --batch 8 --tokens 16384
step "v9 B1 64K bench-like"; run --shape llama2-7b --batch 1 --tokens 65536 --bench-like
step "v9 cp.async (PALU_C_V4_TMA=0) back to back"; PALU_C_V4_TMA=0 run --shape llama2-7b --batch 8 --tokens 16384
step "v10 bench-like"; run --shape llama3-8b --batch 8 --tokens 16384 --bench-like
step "v4 back to back"; run --shape llama3-8b --batch 8 --tokens 16384 --impl v4
step "done"
