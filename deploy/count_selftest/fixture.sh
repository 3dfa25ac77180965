#!/usr/bin/env bash
# One fixture of the test counter's self-test (deploy/run-tests.sh, stage "counter self-test"):
# prints what a kind of test prints and exits as that kind does. The expected count of each is
# in expected.txt beside this file.
case "${1:-}" in
  catch2-pass)  # a Catch2 binary whose 3 test cases passed
    echo "==============================================================================="
    echo "All tests passed (7 assertions in 3 test cases)"
    ;;
  pass-then-exit-1)  # a summary that says passed, then a non-zero exit (e.g. a crash at exit)
    echo "All tests passed (1 assertion in 1 test case)"
    exit 1
    ;;
  catch2-failures)  # a Catch2 binary with 2 of 4 test cases failed
    echo "test cases: 4 | 2 passed | 2 failed"
    echo "assertions: 9 | 7 passed | 2 failed"
    exit 1
    ;;
  matrix)  # one of 2 Catch2 test cases runs a matrix of 5 cases inside it
    echo "  ok    case 1 .. 5"
    echo "CASES: 5 passed, 0 failed"
    echo "All tests passed (12 assertions in 2 test cases)"
    ;;
  catch2-skipped)  # Catch2 v3's summary with a skipped test case
    echo "test cases: 3 | 2 passed | 1 skipped"
    echo "assertions: 4 | 4 passed"
    ;;
  skip-only)  # a test that could not run here and says why
    echo "SKIP: no Xen hypervisor on this machine (count_selftest fixture)"
    ;;
  plain-pass)  # a shell test without a summary line
    echo "ok"
    ;;
  sleep)  # killed by bazel test --test_timeout=5
    echo "All tests passed (1 assertion in 1 test case)"
    sleep 30
    ;;
  *)
    echo "fixture.sh: unknown mode '${1:-}'" >&2
    exit 2
    ;;
esac
