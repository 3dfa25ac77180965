#!/usr/bin/env bash
# The lab benchmark on real Xen: the system (`cloudctl live-migration <uuid> <host> --wait`)
# against bare `virsh migrate --live --p2p` with the same transport and flags, on the same two
# nested Xen hosts (xena, xenb) and the same PVH guest (demo-pvh), alternating.
#
#   bench/xen_lab.sh [--mode direct|tunnelled] [--rounds N] [--wait-minutes M]
#
#   --mode direct      (default) the agents restarted with --no-tunnel: the guest's memory goes in
#                      the clear over TCP to tcp://<destination> (the agent's data URI); bare
#                      virsh gets --migrateuri tcp://<destination> and no --tunnelled.
#   --mode tunnelled   the agents as deploy/config/compute-agent-xen.conf.example runs them: the
#                      stream tunnelled through xen+tls:// (TLS under emulation: ~95 s each);
#                      bare virsh gets --tunnelled.
#   --rounds N         (default 10) rounds of one system and one bare migration each; the order
#                      alternates (system first, then bare first, ...) and every migration moves
#                      the guest to the other host, so each kind runs in both directions.
#   --wait-minutes M   (default 60) how long to wait for the CPU (see below) before giving up.
#
# Set-up: `deploy/quickstart.sh --xen` with its own state (LIVEMIG_STATE_DIR=
# /var/tmp/livemig-bench-xen, LIVEMIG_HTTP_PORT a free port): build, PKI, PostgreSQL, both Xen
# hosts with an agent in each dom0, the guest on xena, one migration. At the end (also on failure
# or interrupt) `deploy/quickstart.sh --xen stop` with the same state directory.
#
# What is measured, per migration:
#   system  wall time from the cloudctl call to its exit (every step: checks, pre, transfer, post);
#   bare    wall time of the virsh command inside the source dom0 (`date +%s.%N` before and after
#           in the same ssh command: ssh's own set-up is not counted);
#   pause   the guest-visible pause: the largest gap between consecutive `tick` lines of the guest's
#           console (its uptime in ms; both hosts' logs on the lab's share) among the ticks from
#           the last one before the migration started;
#   boots   DOMU-START lines in both console logs: must stay 1.
# Before a bare migration the scheduler must be idle for the instance; after it, the script waits
# until the scheduler shows the instance on its new host. Every migration starts after a settle of
# 5 s.
#
# CPU sharing: this machine must not run two Xen labs at once. Before anything it waits (polling
# every 10 s) until no qemu-system-x86_64 runs and /tmp/livemig-xen-busy does not exist, then
# holds /tmp/livemig-xen-busy-bench until it ends.
#
# Output: stdout, and bench/results/<date>/xen-lab.txt (git ignores bench/results); the stack's
# logs, the agents' logs and the guest's consoles are copied to bench/results/<date>/xen-lab-logs/.
# Root only.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
MODE=direct
ROUNDS=10
WAIT_MIN=60
SETTLE=5

usage() { sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "xen_lab: $*" >&2; exit 1; }

while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --mode)
      [[ $# -ge 2 ]] || die "--mode needs a value: direct or tunnelled"
      MODE=$2; shift 2 ;;
    --mode=*) MODE=${1#--mode=}; shift ;;
    --rounds)
      [[ $# -ge 2 ]] || die "--rounds needs a number"
      ROUNDS=$2; shift 2 ;;
    --rounds=*) ROUNDS=${1#--rounds=}; shift ;;
    --wait-minutes)
      [[ $# -ge 2 ]] || die "--wait-minutes needs a number"
      WAIT_MIN=$2; shift 2 ;;
    --wait-minutes=*) WAIT_MIN=${1#--wait-minutes=}; shift ;;
    *) echo "xen_lab: unknown argument '$1'; try --help" >&2; exit 2 ;;
  esac
done
case $MODE in direct | tunnelled) ;; *) echo "xen_lab: --mode must be direct or tunnelled, not '$MODE'" >&2; exit 2 ;; esac
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "xen_lab: --rounds must be a positive integer, not '$ROUNDS'" >&2; exit 2; }
[[ $WAIT_MIN =~ ^[0-9]+$ ]] || { echo "xen_lab: --wait-minutes must be a whole number, not '$WAIT_MIN'" >&2; exit 2; }
if [[ $(id -u) -ne 0 ]]; then
  echo "xen_lab: run as root: the benchmark boots two nested Xen hosts in QEMU and starts the" >&2
  echo "whole stack with deploy/quickstart.sh --xen (sudo $0). Nothing was changed." >&2
  exit 1
