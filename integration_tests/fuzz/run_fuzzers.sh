#!/usr/bin/env bash
# Builds the libFuzzer targets with Debian's clang (ASan + UBSan; Bazel's compiler is gcc, which
# has no libFuzzer) and runs each for a fixed time on a copy of its seed corpus. Fails on any
# crash, leak, uncaught exception or UBSan report. Prints `test cases: N | P passed | F failed`.
#
# Usage: integration_tests/fuzz/run_fuzzers.sh [seconds per target, default 20]
# Under `bazel test` the sources come from the runfiles ($TEST_SRCDIR/livemig).
set -uo pipefail

SECONDS_PER_TARGET="${1:-${FUZZ_SECONDS:-20}}"

if [[ -n "${TEST_SRCDIR:-}" && -d "${TEST_SRCDIR}/livemig" ]]; then
  SRC="${TEST_SRCDIR}/livemig"
else
  SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
fi
WORK="${TEST_TMPDIR:-$(mktemp -d /tmp/livemig-fuzz.XXXXXX)}/fuzz"
rm -rf "$WORK" && mkdir -p "$WORK/gen" "$WORK/obj"

CXX="${CXX_FUZZ:-clang++}"
if ! command -v "$CXX" >/dev/null; then
  echo "run_fuzzers: $CXX not found: install clang and libclang-rt-14-dev (deploy/install-deps.sh)"
  echo "test cases: 1 | 0 passed | 1 failed"
  exit 1
fi

total=0
passed=0
failed=0
result() {  # name ok|fail [detail]
  total=$((total + 1))
  if [[ "$2" == ok ]]; then
    passed=$((passed + 1))
    echo "PASS $1 ${3:-}"
  else
    failed=$((failed + 1))
    echo "FAIL $1 ${3:-}"
  fi
}
finish() {
  echo "test cases: $total | $passed passed | $failed failed"
  [[ $failed -eq 0 ]]
  exit $?
}

# ---- build -----------------------------------------------------------------------------------
start=$(date +%s)
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
CXXFLAGS=(-std=c++17 -g -O1 "${SAN[@]}" -I"$WORK/gen" -I"$SRC" -Wno-deprecated-declarations)
LIBS=$(pkg-config --libs absl_status absl_statusor absl_strings absl_str_format absl_time protobuf)

build_ok=1
if ! /usr/bin/protoc --proto_path="$SRC" --proto_path=/usr/include --cpp_out="$WORK/gen" \
  "$SRC/proto/common.proto" "$SRC/proto/scheduler.proto" >"$WORK/protoc.log" 2>&1; then
  cat "$WORK/protoc.log"
  build_ok=0
fi

# The code under test: -O1 -g with coverage; the generated protos and the helpers it calls only
# with the sanitizers, at -O0 (a third of the build time otherwise).
declare -A SOURCES=(
  [common.pb]="$WORK/gen/proto/common.pb.cc|nocov"
  [scheduler.pb]="$WORK/gen/proto/scheduler.pb.cc|nocov"
  [convert]="$SRC/scheduler/convert.cc|nocov"
  [api_names]="$SRC/scheduler/api_names.cc|cov"
  [migration_status]="$SRC/common/migration_status.cc|nocov"
  [step_name]="$SRC/common/step_name.cc|nocov"
  [rest_parse]="$SRC/scheduler/rest_parse.cc|cov"
  [args]="$SRC/cloudctl/args.cc|cov"
  [rest_parse_fuzzer]="$SRC/integration_tests/fuzz/rest_parse_fuzzer.cc|cov"
  [cli_args_fuzzer]="$SRC/integration_tests/fuzz/cli_args_fuzzer.cc|cov"
)
if [[ $build_ok == 1 ]]; then
  pids=()
  for name in "${!SOURCES[@]}"; do
    IFS='|' read -r file cov <<<"${SOURCES[$name]}"
    extra=(-O0 -g0)
    [[ $cov == cov ]] && extra=(-fsanitize=fuzzer-no-link)
    "$CXX" "${CXXFLAGS[@]}" "${extra[@]}" -c "$file" -o "$WORK/obj/$name.o" \
      >"$WORK/obj/$name.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || build_ok=0; done
  [[ $build_ok == 1 ]] || cat "$WORK"/obj/*.log
fi
COMMON=("$WORK/obj/common.pb.o" "$WORK/obj/scheduler.pb.o" "$WORK/obj/convert.o"
  "$WORK/obj/api_names.o" "$WORK/obj/migration_status.o" "$WORK/obj/step_name.o"
  "$WORK/obj/rest_parse.o")
link() {  # target extra-objects...
  local t=$1
  shift
  # shellcheck disable=SC2086
  "$CXX" -g -fsanitize=fuzzer,address,undefined -fsanitize-link-c++-runtime \
    "$WORK/obj/$t.o" "$@" "${COMMON[@]}" $LIBS -o "$WORK/$t" >"$WORK/$t.link.log" 2>&1 ||
    { cat "$WORK/$t.link.log"; return 1; }
}
if [[ $build_ok == 1 ]]; then
  link rest_parse_fuzzer || build_ok=0
  link cli_args_fuzzer "$WORK/obj/args.o" || build_ok=0
fi
if [[ $build_ok == 1 ]]; then
  result build ok "($(($(date +%s) - start)) s with $CXX)"
else
  result build fail
  finish
fi

# ---- run -------------------------------------------------------------------------------------
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allocator_may_return_null=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
run() {  # target corpus-dir
  local t=$1 corpus="$WORK/corpus-$1"
  rm -rf "$corpus" && mkdir -p "$corpus" "$WORK/artifacts-$t"
  cp "$2"/* "$corpus"/
  local n_seeds
  n_seeds=$(find -L "$2" -type f | wc -l)
  local t0 rc
  t0=$(date +%s)
  "$WORK/$t" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -detect_leaks=1 \
    -max_len=4096 -timeout=10 -print_final_stats=1 -artifact_prefix="$WORK/artifacts-$t/" \
    "$corpus" >"$WORK/$t.log" 2>&1
  rc=$?
  local runs
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$t.log" | grep -o '[0-9]*$')
  if [[ $rc -ne 0 ]] || grep -qE 'runtime error:|ERROR: (Address|Leak)Sanitizer|uncaught exception' \
    "$WORK/$t.log"; then
    tail -n 60 "$WORK/$t.log"
    ls -l "$WORK/artifacts-$t/" 2>/dev/null
    for a in "$WORK/artifacts-$t"/*; do
      [[ -f "$a" ]] && { echo "crash input ($a):"; od -c "$a" | head -20; }
    done
    result "$t" fail "(exit $rc)"
  elif [[ $n_seeds -lt 12 ]]; then
    result "$t" fail "(only $n_seeds seed inputs in $2; want at least 12)"
  else
    result "$t" ok "($n_seeds seeds, ${runs:-?} runs in $(($(date +%s) - t0)) s)"
  fi
}
# Both targets at once (each is single-threaded); results are reported in a fixed order.
run rest_parse_fuzzer "$SRC/integration_tests/fuzz/corpus/rest" >"$WORK/rest.result" 2>&1 &
rest_pid=$!
run cli_args_fuzzer "$SRC/integration_tests/fuzz/corpus/cli" >"$WORK/cli.result" 2>&1 &
cli_pid=$!
wait $rest_pid
wait $cli_pid
for r in rest cli; do
  cat "$WORK/$r.result"
  total=$((total + 1))
  if grep -q '^PASS ' "$WORK/$r.result"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
finish
