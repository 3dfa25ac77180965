#!/usr/bin/env bash
# The Xen lab: two nested Xen 4.17 hosts (QEMU TCG, PV dom0, libvirt's libxl driver), each
# running the product's compute agent as production does. Used by testing/xen_lab.cc, the Xen
# stage of deploy/run-tests.sh, deploy/quickstart.sh --xen and bench/. Root only.
#
#   xenlab.sh image --agent BIN            build (or find) the cached dom0 image; prints its dir
#   xenlab.sh up DIR --image IMG --agent BIN --pki PKI [--xen-b noshadow] [--cpu CPU] [--volumes]
#                                          boot hosts xena and xenb; DIR is the lab's (new) dir.
#                                          --volumes: shared volumes too -- an iSCSI target on
#                                          127.0.0.1 (tgtd) whose LUN both dom0s reach at
#                                          10.0.2.101:3260, and DRBD resource r0 (/dev/drbd0 on
#                                          each dom0's second disk, over the link, two primaries
#                                          allowed); the agents' volumes file /mnt/lab/volumes.conf
#   xenlab.sh down DIR                     stop the lab's QEMUs by their recorded pids
#   xenlab.sh sweep [PARENT]               down every lab under PARENT (/tmp) whose owner died
#   xenlab.sh status DIR                   what runs, ports, addresses
#   xenlab.sh ssh DIR a|b CMD...           run a command in a dom0
#   xenlab.sh virsh DIR a|b ARGS...        virsh -c xen:///system in a dom0
#   xenlab.sh agent-start DIR a|b [FLAGS]  start the compute agent in a dom0 (production's
#                                          command line: --config /etc/livemig/compute-agent.conf)
#   xenlab.sh agent-kill DIR a|b [SIGNAL]  signal the agent (default KILL); waits until it is gone
#   xenlab.sh guest-start DIR a|b NAME UUID pv|pvh [--disk DEV]   define and start a guest; waits
#                                          for its ticks. --disk: DEV (a dom0 block device) is its
#                                          xvda, to which it writes a counter record every 200 ms,
#                                          synchronously ("disk <n> <ms> ok" on its console)
#   xenlab.sh disk-record DIR a|b DEV      the guest's last record on DEV, read in that dom0
#                                          with O_DIRECT: "LMDISK <n> <boot id>"
#   xenlab.sh heartbeat DIR NAME [SINCE]   boots=N last=COUNTER gaps=G max_pause_ms=P ticks=T
#                                          (P: the longest gap between ticks after tick SINCE)
#   xenlab.sh where DIR NAME               the hosts (a b) whose hypervisor runs NAME
#   xenlab.sh env DIR                      the lab's variables (ports, names, addresses)
#
# Environment: LAB_OWNER_PID (the process that owns the lab; default: the caller's parent),
# XENLAB_READY_TIMEOUT (s, default 420), XENLAB_MEM (MiB per host, default 1536), XENLAB_NICE (the
# emulated hosts' niceness, default 5: a lab started by hand yields to the rest of the machine;
# the test command's Xen stage sets 0, as its tests are the longest path of the run).
# Traffic: only 127.0.0.1 of this machine (forwarded ports, the hosts' link socket) and the
# link between the two QEMUs, which exists only inside them.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "xenlab: $*" >&2; exit 1; }
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN{printf "%.1f", a-b}'; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
host_name() { case $1 in a) echo xena ;; b) echo xenb ;; *) die "host must be a or b, not '$1'" ;; esac; }
load() { # load DIR: the lab's variables
  [[ -f $1/lab.env ]] || die "$1 is not a Xen lab (no lab.env)"
  # shellcheck disable=SC1091
  . "$1/lab.env"
}
sshh() { # sshh DIR a|b CMD
  local dir=$1 h=$2; shift 2; load "$dir"
  local port; [[ $h == a ]] && port=$SSH_A || port=$SSH_B
  timeout "${XENLAB_SSH_TIMEOUT:-120}" ssh -q -i "$dir/ssh/id_ed25519" -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 -o BatchMode=yes -p "$port" \
    root@127.0.0.1 "$@"
}

