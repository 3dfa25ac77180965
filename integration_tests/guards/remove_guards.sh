#!/usr/bin/env bash
# Removes, one at a time, each guard that keeps a VM on exactly one host and the database right,
# rebuilds, and runs the tests that should notice. A guard whose removal no test notices is a hole
# in the tests: the script fails.
#
#   integration_tests/guards/remove_guards.sh            # every guard
#   integration_tests/guards/remove_guards.sh lease cert # some of them
#   integration_tests/guards/remove_guards.sh --list
#
# It works on a throwaway git worktree of HEAD (under /tmp, its own Bazel output base, the shared
# disk cache), never on your checkout. Needs what the test command needs (root, PostgreSQL,
# the lab for none of these). Takes about 2-4 minutes per guard on 2 cores.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

# name | file | perl substitution that removes the guard | tests expected to notice | what it is
guards=(
  "one-active|db/schema/0001_initial.sql|s/CREATE UNIQUE INDEX migrations_one_active_per_instance/CREATE INDEX migrations_one_active_per_instance/|//db:db_test //integration_tests/faults:duplicates_test|the database's one-active-migration-per-instance constraint (a partial unique index)"
  "task-state-cas|db/pg_migration_store.cc|s/WHERE uuid = \\\$2::uuid AND task_state IS NULL AND NOT missing/WHERE uuid = \\\$2::uuid AND NOT missing/|//db:db_test //integration_tests/faults:duplicates_test|the compare-and-swap on the instance's task state when a migration claims it"
  "intent-first|scheduler/migration_run.cc|s/^(\s*)if \(next\) (t\.extra_)?events\.push_back\(\*next\);/\$1\/\/ guard removed: no intent before the action/|//scheduler:scheduler_test //integration_tests/faults:db_outage_test|the intent of each step committed before its RPC"
  "startup-reconcile|scheduler/run_transfer.cc|s/ASSIGN_OR_RETURN\(Truth truth, Ask\(src\.get\(\), dst\.get\(\)\)\);/Truth truth; truth.dst_running = true;  \/\/ guard removed: assume, do not ask/|//integration_tests/crash:crash_matrix_test|a restarted (or taking-over) scheduler asks both hypervisors where the VM is before acting"
  "lease|db/pg_migration_runs.cc|s/AND owner = \\\$10 AND lease_expires_at > now\(\)/AND owner = \\\$10/|//db:db_test|the lease check on every state transition (a scheduler whose lease expired cannot act)"
  "cert|common/tls.cc|s/GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY/GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY/|//integration_tests/security:security_test|the agent's verification of the client certificate (mutual TLS)"
)

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [[ ${1:-} == --list ]]; then
  for g in "${guards[@]}"; do IFS='|' read -r name file _ tests what <<<"$g"; printf '%-18s %s\n  %s; tests: %s\n' "$name" "$what" "$file" "$tests"; done
  exit 0
fi
wanted=("$@")

work=$(mktemp -d /tmp/livemig-guards.XXXXXX)
wt="$work/src"
trap 'cd /; git -C "$repo" worktree remove --force "$wt" >/dev/null 2>&1; rm -rf "$work"' EXIT
git -C "$repo" worktree add --detach -q "$wt" HEAD || { echo "remove_guards: cannot create a worktree"; exit 2; }
bazel_cmd=(bazel --output_base="$work/output")

caught=0 missed=0 results=()
for g in "${guards[@]}"; do
  IFS='|' read -r name file subst tests what <<<"$g"
  if ((${#wanted[@]})) && [[ " ${wanted[*]} " != *" $name "* ]]; then continue; fi
  echo
  echo "==> [$(date +%H:%M:%S)] guard '$name': $what"
  git -C "$wt" checkout -q -- .
  before=$(md5sum "$wt/$file")
  perl -pi -e "$subst" "$wt/$file"
  if [[ $(md5sum "$wt/$file") == "$before" ]]; then
    echo "    the guard was not found in $file (the code changed?): update this script"
    results+=("$name: NOT FOUND in $file")
    ((missed++))
    continue
  fi
  git -C "$wt" diff --stat | sed 's/^/    /'
  git -C "$wt" diff -U0 | grep -E '^[-+][^-+]' | sed 's/^/    /' | head -8
  log="$work/$name.log"
  (cd "$wt" && "${bazel_cmd[@]}" test --keep_going $tests) >"$log" 2>&1
  rc=$?
  failed=$(grep -E '^//[^ ]+ +(FAILED|FAILED TO BUILD|TIMEOUT)' "$log" | awk '{print $1}' | tr '\n' ' ')
  if [[ -n $failed ]]; then
    echo "    caught: $failed(exit $rc)"
    for t in $failed; do
      tl="$(cd "$wt" && "${bazel_cmd[@]}" info bazel-testlogs 2>/dev/null)/${t#//}"
      tl="${tl/://}/test.log"
      grep -E 'FAILED:|REQUIRE|CHECK|with message|FAIL ' "$tl" 2>/dev/null | head -4 | sed 's/^/      /'
    done
    results+=("$name: caught by $failed")
    ((caught++))
  else
    echo "    NOT CAUGHT: every test passed without the guard (log: $log)"
    results+=("$name: NOT CAUGHT by $tests")
    ((missed++))
  fi
done
"${bazel_cmd[@]}" shutdown >/dev/null 2>&1

echo
echo "Guards removed one at a time:"
printf '  %s\n' "${results[@]}"
echo "guards: $caught caught, $missed not caught"
((missed == 0))
