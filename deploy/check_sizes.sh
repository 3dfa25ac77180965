#!/usr/bin/env bash
# The size check of the test command (deploy/run-tests.sh, after the format check; issue 19,
# "smaller rooms"): a non-test C++ source over the limit fails unless it says why it is long.
#
# Checked: every git-tracked *.cc and *.h file (as the format check finds them: git ls-files, so a
# new file counts once it is added), except test code and code that is not ours:
#   - *_test.cc and *_test.h (unit and component tests),
#   - testing/ (the helpers only tests link), integration_tests/ (tests, their fixtures and
#     fuzzers), deploy/count_selftest/ (the test counter's fixtures),
#   - third_party/ (build glue for system libraries).
# Everything else is checked, including bench/ (the benchmark harness is a tool that is read and
# changed like the services) and the fake driver (it ships in the agent).
#
# A file over the limit passes when one of its first 15 lines starts with "// Size:" followed by
# why it is that long (and, where known, what would split it), e.g.
#   // Size: one ComputeDriver over libvirt; the XML reading moves out with issue 19 item 5.
#
# Usage: deploy/check_sizes.sh [max lines, default 650]
# Prints each offender with its line count and what to do; exits 1 if there is any, else 0.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
max=${1:-650}
header_lines=15

mapfile -t files < <(git ls-files '*.cc' '*.h' | grep -vE \
  '(_test\.(cc|h)$)|^(testing|integration_tests|third_party|deploy/count_selftest)/')
if ((${#files[@]} == 0)); then
  echo "check_sizes: no C++ file found by git ls-files: is this a git checkout?"
  exit 2
fi

offenders=0
explained=0
for f in "${files[@]}"; do
  [[ -f $f ]] || continue  # deleted in the work tree, not yet in the index
  n=$(wc -l <"$f")
  ((n > max)) || continue
  if head -n "$header_lines" "$f" | grep -qE '^// Size: *[^ ]'; then
    explained=$((explained + 1))
    continue
  fi
  offenders=$((offenders + 1))
  echo "    $f: $n lines (over $max): split it along its seams, or state why it is long in a" \
    "'// Size: <why>' line among its first $header_lines lines"
done

if ((offenders)); then
  echo "    $offenders of ${#files[@]} non-test C++ files over $max lines without a '// Size:' line"
  exit 1
fi
echo "    every non-test C++ file is at most $max lines or says why ($explained say why," \
  "${#files[@]} files)"