cmd_image() {
  local agent=""
  while (($#)); do case $1 in --agent) agent=$2; shift 2 ;; *) die "image: unknown '$1'" ;; esac; done
  bash "$here/build-image.sh" --agent "$agent"
}

cmd_up() {
  local dir=$1; shift
  # qemu64 (as Xen's CI; -cpu max crashes dom0 user space), +svm +npt: PVH guests on HAP;
  # +aes +pclmulqdq +ssse3 +sse4.x: TLS (the tunnelled stream, xen+tls://) with AES-NI, about 5x
  # faster here; OpenSSL uses SSSE3 with AES-NI and dies on an invalid opcode without it.
  local image="" agent="" pki="" xen_b="" volumes=0 cpu=${XENLAB_CPU:-qemu64,+svm,+npt,+aes,+pclmulqdq,+ssse3,+sse4.1,+sse4.2}
  while (($#)); do
    case $1 in
      --image) image=$2; shift 2 ;; --agent) agent=$2; shift 2 ;; --pki) pki=$2; shift 2 ;;
      --xen-b) xen_b=$2; shift 2 ;; --cpu) cpu=$2; shift 2 ;; --volumes) volumes=1; shift ;;
      *) die "up: unknown argument '$1'" ;;
    esac
  done
  [[ $(id -u) == 0 ]] || die "the Xen lab needs root"
  [[ -f $image/.complete ]] || die "up: --image must name a built image (xenlab.sh image)"
  [[ -x $agent ]] || die "up: --agent must name the compute_agent binary"
  [[ -f $pki/ca.pem && -f $pki/ca.key ]] || die "up: --pki must hold a CA (deploy/pki.sh init)"
  local t; for t in qemu-system-x86_64 qemu-img socat ssh ssh-keygen cpio $( ((volumes)) && echo tgtd tgtadm); do
    command -v $t >/dev/null || die "'$t' is missing: run deploy/install-deps.sh"
  done
  mkdir -p "$dir"/{run,ssh,share/logs,share/instances,share/pki,share/ssh,share/bin} || die "cannot create $dir"
  dir=$(cd "$dir" && pwd)
  echo "${LAB_OWNER_PID:-$PPID}" >"$dir/owner"
  local t0; t0=$(now)
  # ports on 127.0.0.1 and the link's addresses, chosen per lab so two labs can coexist
  local link_port; link_port=$(free_port)
  local subnet=$((link_port % 200 + 20))
  cat >"$dir/lab.env" <<ENV
