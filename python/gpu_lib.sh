# Shared by the one-call GPU drivers that link prebuilt kernel objects (gpu_variant_check.sh, gpu_final_check.sh,
# gpu_g2_check.sh); sourced, not run. Sets up $OUT (log.txt gets everything), and defines:
#   step TITLE          a timestamped section header
#   link_objects DIR    build the extension in place from kernel objects compiled elsewhere
#                       (python/build_cuda_objects.sh DIR; the nvcc pass would cost ~98 s of device time)
#   sanitize MEM_K RACE_K [SYNC_K]   compute-sanitizer memcheck / racecheck (/ synccheck) over
#                       test_latent_decode_cuda.py -k expressions (full reports appended to $OUT/sanitize.txt;
#                       each run cut at SAN_TIMEOUT seconds, default 300: v9's multi-block cases take ~130 s)
#   decode_tests K   test_latent_decode_cuda.py -k K (its summary line)
#   check_first_set "SETS" TEST_K MEM_K RACE_K SYNC_K   link the first set; its decode tests and sanitizers
#   candidate_checks "SETS" GEN_K   link the first set; its v10/v11 decode tests and long-prompt generate tests
#   time_sets "SETS" ARGS...   python/profile_fixed_cost.py ARGS on each prebuilt object set, alternately, two rounds
#   time_bases ARGS...          python/profile_fixed_cost.py ARGS on both key bases (palu_c/key_basis.py), two rounds
#   bench_table FILE ARGS...    python/bench_attention.py ARGS into $OUT/FILE; its G 1-2 Llama rows to the log
#   bench_once LABEL [VAR=VALUE...]  one eager benchmark (fp16, auto) in its own process with those environment
#                       variables, for counting the intermittent v9 fault: prints "LABEL exit RC" and the first FAILED
#                       row; the table stays in $OUT/bench.tmp.md for the caller (returns RC)
#   bench_count N LABEL [VAR=VALUE...]   N of those, counting the failures; the last clean table in $OUT/bench_eager.md
#   ncu_profile NAME CMD...     ncu --set full of CMD's 4th decode kernel: $OUT/NAME_details.txt and the per-SASS
#                       source page $OUT/NAME_source.csv (the report itself is deleted: one file fewer to return)
# The device tool returns at most 8 files from $OUT: drivers delete their scratch files and append to few logs.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_selections.sh" # MULTIBLOCK_K
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
  for tool in memcheck racecheck synccheck; do
    case $tool in memcheck) k=$1 ;; racecheck) k=$2 ;; synccheck) k=${3:-} ;; esac
    [ -n "$k" ] || continue
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SAN_TIMEOUT:-300}" compute-sanitizer --tool $tool --error-exitcode 9 \
      python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "$k" > "$OUT/san.tmp" 2>&1
    echo "$tool exit $?"; tail -2 "$OUT/san.tmp"
    { echo "=== $tool -k $k"; cat "$OUT/san.tmp"; } >> "$OUT/sanitize.txt"; rm -f "$OUT/san.tmp"
  done
}
decode_tests() {  # decode_tests K: tests/gpu/test_latent_decode_cuda.py -k K, its summary line
  step "tests -k $1"
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "$1" 2>&1 | tail -1
}
check_first_set() {  # check_first_set "SETS" TEST_K MEM_K RACE_K SYNC_K: link the first set, its decode tests, sanitizers
  local first=${1%% *}
  step "link $first"; link_objects "$first"
  decode_tests "$2"
  step "sanitize"; sanitize "$3" "$4" "$5"
}
repro() {  # repro STRESS_ARGS...: the v9 fault's reproducer (python/stress_decode.py, Llama-2-7B unless --shape says
  # otherwise, 200 calls checked every 10; notes "The fault reproduced on demand"), its verdict line only
  echo "-- $*"
  timeout 60 python3 python/stress_decode.py --shape llama2-7b --calls 200 --check-every 10 "$@" 2>&1 \
    | grep -E "^(ok|CHANGED|FAULT)|Error" | head -2
}
gpu_suite() {  # gpu_suite: the whole tests/gpu suite, log in $OUT/suite.txt, its summary lines here
  step "tests/gpu"
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu -rfs --tb=short > "$OUT/suite.txt" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/suite.txt" | tail -12
}
candidate_checks() {  # candidate_checks "SETS" GEN_K: link the first set, the v10 / v11 / key_pairs / interpolative
  # decode tests and the long-prompt compress_kv generate tests selected by GEN_K (with "equals_the_reference_path")
  local first=${1%% *}
  step "link $first"; link_objects "$first"
  decode_tests "v10 or v11 or key_pairs or interpolative"
  step "compress_kv generate tests ($2)"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_compress_kv_cuda.py -k "equals_the_reference_path and $2" 2>&1 | tail -2
}
time_sets() {  # time_sets "SET SET ..." PROFILE_ARGS...: kernel times of each object set, alternately, two rounds
  local sets=$1 round objs; shift
  for round in 1 2; do
    for objs in $sets; do
      step "round $round: $objs (call us, kernel us, merge us, fit)"; link_objects "$objs"
      timeout 100 python3 python/profile_fixed_cost.py "$@" --iters 10 2>&1 | grep -E "^\| llama"
    done
  done
}
time_bases() {  # time_bases PROFILE_ARGS...: python/profile_fixed_cost.py ARGS on the SVD and the interpolative key
  # basis alternately, two rounds, on the linked objects
  local round basis
  for round in 1 2; do
    for basis in svd interpolative; do
      step "round $round: key basis $basis (call us, kernel us, merge us, fit)"
      timeout 100 python3 python/profile_fixed_cost.py "$@" --key-basis $basis --iters 10 2>&1 | grep -E "^\| llama"
    done
  done
}
bench_table() {
  local file=$1; shift
  timeout 200 python3 python/bench_attention.py "$@" --out "$OUT/$file" > "$OUT/bench.tmp" 2>&1
  local rc=$?
  echo "bench exit $rc"
  [ $rc -eq 0 ] || tail -30 "$OUT/bench.tmp"   # runs 73 and 81 failed once each and the cause was lost with this file
  rm -f "$OUT/bench.tmp"
  grep -E "(llama3-8b|llama2-7b) \| (1|8) \| (16K|64K|128K) \| [12] " "$OUT/$file" | cut -d'|' -f2-8,12,13
}
bench_once() {
  local label=$1; shift
  rm -f "$OUT/bench.tmp.md"
  env "$@" timeout 150 python3 python/bench_attention.py --dtype float16 --impls auto --out "$OUT/bench.tmp.md" \
    > "$OUT/run.tmp" 2>&1
  local rc=$?
  echo "$label exit $rc $(grep -hE "FAILED" "$OUT/bench.tmp.md" 2>/dev/null | cut -d'|' -f2-7 | head -1)"
  [ $rc -eq 0 ] || grep -h "stopped" "$OUT/bench.tmp.md" "$OUT/run.tmp" 2>/dev/null | head -1
  rm -f "$OUT/run.tmp"
  return $rc
}
bench_count() {  # bench_count N LABEL [VAR=VALUE...]: N eager benchmarks; the last clean table kept as
  local n=$1 label=$2 i faults=0; shift 2  # $OUT/bench_eager.md; prints "done: F of N benchmarks failed"
  for i in $(seq 1 "$n"); do
    if bench_once "$label $i" "$@"; then mv "$OUT/bench.tmp.md" "$OUT/bench_eager.md"; else faults=$((faults + 1)); fi
    rm -f "$OUT/bench.tmp.md"
  done
  step "done: $faults of $n benchmarks failed ($label${1:+, $*})"
}
ncu_profile() {
  local name=$1; shift
  timeout 200 ncu --clock-control none --set full --import-source yes -k regex:decode_v --launch-skip 3 \
    --launch-count 1 -o "$OUT/$name" "$@" > /dev/null 2>&1; echo "ncu exit $?"
  ncu -i "$OUT/$name.ncu-rep" --page details > "$OUT/${name}_details.txt" 2>&1
  grep -E "Duration|Registers Per|Achieved Active Warps|Issue Slots Busy|Eligible Warps|DRAM Throughput|L1/TEX Cache Throughput|Executed Instructions  " \
    "$OUT/${name}_details.txt" | head -12
  ncu -i "$OUT/$name.ncu-rep" --page source --csv --print-source sass > "$OUT/${name}_source.csv" 2>&1
  rm -f "$OUT/$name.ncu-rep"
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
set_time() {  # set_time FILE SET SHAPE: SET's batch-8 64K kernel us of SHAPE in a time_sets log under $OUT, summed
  # over the rounds (each round's own block of rows only)
  awk -v set="$2" -v row="| $3 | 8 | 65536 |" -F'|' '/^===/ {on = index($0, "round") && index($0, ": " set " ")}
    on && index($0, row) {s += $6} END {print s}' "$OUT/$1"
}
faster_set() {  # faster_set CAND BASE CHECKS "FILE SHAPE" ...: prints CAND where its batch-8 64K kernel time gained
  # in every (time_sets log, shape) given and the CHECKS log (under $OUT) shows no failure, else BASE; says why on stderr
  local cand=$1 base=$2 checks=$3 win=$1 f shape tc tb; shift 3
  for row in "$@"; do
    read -r f shape <<< "$row"
    tc=$(set_time "$f" "$cand" "$shape"); tb=$(set_time "$f" "$base" "$shape")
    echo "${f%.txt} $shape B8 64K kernel us, rounds summed: $cand $tc, $base $tb" >&2
    python3 -c "import sys; sys.exit(0 if $tc < $tb else 1)" || win=$base
  done
  grep -qE "failed|error" "$OUT/$checks" && win=$base
  echo "$win"
}
