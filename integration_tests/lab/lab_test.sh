#!/usr/bin/env bash
# End-to-end test of the two-host lab (lab.sh): real live migrations A -> B -> A of the lab guest
# with plain virsh, guest continuity, two more labs side by side (names never collide; sweep tears
# down a lab whose owner is gone and namespaces whose lab dir is gone, without touching this one),
# and a teardown that leaves nothing behind. Needs root. About 30 s.
#
#   integration_tests/lab/lab_test.sh            run it (exit status 0 = all checks passed)
#   LAB_TEST_KEEP=1 ...                          keep the lab directory (logs) afterwards
#   LAB_TEST_SIDE_LABS=0 ...                     skip the side labs / sweep part
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB=$HERE/lab.sh
NAME=labvm1
PARENT=${TMPDIR:-/tmp}

PASSED=0
FAILED=0
FIGURES=()
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %-70s [%d passed, %d failed]\n' "$1" "$PASSED" "$FAILED"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %-70s [%d passed, %d failed]\n' "$1" "$PASSED" "$FAILED"; }
check() { # DESCRIPTION CMD... : pass if CMD succeeds
  local d=$1; shift
  if "$@"; then pass "$d"; else fail "$d"; fi
}
figure() { FIGURES+=("$1"); echo "  -- $1"; }
usec() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; }
secs_since() { local d=$(($(usec) - $1)); printf '%d.%02d' $((d / 1000000)) $(((d / 10000) % 100)); }
section() { echo; echo "== $*"; }

