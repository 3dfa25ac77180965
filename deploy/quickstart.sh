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
#   deploy/quickstart.sh --xen [start|stop|status]
#                                  the same on real Xen: two nested Xen 4.17 hosts (QEMU TCG) with
#                                  libvirt's libxl driver, an agent in each dom0 (--profile libxl
#                                  from the production example config, xen:///system, stream
#                                  tunnelled over xen+tls://), a PVH guest. The first run builds
#                                  the dom0 image (about 5 minutes, cached in /var/cache/livemig).
#
# State: $LIVEMIG_STATE_DIR (default /var/tmp/livemig-quickstart, with --xen
# /var/tmp/livemig-quickstart-xen); each stage's log is in $LIVEMIG_STATE_DIR/logs.
# The programs are installed with deploy/install.sh into $LIVEMIG_PREFIX (default /usr/local:
# cloudctl on the PATH, with bash completion); `stop` leaves them installed
# (deploy/install.sh --uninstall removes them).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
XEN=0
if [[ ${1:-} == --xen ]]; then
  XEN=1
  shift
fi
if ((XEN)); then
  STATE=${LIVEMIG_STATE_DIR:-/var/tmp/livemig-quickstart-xen}
else
  STATE=${LIVEMIG_STATE_DIR:-/var/tmp/livemig-quickstart}
fi
LOG=$STATE/logs
RUN=$STATE/run
PIDS=$STATE/pids
PKI=$STATE/pki
LAB=$STATE/lab
LABSH="$ROOT/integration_tests/lab/lab.sh"
XENLAB="$ROOT/integration_tests/xenlab/xenlab.sh"
GUEST=demo-vm
GUEST_UUID=4c1f0d2e-7a3b-4e5c-9d8f-0a1b2c3d4e5f
if ((XEN)); then
  GUEST=demo-pvh
  GUEST_UUID=4c1f0d2e-7a3b-4e5c-9d8f-0a1b2c3d4e60
fi
BIN=$ROOT/bazel-bin
# Where deploy/install.sh puts the programs and cloudctl's bash completion.
PREFIX=${LIVEMIG_PREFIX:-/usr/local}
HTTP_PORT=${LIVEMIG_HTTP_PORT:-$((XEN ? 8781 : 8780))}
H_A=lab-a
H_B=lab-b
if ((XEN)); then H_A=xena; H_B=xenb; fi

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
  if [[ -f $LAB/lab.env ]] && ((XEN)); then
    bash "$XENLAB" down "$LAB" >"$STATE/lab-down.log" 2>&1 || echo "    lab down reported errors: see $STATE/lab-down.log"
    echo "    Xen lab down (both hosts' QEMU, by recorded pid; guests and agents went with them)"
  elif [[ -f $LAB/lab.env ]]; then
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
  if ((XEN)); then
    [[ -f $LAB/lab.env ]] && bash "$XENLAB" status "$LAB" 2>&1 | sed 's/^/lab: /' || echo "lab: down"
  else
    [[ -f $LAB/lab.env ]] && bash "$LABSH" status "$LAB" 2>&1 | sed 's/^/lab: /' || echo "lab: down"
  fi
}

case "${1:-start}" in
  stop) [[ $(id -u) -eq 0 ]] || { echo "quickstart: stop needs root" >&2; exit 1; }; cmd_stop; exit 0 ;;
  status) cmd_status; exit 0 ;;
  start) ;;
  -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
# Bazel with the PATH less $PREFIX/bin (empty until install.sh below, so nothing else is found):
# actions inherit the PATH, and a prefix that is new each run (the test's) would make every
# action a cache miss and rebuild the whole tree (23 minutes once beside the Xen lab).
bazel_path=$(tr ':' '\n' <<<"$PATH" | grep -vxF "$PREFIX/bin" | paste -sd: -)
bz() { PATH=$bazel_path bazel "$@"; }
bz build //... >"$LOG/build.log" 2>&1 || fail "the build failed; see $LOG/build.log"
# The default configuration's output directory (the bazel-bin symlink follows the last build,
# which may have been another configuration, e.g. the optimized benchmarks).
BIN=$(bz info bazel-bin 2>>"$LOG/build.log") || fail "bazel info failed; see $LOG/build.log"
ok

