#!/usr/bin/env bash
# The project's two-host libvirt lab: real live migration between two libvirtd (QEMU driver, TCG)
# on one machine. See README.md next to this file, and ../../../shared/docs/LIBVIRT_FACTS.md.
#
# Host X (a or b) = a named network namespace <id>-X + a holder process that owns a private mount
# namespace and a UTS namespace (hostname lab-X); its libvirtd and anything run with `lab.sh exec`
# join all three. The migration link is a veth pair 10.250.0.1 (a) <-> 10.250.0.2 (b); each host has
# a bridge br-guest, the two joined by a second veth pair (one L2 segment). Links are created
# directly inside the namespaces: nothing is added to the root namespace's network.
# <id> = lm + 6 random hex digits, chosen at `up` and kept in DIR/lab.env, so two labs never collide.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

usage() {
  cat <<'EOF'
lab.sh — the project's two-host libvirt lab (two libvirtd in network/UTS/mount namespaces).

Usage: lab.sh COMMAND [ARGS]          (root; all state lives in the lab directory DIR)

  up DIR [--no-bridge-on a|b] [--no-warm]
                      build the topology and start both libvirtd; idempotent (re-running
                      starts whatever is missing). Owner = $LAB_OWNER_PID or the caller ($PPID),
                      recorded in DIR/owner.pid for `sweep`.
  down DIR            guests first (virsh destroy, then QEMU by libvirt's pid files), then the
                      daemons and holders by recorded pid, then namespaces and the empty
                      mountpoint dirs. Works after a partial up; safe to run twice.
  sweep [--remove] [PARENT]
                      tear down leftovers of killed runs: lab dirs under PARENT (default
                      ${TMPDIR:-/tmp}) whose owner is gone, and lab namespaces (lm??????-a|b)
                      whose lab dir is gone or whose owner is gone. --remove also deletes those
                      torn-down lab dirs that carry a DIR/.sweep-remove marker (temp dirs of
                      tests).
  status DIR          what runs (namespaces, pids, domains).
  uri DIR a|b         client URI of that host's libvirtd (Unix socket; works from the root ns).
  peer-uri DIR a|b    URI the other host's libvirtd uses to reach this one (qemu+tcp://IP/system).
  ip DIR a|b          that host's address on the migration link.
  exec DIR a|b -- CMD...
                      run CMD inside that host's namespaces (net, uts, mount).
  guest-build DIR     assemble the tiny guest kernel from guest/ into DIR/guest/labguest.elf.
  guest-xml DIR NAME [--memory-mib N] [--uuid UUID] [--mac MAC] [--bridge BR] [--disk FILE]
                      print the guest's domain XML (serial log DIR/instances/NAME/console.log);
                      --disk adds a virtio data disk (qcow2 when FILE ends in .qcow2, else raw),
                      a path as the host's libvirtd sees it (e.g. under the per-host, not shared
                      /var/lib/libvirt/images); the guest never reads it.
  guest-start DIR a|b NAME [--memory-mib N] [--uuid UUID] [--disk FILE]
                      define + start the guest on that host; prints its UUID.
  where DIR NAME      prints the host(s) where NAME is running (a, b, or nothing).
  heartbeat DIR NAME  prints boots=<n> last=<counter> beats=<n> gaps=<n> corrupt=<n> from the
                      guest's serial log.

Environment: LAB_OWNER_PID (owner recorded at up), LAB_VERBOSE=1 (trace).
EOF
}

IP_A=10.250.0.1
IP_B=10.250.0.2
NET_PREFIX=24
ID_RE='^lm[0-9a-f]{6}$'
NS_RE='^lm[0-9a-f]{6}-[ab]$'
# Mountpoints the daemons need that a Debian system without libvirt-daemon-system lacks; created
# empty in the root filesystem (the private mounts go on top of them, inside each host's mount
# namespace) and removed at down when empty and no mount namespace uses them any more.
MOUNTPOINTS=(/run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt)
# Lock serialising "create mountpoint dirs + mount on them" against "remove unused mountpoint
# dirs" across labs (an rmdir of a dir that is a mountpoint in another mount namespace silently
# detaches that mount). A lock on an existing directory: creates no file.
MP_LOCK=/var/lib

[[ "${LAB_VERBOSE:-0}" == 1 ]] && set -x

# ---------------------------------------------------------------------------------------------
# small helpers

say() { printf '[lab%s] %s\n' "${LAB_ID:+ $LAB_ID}" "$*" >&2; }
die() { say "error: $*"; exit 1; }
usec() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; }
fmt_since() { # START_USEC -> "1.234s"
  local d=$(( $(usec) - $1 )); printf '%d.%03ds' $((d / 1000000)) $(((d / 1000) % 1000))
}
stage() { # LABEL START_USEC
  say "$(printf '%-44s %s' "$1" "$(fmt_since "$2")")"
}

