#!/usr/bin/env bash
# The README's test command: installs what is missing, builds everything, runs every test, and
# prints last, alone on a line, "tests: N passed, M failed, K skipped".
#
# What is counted, from what Bazel reported for THIS invocation (its build event file, read by
# deploy/count_tests.py; never an earlier test.log): for a target Bazel says PASSED, the Catch2
# test cases of its own summary (a matrix test case is replaced by its "CASES: <p> passed, <f>
# failed"), a shell test's "test cases: N | P passed | F failed" line, or one case without a
# summary; a target that prints only "SKIP: <reason>" lines is one skip, never a pass. A target
# that failed, timed out, was flaky, was not built or not run counts at least one failure (the
# failed test cases of its log's failure summary). A non-zero exit of bazel test with no failure
# counted is one failure. Plus the clang-format check, the size check (deploy/check_sizes.sh), the
# counter's self-test and the quickstart's checks; a missing tool (bazel, clang-format, python3) is
# a failure.
#
# Usage: deploy/run-tests.sh [bazel test target patterns...]   (default: //...; the build stage
#        builds the same patterns)
#        deploy/run-tests.sh --counter-self-test   only the counter's self-test (a few seconds)
#   Environment: LIVEMIG_SKIP_INSTALL=1 skips the package check.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
only_self_test=0
if [[ ${1:-} == --counter-self-test ]]; then
  only_self_test=1
  shift
fi
patterns=("$@")
((${#patterns[@]})) || patterns=(//...)

stage_start=$SECONDS
stage() { echo; echo "==> [$(date +%H:%M:%S)] $*"; stage_start=$SECONDS; }
stage_done() { echo "    ($1 took $((SECONDS - stage_start)) s)"; }
# Bazel's progress lines, left out of what is shown.
quiet_bazel() {
  local progress='^(Loading|Analyzing|\[[0-9,]+ / [0-9,]+\])'
  grep -vE "$progress|^INFO: (Analyzed|Found|From|Build Event Protocol)"
}

passed=0
failed=0
skipped=0
failures=()
skips=()
fail() { failures+=("$1"); failed=$((failed + ${2:-1})); }

work=$(mktemp -d /tmp/livemig-run-tests.XXXXXX)
xen_pid=
# On an early exit (an interrupt), the Xen stage running in the background is interrupted too (its
# bazel client cancels the tests, whose labs tear down by their recorded pids).
on_exit() {
  if [[ -n $xen_pid ]] && kill -0 "$xen_pid" 2>/dev/null; then
    pkill -INT -P "$xen_pid" 2>/dev/null
    wait "$xen_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap on_exit EXIT

# Found after the dependencies stage (on a fresh machine it installs bazel); python3 may be
# needed before that, to count.
have_bazel=0
python=$(command -v python3 || true)

# count_bep <build event file> <what> <bazel test exit code>: counts one `bazel test` invocation
# (deploy/count_tests.py prints a line per target) and adds it to the totals.
count_bep() {
  local bep=$1 what=$2 rc=$3 totals key rest
  if [[ -z $python ]]; then
    # Counted once as a failure by the dependencies stage; nothing of this invocation is passed.
    echo "    $what: not counted: python3 is not installed (bazel test exited $rc)"
    return
  fi
  totals=$(mktemp "$work/totals.XXXXXX")
  "$python" "$root/deploy/count_tests.py" --what "$what" --bazel-exit "$rc" --totals "$totals" \
    "$bep"
  local crc=$?
  if ! grep -q '^passed [0-9]' "$totals"; then
    fail "$what: deploy/count_tests.py failed (exit $crc), nothing of it counted"
    return
  fi
  while read -r key rest; do
    case $key in
      passed) passed=$((passed + rest)) ;;
      failed) failed=$((failed + rest)) ;;
      skipped) skipped=$((skipped + rest)) ;;
      failure) failures+=("$rest") ;;
      skip) skips+=("$rest") ;;
    esac
  done <"$totals"
}