stage "installing cloudctl, scheduler, compute_agent, livemig-dbctl into $PREFIX/bin (deploy/install.sh)"
bash deploy/install.sh --no-build --prefix "$PREFIX" >"$LOG/install-programs.log" 2>&1 ||
  fail "see $LOG/install-programs.log"
sed 's/^/    /' "$LOG/install-programs.log" | grep -v '^    ==>' || true
CLOUDCTL=("$PREFIX/bin/cloudctl" --server "unix:$RUN/api.sock")
# The "Try next" lines say plain `cloudctl` when the prefix is on the PATH (/usr/local/bin is).
CTL=cloudctl
[[ ":$PATH:" == *":$PREFIX/bin:"* ]] || CTL=$PREFIX/bin/cloudctl
ok

stage "creating the PKI in $PKI (cluster CA, scheduler and agent certificates, the API's server certificate)"
for name in scheduler "$H_A" "$H_B"; do
  bash deploy/pki.sh init "$PKI" >/dev/null
  bash deploy/pki.sh issue "$PKI" "$name" >>"$LOG/pki.log" 2>&1 || fail "see $LOG/pki.log"
done
# HTTPS for REST, the dashboard and the Nova API (clients trust $PKI/ca.pem).
bash deploy/pki.sh issue-server "$PKI" api DNS:localhost IP:127.0.0.1 >>"$LOG/pki.log" 2>&1 ||
  fail "see $LOG/pki.log"
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
"$PREFIX/bin/livemig-dbctl" --db "$DB" schema apply | sed 's/^/    /' || fail "schema apply failed"
ok

REGISTRY="unix:$RUN/registry.sock"
if ((XEN)); then
  stage "the Xen lab's dom0 image (cached in /var/cache/livemig/xenlab; the first build takes about 5 minutes)"
  IMAGE=$(bash "$XENLAB" image --agent "$BIN/compute/compute_agent" 2>"$LOG/xen-image.log" | tail -1) ||
    fail "the image did not build; see $LOG/xen-image.log"
  grep -E 'cached image|done:' "$LOG/xen-image.log" "$LOG/xen-image.log" 2>/dev/null | tail -1 | sed 's/^/    /' || true
  echo "    $IMAGE"
  ok
  stage "booting two nested Xen 4.17 hosts (xena, xenb: QEMU TCG, PV dom0, libvirt libxl over TLS; about a minute)"
  if [[ ! -f $LAB/lab.env ]]; then
    LAB_OWNER_PID=1 bash "$XENLAB" up "$LAB" --image "$IMAGE" --agent "$BIN/compute/compute_agent" \
      --pki "$PKI" >"$LOG/lab.log" 2>&1 || fail "see $LOG/lab.log"
  fi
  grep -E 'ready after' "$LOG/lab.log" | sed 's/^/    /'
  REGISTRY="127.0.0.1:$(awk -F= '$1 == "REGISTRY" {print $2}' "$LAB/lab.env")"
  ok
else
  stage "bringing up the two-host lab (lab-a 10.250.0.1, lab-b 10.250.0.2, bridge br-guest, shared instance dir)"
  LAB_OWNER_PID=1 bash "$LABSH" up "$LAB" >"$LOG/lab.log" 2>&1 || fail "see $LOG/lab.log"
  bash "$LABSH" guest-build "$LAB" >>"$LOG/lab.log" 2>&1 || fail "see $LOG/lab.log"
  ok
fi

stage "starting the scheduler (API unix:$RUN/api.sock, REST + dashboard https://127.0.0.1:$HTTP_PORT, registry $REGISTRY with mutual TLS)"
if ! pid_alive "$PIDS/scheduler.pid"; then
  setsid "$PREFIX/bin/scheduler" --db "$DB" --listen "unix:$RUN/api.sock" \
    --registry-listen "$REGISTRY" --tls-ca "$PKI/ca.pem" \
    --tls-cert "$PKI/scheduler.pem" --tls-key "$PKI/scheduler.key" --report-interval 2 \
    --tokens-file "$STATE/tokens" --http-listen "127.0.0.1:$HTTP_PORT" \
    --api-tls-cert "$PKI/api.pem" --api-tls-key "$PKI/api.key" \
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