[[ $(id -u) == 0 ]] || { echo "lab_test.sh needs root" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
DIR="" DIR2="" DIR3="" TORN_DOWN=0 OWNER2=""
cleanup() {
  local rc=$?
  set +e
  [[ -n "$OWNER2" ]] && kill "$OWNER2" 2>/dev/null
  if [[ -n "$DIR" && $TORN_DOWN == 0 ]]; then
    echo "(cleanup: tearing the lab down)"
    "$LAB" down "$DIR" >/dev/null 2>&1
  fi
  [[ -n "$DIR2" && -f "$DIR2/lab.env" ]] && "$LAB" down "$DIR2" >/dev/null 2>&1
  if [[ "${LAB_TEST_KEEP:-0}" == 1 ]]; then
    rm -f "$DIR/.sweep-remove"
    echo "(kept $DIR)"
  else
    [[ -n "$DIR" ]] && rm -rf "$DIR"
    [[ -n "$DIR2" ]] && rm -rf "$DIR2"
    [[ -n "$DIR3" ]] && rm -rf "$DIR3"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

root_net_snapshot() { { ip -o addr show; ip route show table all; ip -6 route show table all; } 2>/dev/null | sed 's/ *$//' | sort; }

hb_field() { # DIR FIELD -> value from `lab.sh heartbeat`
  local kv
  for kv in $("$LAB" heartbeat "$1" "$NAME" 2>/dev/null); do
    [[ "${kv%%=*}" == "$2" ]] && { echo "${kv#*=}"; return 0; }
  done
  echo -1
}
wait_hb_above() { # DIR VALUE TIMEOUT_S -> 0 when the heartbeat counter exceeds VALUE
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    (($(hb_field "$1" last) > $2)) && return 0
    sleep 0.1
  done
  return 1
}
running_on() { "$LAB" where "$DIR" "$NAME" | tr '\n' ' ' | sed 's/ $//'; }
defined_on() { # HOST -> 0 if NAME is defined (running or not) on that host
  virsh -q -c "$("$LAB" uri "$DIR" "$1")" list --all --name 2>/dev/null | grep -qx "$NAME"
}
qemu_pid_on() { cat "$DIR/hosts/$1/run/qemu/$NAME.pid" 2>/dev/null; }
alive() { # PID -> running and not a zombie
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null &&
    [[ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]]
}
ns_of_lab() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$1-[ab]$" || true; }
lab_id() { sed -n 's/^LAB_ID=//p' "$1/lab.env"; }

# ---------------------------------------------------------------------------------------------
section "sweep leftovers of earlier runs"
"$LAB" sweep --remove "$PARENT"

ROOT_NET_BEFORE=$(root_net_snapshot)
DIR=$(mktemp -d "$PARENT/lmtest.XXXXXX")
: >"$DIR/.sweep-remove" # a killed run's dir is deleted by the next run's sweep --remove
export LAB_OWNER_PID=$$

section "up $DIR"
T=$(usec)
if "$LAB" up "$DIR"; then pass "lab.sh up"; else fail "lab.sh up"; exit 1; fi
T_UP=$(secs_since "$T")
figure "up: ${T_UP}s"
ID=$(lab_id "$DIR")
URI_A=$("$LAB" uri "$DIR" a)
URI_B=$("$LAB" uri "$DIR" b)
check "lab id $ID looks like lm + 6 hex" grep -Eqx 'lm[0-9a-f]{6}' <<<"$ID"
check "namespaces $ID-a and $ID-b exist" test "$(ns_of_lab "$ID" | wc -l)" = 2
check "hostname inside host a is lab-a" test "$("$LAB" exec "$DIR" a -- hostname)" = lab-a
check "hostname inside host b is lab-b" test "$("$LAB" exec "$DIR" b -- hostname)" = lab-b
check "root namespace addresses/routes unchanged by up" test "$(root_net_snapshot)" = "$ROOT_NET_BEFORE"
check "host a reaches host b's libvirtd on 10.250.0.2:16509" \
  "$LAB" exec "$DIR" a -- timeout 5 bash -c 'exec 3<>/dev/tcp/10.250.0.2/16509'
check "host b reaches host a's libvirtd on 10.250.0.1:16509" \
  "$LAB" exec "$DIR" b -- timeout 5 bash -c 'exec 3<>/dev/tcp/10.250.0.1/16509'
host_uuid() { virsh -q -c "$1" capabilities 2>/dev/null | sed -n 's:.*<uuid>\(.*\)</uuid>.*:\1:p' | head -1; }
HU_A=$(host_uuid "$URI_A")
HU_B=$(host_uuid "$URI_B")
check "daemons report distinct host UUIDs ($HU_A / $HU_B)" test -n "$HU_A" -a -n "$HU_B" -a "$HU_A" != "$HU_B"
check "both daemons answer (virsh version)" bash -c "virsh -q -c '$URI_A' version >/dev/null && virsh -q -c '$URI_B' version >/dev/null"
PROBE="$DIR/instances/.probe-$$"
"$LAB" exec "$DIR" a -- sh -c "echo from-a > '$PROBE'"
check "instance dir shared: file written on a is read on b" test "$("$LAB" exec "$DIR" b -- cat "$PROBE")" = from-a
rm -f "$PROBE"
check "up again is idempotent (no-op)" "$LAB" up "$DIR" --no-warm

section "guest"
T=$(usec)
check "guest-build" "$LAB" guest-build "$DIR"
UUID=$(cat /proc/sys/kernel/random/uuid)
GOT=$("$LAB" guest-start "$DIR" a "$NAME" --uuid "$UUID" || true)
check "guest-start on a prints the UUID" test "$GOT" = "$UUID"
check "guest boots and beats on a (heartbeat > 3 within 20 s)" wait_hb_above "$DIR" 3 20
figure "guest start to 3rd heartbeat: $(secs_since "$T")s"
check "guest runs on a only" test "$(running_on)" = a
"$LAB" heartbeat "$DIR" "$NAME"
QEMU_PIDS=("$(qemu_pid_on a)")

HOPS=0
hop() { # SRC DST
  local src=$1 dst=$2 before t rc=0 out dur now qsrc
  HOPS=$((HOPS + 1))
  section "live migration $HOPS: $src -> $dst"
  before=$(hb_field "$DIR" last)
  qsrc=$(qemu_pid_on "$src")
  local cmd=(timeout 120 virsh -c "$("$LAB" uri "$DIR" "$src")" migrate --live --p2p --persistent --undefinesource
    --verbose "$NAME" "$("$LAB" peer-uri "$DIR" "$dst")" "tcp://$("$LAB" ip "$DIR" "$dst")")
  echo "+ ${cmd[*]}"
  t=$(usec)
  out=$("${cmd[@]}" 2>&1) || rc=$?
  dur=$(secs_since "$t")
  echo "$out" | tr '\r' '\n' | grep -v '^$' | tail -3
  check "hop $HOPS: virsh migrate $src -> $dst exits 0 (${dur}s)" test "$rc" = 0
  check "hop $HOPS: domain runs on exactly one host: $dst" test "$(running_on)" = "$dst"
  check "hop $HOPS: domain defined on $dst only (--persistent --undefinesource)" \
    bash -c "! virsh -q -c '$("$LAB" uri "$DIR" "$src")' list --all --name | grep -qx '$NAME' &&
             virsh -q -c '$("$LAB" uri "$DIR" "$dst")' list --all --name | grep -qx '$NAME'"
  check "hop $HOPS: source QEMU (pid $qsrc) has exited" bash -c "! kill -0 $qsrc 2>/dev/null || grep -q '^[^)]*) Z' /proc/$qsrc/stat"
  QEMU_PIDS+=("$(qemu_pid_on "$dst")")
  check "hop $HOPS: guest NIC on br-guest at $dst" \
    bash -c "'$LAB' exec '$DIR' $dst -- bridge link show | grep -q 'vnet.*master br-guest'"
  # The source QEMU is gone: every heartbeat from now on comes from the destination.
  local at_switch
  at_switch=$(hb_field "$DIR" last)
  check "hop $HOPS: heartbeat continues on $dst (before $before, at switch-over $at_switch; +3 within 15 s)" \
    wait_hb_above "$DIR" $((at_switch + 3)) 15
  now=$("$LAB" heartbeat "$DIR" "$NAME")
  echo "  heartbeat: $now"
  check "hop $HOPS: counter went on from where it was (before $before <= switch-over $at_switch)" \
    test "$before" -ge 1 -a "$at_switch" -ge "$before"
  check "hop $HOPS: guest booted exactly once" test "$(hb_field "$DIR" boots)" = 1
  check "hop $HOPS: heartbeat counter consecutive, no gaps or repeats" test "$(hb_field "$DIR" gaps)" = 0
  check "hop $HOPS: guest memory verified intact (no CORRUPT page)" test "$(hb_field "$DIR" corrupt)" = 0
  # completed job statistics, kept by the destination
  local js el proc tot dt it bw
  js=$(virsh -c "$("$LAB" uri "$DIR" "$dst")" domjobinfo --completed "$NAME" 2>/dev/null || true)
  el=$(awk -F: '/^Time elapsed:/ {gsub(/ +/, " ", $2); print $2; exit}' <<<"$js")
  proc=$(awk -F: '/^Data processed:/ {gsub(/^ +| +$/, "", $2); print $2}' <<<"$js")
  tot=$(awk -F: '/^Data total:/ {gsub(/^ +| +$/, "", $2); print $2}' <<<"$js")
  dt=$(awk -F: '/^Total downtime:/ {gsub(/ +/, " ", $2); print $2}' <<<"$js")
  it=$(awk -F: '/^Iteration:/ {gsub(/ +/, "", $2); print $2}' <<<"$js")
  bw=$(awk -F: '/^Memory bandwidth:/ {gsub(/^ +| +$/, "", $2); print $2}' <<<"$js")
  check "hop $HOPS: destination has completed job stats" test -n "$proc"
  figure "hop $HOPS $src->$dst: virsh migrate ${dur}s; job elapsed${el}, processed $proc of $tot, $it iterations, downtime${dt}, bandwidth $bw"
}

hop a b

# ---------------------------------------------------------------------------------------------
if [[ "${LAB_TEST_SIDE_LABS:-1}" == 1 ]]; then
  section "side labs: no name collisions; sweep (owner gone / lab dir gone) spares this lab"
  T=$(usec)
  # lab 2: its owner is a process of ours that exits before the sweep
  sleep 300 & OWNER2=$!
  DIR2=$(mktemp -d "$PARENT/lmtest.XXXXXX")
  : >"$DIR2/.sweep-remove"
  check "lab 2 up (owner = pid $OWNER2, no br-guest on b)" \
    env LAB_OWNER_PID=$OWNER2 "$LAB" up "$DIR2" --no-warm --no-bridge-on b
  ID2=$(lab_id "$DIR2")
  # lab 3: its directory will be deleted under it
  DIR3=$(mktemp -d "$PARENT/lmtest.XXXXXX")
  check "lab 3 up" "$LAB" up "$DIR3" --no-warm
  ID3=$(lab_id "$DIR3")
  check "three labs, three ids ($ID, $ID2, $ID3)" test "$(printf '%s\n' "$ID" "$ID2" "$ID3" | sort -u | wc -l)" = 3
  check "lab 2 host b has no br-guest" bash -c "! '$LAB' exec '$DIR2' b -- ip link show br-guest >/dev/null 2>&1"
  check "lab 2's 10.250.0.2 is its own (lab 1 and 2 both listen, isolated)" \
    "$LAB" exec "$DIR2" a -- timeout 5 bash -c 'exec 3<>/dev/tcp/10.250.0.2/16509'
  L2_PIDS=$(cat "$DIR2"/pids/*.pid | awk '{print $1}')
  L3_PIDS=$(cat "$DIR3"/pids/*.pid | awk '{print $1}')
  kill "$OWNER2"
  wait "$OWNER2" 2>/dev/null || true
  OWNER2=""
  rm -rf "$DIR3"
  "$LAB" sweep "$PARENT"
  check "sweep removed lab 2 (owner gone): no namespaces $ID2-*" test -z "$(ns_of_lab "$ID2")"
  check "sweep removed lab 3 (dir gone): no namespaces $ID3-*" test -z "$(ns_of_lab "$ID3")"
  L_ALIVE=""
  for p in $L2_PIDS $L3_PIDS; do alive "$p" && L_ALIVE+=" $p"; done
  check "no process of lab 2 or lab 3 left (${L_ALIVE:-none})" test -z "$L_ALIVE"
  check "sweep spared this lab (owner alive): namespaces $ID-a/b still there" test "$(ns_of_lab "$ID" | wc -l)" = 2
  check "mountpoint dirs kept while this lab uses them" test -d /run/libvirt -a -d /var/lib/libvirt
  check "guest still running on b after the sweep" test "$(running_on)" = b
  B4=$(hb_field "$DIR" last)
  check "guest still beating after the sweep" wait_hb_above "$DIR" $((B4 + 2)) 10
  figure "side labs (2 x up --no-warm + sweep): $(secs_since "$T")s"
fi

hop b a

# ---------------------------------------------------------------------------------------------
section "down"
T=$(usec)
check "lab.sh down" "$LAB" down "$DIR"
TORN_DOWN=1
figure "down: $(secs_since "$T")s"
check "no network namespace $ID-* left" test -z "$(ns_of_lab "$ID")"
LEFT=""
for f in "$DIR"/pids/*.pid; do
  p=$(awk '{print $1}' "$f")
  alive "$p" && LEFT+=" $(basename "$f" .pid)=$p"
done
for p in "${QEMU_PIDS[@]}"; do alive "$p" && LEFT+=" qemu=$p"; done
check "no recorded pid alive (holders, libvirtd, every QEMU seen)${LEFT:+:$LEFT}" test -z "$LEFT"
REFS=""
for c in /proc/[0-9]*/cmdline; do
  tr '\0' ' ' <"$c" 2>/dev/null | grep -qF "$DIR/" && REFS+=" $(basename "$(dirname "$c")")"
done
check "no process runs with the lab dir in its command line${REFS:+:$REFS}" test -z "$REFS"
MNTS=$(cat /proc/[0-9]*/mountinfo 2>/dev/null | grep -F "$DIR" | sort -u || true)
check "no mount of/under the lab dir in any mount namespace" test -z "$MNTS"
OTHER_LABS=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -Ec '^lm[0-9a-f]{6}-[ab]$' || true)
if [[ "$OTHER_LABS" == 0 ]]; then
  check "mountpoint dirs removed (no other lab running)" \
    bash -c '! ls -d /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt 2>/dev/null | grep -q .'
fi
check "root namespace addresses/routes as before the run" test "$(root_net_snapshot)" = "$ROOT_NET_BEFORE"
check "down again is a no-op" "$LAB" down "$DIR"
check "lab dir state is down" test "$(cat "$DIR/state")" = down

echo
echo "== figures"
for f in "${FIGURES[@]}"; do echo "  $f"; done
echo
echo "RESULT: $PASSED passed, $FAILED failed"
((FAILED == 0))