fi
for t in jq python3 awk; do command -v $t >/dev/null || die "'$t' is missing (deploy/install-deps.sh)"; done

STATE=/var/tmp/livemig-bench-xen
LAB=$STATE/lab
XENLAB=$ROOT/integration_tests/xenlab/xenlab.sh
GUEST=demo-pvh
UUID=4c1f0d2e-7a3b-4e5c-9d8f-0a1b2c3d4e60
BUSY=/tmp/livemig-xen-busy
MINE=/tmp/livemig-xen-busy-bench
DATE=$(date +%Y%m%d-%H%M%S)
OUT=$ROOT/bench/results/$DATE
TXT=$OUT/xen-lab.txt
DLOG=$OUT/xen-lab.log # details: every command's output
mkdir -p "$OUT" || die "cannot create $OUT"
: >"$DLOG"

started=0 # the quickstart was started: stop it at the end
held=0    # we hold $MINE
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((started)); then
    echo "==> saving the logs to $OUT/xen-lab-logs and stopping the stack (deploy/quickstart.sh --xen stop)"
    mkdir -p "$OUT/xen-lab-logs"
    cp -r "$STATE/logs" "$OUT/xen-lab-logs/quickstart" 2>/dev/null
    cp "$LAB"/share/logs/* "$OUT/xen-lab-logs/" 2>/dev/null
    for c in "$LAB"/share/consoles-xen?; do
      [[ -d $c ]] && cp "$c/guest-$GUEST.log" "$OUT/xen-lab-logs/$(basename "$c")-guest-$GUEST.log" 2>/dev/null
    done
    LIVEMIG_STATE_DIR=$STATE bash "$ROOT/deploy/quickstart.sh" --xen stop >>"$DLOG" 2>&1 ||
      echo "xen_lab: the stop reported errors; see $DLOG" >&2
    if pgrep -f "qemu-system-x86_64.*$STATE/lab/" >/dev/null; then
      echo "xen_lab: WARNING: a QEMU of $STATE/lab still runs" >&2
    fi
  fi
  ((held)) && rm -f "$MINE"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "xen_lab: interrupted" >&2; exit 130' INT
trap 'echo "xen_lab: terminated" >&2; exit 143' TERM

# ---- wait for the CPU ----------------------------------------------------------------------
echo "==> waiting until no Xen lab runs here (no qemu-system-x86_64, no $BUSY; up to $WAIT_MIN min)"
t_wait=$SECONDS
last_said=-60
while :; do
  # any QEMU of x86_64 guests (its executable, not a command line that mentions the name)
  q=$(pgrep -f '^(/[^ ]*/)?qemu-system-x86_64( |$)' | tr '\n' ' ')
  if [[ -z $q && ! -e $BUSY ]]; then break; fi
  if ((SECONDS - t_wait >= WAIT_MIN * 60)); then
    die "gave up after $WAIT_MIN min: another Xen lab still runs (qemu-system-x86_64 pids: ${q:-none}; $BUSY $([[ -e $BUSY ]] && echo exists || echo absent))"
  fi
  if ((SECONDS - last_said >= 60)); then
    last_said=$SECONDS
    waiting_for=()
    [[ -n $q ]] && waiting_for+=("qemu-system-x86_64 pids ${q% } to end")
    [[ -e $BUSY ]] && waiting_for+=("$BUSY to disappear")
    echo "    $(date +%H:%M:%S) waiting ($(((SECONDS - t_wait) / 60)) min so far) for: ${waiting_for[0]}${waiting_for[1]:+; ${waiting_for[1]}}"
  fi
  sleep 10
done
: >"$MINE" || die "cannot create $MINE"
held=1
echo "    free after $((SECONDS - t_wait)) s; holding $MINE"

# ---- the machine ---------------------------------------------------------------------------
cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
machine=$(
  echo "date:         $(date '+%Y-%m-%d %H:%M:%S %Z')"
  echo "machine:      nproc $(nproc), CPU ${cpu_model:-?}, RAM $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (before the set-up)"
  echo "commit:       $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
)
echo "$machine"

# ---- the stack -----------------------------------------------------------------------------
if [[ -e $STATE ]]; then
  echo "==> a previous run's $STATE exists: stopping it first"
  LIVEMIG_STATE_DIR=$STATE bash "$ROOT/deploy/quickstart.sh" --xen stop >>"$DLOG" 2>&1
fi
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])') ||
  die "no free port"
