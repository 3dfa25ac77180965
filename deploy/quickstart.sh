#!/usr/bin/env bash
# The README's quickstart: on a fresh Debian 12 machine, as root, it installs what is missing,
# builds, creates a PKI, starts PostgreSQL, the scheduler and two compute agents on the two-host
# libvirt lab (two libvirtd in network namespaces on this machine), starts a guest and
# live-migrates it with `cloudctl live-migration --wait` so you can watch it move.
#
#   deploy/quickstart.sh           set up, start, migrate (safe to re-run: each run migrates the
#                                  guest to the other host)
#   deploy/quickstart.sh stop      stop everything it started (by pid), remove the lab
#                                  (namespaces, mounts) and the state directory
#   deploy/quickstart.sh status    what runs
#
# State: $LIVEMIG_STATE_DIR (default /var/tmp/livemig-quickstart); each stage's log is in
# $LIVEMIG_STATE_DIR/logs.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=${LIVEMIG_STATE_DIR:-/var/tmp/livemig-quickstart}
LOG=$STATE/logs
RUN=$STATE/run
PIDS=$STATE/pids
PKI=$STATE/pki
LAB=$STATE/lab
LABSH="$ROOT/integration_tests/lab/lab.sh"
GUEST=demo-vm
GUEST_UUID=4c1f0d2e-7a3b-4e5c-9d8f-0a1b2c3d4e5f
BIN=$ROOT/bazel-bin
HTTP_PORT=${LIVEMIG_HTTP_PORT:-8780}

stage_no=0
stage() {
  stage_no=$((stage_no + 1))
  printf '\n==> [%d] %s\n' "$stage_no" "$*"
  stage_t0=$SECONDS
}
ok() { echo "    ok ($((SECONDS - stage_t0)) s)"; }
fail() {
  echo "quickstart: stage $stage_no failed: $*" >&2
  echo "quickstart: logs are in $LOG; stop everything with: $0 stop" >&2
  exit 1
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() { # NAME
  local f=$PIDS/$1.pid
  if pid_alive "$f"; then
    local pid; pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "    stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

cmd_stop() {
  echo "==> stopping the quickstart in $STATE"
  for p in agent-a agent-b scheduler; do stop_pid "$p"; done
  if [[ -f $LAB/lab.env ]]; then
    bash "$LABSH" down "$LAB" >"$STATE/lab-down.log" 2>&1 || echo "    lab down reported errors: see $STATE/lab-down.log"
    echo "    lab down (guests, libvirtd, namespaces, mounts)"
  fi
  bash deploy/pgctl.sh destroy "$STATE/postgres"
  echo "    PostgreSQL stopped"
  rm -rf "$STATE"
  echo "    removed $STATE: nothing is left"
}

cmd_status() {
  for p in scheduler agent-a agent-b; do
    if pid_alive "$PIDS/$p.pid"; then echo "$p: running (pid $(cat "$PIDS/$p.pid"))"; else echo "$p: not running"; fi
  done
  if [[ -f $STATE/postgres/data/postmaster.pid ]] && kill -0 "$(head -1 "$STATE/postgres/data/postmaster.pid")" 2>/dev/null; then
    echo "postgresql: running ($(bash deploy/pgctl.sh conninfo "$STATE/postgres"))"
  else
    echo "postgresql: not running"
  fi
  [[ -f $LAB/lab.env ]] && bash "$LABSH" status "$LAB" 2>&1 | sed 's/^/lab: /' || echo "lab: down"
}

case "${1:-start}" in
  stop) [[ $(id -u) -eq 0 ]] || { echo "quickstart: stop needs root" >&2; exit 1; }; cmd_stop; exit 0 ;;
  status) cmd_status; exit 0 ;;
  start) ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "quickstart: unknown command '$1'; try --help" >&2; exit 2 ;;
esac

if [[ $(id -u) -ne 0 ]]; then
  echo "quickstart: run as root: it installs packages and runs two libvirt daemons in network" >&2
  echo "namespaces on this machine (sudo $0). Nothing was changed." >&2
  exit 1