if ((XEN)); then
  stage "starting the compute agent in each dom0 (compute_agent --config /etc/livemig/compute-agent.conf: the Xen example, profile libxl)"
  for h in a b; do
    bash "$XENLAB" agent-start "$LAB" "$h" >/dev/null 2>>"$LOG/lab.log" ||
      grep -q 'already runs' "$LOG/lab.log" || fail "see $LOG/lab.log"
  done
fi
((XEN)) || stage "starting a compute agent inside each lab host (libvirt QEMU profile)"
for h in a b; do
  if ((XEN)); then :; elif ! pid_alive "$PIDS/agent-$h.pid"; then
    setsid bash "$LABSH" exec "$LAB" "$h" -- "$PREFIX/bin/compute_agent" --hostname "lab-$h" \
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
  ((XEN)) || for h in a b; do pid_alive "$PIDS/agent-$h.pid" || fail "agent $h exited; see $LOG/agent-$h.log"; done
  sleep 0.2
done
"${CLOUDCTL[@]}" host-list | sed 's/^/    /'
ok

if ((XEN)); then
  stage "starting the PVH guest $GUEST on xena (96 MiB, kernel in the shared instance directory, NIC on xenbr0)"
  where=$(bash "$XENLAB" where "$LAB" "$GUEST" 2>/dev/null || true)
  if [[ -z $where ]]; then
    bash "$XENLAB" guest-start "$LAB" a "$GUEST" "$GUEST_UUID" pvh >>"$LOG/lab.log" 2>&1 ||
      fail "see $LOG/lab.log"
    where=a
  fi
else
  stage "starting the guest $GUEST on lab-a (64 MiB, NIC on br-guest; it keeps dirtying memory)"
  where=$(bash "$LABSH" where "$LAB" "$GUEST" 2>/dev/null || true)
  if [[ -z $where ]]; then
    bash "$LABSH" guest-start "$LAB" a "$GUEST" --uuid "$GUEST_UUID" >>"$LOG/lab.log" 2>&1 \
      || fail "see $LOG/lab.log"
    where=a
  fi
fi
for _ in $(seq 1 100); do
  "${CLOUDCTL[@]}" instance-show "$GUEST_UUID" 2>/dev/null | grep -q running && break
  sleep 0.3
done
"${CLOUDCTL[@]}" instance-show "$GUEST_UUID" | sed 's/^/    /'
ok

dest=$H_B
[[ $where == b ]] && dest=$H_A
stage "live-migrating $GUEST to $dest (cloudctl live-migration --wait)"
"${CLOUDCTL[@]}" live-migration "$GUEST_UUID" "$dest" --wait || fail "the migration did not complete; see $LOG/scheduler.log"
if ((XEN)); then
  now=$(bash "$XENLAB" where "$LAB" "$GUEST")
  echo "    the guest now runs on: $([[ $now == a ]] && echo xena || echo xenb)"
  echo "    its console: $(bash "$XENLAB" heartbeat "$LAB" "$GUEST")"
else
  echo "    the guest now runs on: lab-$(bash "$LABSH" where "$LAB" "$GUEST")"
  echo "    its serial console: $(bash "$LABSH" heartbeat "$LAB" "$GUEST")"
fi
ok

cat <<EOT

Done: a real VM live-migrated between two $( ((XEN)) && echo "Xen hosts (libvirt libxl)" || echo "libvirt hosts"), recorded step by step in PostgreSQL.

Dashboard: https://127.0.0.1:$HTTP_PORT/#token=$READ_TOKEN   (the certificate is from $PKI/ca.pem)
REST:      curl --cacert $PKI/ca.pem -H "Authorization: Bearer $READ_TOKEN" https://127.0.0.1:$HTTP_PORT/v1/migrations

Try next:
  export LIVEMIG_SERVER=unix:$RUN/api.sock LIVEMIG_TOKEN=$OP_TOKEN
  $CTL migration-list
  $CTL migration-show 1          # the step timeline
  $CTL live-migration $GUEST_UUID --dry-run
  $CTL live-migration $GUEST_UUID --wait   # the scheduler picks the host
  $CTL --help                    # every command; tab completion in new bash shells
  psql "$DB" -c 'select * from v_host_summary'
  $0 $( ((XEN)) && echo "--xen ")status
Stop everything (processes, the lab, PostgreSQL, $STATE):
  $0 $( ((XEN)) && echo "--xen ")stop
EOT