echo "==> deploy/quickstart.sh --xen (LIVEMIG_STATE_DIR=$STATE LIVEMIG_HTTP_PORT=$HTTP_PORT; output in $OUT/quickstart.log)"
started=1
t_qs=$SECONDS
LIVEMIG_STATE_DIR=$STATE LIVEMIG_HTTP_PORT=$HTTP_PORT bash "$ROOT/deploy/quickstart.sh" --xen \
  >"$OUT/quickstart.log" 2>&1 </dev/null
rc=$?
grep -E '^==>|^    ok|failed' "$OUT/quickstart.log" | sed 's/^/    /'
if ((rc != 0)); then
  tail -15 "$OUT/quickstart.log" | sed 's/^/    | /' >&2
  die "deploy/quickstart.sh --xen failed (exit $rc): see $OUT/quickstart.log and $OUT/xen-lab-logs/quickstart/"
fi
echo "    the stack is up after $((SECONDS - t_qs)) s"

# the quickstart's own bazel-bin (it prints "<bazel-bin>/cloudctl/cloudctl ..." at the end)
BIN=$(grep -o '/[^ ]*/cloudctl/cloudctl' "$OUT/quickstart.log" | head -1)
BIN=${BIN%/cloudctl/cloudctl}
[[ -n $BIN ]] || BIN=$(bazel info bazel-bin 2>>"$DLOG") || BIN=$ROOT/bazel-bin
[[ -x $BIN/cloudctl/cloudctl ]] || die "no cloudctl in $BIN"
CLOUDCTL=("$BIN/cloudctl/cloudctl" --server "unix:$STATE/run/api.sock")
LIVEMIG_TOKEN=$(awk '$2 == "operator" {print $1; exit}' "$STATE/tokens")
[[ -n $LIVEMIG_TOKEN ]] || die "no operator token in $STATE/tokens"
export LIVEMIG_TOKEN
cc() { "${CLOUDCTL[@]}" "$@"; }
hname() { [[ $1 == a ]] && echo xena || echo xenb; }
other() { [[ $1 == a ]] && echo b || echo a; }
xl() { bash "$XENLAB" "$@"; }

# ---- the transport -------------------------------------------------------------------------
want_tunnel=true
[[ $MODE == direct ]] && want_tunnel=false
hosts_ok() { # both hosts up, reporting the wanted tunnel setting
  local n
  n=$(cc --json host-list 2>/dev/null | jq --argjson t "$want_tunnel" \
    '[.hosts[] | select(.up == true and (.inventory.capabilities.tunnel_migration_stream // false) == $t)] | length' 2>/dev/null)
  [[ ${n:-0} -ge 2 ]]
}
if [[ $MODE == direct ]]; then
  echo "==> restarting both agents with --no-tunnel (the direct stream)"
  for h in a b; do
    xl agent-kill "$LAB" "$h" TERM >>"$DLOG" 2>&1 || die "agent-kill $h failed; see $DLOG"
    xl agent-start "$LAB" "$h" --no-tunnel >>"$DLOG" 2>&1 || die "agent-start $h --no-tunnel failed; see $DLOG"
  done
fi
t0=$SECONDS
until hosts_ok; do
  ((SECONDS - t0 > 180)) && { cc host-list >&2; die "both hosts not up with tunnel_migration_stream=$want_tunnel after 180 s"; }
  sleep 1
done
echo "    both hosts up, tunnel_migration_stream=$want_tunnel ($((SECONDS - t0)) s)"