fi
mkdir -p "$LOG" "$RUN" "$PIDS"

stage "installing missing Debian packages (deploy/install-deps.sh)"
bash deploy/install-deps.sh >"$LOG/install.log" 2>&1 || fail "see $LOG/install.log"
tail -1 "$LOG/install.log" | sed 's/^/    /'
ok

stage "building (bazel build //...; the first build takes several minutes)"
bazel build //... >"$LOG/build.log" 2>&1 || fail "the build failed; see $LOG/build.log"
# The default configuration's output directory (the bazel-bin symlink follows the last build,
# which may have been another configuration, e.g. the optimized benchmarks).
BIN=$(bazel info bazel-bin 2>>"$LOG/build.log") || fail "bazel info failed; see $LOG/build.log"
CLOUDCTL=("$BIN/cloudctl/cloudctl" --server "unix:$RUN/api.sock")
ok

stage "creating the PKI in $PKI (cluster CA, scheduler and agent certificates)"
for name in scheduler lab-a lab-b; do
  bash deploy/pki.sh init "$PKI" >/dev/null
  bash deploy/pki.sh issue "$PKI" "$name" >>"$LOG/pki.log" 2>&1 || fail "see $LOG/pki.log"
done
echo "    $(ls "$PKI"/*.pem | wc -l) certificates; keys are mode 0600"
if [[ ! -f $STATE/tokens ]]; then
  (umask 077
   echo "$(bash deploy/pki.sh token) operator quickstart-operator" >"$STATE/tokens"
   echo "$(bash deploy/pki.sh token) reader quickstart-dashboard" >>"$STATE/tokens")
fi
OP_TOKEN=$(awk '$2 == "operator" {print $1; exit}' "$STATE/tokens")
READ_TOKEN=$(awk '$2 == "reader" {print $1; exit}' "$STATE/tokens")
export LIVEMIG_TOKEN=$OP_TOKEN
echo "    API tokens (operator, reader) in $STATE/tokens"
ok

stage "starting PostgreSQL 15 in $STATE/postgres (Unix socket only)"
DB=$(OWNER_PID=1 bash deploy/pgctl.sh start "$STATE/postgres" --durable 2>"$LOG/pgctl.log" | tail -1) \
  || fail "see $LOG/pgctl.log and $STATE/postgres/server.log"
"$BIN/db/livemig-dbctl" --db "$DB" schema apply | sed 's/^/    /' || fail "schema apply failed"
ok

stage "bringing up the two-host lab (lab-a 10.250.0.1, lab-b 10.250.0.2, bridge br-guest, shared instance dir)"
LAB_OWNER_PID=1 bash "$LABSH" up "$LAB" >"$LOG/lab.log" 2>&1 || fail "see $LOG/lab.log"
bash "$LABSH" guest-build "$LAB" >>"$LOG/lab.log" 2>&1 || fail "see $LOG/lab.log"
ok

stage "starting the scheduler (API unix:$RUN/api.sock, REST + dashboard http://127.0.0.1:$HTTP_PORT, registry unix:$RUN/registry.sock with mutual TLS)"
if ! pid_alive "$PIDS/scheduler.pid"; then
  setsid "$BIN/scheduler/scheduler" --db "$DB" --listen "unix:$RUN/api.sock" \
    --registry-listen "unix:$RUN/registry.sock" --tls-ca "$PKI/ca.pem" \
    --tls-cert "$PKI/scheduler.pem" --tls-key "$PKI/scheduler.key" --report-interval 2 \
    --tokens-file "$STATE/tokens" --http-listen "127.0.0.1:$HTTP_PORT" \
    </dev/null >>"$LOG/scheduler.log" 2>&1 &
  echo $! >"$PIDS/scheduler.pid"
fi
for _ in $(seq 1 100); do
  "${CLOUDCTL[@]}" host-list >/dev/null 2>&1 && break
  pid_alive "$PIDS/scheduler.pid" || fail "the scheduler exited; see $LOG/scheduler.log"
  sleep 0.2