need_root() { [[ $(id -u) == 0 ]] || die "needs root"; }

# Field K of /proc/PID/stat counted after the "(comm)" field (1 = state, 20 = start time).
proc_stat_field() { # PID K
  local s k=$2
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo "${!k}"
}
# Start time (clock ticks since boot) of a pid: identifies a process across pid reuse.
proc_start() { proc_stat_field "$1" 20; }
is_zombie() { [[ "$(proc_stat_field "$1" 1 2>/dev/null)" == Z ]]; }

# pid file format: "PID STARTTIME"
record_pid() { # NAME PID
  local st
  st=$(proc_start "$2") || st=0
  echo "$2 $st" >"$LAB_DIR/pids/$1.pid"
}
pidfile_alive() { # FILE -> prints pid if the recorded process is still the one recorded
  local pid st cur
  [[ -f "$1" ]] || return 1
  read -r pid st <"$1" || true
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cur=$(proc_start "$pid") || return 1
  [[ -z "$st" || "$st" == "$cur" ]] || return 1
  ! is_zombie "$pid" || return 1 # exited, not reaped yet
  echo "$pid"
}

kill_wait() { # PID LABEL [TIMEOUT_S]: TERM, wait, then KILL
  local pid=$1 label=$2 t=${3:-10} i
  kill -0 "$pid" 2>/dev/null || return 0
  is_zombie "$pid" && return 0
  say "stopping $label (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < t * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    # exited but not yet reaped by its parent (pid 1 here): gone
    is_zombie "$pid" && return 0
    sleep 0.05
  done
  say "$label (pid $pid) ignored SIGTERM for ${t}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    is_zombie "$pid" && return 0
    sleep 0.05
  done
  say "warning: $label (pid $pid) still present"
}

# ---------------------------------------------------------------------------------------------
# lab directory and names