# ---- helpers -------------------------------------------------------------------------------
consoles() { cat "$LAB"/share/consoles-xen?/guest-"$GUEST".log 2>/dev/null | tr -d '\r'; }
last_tick() {
  consoles | awk '$1 == "tick" && NF == 4 && $2 ~ /^[0-9]+$/ { if ($2 + 0 > m) m = $2 + 0 } END { print m + 0 }'
}
boots() { consoles | grep -c DOMU-START; }
pause_since() { # FROM: "<max gap ms> <missing ticks> <ticks>" over the ticks >= FROM
  consoles | awk -v from="$1" '
    $1 == "tick" && NF == 4 && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ && $2 + 0 >= from {
      t[$2 + 0] = $3 + 0; if ($2 + 0 > last) last = $2 + 0 }
    END {
      maxp = 0; miss = 0; prev = -1; n = 0
      for (i = from; i <= last; i++) {
        if (!(i in t)) { miss++; continue }
        n++
        if (prev >= 0 && t[i] - t[prev] > maxp) maxp = t[i] - t[prev]
        prev = i
      }
      print maxp, miss, n
    }'
}
inst() { cc --json instance-show "$UUID" 2>>"$DLOG"; }
wait_instance() { # HOSTNAME WHY: the scheduler idle for the instance, which runs on HOSTNAME
  local want=$1 t0=$SECONDS j
  while :; do
    j=$(inst)
    if [[ -n $j ]] && jq -e --arg h "$want" '.host == $h and (.missing | not) and
        (.active_migration_id // "") == "" and .task_state != "migrating" and
        .state == "running"' <<<"$j" >/dev/null 2>&1; then
      return 0
    fi
    if ((SECONDS - t0 > 180)); then
      echo "$j" >&2
      die "$2: the scheduler does not show $GUEST idle and running on $want after 180 s (above)"
    fi
    sleep 0.5
  done
}
where() { xl where "$LAB" "$GUEST" 2>>"$DLOG"; }
settle_ticks() { # until the guest has ticked 20 more times (1 s) after the migration's end
  local target=$(($(last_tick) + 20)) t0=$SECONDS
  while (($(last_tick) < target)); do
    ((SECONDS - t0 > 60)) && die "the guest's console shows no tick for 60 s after the migration"
    sleep 0.5
  done
}
timeline() { # migration-show JSON: "<before transfer s> <transfer s> <after s>"
  python3 -c '
import json, sys, datetime
def ts(s):
    if not s: return None
    s = s.rstrip("Z"); frac = 0.0
    if "." in s:
        s, f = s.split("."); frac = float("0." + f)
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp() + frac
m = json.load(sys.stdin)
ev = [e for e in m.get("events", []) if e.get("step") == "live_migration" and e.get("finished_at")]
c, f = ts(m.get("created_at")), ts(m.get("finished_at"))
if not ev or c is None or f is None: print("- - -"); sys.exit()
s, e = ts(ev[-1]["started_at"]), ts(ev[-1]["finished_at"])
print("%.2f %.2f %.2f" % (s - c, e - s, f - e))'
}

# ---- the rounds ----------------------------------------------------------------------------
cur=$(where)
[[ $cur == a || $cur == b ]] || die "$GUEST runs on '$cur' (want exactly one host)"
wait_instance "$(hname "$cur")" "before the first round"
[[ $(boots) -eq 1 ]] || die "the guest booted $(boots) times before the benchmark"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "==> $ROUNDS rounds, mode $MODE; the guest is on $(hname "$cur"); load average $load_start"
if [[ $MODE == tunnelled ]]; then BARE_FLAGS="--live --p2p --tunnelled --persistent --undefinesource"
else BARE_FLAGS="--live --p2p --persistent --undefinesource"; fi

KINDS=() WALLS=() PAUSES=() ROWS=()
migrate() { # KIND: one migration of the guest from $cur to the other host
  local kind=$1 src=$cur dst dname wall pause miss nticks from extra="" rc out
  dst=$(other "$src"); dname=$(hname "$dst")
  sleep "$SETTLE"
  if [[ $kind == system ]]; then
    wait_instance "$(hname "$src")" "before a system migration"
    from=$(last_tick)
    local t0=$EPOCHREALTIME
    timeout 1800 "${CLOUDCTL[@]}" live-migration "$UUID" "$dname" --wait >>"$DLOG" 2>&1
    rc=$?
    local t1=$EPOCHREALTIME
    ((rc == 0)) || die "system migration $(hname "$src") -> $dname failed (cloudctl exit $rc); see $DLOG"
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    local id
    id=$(cc --json migration-list --instance "$UUID" --limit 1 2>>"$DLOG" | jq -r '.migrations[0].id')
    extra="id $id; before/transfer/after $(cc --json migration-show "$id" 2>>"$DLOG" | timeline | sed 's/ /\//g') s"
  else
    wait_instance "$(hname "$src")" "before a bare migration"
    local muri=""
    [[ $MODE == direct ]] && muri="--migrateuri tcp://$dname"
    local cmd="virsh -c xen:///system migrate $BARE_FLAGS $GUEST xen+tls://$dname/system $muri"
    echo "[$(date +%T)] $(hname "$src"): $cmd" >>"$DLOG"
    from=$(last_tick)
    out=$(XENLAB_SSH_TIMEOUT=1800 xl ssh "$LAB" "$src" -- \
      "t0=\$(date +%s.%N); $cmd 2>&1; rc=\$?; t1=\$(date +%s.%N); echo XENLAB-BENCH \$rc \$t0 \$t1")
    echo "$out" >>"$DLOG"
    read -r _ rc t0 t1 < <(grep '^XENLAB-BENCH ' <<<"$out" | tail -1)
    [[ ${rc:-x} == 0 ]] || die "bare migration $(hname "$src") -> $dname failed (virsh exit ${rc:-?}): $(grep -v '^XENLAB-BENCH' <<<"$out" | tail -3)"
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    wait_instance "$dname" "after a bare migration"
  fi
  local now; now=$(where)
  [[ $now == "$dst" ]] || die "after the $kind migration to $dname, $GUEST runs on '$now'"
  settle_ticks
  read -r pause miss nticks < <(pause_since "$from")
  local b; b=$(boots)
  cur=$dst
  KINDS+=("$kind") WALLS+=("$wall") PAUSES+=("$pause")
  local row
  row=$(printf '%-3s %-6s %s -> %s  wall %7.2f s  pause %6d ms  (%d ticks from #%d, %d missing) boots %d%s' \
    "${#KINDS[@]}" "$kind" "$(hname "$src")" "$dname" "$wall" "$pause" "$nticks" "$from" "$miss" "$b" "${extra:+  [$extra]}")
  ROWS+=("$row")
  echo "    $(date +%T) $row"
  ((b == 1)) || die "the guest rebooted (boots=$b) during the $kind migration"
}

t_rounds=$SECONDS
for ((r = 0; r < ROUNDS; r++)); do
  if ((r % 2 == 0)); then migrate system; migrate bare; else migrate bare; migrate system; fi
done
echo "    $ROUNDS rounds in $((SECONDS - t_rounds)) s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
cc migration-list --instance "$UUID" --limit 100 >>"$DLOG" 2>&1

# ---- the figures ---------------------------------------------------------------------------
stats() { # KIND WALL|PAUSE: "min median max"
  local kind=$1 what=$2 i
  for i in "${!KINDS[@]}"; do
    [[ ${KINDS[$i]} == "$kind" ]] || continue
    if [[ $what == wall ]]; then echo "${WALLS[$i]}"; else echo "${PAUSES[$i]}"; fi
  done | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%s %s %s\n", v[1], m, v[NR] }'
}
read -r s_min s_med s_max < <(stats system wall)
read -r b_min b_med b_max < <(stats bare wall)
read -r sp_min sp_med sp_max < <(stats system pause)
read -r bp_min bp_med bp_max < <(stats bare pause)
ratio=$(awk -v a="$s_med" -v b="$b_med" 'BEGIN { printf "%.3f", a / b }')
final_boots=$(boots)
hb=$(xl heartbeat "$LAB" "$GUEST")

if [[ $MODE == direct ]]; then
  bare_cmd="virsh migrate $BARE_FLAGS demo-pvh xen+tls://<dest>/system --migrateuri tcp://<dest>"
  transport="direct: agents with --no-tunnel (data URI tcp://<dest>), bare virsh without --tunnelled"
else
  bare_cmd="virsh migrate $BARE_FLAGS demo-pvh xen+tls://<dest>/system"
  transport="tunnelled: agents with the example config (stream through xen+tls://), bare virsh --tunnelled"
fi
{
  echo "Xen lab benchmark (bench/xen_lab.sh --mode $MODE --rounds $ROUNDS)"
  echo "$machine"
  echo "load average: $load_start (first round), $(cut -d' ' -f1-3 /proc/loadavg) (end)"
  echo "lab:          two nested Xen 4.17 hosts (QEMU TCG, 1 vCPU each), libvirt libxl; PVH guest $GUEST (96 MiB, dirtying 16 MiB)"
  echo "transport:    $transport"
  echo "system:       cloudctl live-migration $UUID <dest> --wait (wall time of the call)"
  echo "bare:         in the source dom0: $bare_cmd (wall time inside dom0)"
  echo "pause:        largest gap between consecutive console ticks from the last tick before each migration"
  echo "settle:       ${SETTLE} s before each migration"
  echo
  echo "migrations:"
  printf '  %s\n' "${ROWS[@]}"
  echo
  printf '%-8s %3s   wall min / median / max            pause min / median / max\n' kind n
  printf '%-8s %3d   %7.2f / %7.2f / %7.2f s    %6d / %6.0f / %6d ms\n' system "$ROUNDS" "$s_min" "$s_med" "$s_max" "$sp_min" "$sp_med" "$sp_max"
  printf '%-8s %3d   %7.2f / %7.2f / %7.2f s    %6d / %6.0f / %6d ms\n' bare "$ROUNDS" "$b_min" "$b_med" "$b_max" "$bp_min" "$bp_med" "$bp_max"
  echo "ratio of medians system / bare: $ratio"
  echo "boots: $final_boots (must stay 1); heartbeat over the whole history: $hb"
} | tee "$TXT"
echo "figures: $TXT; details: $DLOG"
((final_boots == 1)) || exit 1
exit 0