done
echo "    pid $(cat "$PIDS/scheduler.pid"), log $LOG/scheduler.log"
ok

stage "starting a compute agent inside each lab host (libvirt QEMU profile)"
for h in a b; do
  if ! pid_alive "$PIDS/agent-$h.pid"; then
    setsid bash "$LABSH" exec "$LAB" "$h" -- "$BIN/compute/compute_agent" --hostname "lab-$h" \
      --listen "unix:$RUN/agent-$h.sock" --libvirt-uri "$(bash "$LABSH" uri "$LAB" "$h")" \
      --profile qemu --instance-path "$LAB/instances" --reserved-mib 256 \
      --migration-uri "$(bash "$LABSH" peer-uri "$LAB" "$h")" \
      --migration-data-host "$(bash "$LABSH" ip "$LAB" "$h")" --no-tunnel \
      --state-dir "$STATE/agent-$h" --tls-ca "$PKI/ca.pem" --tls-cert "$PKI/lab-$h.pem" \
      --tls-key "$PKI/lab-$h.key" --allow scheduler --scheduler "unix:$RUN/registry.sock" \
      --scheduler-name scheduler --report-interval 2 </dev/null >>"$LOG/agent-$h.log" 2>&1 &
    echo $! >"$PIDS/agent-$h.pid"
  fi
done
for _ in $(seq 1 150); do
  [[ $("${CLOUDCTL[@]}" --json host-list 2>/dev/null | grep -o '"up": *true' | wc -l) -ge 2 ]] && break
  for h in a b; do pid_alive "$PIDS/agent-$h.pid" || fail "agent $h exited; see $LOG/agent-$h.log"; done
  sleep 0.2
done
"${CLOUDCTL[@]}" host-list | sed 's/^/    /'
ok

stage "starting the guest $GUEST on lab-a (64 MiB, NIC on br-guest; it keeps dirtying memory)"
where=$(bash "$LABSH" where "$LAB" "$GUEST" 2>/dev/null || true)
if [[ -z $where ]]; then
  bash "$LABSH" guest-start "$LAB" a "$GUEST" --uuid "$GUEST_UUID" >>"$LOG/lab.log" 2>&1 \
    || fail "see $LOG/lab.log"
  where=a
fi
for _ in $(seq 1 100); do
  "${CLOUDCTL[@]}" instance-show "$GUEST_UUID" 2>/dev/null | grep -q running && break
  sleep 0.3
done
"${CLOUDCTL[@]}" instance-show "$GUEST_UUID" | sed 's/^/    /'
ok

dest=lab-b
[[ $where == b ]] && dest=lab-a
stage "live-migrating $GUEST to $dest (cloudctl live-migration --wait)"
"${CLOUDCTL[@]}" live-migration "$GUEST_UUID" "$dest" --wait || fail "the migration did not complete; see $LOG/scheduler.log"
echo "    the guest now runs on: lab-$(bash "$LABSH" where "$LAB" "$GUEST")"
echo "    its serial console: $(bash "$LABSH" heartbeat "$LAB" "$GUEST")"
ok

cat <<EOT

Done: a real VM live-migrated between two libvirt hosts, recorded step by step in PostgreSQL.

Dashboard: http://127.0.0.1:$HTTP_PORT/#token=$READ_TOKEN
REST:      curl -H "Authorization: Bearer $READ_TOKEN" http://127.0.0.1:$HTTP_PORT/v1/migrations

Try next:
  export LIVEMIG_SERVER=unix:$RUN/api.sock LIVEMIG_TOKEN=$OP_TOKEN
  $BIN/cloudctl/cloudctl migration-list
  $BIN/cloudctl/cloudctl migration-show 1          # the step timeline
  $BIN/cloudctl/cloudctl live-migration $GUEST_UUID --dry-run
  $BIN/cloudctl/cloudctl live-migration $GUEST_UUID --wait   # the scheduler picks the host
  psql "$DB" -c 'select * from v_host_summary'
  $0 status
Stop everything (processes, lab namespaces and mounts, PostgreSQL, $STATE):
  $0 stop
EOT