finish() {
  echo
  if ((${#failures[@]})); then
    echo "Failed:"
    printf '  - %s\n' "${failures[@]}"
  fi
  if ((${#skips[@]})); then
    echo "Skipped:"
    printf '  - %s\n' "${skips[@]}"
  fi
  echo "Total time: $SECONDS s"
  echo "tests: $passed passed, $failed failed, $skipped skipped"
  ((failed == 0))
  exit
}

stage "dependencies (deploy/install-deps.sh)"
if [[ -z ${LIVEMIG_SKIP_INSTALL:-} ]] && ((!only_self_test)); then
  if ! bash deploy/install-deps.sh; then
    echo "run-tests: installing dependencies failed (see above)"
    fail "deploy/install-deps.sh"
    finish
  fi
fi
# A tool that is missing is one failure here; the stages that need it say "not run". Looked up
# only now: on a fresh machine the dependencies stage has just installed bazel.
command -v bazel >/dev/null && have_bazel=1
python=$(command -v python3 || true)
tools=(bazel python3 clang-format)
((only_self_test)) && tools=(bazel python3)
for tool in "${tools[@]}"; do
  if ! command -v "$tool" >/dev/null; then
    echo "    $tool is not installed"
    fail "$tool is not installed (deploy/install-deps.sh installs it)"
  fi
done
stage_done dependencies

counter_self_test() {
  stage "counter self-test (deploy/count_tests.py on deploy/count_selftest's fixtures)"
  # Each fixture is one kind of outcome: a Catch2 summary, a pass summary then exit 1, a timeout
  # (--test_timeout=5 here), a skip-only test, a build failure, a matrix, failed test cases. The
  # counter must count exactly what expected.txt says; the self-test is then 1 passed.
  if ((have_bazel)) && [[ -n $python ]]; then
    local fixtures st_rc st_out st_count_rc syn_out syn_rc differs
    mapfile -t fixtures < <(awk '$1 ~ /^\/\// {print $1}' deploy/count_selftest/expected.txt)
    bazel test --keep_going --nocache_test_results --test_timeout=5 \
      --build_event_json_file="$work/selftest.bep.json" "${fixtures[@]}" >"$work/selftest.log" 2>&1
    st_rc=$?
    st_out=$("$python" deploy/count_tests.py --what "counter self-test" --bazel-exit "$st_rc" \
      --expect deploy/count_selftest/expected.txt "$work/selftest.bep.json" 2>&1)
    st_count_rc=$?
    syn_out=$("$python" deploy/count_tests.py --synthetic-checks 2>&1)
    syn_rc=$?
    echo "$st_out"
    echo "$syn_out"
    differs=$(printf '%s\n%s\n' "$st_out" "$syn_out" | grep -E 'differs:|Traceback' |
      sed 's/^ *//' | paste -sd ';' -)
    if ((st_rc == 0)); then
      differs="bazel test exited 0 though fixtures fail on purpose${differs:+; $differs}"
    fi
    if ((st_count_rc == 0 && syn_rc == 0 && st_rc != 0)); then
      echo "    the counter counts every fixture as expected"
      passed=$((passed + 1))
    else
      cp "$work/selftest.log" /tmp/livemig-count-selftest.log
      echo "    the counter is wrong: ${differs:-deploy/count_tests.py exited $st_count_rc/$syn_rc}"
      echo "    (bazel's output: /tmp/livemig-count-selftest.log)"
      fail "counter self-test: ${differs:-deploy/count_tests.py exited $st_count_rc/$syn_rc}"
    fi
  else
    echo "    not run: needs bazel and python3 (counted as a failure)"
  fi
  stage_done "counter self-test"
}
if ((only_self_test)); then
  counter_self_test
  finish
fi

stage "build (bazel build ${patterns[*]})"
if ((have_bazel)); then
  bazel build --keep_going "${patterns[@]}" 2>&1 | quiet_bazel
  build_rc=${PIPESTATUS[0]}
  if ((build_rc != 0)); then
    echo "run-tests: the build failed (exit $build_rc); running the tests that still build"
    fail "bazel build ${patterns[*]} (exit $build_rc)"
  fi
else
  echo "    not run: bazel is not installed (counted as a failure)"
fi
stage_done build

stage "format check (clang-format, Google style, 100 columns)"
if command -v clang-format >/dev/null; then
  mapfile -t sources < <(git ls-files '*.cc' '*.h')
  if ((${#sources[@]} == 0)); then
    echo "    no C++ file found by git ls-files"
    fail "clang-format (no C++ file found: is this a git checkout?)"
  else
    fmt_out=$(printf '%s\0' "${sources[@]}" | xargs -0 clang-format --dry-run 2>&1)
    fmt_rc=$?
    unformatted=$(grep -c 'warning:' <<<"$fmt_out")
    if ((fmt_rc != 0)); then
      echo "$fmt_out" | grep -v 'warning:' | head -5 | sed 's/^/    /'
      fail "clang-format (exit $fmt_rc)"
    elif ((unformatted == 0)); then
      echo "    every C++ file is formatted (${#sources[@]} files)"
      passed=$((passed + 1))
    else
      echo "    $unformatted formatting differences;" \
        "run: git ls-files '*.cc' '*.h' | xargs clang-format -i"
      fail "clang-format ($unformatted differences)"
    fi
  fi
else
  echo "    not run: clang-format is not installed (counted as a failure)"
fi
stage_done "format check"

stage "size check (deploy/check_sizes.sh: a non-test C++ file over 650 lines says why)"
size_out=$(bash deploy/check_sizes.sh 2>&1)
size_rc=$?
echo "$size_out"
if ((size_rc == 0)); then
  passed=$((passed + 1))
else
  fail "size check: $(tail -1 <<<"$size_out" | sed 's/^ *//')"
fi
stage_done "size check"

counter_self_test

# The full set runs the Xen lab's tests (//integration_tests/xenlab/...) in stages of their own,
# first: they take the longest and need the most of the machine.
full=0
[[ ${patterns[*]} == //... ]] && full=1
stage "the Xen lab's image (integration_tests/xenlab/build-image.sh, cached in /var/cache/livemig)"
# Built once per machine and input set (about 5 minutes), then found in the cache at once.
xen_image=
if ((full)) && ((have_bazel)); then
  agent_bin="$(bazel info bazel-bin 2>/dev/null)/compute/compute_agent"
  if bash integration_tests/xenlab/build-image.sh --agent "$agent_bin" >"$work/xen-image.log" 2>&1
  then
    xen_image=$(tail -1 "$work/xen-image.log")
    grep -E '^\[xenlab image|cached image' "$work/xen-image.log" | tail -3 | sed 's/^/    /'
  else
    tail -15 "$work/xen-image.log" | sed 's/^/    /'
    fail "the Xen lab's image did not build (above); the Xen tests cannot run"
  fi
else
  echo "    not run: only with the full test set"
fi
stage_done "Xen image"

stage "tests on real Xen (bazel test //integration_tests/xenlab/...: two nested Xen 4.17 hosts)"
# They run beside the other tests, in a Bazel server of their own (its own output base outside the
# clone, the same disk cache): the Xen lab's two emulated hosts wait on their own CPU, most of the
# other tests wait on processes and timers, so both fit on 2 cores (about 63 minutes one after the
# other, see README). Their output is shown when they end, after the quickstart.
xen_rc=
xen_started_at=$(date +%s)
if [[ -n $xen_image ]]; then
  xen_base=/var/cache/livemig/bazel-xen/$(printf '%s' "$root" | md5sum | cut -c1-12)
  mkdir -p "$xen_base"
  echo "    in the background beside the other tests (Bazel output base $xen_base)"
  (
    # --symlink_prefix=/: no bazel-* symlinks into this output base in the clone (the main
    # server would load them as packages of //...).
    # XENLAB_NICE=0: the emulated hosts at the other tests' priority (a lab started by hand runs
    # at nice 5): on 2 cores the Xen tests are the run's longest path, and each emulated host is
    # one CPU-bound thread, while most of the other tests wait on timers and processes.
    bazel --output_base="$xen_base" test --symlink_prefix=/ --keep_going --nocache_test_results \
      --test_env=XENLAB_NICE=0 \
      --build_event_json_file="$work/xen.bep.json" //integration_tests/xenlab/... \
      >"$work/xen.log" 2>&1
    echo $? >"$work/xen.rc"
    date +%s >"$work/xen.end"
  ) &
  xen_pid=$!
else
  if ((full)); then echo "    not run: no image (counted as a failure above)"; else echo "    not run: only with the full test set"; fi
fi
# Waits for the Xen stage and shows what it printed (called after the quickstart).
xen_collect() {
  [[ -n $xen_pid ]] || return 0
  stage "tests on real Xen: waiting for them to end, then their output"
  wait "$xen_pid"
  xen_rc=$(cat "$work/xen.rc" 2>/dev/null || echo 1)
  quiet_bazel <"$work/xen.log"
  bazel --output_base="$xen_base" shutdown >/dev/null 2>&1 || true
  local end
  end=$(cat "$work/xen.end" 2>/dev/null || date +%s)
  echo "    (Xen tests took $((end - xen_started_at)) s, beside the other tests; they ended" \
    "$(date -d "@$end" +%H:%M:%S))"
}

stage "tests (bazel test --nocache_test_results ${patterns[*]}:" \
  "every test runs, none is taken from a cache)"
# Target patterns, not a tag filter: a test left out by a tag filter would still be in the build
# event file, with no result, and be counted as not run.
tests_patterns=("${patterns[@]}")
((full)) && tests_patterns=(-- //... -//integration_tests/xenlab/...)
test_rc=
if ((have_bazel)); then
  bazel test --keep_going --nocache_test_results --build_event_json_file="$work/tests.bep.json" \
    "${tests_patterns[@]}" 2>&1 | quiet_bazel
  test_rc=${PIPESTATUS[0]}
else
  echo "    not run: bazel is not installed (counted as a failure)"
fi
stage_done tests

stage "the quickstart end to end (deploy/quickstart_test.sh: start, migrate, stop, nothing left)"
if [[ ${patterns[*]} != //... ]]; then
  echo "    not run: only with the full test set"
elif [[ $(id -u) -ne 0 ]]; then
  echo "    skipped: needs root"
  skipped=$((skipped + 1))
  skips+=("deploy/quickstart_test.sh: needs root")
else
  qs_out=$(bash deploy/quickstart_test.sh 2>&1)
  qs_rc=$?
  echo "$qs_out" | tail -12 | sed 's/^/    /'
  qs_line=$(grep -E '^quickstart checks: [0-9]+ passed, [0-9]+ failed' <<<"$qs_out" | tail -1)
  if [[ -n $qs_line ]]; then
    qp=$(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$qs_line")
    qf=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$qs_line")
    passed=$((passed + qp))
    ((qf == 0)) || fail "deploy/quickstart_test.sh ($qf checks)" "$qf"
    ((qf != 0 || qs_rc == 0)) ||
      fail "deploy/quickstart_test.sh (exit $qs_rc after 0 failed checks)"
  else
    fail "deploy/quickstart_test.sh (no summary, exit $qs_rc)"
  fi
fi
stage_done quickstart

xen_collect

stage "counting what ran (bazel test's build event file, deploy/count_tests.py)"
if [[ -n $test_rc ]]; then
  count_bep "$work/tests.bep.json" "bazel test ${patterns[*]}" "$test_rc"
  [[ -n $xen_rc ]] && count_bep "$work/xen.bep.json" "bazel test (Xen lab)" "$xen_rc"
else
  echo "    nothing ran"
fi
stage_done counting

finish