DIR=$dir
IMAGE=$image
SSH_A=$(free_port)
SSH_B=$(free_port)
AGENT_A=$(free_port)
AGENT_B=$(free_port)
REGISTRY=$(free_port)
LINK_PORT=$link_port
LINK_A=10.250.$subnet.1
LINK_B=10.250.$subnet.2
NAME_A=xena
NAME_B=xenb
SCHEDULER_IN_LAB=10.0.2.100:8771
VOLUMES=$volumes
ISCSI_PORT=$( ((volumes)) && free_port || echo 0)
ISCSI_CTL=$(( (link_port % 10000) + 20000 ))  # tgtd takes at most 32767
ISCSI_IN_LAB=10.0.2.101:3260
ISCSI_IQN=iqn.2026-12.lab.livemig:lab$subnet
DRBD_PORT=7789
ENV
  load "$dir"
  local s=$dir/share
  cp "$here/guest/dom0-init" "$s/dom0-init"
  cp "$agent" "$s/bin/compute_agent"
  printf '%s xena\n%s xenb\n' "$LINK_A" "$LINK_B" >"$s/hosts"
  for n in xena xenb; do
    bash "$here/../../deploy/pki.sh" issue "$pki" "$n" >/dev/null || die "pki.sh issue $n failed"
    cp "$pki/$n.pem" "$pki/$n.key" "$s/pki/"
    cat /proc/sys/kernel/random/uuid >"$s/uuid-$n"
  done
  cp "$pki/ca.pem" "$s/pki/"
  [[ -f $dir/ssh/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/id_ed25519"
  cp "$dir/ssh/id_ed25519.pub" "$s/ssh/authorized_keys"
  render_agent_conf a >"$s/agent-xena.conf" || die "rendering the agent's configuration failed"
  render_agent_conf b >"$s/agent-xenb.conf" || die "rendering the agent's configuration failed"
  ((VOLUMES)) && { volumes_prepare "$dir" || die "preparing the shared volumes failed"; }
  local h
  for h in a b; do start_qemu "$dir" "$h" "$cpu" "$([[ $h == b ]] && echo "$xen_b")" || die "QEMU for host $h did not start"; done
  wait_ready "$dir" "$t0"
  ((VOLUMES)) && { volumes_ready "$dir" || die "the shared volumes are not ready"; }
  return 0
}

# --- shared volumes (--volumes) --------------------------------------------------------------
volumes_prepare() { # the target on this machine, DRBD's config and disks, the agents' volumes file
  local dir=$1 s=$1/share
  truncate -s 64M "$dir/run/iscsi-lun.img" && truncate -s 80M "$dir/run/drbd-a.img" "$dir/run/drbd-b.img" || return 1
  # tgtd on 127.0.0.1 only, its own control port (never the system's tgtd), pid recorded
  tgtd -C "$ISCSI_CTL" -p "$dir/run/tgtd.pid" --iscsi "portal=127.0.0.1:$ISCSI_PORT" || return 1
  local i; for i in $(seq 1 50); do tgtadm -C "$ISCSI_CTL" --mode target --op show >/dev/null 2>&1 && break; sleep 0.1; done
  tgtadm -C "$ISCSI_CTL" --lld iscsi --op new --mode target --tid 1 -T "$ISCSI_IQN" &&
    tgtadm -C "$ISCSI_CTL" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$dir/run/iscsi-lun.img" &&
    tgtadm -C "$ISCSI_CTL" --lld iscsi --op update --mode logicalunit --tid 1 --lun 1 \
      --params "scsi_id=livemig-lab-lun1,scsi_sn=LM$ISCSI_PORT" &&
    tgtadm -C "$ISCSI_CTL" --lld iscsi --op bind --mode target --tid 1 -I ALL || return 1
  echo "xenlab: iSCSI target $ISCSI_IQN LUN 1 (64 MiB) on 127.0.0.1:$ISCSI_PORT, tgtd pid $(cat "$dir/run/tgtd.pid"); the dom0s reach it at $ISCSI_IN_LAB"
  cat >"$s/drbd-r0.res" <<RES
resource r0 {
  net {
    protocol C;
    allow-two-primaries yes;
  }
  device    /dev/drbd0;
  disk      /dev/vdb;
  meta-disk internal;
  on xena { address $LINK_A:$DRBD_PORT; }
  on xenb { address $LINK_B:$DRBD_PORT; }
}
RES
  cat >"$s/volumes.conf" <<VOL
# the Xen lab's shared volumes (xenlab.sh up --volumes)
lab-lun iscsi portal=$ISCSI_IN_LAB target=$ISCSI_IQN lun=1
r0      drbd  resource=r0 device=/dev/drbd0
VOL
}

volumes_ready() { # DRBD r0 connected, both sides up to date (fresh zeroed disks: no initial sync)
  local dir=$1 h deadline=$((SECONDS + 120))
  for h in a b; do
    until [[ $(sshh "$dir" "$h" "drbdadm cstate r0" 2>/dev/null) == Connected ]]; do
      ((SECONDS > deadline)) && { sshh "$dir" "$h" "cat /proc/drbd; tail -5 /mnt/lab/logs/dom0-$(host_name "$h").log" >&2; echo "xenlab: DRBD r0 on $h did not connect" >&2; return 1; }
      sleep 1
    done
  done
  # both disks are fresh and zeroed: declared in sync without copying them; where DRBD refuses
  # that, host a's copy is made the source of an initial sync (80 MiB over the link, ~30 s)
  if ! sshh "$dir" a "drbdadm -- --clear-bitmap new-current-uuid r0"; then
    echo "xenlab: DRBD r0: --clear-bitmap refused; initial sync from xena" >&2
    sshh "$dir" a "drbdadm primary --force r0 && drbdadm secondary r0" || return 1
  fi
  until [[ $(sshh "$dir" b "drbdadm dstate r0" 2>/dev/null) == UpToDate/UpToDate ]]; do
    ((SECONDS > deadline)) && { echo "xenlab: DRBD r0 not UpToDate/UpToDate: $(sshh "$dir" b "drbdadm dstate r0")" >&2; return 1; }
    sleep 1
  done
  echo "xenlab: DRBD r0 Connected, UpToDate/UpToDate on both hosts (allow-two-primaries)"
}

render_agent_conf() { # the deploy/config example, with this lab's names and addresses
  local h=$1 name port
  name=$(host_name "$h"); [[ $h == a ]] && port=$AGENT_A || port=$AGENT_B
  local ex=$here/../../deploy/config/compute-agent-xen.conf.example
  local out; out=$(sed -e "s/hv-a\.example\.net:8772/127.0.0.1:$port/" \
    -e "s/hv-a\.example\.net/$name/g" -e "s/sched\.example\.net:8771/$SCHEDULER_IN_LAB/" \
    -e 's/^reserved-mib = .*/reserved-mib = 256/' -e 's/^report-interval = .*/report-interval = 2/' \
    "$ex")
  # the example must still have the lines the lab changes
  grep -q "^advertise-address = \"127.0.0.1:$port\"" <<<"$out" &&
    grep -q "^migration-uri = \"xen+tls://$name/system\"" <<<"$out" &&
    grep -q "^scheduler = \"$SCHEDULER_IN_LAB\"" <<<"$out" &&
    grep -q '^reserved-mib = 256' <<<"$out" || { echo "xenlab: $ex changed shape" >&2; return 1; }
  echo "$out"
}

start_qemu() { # start_qemu DIR a|b CPU [noshadow]
  local dir=$1 h=$2 cpu=$3 xen=$IMAGE/boot/xen n ip mac_n link ssh agent
  [[ ${4:-} == noshadow ]] && xen=$IMAGE/boot/xen-noshadow
  if [[ $h == a ]]; then n=1 ip=$LINK_A/24 link="listen=127.0.0.1:$LINK_PORT" ssh=$SSH_A agent=$AGENT_A
  else n=2 ip=$LINK_B/24 link="connect=127.0.0.1:$LINK_PORT" ssh=$SSH_B agent=$AGENT_B; fi
  local name; name=$(host_name "$h")
  qemu-img create -q -f qcow2 -F qcow2 -b "$IMAGE/base.qcow2" "$dir/run/host-$h.qcow2" || return 1
  now >"$dir/run/start-$h.time"
  nice -n "${XENLAB_NICE:-5}" qemu-system-x86_64 -machine pc -accel tcg -cpu "$cpu" -smp 1 -m "${XENLAB_MEM:-1536}" \
    -name "livemig-xenlab-$h,process=livemig-xenlab" -display none -no-reboot \
    -serial file:"$dir/run/serial-$h.log" \
    -kernel "$xen" \
    -append "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=640M,max:640M dom0_max_vcpus=1 bootscrub=false noreboot smap=0 smep=0" \
    -initrd "$IMAGE/boot/vmlinuz root=/dev/vda rw console=hvc0 earlyprintk=xen init=/sbin/xenlab-init net.ifnames=0 xenlab.host=$name xenlab.ip=$ip,$IMAGE/boot/initrd.img" \
    -drive file="$dir/run/host-$h.qcow2",if=virtio,format=qcow2,cache=unsafe \
    -virtfs local,path="$dir/share",mount_tag=lab,security_model=passthrough,id=lab \
    $( ((VOLUMES)) && echo "-drive file=$dir/run/drbd-$h.img,if=virtio,format=raw,cache=unsafe") \
    -netdev "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:$ssh-:22,hostfwd=tcp:127.0.0.1:$agent-:8772,guestfwd=tcp:${SCHEDULER_IN_LAB}-cmd:socat - TCP:127.0.0.1:$REGISTRY$( ((VOLUMES)) && echo ",guestfwd=tcp:${ISCSI_IN_LAB}-cmd:socat - TCP:127.0.0.1:$ISCSI_PORT")" \
    -device virtio-net-pci,netdev=mgmt,mac=52:54:00:00:01:0$n \
    -netdev socket,id=link,$link \
    -device virtio-net-pci,netdev=link,mac=52:54:00:77:00:0$n \
    -pidfile "$dir/run/qemu-$h.pid" -daemonize || return 1
  echo "xenlab: host $h ($name): QEMU pid $(cat "$dir/run/qemu-$h.pid"), Xen $(basename "$xen"), ssh 127.0.0.1:$ssh, agent 127.0.0.1:$agent, link $ip"
  # host b connects to a's link socket: give a's listener a moment to exist (checked, not slept)
  if [[ $h == a ]]; then
    for _ in $(seq 1 100); do ss -ltn "sport = :$LINK_PORT" | grep -q LISTEN && break; sleep 0.1; done
  fi
}

wait_ready() { # until both dom0s wrote READY on the share and answer ssh
  local dir=$1 t0=$2 deadline=$((SECONDS + ${XENLAB_READY_TIMEOUT:-420})) h shown=0
  for h in a b; do
    local name; name=$(host_name "$h")
    while [[ ! -f $dir/share/run-ready-$name ]]; do
      qemu_alive "$dir" "$h" || { tail -30 "$dir/run/serial-$h.log" >&2; die "host $h: QEMU exited during boot (serial log above: $dir/run/serial-$h.log)"; }
      grep -q XENLAB-FATAL "$dir/run/serial-$h.log" 2>/dev/null && { tail -30 "$dir/run/serial-$h.log" >&2; die "host $h failed to boot (above)"; }
      if ((SECONDS > deadline)); then
        tail -20 "$dir/run/serial-$h.log" >&2; tail -20 "$dir/share/logs/dom0-$name.log" >&2 2>/dev/null
        die "host $h not ready after ${XENLAB_READY_TIMEOUT:-420} s (logs above)"
      fi
      if ((SECONDS - shown >= 30)); then shown=$SECONDS; echo "xenlab: waiting for $name ($(since "$t0") s)"; fi
      sleep 1
    done
    until sshh "$dir" "$h" true 2>/dev/null; do
      ((SECONDS > deadline)) && die "host $h: ssh does not answer"
      sleep 1
    done
    echo "xenlab: host $h ($name) ready after $(since "$t0") s"
  done
}

qemu_alive() { # the recorded pid is alive and is this lab's QEMU (never a reused pid)
  local pid; pid=$(cat "$1/run/qemu-$2.pid" 2>/dev/null) || return 1
  [[ -n $pid ]] && { tr "\0" " " <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$1/run/host-$2.qcow2"
}

cmd_down() {
  local dir=$1 h pid
  [[ -d $dir ]] || return 0
  for h in a b; do
    if qemu_alive "$dir" "$h"; then
      pid=$(cat "$dir/run/qemu-$h.pid")
      kill "$pid" 2>/dev/null
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null
      echo "xenlab: stopped host $h (QEMU pid $pid)"
    fi
  done
  local tpid; tpid=$(cat "$dir/run/tgtd.pid" 2>/dev/null)
  if [[ -n $tpid ]] && tr "\0" " " <"/proc/$tpid/cmdline" 2>/dev/null | grep -qF -- "$dir/run/tgtd.pid"; then
    # tgtd ignores SIGTERM: asked to exit through its own control port, killed if it does not
    . "$dir/lab.env"
    tgtadm -C "$ISCSI_CTL" --mode system --op delete >/dev/null 2>&1 ||
      tgtadm -C "$ISCSI_CTL" --mode system --op delete --force >/dev/null 2>&1
    kill "$tpid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$tpid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$tpid" 2>/dev/null
    echo "xenlab: stopped the iSCSI target (tgtd pid $tpid)"
  fi
  rm -f "$dir"/run/host-*.qcow2 "$dir"/run/*.img
}

cmd_sweep() {
  local parent=${1:-/tmp} d owner
  for d in "$parent"/livemig-xenlab-* "$parent"/livemig-xenqs*; do
    [[ -f $d/owner ]] || continue  # (a lab killed before `up` wrote lab.env has its owner)
    owner=$(cat "$d/owner" 2>/dev/null)
    if [[ -n $owner ]] && kill -0 "$owner" 2>/dev/null; then continue; fi
    echo "xenlab: sweeping $d (owner ${owner:-?} is gone)"
    cmd_down "$d"
    [[ -f $d/.sweep-remove ]] && rm -rf "$d"
  done
  return 0
}

cmd_status() {
  local dir=$1 h; load "$dir"
  for h in a b; do
    if qemu_alive "$dir" "$h"; then echo "host $h ($(host_name $h)): running, QEMU pid $(cat "$dir/run/qemu-$h.pid")"
    else echo "host $h ($(host_name $h)): not running"; fi
  done
  cat "$dir/lab.env"
}

cmd_agent_start() {
  local dir=$1 h=$2; shift 2; local name; name=$(host_name "$h")
  local flags=""; (($#)) && flags=$(printf '%q ' "$@")  # each flag one word in dom0's shell too
  sshh "$dir" "$h" "test -e /run/agent.pid && kill -0 \$(cat /run/agent.pid) 2>/dev/null && { echo 'xenlab: an agent already runs on $name' >&2; exit 1; }
    mkdir -p /run/livemig && xl info >/run/livemig/xl-info  # as the unit's ExecStartPre
    setsid /mnt/lab/bin/compute_agent --config /etc/livemig/compute-agent.conf $flags \
      >>/mnt/lab/logs/agent-$name.log 2>&1 </dev/null & echo \$! >/run/agent.pid; cat /run/agent.pid"
}

cmd_agent_kill() {
  local dir=$1 h=$2 sig=${3:-KILL}
  # After TERM the agent lets the steps in progress finish, up to 20 s (compute_agent_main.cc's
  # Shutdown deadline); under emulation, give it three times that before saying it did not end.
  local tries=100
  [[ $sig == TERM ]] && tries=600
  sshh "$dir" "$h" "p=\$(cat /run/agent.pid 2>/dev/null) || exit 0; kill -$sig \$p 2>/dev/null
    for i in \$(seq 1 $tries); do kill -0 \$p 2>/dev/null || { rm -f /run/agent.pid; exit 0; }; sleep 0.1; done
    echo 'xenlab: the agent (pid '\$p') did not end within $((tries / 10)) s of SIG$sig' >&2; exit 1"
}

cmd_guest_start() {
  local dir=$1 h=$2 name=$3 uuid=$4 kind=$5 disk=""; load "$dir"
  [[ ${6:-} == --disk ]] && disk=${7:?guest-start: --disk needs a dom0 device}
  local d=$dir/share/instances/$uuid mib machine ostype
  case $kind in
    pv) mib=96 machine=xenpv ostype=linux ;;
    pvh) mib=96 machine=xenpvh ostype=xenpvh ;;
    *) die "guest kind must be pv or pvh, not '$kind'" ;;
  esac
  mkdir -p "$d"
  cp "$IMAGE/guest/vmlinuz" "$d/vmlinuz"
  local g; g=$(mktemp -d)
  mkdir -p "$g"/{bin,proc,sys,dev,tmp}
  cp "$IMAGE/guest/busybox" "$g/bin/busybox"
  install -m 0755 "$here/guest/domU-init" "$g/init"
  if [[ -n $disk ]]; then  # its block front end (a module in Debian's kernel) and the writer's trigger
    mkdir -p "$g/lib" && cp "$IMAGE/guest/xen-blkfront.ko" "$g/lib/" && touch "$g/disk-writer"
  fi
  (cd "$g" && find . | cpio -o -H newc --quiet | gzip -1) >"$d/initrd.gz"
  rm -rf "$g"
  local mac; mac=$(printf '00:16:3e:%02x:%02x:%02x' $((0x${uuid:0:2})) $((0x${uuid:2:2})) $((0x${uuid:4:2})))
  sed -e "s/@NAME@/$name/g" -e "s/@UUID@/$uuid/g" -e "s/@MIB@/$mib/g" -e "s/@MACHINE@/$machine/" \
    -e "s/@OSTYPE@/$ostype/" -e "s/@MAC@/$mac/" "$here/guest/domain.xml.in" |
    if [[ -n $disk ]]; then
      sed "s|  <devices>|  <devices>\n    <disk type='block' device='disk'>\n      <driver name='phy'/>\n      <source dev='$disk'/>\n      <target dev='xvda' bus='xen'/>\n    </disk>|"
    else cat; fi >"$d/domain.xml"
  sshh "$dir" "$h" "virsh -c xen:///system define /var/lib/livemig/instances/$uuid/domain.xml >/dev/null && virsh -c xen:///system start $name" ||
    die "guest $name did not start on $h"
  local t0=$SECONDS
  until grep -q '^tick' "$dir/share/consoles-$(host_name "$h")/guest-$name.log" 2>/dev/null; do
    ((SECONDS - t0 > 180)) && die "guest $name: no tick on its console after 180 s"
    sleep 1
  done
  echo "xenlab: guest $name ($kind) ticking on $h after $((SECONDS - t0)) s"
}

cmd_heartbeat() { # from both hosts' console logs of NAME (on the share); the pause only after tick SINCE
  local dir=$1 name=$2 since=${3:-0}
  cat "$dir"/share/consoles-xen?/guest-"$name".log 2>/dev/null | tr -d '\r' | awk -v since="$since" '
    /DOMU-START/ { boots++ }
    $1 == "tick" && NF == 4 && $2 ~ /^[0-9]+$/ { t[$2] = $3; if ($2 > last) last = $2; n++ }
    END {
      gaps = 0; maxp = 0; prev = -1
      for (i = 1; i <= last; i++) {
        if (!(i in t)) { gaps++; prev = -1; continue }
        if (prev >= 0 && i > since) { d = t[i] - t[prev]; if (d > maxp) maxp = d }
        prev = i
      }
      printf "boots=%d last=%d gaps=%d max_pause_ms=%d ticks=%d\n", boots, last, gaps, maxp, n
    }'
}

cmd_disk_record() { # the guest's last record on DEV as that dom0 reads it (O_DIRECT: not its cache)
  local dir=$1 h=$2 dev=$3
  sshh "$dir" "$h" "dd if='$dev' bs=512 count=1 iflag=direct 2>/dev/null | tr -d '\\000' | head -1"
}

cmd_where() { # the hosts where the domain runs; an ssh or libvirt failure is retried, then an error
  local dir=$1 name=$2 h out=() state try
  for h in a b; do
    for try in 1 2 3 4 5; do
      state=$(sshh "$dir" "$h" "virsh -c xen:///system domstate $name 2>&1") && break
      [[ $state == *"failed to get domain"* ]] && break # not defined there: an answer
      ((try < 5)) || die "where: cannot ask host $h for the state of $name (5 tries): ${state:-ssh failed}"
      sleep 2
    done
    [[ $(head -1 <<<"$state") == running ]] && out+=("$h")
  done
  echo "${out[*]}"
}

cmd=${1:-}; shift || true
case $cmd in
  image) cmd_image "$@" ;;
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  sweep) cmd_sweep "$@" ;;
  status) cmd_status "$@" ;;
  env) load "$1"; cat "$1/lab.env" ;;
  ssh) d=$1 h=$2; shift 2; [[ ${1:-} == -- ]] && shift; sshh "$d" "$h" "$@" ;;
  virsh) d=$1 h=$2; shift 2; sshh "$d" "$h" virsh -c xen:///system "$@" ;;
  agent-start) cmd_agent_start "$@" ;;
  agent-kill) cmd_agent_kill "$@" ;;
  guest-start) cmd_guest_start "$@" ;;
  heartbeat) cmd_heartbeat "$@" ;;
  where) cmd_where "$@" ;;
  disk-record) cmd_disk_record "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