resolve_dir() { # DIR -> absolute path (created if CREATE=1)
  local d=$1
  [[ -n "$d" ]] || die "missing lab directory"
  if [[ "${CREATE:-0}" == 1 ]]; then mkdir -p "$d"; fi
  [[ -d "$d" ]] || die "no such lab directory: $d"
  d=$(cd "$d" && pwd -P)
  [[ "$d" =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "lab directory path must be plain ([A-Za-z0-9._/+-]): $d"
  # Unix socket paths are limited to 107 bytes: DIR/hosts/a/run/libvirt-admin-sock
  ((${#d} <= 70)) || die "lab directory path too long (max 70 chars for the sockets): $d"
  echo "$d"
}

load_lab() { # DIR: sets LAB_DIR, LAB_ID, BRIDGE_a, BRIDGE_b
  LAB_DIR=$(resolve_dir "$1")
  [[ -f "$LAB_DIR/lab.env" ]] || die "$LAB_DIR is not a lab (no lab.env; run: lab.sh up $LAB_DIR)"
  LAB_ID=$(sed -n 's/^LAB_ID=//p' "$LAB_DIR/lab.env")
  [[ "$LAB_ID" =~ $ID_RE ]] || die "bad LAB_ID in $LAB_DIR/lab.env"
  BRIDGE_a=$(sed -n 's/^BRIDGE_a=//p' "$LAB_DIR/lab.env")
  BRIDGE_b=$(sed -n 's/^BRIDGE_b=//p' "$LAB_DIR/lab.env")
}

check_host() { [[ "$1" == a || "$1" == b ]] || die "host must be a or b, not '$1'"; }
ns_of() { echo "$LAB_ID-$1"; }
ip_of() { if [[ $1 == a ]]; then echo $IP_A; else echo $IP_B; fi; }
other() { if [[ $1 == a ]]; then echo b; else echo a; fi; }
host_base() { echo "$LAB_DIR/hosts/$1"; }
sock_of() { echo "$LAB_DIR/hosts/$1/run/libvirt-sock"; }
uri_of() { echo "qemu+unix:///system?socket=$(sock_of "$1")"; }
peer_uri_of() { echo "qemu+tcp://$(ip_of "$1")/system"; }
ns_exists() { [[ -e "/run/netns/$1" ]]; }
virsh_h() { # HOST ARGS... (bounded: a hung daemon must not hang the caller forever)
  local h=$1; shift
  timeout "${VIRSH_TIMEOUT:-60}" virsh -q -c "$(uri_of "$h")" "$@"
}
daemon_pid() { pidfile_alive "$LAB_DIR/pids/libvirtd-$1.pid"; }
holder_pid() { pidfile_alive "$LAB_DIR/pids/holder-$1.pid"; }

owner_alive() { # DIR
  local p
  p=$(pidfile_alive "$1/owner.pid") || return 1
  [[ -n "$p" ]]
}

# Lock a lab for up/down (fd 9). Children started while it is held must close fd 9.
lock_lab() {
  exec 9>>"$LAB_DIR/.lock"
  flock -w 180 9 || die "could not lock $LAB_DIR/.lock"
}
unlock_lab() { flock -u 9 2>/dev/null || true; exec 9>&-; }

lock_mountpoints() {
  exec 8<"$MP_LOCK"
  flock -w 120 8 || die "could not lock $MP_LOCK"
}
unlock_mountpoints() { flock -u 8 2>/dev/null || true; exec 8<&-; }

# Prints those of MOUNTPOINTS that are a mountpoint in some live mount namespace.
mountpoints_in_use() {
  local f
  { find /proc/[0-9]*/ns/mnt -maxdepth 0 -printf '%l %p\n' 2>/dev/null || true; } | sort -u -k1,1 |
    while read -r _ f; do cat "${f%/ns/mnt}/mountinfo" 2>/dev/null || true; done |
    awk -v list="${MOUNTPOINTS[*]}" 'BEGIN { n = split(list, m, " "); for (i = 1; i <= n; i++) want[m[i]] = 1 }
         ($5 in want) { print $5 }' | sort -u
}

remove_unused_mountpoints() { # caller holds the mountpoint lock
  local used mp
  local removed="" kept=""
  used=$(mountpoints_in_use)
  for mp in "${MOUNTPOINTS[@]}"; do
    [[ -d "$mp" ]] || continue
    if grep -qxF "$mp" <<<"$used"; then
      kept+=" $mp"
    elif rmdir "$mp" 2>/dev/null; then
      removed+=" $mp"
    fi
  done
  [[ -z "$removed" ]] || say "removed empty mountpoint dirs:$removed"
  [[ -z "$kept" ]] || say "kept mountpoint dirs (another lab's mount namespace uses them):$kept"
}

# ---------------------------------------------------------------------------------------------
# up

new_lab_id() {
  local id i
  for ((i = 0; i < 50; i++)); do
    id=lm$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
    ns_exists "$id-a" || ns_exists "$id-b" || { echo "$id"; return 0; }
  done
  die "could not pick a free lab id"
}

write_configs() { # HOST
  local h=$1 base ip
  base=$(host_base "$h"); ip=$(ip_of "$h")
  mkdir -p "$base"/{etc,run,lib,cache,log/qemu}
  [[ -s "$base/host_uuid" ]] || cat /proc/sys/kernel/random/uuid >"$base/host_uuid"
  cat >"$base/etc/libvirtd.conf" <<EOF
# lab host $h ($LAB_ID): generated by lab.sh up
listen_tls = 0
listen_tcp = 1
listen_addr = "$ip"
tcp_port = "16509"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_ro_perms = "0770"
unix_sock_rw_perms = "0770"
# libvirt refuses "migration to the same host" by host UUID: each lab host has its own.
host_uuid = "$(cat "$base/host_uuid")"
log_filters = "2:qemu.qemu_migration 3:*"
log_outputs = "2:file:/var/log/libvirt/libvirtd.log"
EOF
  cat >"$base/etc/qemu.conf" <<EOF
# lab host $h ($LAB_ID): generated by lab.sh up
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
# loopback is refused here, and the destination must be reached on the migration link
migration_host = "$ip"
migration_address = "$ip"
migration_port_min = 49152
migration_port_max = 49215
EOF
  # A privileged libvirtd resolves the user libvirt-qemu before it reads qemu.conf: give the host a
  # private passwd/group that has it (the root filesystem's files are not changed).
  cp /etc/passwd "$base/passwd"
  cp /etc/group "$base/group"
  grep -q '^libvirt-qemu:' "$base/group" || echo 'libvirt-qemu:x:64055:' >>"$base/group"
  grep -q '^libvirt-qemu:' "$base/passwd" ||
    echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin' >>"$base/passwd"
}

net_up() {
  local h ns dev peer
  for h in a b; do
    ns=$(ns_of "$h")
    if ! ns_exists "$ns"; then
      ip netns add "$ns"
      say "created network namespace $ns"
    fi
    # The lab dir, kept in the namespace itself: sweep finds namespaces whose lab dir is gone.
    ip -n "$ns" link set dev lo alias "lmlab:$LAB_DIR"
    ip -n "$ns" link set dev lo up
  done
  # migration link, created directly inside the two namespaces
  if ! ip -n "$(ns_of a)" link show dev "$LAB_ID-ma" >/dev/null 2>&1; then
    ip -n "$(ns_of b)" link del dev "$LAB_ID-mb" 2>/dev/null || true
    ip link add "$LAB_ID-ma" netns "$(ns_of a)" type veth peer name "$LAB_ID-mb" netns "$(ns_of b)"
  fi
  for h in a b; do
    ns=$(ns_of "$h"); dev=$LAB_ID-m$h
    ip -n "$ns" addr replace "$(ip_of "$h")/$NET_PREFIX" dev "$dev"
    ip -n "$ns" link set dev "$dev" up
  done
  # br-guest on each host, joined by a second veth pair
  for h in a b; do
    local var=BRIDGE_$h
    [[ "${!var}" == 1 ]] || continue
    ns=$(ns_of "$h")
    ip -n "$ns" link show dev br-guest >/dev/null 2>&1 || ip -n "$ns" link add br-guest type bridge
    ip -n "$ns" link set dev br-guest up
  done
  if [[ "$BRIDGE_a" == 1 && "$BRIDGE_b" == 1 ]]; then
    if ! ip -n "$(ns_of a)" link show dev "$LAB_ID-ga" >/dev/null 2>&1; then
      ip -n "$(ns_of b)" link del dev "$LAB_ID-gb" 2>/dev/null || true
      ip link add "$LAB_ID-ga" netns "$(ns_of a)" type veth peer name "$LAB_ID-gb" netns "$(ns_of b)"
    fi
    for h in a b; do
      ns=$(ns_of "$h"); peer=$LAB_ID-g$h
      ip -n "$ns" link set dev "$peer" master br-guest
      ip -n "$ns" link set dev "$peer" up
    done
  fi
}

# The holder: owns the host's mount + UTS namespaces (inside its network namespace) and does the
# private mounts. libvirtd and `lab.sh exec` join it with nsenter.
HOLDER_SCRIPT='
set -eu
base=$1 host=$2
hostname "$host"
# This mount namespace is a private copy of the root one: drop its copies of /run/netns/* (they
# would keep other labs'"'"' network namespaces alive after those are deleted).
umount -l /run/netns 2>/dev/null || true
# sysfs as seen from this network namespace (like `ip netns exec` does)
mount -t sysfs lab-sysfs /sys
mount --bind "$base/etc" /etc/libvirt
mount --bind "$base/passwd" /etc/passwd
mount --bind "$base/group" /etc/group
mount --bind "$base/run" /run/libvirt
mount --bind "$base/lib" /var/lib/libvirt
mount --bind "$base/cache" /var/cache/libvirt
mount --bind "$base/log" /var/log/libvirt
: > "$base/holder.ready"
exec sleep infinity
'

start_holder() { # HOST
  local h=$1 base pid i
  base=$(host_base "$h")
  if pid=$(holder_pid "$h"); then
    say "host $h: holder already running (pid $pid)"
    return 0
  fi
  rm -f "$base/holder.ready"
  setsid nsenter --net="/run/netns/$(ns_of "$h")" -- \
    unshare --mount --uts --propagation private -- \
    /bin/sh -c "$HOLDER_SCRIPT" holder "$base" "lab-$h" \
    </dev/null >"$base/holder.log" 2>&1 8<&- 9>&- &
  pid=$!
  record_pid "holder-$h" "$pid"
  for ((i = 0; i < 200; i++)); do
    [[ -f "$base/holder.ready" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [[ -f "$base/holder.ready" ]] || { cat "$base/holder.log" >&2; die "host $h: holder did not come up"; }
  say "host $h: holder pid $pid (hostname lab-$h, private mounts)"
}

start_daemon() { # HOST
  local h=$1 base pid i sock
  base=$(host_base "$h"); sock=$(sock_of "$h")
  if pid=$(daemon_pid "$h"); then
    say "host $h: libvirtd already running (pid $pid)"
    return 0
  fi
  local hp
  hp=$(holder_pid "$h") || die "host $h: no holder"
  rm -f "$sock"
  setsid nsenter -t "$hp" -n -m -u -- \
    /usr/sbin/libvirtd --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid \
    </dev/null >>"$base/libvirtd.stdout" 2>&1 8<&- 9>&- &
  pid=$!
  record_pid "libvirtd-$h" "$pid"
  for ((i = 0; i < 300; i++)); do
    [[ -S "$sock" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [[ -S "$sock" ]] || { tail -20 "$base/libvirtd.stdout" >&2; die "host $h: libvirtd did not come up"; }
  say "host $h: libvirtd pid $pid, $(uri_of "$h"), tcp $(ip_of "$h"):16509"
}

cmd_up() {
  need_root
  local dir="" nobr="" warm=1
  while (($#)); do
    case "$1" in
      --no-bridge-on) nobr=${2:-}; shift 2 || die "--no-bridge-on needs a|b" ;;
      --no-warm) warm=0; shift ;;
      -*) die "unknown option $1" ;;
      *) [[ -z "$dir" ]] || die "extra argument $1"; dir=$1; shift ;;
    esac
  done
  [[ -z "$nobr" ]] || check_host "$nobr"
  local t0 t
  t0=$(usec)
  LAB_DIR=$(CREATE=1 resolve_dir "$dir")
  mkdir -p "$LAB_DIR"/{pids,hosts,instances,guest}
  # owner first: a concurrent sweep must never see a lab.env without an owner
  local owner=${LAB_OWNER_PID:-$PPID}
  echo "$owner $(proc_start "$owner" || echo 0)" >"$LAB_DIR/owner.pid.tmp"
  mv -f "$LAB_DIR/owner.pid.tmp" "$LAB_DIR/owner.pid"
  if [[ -f "$LAB_DIR/lab.env" ]]; then
    load_lab "$LAB_DIR"
    [[ -z "$nobr" ]] || [[ "$(eval echo "\$BRIDGE_$nobr")" == 0 ]] ||
      die "lab exists with br-guest on $nobr; run down and remove $LAB_DIR/lab.env to change it"
  else
    LAB_ID=$(new_lab_id)
    BRIDGE_a=1 BRIDGE_b=1
    [[ "$nobr" == a ]] && BRIDGE_a=0
    [[ "$nobr" == b ]] && BRIDGE_b=0
    cat >"$LAB_DIR/lab.env.tmp" <<EOF
LAB_ID=$LAB_ID
LAB_DIR=$LAB_DIR
BRIDGE_a=$BRIDGE_a
BRIDGE_b=$BRIDGE_b
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
    mv -f "$LAB_DIR/lab.env.tmp" "$LAB_DIR/lab.env"
  fi
  lock_lab
  echo up >"$LAB_DIR/state"
  say "up $LAB_DIR (owner pid $owner)"

  t=$(usec)
  net_up
  stage "namespaces + links (10.250.0.1 <-> .2, br-guest)" "$t"

  t=$(usec)
  local h
  for h in a b; do
    # (a running daemon keeps its files: passwd/group are bind-mounted, rewriting them races)
    daemon_pid "$h" >/dev/null || write_configs "$h"
  done
  stage "configs (libvirtd.conf, qemu.conf, passwd)" "$t"

  t=$(usec)
  lock_mountpoints
  local mp
  for mp in "${MOUNTPOINTS[@]}"; do [[ -d "$mp" ]] || mkdir -p "$mp"; done
  start_holder a
  start_holder b
  unlock_mountpoints
  stage "holders (mount + UTS namespaces)" "$t"

  t=$(usec)
  start_daemon a
  start_daemon b
  stage "libvirtd a + b" "$t"

  if ((warm)); then
    # The first QEMU capability probe of a daemon takes seconds: do it now, both in parallel.
    t=$(usec)
    local wa wb rc=0
    virsh_h a domcapabilities --virttype qemu >/dev/null 8<&- 9>&- & wa=$!
    virsh_h b domcapabilities --virttype qemu >/dev/null 8<&- 9>&- & wb=$!
    wait "$wa" || rc=1
    wait "$wb" || rc=1
    ((rc == 0)) || die "warming the daemons failed (domcapabilities)"
    stage "warm (domcapabilities --virttype qemu)" "$t"
  fi
  unlock_lab
  stage "up total" "$t0"
}

# ---------------------------------------------------------------------------------------------
# down / sweep

# Is PID part of this lab? (in one of its network namespaces, or running with its directory)
belongs_to_lab() {
  local pid=$1 h ino
  ino=$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null) || return 1
  for h in a b; do
    [[ -e "/run/netns/$(ns_of "$h")" ]] || continue
    [[ "$ino" == "$(stat -L -c %i "/run/netns/$(ns_of "$h")" 2>/dev/null)" ]] && return 0
  done
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$LAB_DIR/"
}

cmd_down() {
  need_root
  LAB_DIR=$(resolve_dir "$1")
  if [[ ! -f "$LAB_DIR/lab.env" ]]; then
    say "down: $LAB_DIR is not a lab (no lab.env): nothing to do"
    return 0
  fi
  load_lab "$LAB_DIR"
  lock_lab
  local t0 t h d pid f base
  t0=$(usec)
  say "down $LAB_DIR"

  # 1. guests first: stopping libvirtd leaves its QEMU processes running
  t=$(usec)
  for h in a b; do
    daemon_pid "$h" >/dev/null && [[ -S "$(sock_of "$h")" ]] || continue
    for d in $(VIRSH_TIMEOUT=15 virsh_h "$h" list --name 2>/dev/null || true); do
      f=$(host_base "$h")/run/qemu/$d.pid
      [[ -f "$f" ]] && cp -f "$f" "$LAB_DIR/pids/qemu-$h-$d.pid" 2>/dev/null || true
      say "host $h: virsh destroy $d"
      VIRSH_TIMEOUT=30 virsh_h "$h" destroy "$d" >/dev/null 2>&1 || say "host $h: destroy $d failed"
    done
  done
  # QEMU processes whose daemon is gone (or whose destroy failed): libvirt's pid files
  # (domain pid files only: NAME.pid next to libvirt's status file NAME.xml; driver.pid is
  # libvirtd's own)
  for f in "$LAB_DIR"/hosts/*/run/qemu/*.pid; do
    [[ -f "$f" && -f "${f%.pid}.xml" && "$(basename "$f")" != driver.pid ]] || continue
    pid=$(tr -dc 0-9 <"$f")
    [[ -n "$pid" ]] || continue
    h=$(basename "$(dirname "$(dirname "$(dirname "$f")")")")
    cp -f "$f" "$LAB_DIR/pids/qemu-$h-$(basename "$f")" 2>/dev/null || true
    if kill -0 "$pid" 2>/dev/null && belongs_to_lab "$pid"; then
      kill_wait "$pid" "qemu $(basename "$f" .pid) on host $h" 10
    fi
  done
  stage "guests" "$t"

  # 2. daemons, by recorded pid
  t=$(usec)
  for h in a b; do
    if pid=$(daemon_pid "$h"); then kill_wait "$pid" "libvirtd $h" 15; fi
  done
  stage "libvirtd" "$t"

  # 3. anything else still inside the lab's namespaces (e.g. started with lab.sh exec), then the
  #    holders (their mount namespaces go with them), then the network namespaces
  t=$(usec)
  local hp
  for h in a b; do
    ns_exists "$(ns_of "$h")" || continue
    hp=$(holder_pid "$h" || true)
    for pid in $(ip netns pids "$(ns_of "$h")" 2>/dev/null || true); do
      [[ "$pid" == "$hp" ]] && continue
      kill_wait "$pid" "process left in host $h: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)" 5
    done
  done
  for h in a b; do
    if pid=$(holder_pid "$h"); then kill_wait "$pid" "holder $h" 5; fi
  done
  for h in a b; do
    if ns_exists "$(ns_of "$h")"; then
      ip netns del "$(ns_of "$h")" && say "deleted network namespace $(ns_of "$h")"
    fi
  done
  stage "holders + namespaces" "$t"

  t=$(usec)
  lock_mountpoints
  remove_unused_mountpoints
  unlock_mountpoints
  stage "mountpoint dirs" "$t"

  rm -f "$LAB_DIR"/hosts/*/holder.ready
  echo down >"$LAB_DIR/state"
  unlock_lab
  stage "down total" "$t0"
}

# Tear down a lab namespace whose lab dir is gone: everything in it, then the namespace.
sweep_orphan_ns() { # NS
  local ns=$1 pid pids
  say "sweep: orphan namespace $ns (its lab dir is gone)"
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  # QEMU first (stopping libvirtd leaves QEMU running), then the rest
  for pid in $pids; do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '^/usr/bin/qemu-system' &&
      kill_wait "$pid" "qemu in $ns" 10
  done
  for pid in $pids; do kill_wait "$pid" "process in $ns: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-60)" 10; done
  ip netns del "$ns" && say "sweep: deleted namespace $ns"
}

cmd_sweep() {
  need_root
  local remove=0
  if [[ "${1:-}" == --remove ]]; then remove=1; shift; fi
  local parent=${1:-${TMPDIR:-/tmp}} env d ns id alias age n=0 m=0
  say "sweep: lab dirs under $parent, lab namespaces"
  if [[ -d "$parent" ]]; then
    for env in "$parent"/*/lab.env; do
      [[ -f "$env" ]] || continue
      d=$(dirname "$env")
      owner_alive "$d" && continue
      id=$(sed -n 's/^LAB_ID=//p' "$env")
      if [[ "$(cat "$d/state" 2>/dev/null)" != down ]] || ns_exists "$id-a" || ns_exists "$id-b"; then
        say "sweep: $d (lab $id): owner gone: down"
        (unset LAB_ID; "$SELF" down "$d") || say "sweep: down $d failed"
        n=$((n + 1))
      fi
      if ((remove)) && [[ -f "$d/.sweep-remove" && "$(cat "$d/state" 2>/dev/null)" == down ]]; then
        rm -rf "$d" && say "sweep: removed lab dir $d"
      fi
    done
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    [[ "$ns" =~ $NS_RE ]] || continue
    ns_exists "$ns" || continue # gone meanwhile (its pair's down)
    id=${ns%-*}
    alias=$(ip -n "$ns" -d link show dev lo 2>/dev/null | sed -n 's/^ *alias lmlab://p' | head -1)
    if [[ -n "$alias" && -f "$alias/lab.env" ]] && grep -qx "LAB_ID=$id" "$alias/lab.env"; then
      owner_alive "$alias" && continue
      say "sweep: namespace $ns belongs to $alias whose owner is gone: down"
      (unset LAB_ID; "$SELF" down "$alias") || say "sweep: down $alias failed"
    else
      if [[ -z "$alias" ]]; then
        age=$(($(date +%s) - $(stat -c %Y "/run/netns/$ns" 2>/dev/null || date +%s)))
        ((age >= 60)) || continue # being created right now by an up
      fi
      sweep_orphan_ns "$ns"
      m=$((m + 1))
      continue
    fi
    n=$((n + 1))
  done
  lock_mountpoints
  remove_unused_mountpoints
  unlock_mountpoints
  say "sweep: done ($n lab(s) torn down, $m orphan namespace(s) removed)"
}

# ---------------------------------------------------------------------------------------------
# status / uri / exec

cmd_status() {
  load_lab "$1"
  local h pid ns
  echo "lab $LAB_ID at $LAB_DIR (state: $(cat "$LAB_DIR/state" 2>/dev/null || echo '?'); owner pid $(cut -d' ' -f1 "$LAB_DIR/owner.pid" 2>/dev/null)$(owner_alive "$LAB_DIR" && echo ' alive' || echo ' gone'))"
  for h in a b; do
    ns=$(ns_of "$h")
    echo "host $h: ip $(ip_of "$h"), netns $ns $(ns_exists "$ns" && echo present || echo absent), br-guest $([[ "$(eval echo "\$BRIDGE_$h")" == 1 ]] && echo yes || echo no)"
    if pid=$(holder_pid "$h"); then echo "  holder   pid $pid (hostname $(nsenter -t "$pid" -u hostname 2>/dev/null))"; else echo "  holder   not running"; fi
    if pid=$(daemon_pid "$h"); then
      echo "  libvirtd pid $pid, $(uri_of "$h")"
      VIRSH_TIMEOUT=10 virsh_h "$h" list --all 2>/dev/null | sed 's/^/  domain  /' || echo "  (virsh list failed)"
    else
      echo "  libvirtd not running"
    fi
  done
}

cmd_exec() {
  local dir=${1:-} h=${2:-}
  shift 2 || die "usage: lab.sh exec DIR a|b -- CMD..."
  [[ "${1:-}" == -- ]] && shift
  (($#)) || die "usage: lab.sh exec DIR a|b -- CMD..."
  load_lab "$dir"; check_host "$h"
  local hp
  hp=$(holder_pid "$h") || die "host $h is not up"
  exec nsenter -t "$hp" -n -m -u --wd="$PWD" -- "$@"
}

# ---------------------------------------------------------------------------------------------
# guest

guest_elf() { echo "$LAB_DIR/guest/labguest.elf"; }

cmd_guest_build() {
  LAB_DIR=$(CREATE=1 resolve_dir "$1")
  local out src=$HERE/guest t
  t=$(usec)
  out=$(guest_elf)
  mkdir -p "$LAB_DIR/guest"
  if [[ -f "$out" && "$out" -nt "$src/guest.S" && "$out" -nt "$src/guest.ld" ]]; then
    say "guest: $out is up to date"
    return 0
  fi
  as --32 -o "$LAB_DIR/guest/labguest.o" "$src/guest.S"
  ld -m elf_i386 --no-warn-rwx-segments -T "$src/guest.ld" -o "$out.tmp" "$LAB_DIR/guest/labguest.o"
  mv -f "$out.tmp" "$out"
  stage "guest: built $out ($(stat -c %s "$out") bytes)" "$t"
}

serial_log() { echo "$LAB_DIR/instances/$1/console.log"; }

cmd_guest_xml() {
  local dir=${1:-} name=${2:-}
  shift 2 || die "usage: lab.sh guest-xml DIR NAME [--memory-mib N] [--uuid UUID] [--mac MAC] [--bridge BR] [--disk FILE]"
  local mem=64 uuid="" mac="" bridge=br-guest disk="" disk_xml=""
  while (($#)); do
    case "$1" in
      --memory-mib) mem=$2; shift 2 ;;
      --uuid) uuid=$2; shift 2 ;;
      --mac) mac=$2; shift 2 ;;
      --bridge) bridge=$2; shift 2 ;;
      --disk) disk=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  LAB_DIR=$(resolve_dir "$dir")
  [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "bad guest name '$name'"
  [[ "$mem" =~ ^[0-9]+$ ]] && ((mem >= 24)) || die "--memory-mib must be a number >= 24"
  if [[ -z "$mac" ]]; then
    local hx
    hx=$(printf '%s' "$LAB_DIR/$name" | md5sum | cut -c1-6)
    mac=52:54:00:${hx:0:2}:${hx:2:2}:${hx:4:2}
  fi
  mkdir -p "$LAB_DIR/instances/$name"
  if [[ -n "$disk" ]]; then
    [[ "$disk" =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "--disk must be a plain absolute path: $disk"
    disk_xml="    <disk type='file' device='disk'>
      <driver name='qemu' type='$([[ "$disk" == *.qcow2 ]] && echo qcow2 || echo raw)'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>"
  fi
  cat <<EOF
<domain type='qemu'>
  <name>$name</name>
$([[ -n "$uuid" ]] && echo "  <uuid>$uuid</uuid>")
  <memory unit='MiB'>$mem</memory>
  <currentMemory unit='MiB'>$mem</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$(guest_elf)</kernel>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
$disk_xml
    <serial type='file'>
      <source path='$(serial_log "$name")' append='on'/>
      <target port='0'/>
    </serial>
    <interface type='bridge'>
      <source bridge='$bridge'/>
      <mac address='$mac'/>
      <model type='e1000'/>
    </interface>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

cmd_guest_start() {
  local dir=${1:-} h=${2:-} name=${3:-}
  shift 3 || die "usage: lab.sh guest-start DIR a|b NAME [--memory-mib N] [--uuid UUID]"
  load_lab "$dir"; check_host "$h"
  daemon_pid "$h" >/dev/null || die "host $h: libvirtd is not running"
  local o
  o=$(other "$h")
  if daemon_pid "$o" >/dev/null && [[ "$(VIRSH_TIMEOUT=10 virsh_h "$o" domstate "$name" 2>/dev/null)" == running ]]; then
    die "$name is running on host $o"
  fi
  [[ -f "$(guest_elf)" ]] || cmd_guest_build "$LAB_DIR"
  local t xml state
  t=$(usec)
  if ! virsh_h "$h" dominfo "$name" >/dev/null 2>&1; then
    xml=$LAB_DIR/instances/$name/domain.xml
    mkdir -p "$LAB_DIR/instances/$name"
    cmd_guest_xml "$LAB_DIR" "$name" "$@" >"$xml"
    virsh_h "$h" define "$xml" >/dev/null
  fi
  state=$(virsh_h "$h" domstate "$name")
  [[ "$state" == running ]] || virsh_h "$h" start "$name" >/dev/null
  stage "guest $name started on host $h" "$t"
  virsh_h "$h" domuuid "$name"
}

cmd_where() {
  load_lab "$1"
  local name=$2 h
  for h in a b; do
    daemon_pid "$h" >/dev/null || continue
    [[ "$(VIRSH_TIMEOUT=10 virsh_h "$h" domstate "$name" 2>/dev/null)" == running ]] && echo "$h"
  done
  return 0
}

cmd_heartbeat() {
  LAB_DIR=$(resolve_dir "$1")
  local log
  log=$(serial_log "$2")
  [[ -f "$log" ]] || die "no serial log $log"
  tr -d '\r' <"$log" | awk '
    /^LABGUEST BOOT/ { boots++ }
    /^LABGUEST CORRUPT/ { corrupt++ }
    /^LABGUEST HB [0-9]+$/ { n = $3 + 0; if (beats > 0 && n != last + 1) gaps++; last = n; beats++ }
    END { printf "boots=%d last=%d beats=%d gaps=%d corrupt=%d\n", boots, last, beats, gaps, corrupt }'
}

# ---------------------------------------------------------------------------------------------

main() {
  local cmd=${1:-}
  shift || true
  case "$cmd" in
    -h | --help | help) usage ;;
    up) cmd_up "$@" ;;
    down) [[ $# == 1 ]] || die "usage: lab.sh down DIR"; cmd_down "$1" ;;
    sweep) cmd_sweep "$@" ;;
    status) [[ $# == 1 ]] || die "usage: lab.sh status DIR"; cmd_status "$1" ;;
    uri) [[ $# == 2 ]] || die "usage: lab.sh uri DIR a|b"; load_lab "$1"; check_host "$2"; uri_of "$2" ;;
    peer-uri) [[ $# == 2 ]] || die "usage: lab.sh peer-uri DIR a|b"; load_lab "$1"; check_host "$2"; peer_uri_of "$2" ;;
    ip) [[ $# == 2 ]] || die "usage: lab.sh ip DIR a|b"; load_lab "$1"; check_host "$2"; ip_of "$2" ;;
    exec) cmd_exec "$@" ;;
    guest-build) [[ $# == 1 ]] || die "usage: lab.sh guest-build DIR"; cmd_guest_build "$1" ;;
    guest-xml) cmd_guest_xml "$@" ;;
    guest-start) cmd_guest_start "$@" ;;
    where) [[ $# == 2 ]] || die "usage: lab.sh where DIR NAME"; cmd_where "$1" "$2" ;;
    heartbeat) [[ $# == 2 ]] || die "usage: lab.sh heartbeat DIR NAME"; cmd_heartbeat "$1" "$2" ;;
    "") usage >&2; exit 2 ;;
    *) say "unknown command '$cmd'"; usage >&2; exit 2 ;;
  esac
}

main "$@"
