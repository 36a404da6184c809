#!/usr/bin/env bash
# Compile kernels/*.cu into DIR (default build/cuda_objects) with the flags setup.py uses (kernels/nvcc.flags), for a
# later `PALU_C_CUDA_OBJECTS=DIR python3 setup.py build_ext --inplace` on the GPU machine (carry DIR there): the nvcc
# pass is ~90 s of metered device time per call, and the objects do not depend on the Python version.
#   usage: bash python/build_cuda_objects.sh [DIR] [extra nvcc flags, e.g. -DSOME_VARIANT=1]
# SM90A_ONLY=1 skips the compute_90 PTX target (half the time; the H200 runs the sm_90a code).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-build/cuda_objects}
shift || true
mkdir -p "$DIR"
flags=()
while read -r line; do
  line=${line%%#*}
  [ -n "${line// }" ] || continue
  [ "${SM90A_ONLY:-0}" = 1 ] && [[ $line == *code=compute_90 ]] && continue
  read -ra args <<< "$line"
  flags+=("${args[@]}")
done < kernels/nvcc.flags
pids=()
for src in kernels/*.cu; do
  obj="$DIR/$(basename "${src%.cu}").o"
  nvcc -c "$src" -o "$obj.tmp" "${flags[@]}" "$@" && mv "$obj.tmp" "$obj" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ $status -eq 0 ] && echo "kernel objects in $DIR" || echo "nvcc failed" >&2
exit $status
