#!/usr/bin/env bash
# The README's test command: installs what is missing, builds everything, runs every test, and
# prints last, alone on a line, "tests: N passed, M failed".
#
# What is counted: Catch2 test cases (read from each test target's own summary line); a test
# target that prints no Catch2 summary (a shell test) counts as one; a target that failed to
# build or crashed before its summary counts as one failed. Plus the clang-format check.
#
# Usage: deploy/run-tests.sh [bazel test target patterns...]   (default: //...)
#   Environment: LIVEMIG_SKIP_INSTALL=1 skips the package check.
set -uo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
patterns=("$@")
((${#patterns[@]})) || patterns=(//...)

stage_start=$SECONDS
stage() { echo; echo "==> [$(date +%H:%M:%S)] $*"; stage_start=$SECONDS; }
stage_done() { echo "    ($1 took $((SECONDS - stage_start)) s)"; }

passed=0
failed=0
failures=()

stage "dependencies (deploy/install-deps.sh)"
if [[ -z ${LIVEMIG_SKIP_INSTALL:-} ]]; then
  if ! bash deploy/install-deps.sh; then
    echo "run-tests: installing dependencies failed (see above)"
    echo "tests: 0 passed, 1 failed"
    exit 1
  fi
fi
stage_done dependencies

stage "build (bazel build //...)"
if ! bazel build //... 2>&1 | grep -vE '^(Loading|Analyzing|INFO: (Analyzed|Found|From)|\[[0-9,]+ / [0-9,]+\])'; then :; fi
build_rc=${PIPESTATUS[0]}
stage_done build
if ((build_rc != 0)); then
  echo "run-tests: the build failed (exit $build_rc); running the tests that still build"
  failures+=("bazel build //... (exit $build_rc)")
  ((failed++))
fi

stage "format check (clang-format, Google style, 100 columns)"
unformatted=$(git ls-files '*.cc' '*.h' | xargs -r clang-format --dry-run 2>&1 | grep -c 'warning:' || true)
if [[ $unformatted == 0 ]]; then
  echo "    every C++ file is formatted"
  ((passed++))
else
  echo "    $unformatted formatting differences; run: git ls-files '*.cc' '*.h' | xargs clang-format -i"
  failures+=("clang-format ($unformatted differences)")
  ((failed++))
fi
stage_done "format check"

stage "tests (bazel test --nocache_test_results ${patterns[*]}: every test runs, none is taken from a cache)"
bazel test --keep_going --nocache_test_results "${patterns[@]}" 2>&1 | grep -vE '^(Loading|Analyzing|INFO: (Analyzed|Found|From)|\[[0-9,]+ / [0-9,]+\])'
test_rc=${PIPESTATUS[0]}
stage_done tests

stage "the quickstart end to end (deploy/quickstart_test.sh: start, migrate, stop, nothing left)"
if [[ $(id -u) -eq 0 && ${patterns[*]} == //... ]]; then
  qs_out=$(bash deploy/quickstart_test.sh 2>&1)
  echo "$qs_out" | tail -12 | sed 's/^/    /'
  qs_line=$(grep -E '^quickstart checks: [0-9]+ passed, [0-9]+ failed' <<<"$qs_out" | tail -1)
  if [[ -n $qs_line ]]; then
    qp=$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$qs_line")
    qf=$(sed -E 's/.* ([0-9]+) failed/\1/' <<<"$qs_line")
    passed=$((passed + qp))
    failed=$((failed + qf))
    ((qf == 0)) || failures+=("deploy/quickstart_test.sh ($qf checks)")
  else
    failures+=("deploy/quickstart_test.sh (no summary)")
    ((failed++))
  fi
else
  echo "    skipped: needs root and the full test set"
fi
stage_done quickstart

stage "counting what ran"
targets=$(bazel query "tests(set(${patterns[*]}))" 2>/dev/null | sort)
testlogs=$(bazel info bazel-testlogs 2>/dev/null)
for label in $targets; do
  rel=${label#//}
  pkg=${rel%%:*}
  name=${rel#*:}
  log="$testlogs/$pkg/$name/test.log"
  xml="$testlogs/$pkg/$name/test.xml"
  if [[ ! -f $log ]]; then
    echo "    $label: no test log (did not build or did not run) -> 1 failed"
    failures+=("$label (did not run)")
    ((failed++))
    continue
  fi
  p=0 f=0
  # A test that runs a matrix of cases inside one test case prints "CASES: <p> passed, <f> failed"
  # per matrix; those lines count what really ran, with the other test cases of its binary.
  cp=0 cf=0 cm=0
  while read -r cl; do
    cp=$((cp + $(sed -E 's/^CASES: ([0-9]+) passed.*/\1/' <<<"$cl")))
    cf=$((cf + $(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$cl")))
    cm=$((cm + 1))
  done < <(grep -E '^CASES: [0-9]+ passed, [0-9]+ failed$' "$log" 2>/dev/null)
  if line=$(grep -E '^All tests passed \([0-9]+ assertions? in [0-9]+ test cases?\)' "$log" | tail -1) && [[ -n $line ]]; then
    p=$(sed -E 's/.* in ([0-9]+) test cases?\)/\1/' <<<"$line")
  elif line=$(grep -E '^test cases: *[0-9]+ \|' "$log" | tail -1) && [[ -n $line ]]; then
    p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
  elif grep -q 'errors="0"' "$xml" 2>/dev/null && grep -q 'failures="0"' "$xml" 2>/dev/null; then
    p=1
  else
    f=1
  fi
  # A target whose process failed after its summary (e.g. a crash at exit) is still a failure.
  if ((cm > 0)); then
    # Each matrix test case is replaced by its cases (it still fails if a case failed).
    p=$((p > cm ? p - cm + cp : cp))
    f=$((f + cf))
  fi
  if ((f == 0)) && ! grep -q 'failures="0"' "$xml" 2>/dev/null; then
    if grep -qE 'failures="[1-9]|errors="[1-9]' "$xml" 2>/dev/null; then f=1; fi
  fi
  echo "    $label: $p passed, $f failed"
  passed=$((passed + p))
  failed=$((failed + f))
  ((f == 0)) || failures+=("$label")
done
if ((test_rc != 0 && test_rc != 3)) && ((failed == 0)); then
  failures+=("bazel test exited $test_rc")
  ((failed++))
fi
stage_done counting

echo
if ((${#failures[@]})); then
  echo "Failed:"
  printf '  - %s\n' "${failures[@]}"
  echo "Logs: $testlogs/<package>/<target>/test.log"
fi
echo "Total time: $SECONDS s"
echo "tests: $passed passed, $failed failed"
((failed == 0))
