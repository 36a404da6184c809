# Shared by the one-call GPU drivers that link prebuilt kernel objects (gpu_variant_check.sh, gpu_final_check.sh,
# gpu_g2_check.sh); sourced, not run. Sets up $OUT (log.txt gets everything), and defines:
#   step TITLE          a timestamped section header
#   link_objects DIR    build the extension in place from kernel objects compiled elsewhere
#                       (python/build_cuda_objects.sh DIR; the nvcc pass would cost ~98 s of device time)
#   sanitize MEM_K RACE_K   compute-sanitizer memcheck / racecheck over test_latent_decode_cuda.py -k expressions
#                       (full reports appended to $OUT/sanitize.txt)
# The device tool returns at most 8 files from $OUT: drivers delete their scratch files and append to few logs.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { echo "=== $1 ($(date +%T))"; }
link_objects() {
  PALU_C_CUDA=1 PALU_C_CUDA_OBJECTS=$1 python3 setup.py build_ext --inplace --force > "$OUT/build.tmp" 2>&1 \
    || { tail -30 "$OUT/build.tmp"; exit 1; }
  rm -f "$OUT/build.tmp"
}
sanitize() {
  local tool k
  for tool in memcheck racecheck; do
    [ "$tool" = memcheck ] && k=$1 || k=$2
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 \
      python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "$k" > "$OUT/san.tmp" 2>&1
    echo "$tool exit $?"; tail -2 "$OUT/san.tmp"
    { echo "=== $tool -k $k"; cat "$OUT/san.tmp"; } >> "$OUT/sanitize.txt"; rm -f "$OUT/san.tmp"
  done
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
