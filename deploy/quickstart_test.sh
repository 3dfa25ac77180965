#!/usr/bin/env bash
# Runs the README's quickstart end to end in a private state directory, checks that the VM moved
# and that the database recorded the migration as completed, then runs the stop command and
# checks that nothing is left behind. Called by deploy/run-tests.sh (it runs `bazel build`, so it
# cannot run inside `bazel test`). Prints "quickstart checks: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
state=$(mktemp -d /tmp/lm-qs-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The programs go into a prefix inside the state directory (removed by stop), on the PATH as
# /usr/local/bin would be.
export LIVEMIG_STATE_DIR=$state LIVEMIG_HTTP_PORT=$port LIVEMIG_PREFIX=$state/prefix
export PATH=$state/prefix/bin:$PATH
passed=0 failed=0
check() { # NAME COMMAND...
  local name=$1; shift
  if "$@" >/dev/null 2>&1; then echo "  ok   $name"; passed=$((passed + 1));
  else echo "  FAIL $name"; failed=$((failed + 1)); fi
}

bash deploy/quickstart.sh >"/tmp/lm-qs-$$.log" 2>&1
rc=$?
tail -25 "/tmp/lm-qs-$$.log"
check "quickstart exits 0" test "$rc" -eq 0
for p in cloudctl scheduler compute_agent livemig-dbctl; do
  check "deploy/install.sh installed $p and it answers --help" "$state/prefix/bin/$p" --help
done
check "the 'Try next' lines say plain cloudctl" grep -q '^  cloudctl migration-show 1' "/tmp/lm-qs-$$.log"
# The installed completion, loaded by bash as bash-completion would: the commands that start with
# "migration-", and an option of live-migration.
complete_words() { # WORDS... (the last one is being completed)
  bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _cloudctl;
           echo "${COMPREPLY[*]}"' _ "$state/prefix/share/bash-completion/completions/cloudctl" "$@"
}
check "bash completion offers the migration- commands" \
  bash -c "[[ '$(complete_words cloudctl migration-)' == *migration-list*migration-show* ]]"
check "bash completion offers live-migration's --dry-run" \
  bash -c "[[ '$(complete_words cloudctl live-migration --dry)' == --dry-run ]]"
check "bash completion offers the statuses after --status" \
  bash -c "[[ '$(complete_words cloudctl migration-list --status compl)' == completed ]]"
export LIVEMIG_SERVER=unix:$state/run/api.sock
export LIVEMIG_TOKEN=$(awk '$2 == "operator" {print $1; exit}' "$state/tokens" 2>/dev/null)
check "the database recorded the migration as completed" \
  bash -c "cloudctl --json migration-list --status completed | grep -Eq 'MIGRATION_STATUS_COMPLETED|\"status\": *\"completed\"'"
check "the VM runs on lab-b only" \
  bash -c "[[ \$(bash integration_tests/lab/lab.sh where $state/lab demo-vm) == b ]]"
check "the scheduler knows it on lab-b" \
  bash -c "cloudctl instance-show 4c1f0d2e-7a3b-4e5c-9d8f-0a1b2c3d4e5f | grep -q lab-b"
check "the dashboard is served over HTTPS with the quickstart's CA" \
  bash -c "curl -sf --cacert $state/pki/ca.pem https://127.0.0.1:$port/dashboard | grep -qi '<html'"
check "plaintext HTTP to the quickstart's API is refused" \
  bash -c "! curl -sf -m 5 http://127.0.0.1:$port/healthz"
lab_id=$(sed -n 's/^LAB_ID=//p' "$state/lab/lab.env" 2>/dev/null | tr -d '"')
bash deploy/quickstart.sh stop >>"/tmp/lm-qs-$$.log" 2>&1
check "stop exits 0" test $? -eq 0
check "stop removed the state directory" test ! -e "$state"
check "no lab namespace is left" bash -c "! ip netns list | grep -q '${lab_id:-none}'"
check "no mount of the quickstart is left" bash -c "! grep -q '$state' /proc/mounts"
rm -f "/tmp/lm-qs-$$.log"
echo "quickstart checks: $passed passed, $failed failed"
((failed == 0))
