#!/usr/bin/env bash
# One H200 call that tries to catch the benchmark's intermittent v9 fault in the act (notes "The benchmark's
# intermittent fault"): N eager benchmarks, each in its own process, odd ones with a GPU core dump on exception
# (CUDA_ENABLE_COREDUMP_ON_EXCEPTION; global, shared and local memory left out so the dump stays small) and even ones
# without (in case the dump's trap handler hides the fault). After every failed benchmark: the kernel log's Xid lines
# (an MMU fault of the copy engines or the TMA unit reads differently from an SM exception) and, where a dump was
# written, cuda-gdb's reading of it: the exception, the kernel, the faulting warp and its PC (map the PC to source
# with cuobjdump -sass of the same object).
#   OBJ=build/objs_m8 N=30 bash python/gpu_fault_coredump.sh
source python/gpu_lib.sh
N=${N:-30}
CORES=/tmp/palu_cores
mkdir -p "$CORES"
step "link ${OBJ:?}"; link_objects "$OBJ"
which cuda-gdb || echo "no cuda-gdb on the PATH"
dmesg > /dev/null 2>&1 && echo "dmesg readable" || echo "dmesg not readable"
dmesg 2>/dev/null | grep -ci xid | sed 's/^/Xid lines before: /'
read_core() {
  local f=$1
  timeout 120 cuda-gdb -q -batch -ex "set pagination off" -ex "target cudacore $f" -ex "info cuda kernels" \
    -ex "info cuda devices" -ex "p \$errorpc" -ex "x/8i \$errorpc - 64" -ex "x/4i \$errorpc" -ex "info cuda warps" \
    -ex "info cuda lanes" 2>&1 | grep -v "^\s*$" | head -120
}
faults=0; with_dump=0
for i in $(seq 1 "$N"); do
  rm -f "$CORES"/*
  if [ $((i % 2)) -eq 1 ]; then
    env_dump=(CUDA_ENABLE_COREDUMP_ON_EXCEPTION=1 "CUDA_COREDUMP_FILE=$CORES/core.%p"
      "CUDA_COREDUMP_GENERATION_FLAGS=skip_global_memory,skip_shared_memory,skip_local_memory,skip_abort")
    label="dump $i"
  else
    env_dump=(PALU_NO_DUMP=1); label="plain $i"
  fi
  if bench_once "$label" "${env_dump[@]}"; then
    mv "$OUT/bench.tmp.md" "$OUT/bench_eager.md"
  else
    faults=$((faults + 1))
    step "fault in $label: Xid lines"
    dmesg 2>/dev/null | grep -i -A3 xid | tail -20
    for f in "$CORES"/*; do
      [ -f "$f" ] || continue
      with_dump=$((with_dump + 1))
      step "core $f ($(du -h "$f" | cut -f1))"
      read_core "$f"
    done
  fi
  rm -f "$OUT/bench.tmp.md"
done
step "done: $faults of $N benchmarks failed, $with_dump core dumps read"
