#!/usr/bin/env bash
# SASS of a kernel object on this machine (no GPU, no device time): the CUDA toolkit here has nvcc and ptxas but no
# cuobjdump; Triton's wheel carries one (CUDA 12.8's, which reads nvcc 13.0's sm_90a cubins). The first call
# downloads the pinned wheel from PyPI (~190 MB) and keeps cuobjdump and nvdisasm in build/tools.
#   bash python/local_sass.sh OBJECT [FUNCTION_REGEX]     e.g. build/objs_main/latent_decode_v11.o 'decode_v11_kernelI6__halfLi4ELb1'
# prints the SASS (of the functions whose mangled name matches FUNCTION_REGEX, if given)
set -euo pipefail
cd "$(dirname "$0")/.."
obj=${1:?a kernel object, e.g. from python/build_cuda_objects.sh}
tools=build/tools
if [ ! -x "$tools/cuobjdump" ]; then
  mkdir -p "$tools/whl"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tools/whl" triton==3.6.0
  unzip -o -j -q "$tools"/whl/triton-3.6.0-*.whl 'triton/backends/nvidia/bin/cuobjdump' 'triton/backends/nvidia/bin/nvdisasm' -d "$tools"
  chmod +x "$tools/cuobjdump" "$tools/nvdisasm"
  rm -rf "$tools/whl"
fi
if [ $# -ge 2 ]; then
  "$tools/cuobjdump" --dump-sass "$obj" | awk -v re="$2" '/Function : /{f = ($0 ~ re)} f'
else
  "$tools/cuobjdump" --dump-sass "$obj"
fi
