#!/usr/bin/env bash
# Builds the Xen lab's dom0 image from Debian packages, into a cache outside the clone:
#
#   build-image.sh --agent PATH [--cache DIR]     prints the image directory on its last line
#
# The image is named by a hash of its inputs (this script, guest/*, the package list, which
# includes the runtime packages of the compute_agent binary found with ldd), so it is built once
# per machine and input set; a later call with the same inputs only prints the directory.
# Default cache: /var/cache/livemig/xenlab (LIVEMIG_XENLAB_CACHE). Nothing is written into the
# repository. Output directory:
#   base.qcow2            dom0 root file system (ext4 in qcow2); hosts boot overlays of it
#   boot/xen              Xen 4.17 (bookworm's main release: built with shadow paging)
#   boot/xen-noshadow     Xen from bookworm-security, built without shadow paging (XSA-495)
#   boot/vmlinuz boot/initrd.img   dom0 kernel and initramfs
#   guest/vmlinuz guest/busybox    the guests' kernel and a static busybox for their initramfs
#   packages.txt          what was installed, with versions
# Needs root and: debootstrap qemu-utils e2fsprogs cpio gzip (deploy/install-deps.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
agent="" cache=${LIVEMIG_XENLAB_CACHE:-/var/cache/livemig/xenlab}
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --agent) agent=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "build-image: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mkfs)"
[[ -n $agent && -x $agent ]] || die "--agent must name the compute_agent binary to run in dom0 (bazel build //compute:compute_agent)"
for t in debootstrap qemu-img mkfs.ext4 cpio gzip dpkg-query ldd; do
  command -v $t >/dev/null || die "'$t' is missing: run deploy/install-deps.sh"
done

# The runtime packages of the agent: every shared library ldd resolves, mapped to the Debian
# package that ships it on this (build) machine.
agent_pkgs=$(ldd "$agent" | awk '/=> \//{print $3}' | while read -r lib; do
  real=$(readlink -f "$lib")
  dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "$real" 2>/dev/null ||
    dpkg-query -S "${lib#/usr}" 2>/dev/null || echo "UNKNOWN: $lib"
done | sed 's/:.*//' | sed 's/,.*//' | sort -u)
if grep -q UNKNOWN <<<"$agent_pkgs"; then die "no Debian package ships: $(grep UNKNOWN <<<"$agent_pkgs")"; fi
agent_pkgs=$(echo $agent_pkgs)

BASE_PKGS="linux-image-amd64 initramfs-tools udev kmod
 xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils
 libvirt-daemon libvirt-daemon-driver-xen libvirt-clients
 iproute2 iputils-ping procps busybox-static openssh-server openssh-client
 netcat-openbsd less ca-certificates
 open-iscsi drbd-utils"
PKGS=$(echo $BASE_PKGS $agent_pkgs)

# Only what goes into the image is hashed: dom0's real init and the guests' init live on the
# lab's share (xenlab.sh), so changing them needs no new image.
hash=$( { cat "$0" "$here/image/dom0-stub" "$here/image/x86_xenlab-tcg.xml"; echo "$PKGS"; } |
  sha256sum | cut -c1-16)
out=$cache/$hash
if [[ -f $out/.complete ]]; then
  echo "build-image: cached image (inputs $hash)"
  echo "$out"
  exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.build.lock"
echo "build-image: waiting for the build lock $cache/.build.lock" >&2
flock 9
if [[ -f $out/.complete ]]; then echo "$out"; exit 0; fi

apt_uri() { # the first archive URI of this machine's apt sources that matches $1
  { awk '/^URIs:/{for(i=2;i<=NF;i++)print $i}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
    awk '/^deb /{print $2}' /etc/apt/sources.list 2>/dev/null || true; } | grep -E "$1" | head -1 || true
}
MIRROR=${MIRROR:-$(apt_uri 'debian/?$')}
SECMIRROR=${SECMIRROR:-$(apt_uri 'security')}
[[ -n $MIRROR && -n $SECMIRROR ]] || die "no Debian archive in apt's sources; set MIRROR and SECMIRROR"

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
R=$work/rootfs
T0=$SECONDS
log() { echo "[xenlab image $((SECONDS - T0)) s] $*"; }
log "building image $hash in $work (about 5 minutes on 2 idle cores, up to 10 under load)"
log "agent runtime packages (from ldd): $agent_pkgs"

# debootstrap's result is reused between images (it depends only on the mirror)
boot_tar=$cache/debootstrap-bookworm-minbase.tar
if [[ ! -f $boot_tar ]]; then
  log "debootstrap bookworm (minbase) from $MIRROR"
  nice -n 10 debootstrap --variant=minbase bookworm "$R" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log"; die "debootstrap failed (log above)"; }
  tar -C "$R" -cf "$boot_tar.tmp" . && mv "$boot_tar.tmp" "$boot_tar"
else
  log "debootstrap tree from $boot_tar"
  mkdir -p "$R" && tar -C "$R" -xf "$boot_tar"
fi

cat >"$R/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECMIRROR bookworm-security main
SRC
# Xen: bookworm-security's 4.17.7 build has CONFIG_SHADOW_PAGING off (XSA-495) and cannot
# live-migrate PV guests (log-dirty needs shadow paging): pin Xen to bookworm's main release.
mkdir -p "$R/etc/apt/preferences.d"
printf 'Package: xen-* libxen* xenstore-utils\nPin: release n=bookworm, l=Debian\nPin-Priority: 1001\n' \
  >"$R/etc/apt/preferences.d/xenlab-xen"
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
mkdir -p "$R/etc/initramfs-tools"
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >>"$R/etc/initramfs-tools/modules"

log "apt install in the chroot: $PKGS"
# chroot steps in a private mount namespace: no mount leaks onto the build machine
nice -n 10 unshare --mount --propagation private bash -ec "
  mount -t proc proc $R/proc
  mount -t sysfs sys $R/sys
  mount --bind /dev $R/dev
  mount -t devpts devpts $R/dev/pts || true
  export DEBIAN_FRONTEND=noninteractive LC_ALL=C
  chroot $R apt-get update -q
  chroot $R apt-get install -y -q --no-install-recommends --allow-downgrades $PKGS
  chroot $R apt-get dist-upgrade -y -q --allow-downgrades
  # the security release of the hypervisor, for the host without shadow paging
  # (the pin above wins over -t: name the security archive's version)
  secver=\$(chroot $R apt-cache madison xen-hypervisor-4.17-amd64 | awk -F'|' '/bookworm-security/{gsub(/ /,\"\",\$2); print \$2; exit}')
  [ -n \"\$secver\" ] || { echo 'no xen-hypervisor-4.17-amd64 in bookworm-security'; exit 1; }
  chroot $R sh -c \"cd /tmp && apt-get download -q xen-hypervisor-4.17-amd64=\$secver\"
  chroot $R apt-get clean
  chroot $R update-initramfs -u -k all
" >"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log"; die "installing packages in the chroot failed (log above)"; }

# The lab needs Xen with shadow paging: PV guests migrate only with it (log-dirty).
xcfg=$(ls "$R"/boot/xen-4.17*.config 2>/dev/null | head -1)
[[ -n $xcfg ]] || die "no /boot/xen-*.config in the image: xen-hypervisor-4.17-amd64 not installed?"
grep -q '^CONFIG_SHADOW_PAGING=y' "$xcfg" ||
  die "the Xen installed ($(basename "$xcfg")) is built without shadow paging (CONFIG_SHADOW_PAGING is not y): PV guests cannot live-migrate on it; pin Xen to bookworm's main release (apt preferences above)"
log "Xen: $(basename "$xcfg" .config) has CONFIG_SHADOW_PAGING=y"

log "configure the root file system"
install -m 0755 "$here/image/dom0-stub" "$R/sbin/xenlab-init"
echo xenlab >"$R/etc/hostname"
echo '/dev/vda / ext4 rw,relatime 0 1' >"$R/etc/fstab"
mkdir -p "$R/root/.ssh" "$R/etc/ssh/sshd_config.d"
chmod 700 "$R/root/.ssh"
printf 'PasswordAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n' \
  >"$R/etc/ssh/sshd_config.d/xenlab.conf"
# QEMU TCG lacks VME; every CPU model in libvirt's map requires it and the libxl driver then
# refuses to load ("Cannot find suitable CPU model for given data"): add a model without vme.
install -m 0644 "$here/image/x86_xenlab-tcg.xml" "$R/usr/share/libvirt/cpu_map/x86_xenlab-tcg.xml"
grep -q x86_xenlab-tcg.xml "$R/usr/share/libvirt/cpu_map/index.xml" ||
  sed -i "s|<include filename='x86_486.xml'/>|<include filename='x86_486.xml'/>\n    <include filename='x86_xenlab-tcg.xml'/>|" \
    "$R/usr/share/libvirt/cpu_map/index.xml"
# libvirt-daemon pulls the QEMU driver, whose 'libvirt-qemu' user comes only with
# libvirt-daemon-system; it would make libvirtd exit. The lab needs only libxl.
rm -f "$R"/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
# Xen's toolstack: dom0's memory is fixed on Xen's command line, no ballooning
sed -i 's/^#\{0,1\}autoballoon=.*/autoballoon="off"/' "$R/etc/xen/xl.conf"
grep -q '^autoballoon=' "$R/etc/xen/xl.conf" || echo 'autoballoon="off"' >>"$R/etc/xen/xl.conf"
echo 'autoballoon = 0' >>"$R/etc/libvirt/libxl.conf"
chroot "$R" dpkg-query -W -f '${Package} ${Version}\n' >"$work/packages.txt"

log "boot files and the guests' kernel + initramfs"
mkdir -p "$work/out/boot" "$work/out/guest"
KVER=$(ls "$R/lib/modules" | sort -V | tail -1)
gunzip -c "$(ls "$R"/boot/xen-4.17*-amd64.gz | head -1)" >"$work/out/boot/xen"
deb=$(ls "$R"/tmp/xen-hypervisor-4.17-amd64_*.deb | head -1)
mkdir -p "$work/sec" && dpkg-deb -x "$deb" "$work/sec"
if grep -q '^CONFIG_SHADOW_PAGING=y' "$work"/sec/boot/xen-*.config; then
  log "note: the security release $(basename "$deb") has shadow paging; boot/xen-noshadow is not what its name says"
fi
gunzip -c "$(ls "$work"/sec/boot/xen-4.17*-amd64.gz | head -1)" >"$work/out/boot/xen-noshadow"
rm -f "$R"/tmp/*.deb
cp "$R/boot/vmlinuz-$KVER" "$work/out/boot/vmlinuz"
cp "$R/boot/initrd.img-$KVER" "$work/out/boot/initrd.img"
cp "$R/boot/vmlinuz-$KVER" "$work/out/guest/vmlinuz"
cp "$R/bin/busybox" "$work/out/guest/busybox"  # xenlab.sh packs the guests' initramfs with it
# Debian's kernel has Xen's block front end as a module: a guest with a disk loads it from its
# initramfs (xenlab.sh guest-start --disk)
blkfront=$(find "$R/lib/modules/$KVER" -name 'xen-blkfront.ko*' | head -1)
[[ -n $blkfront ]] || die "no xen-blkfront module in the image's kernel $KVER"
case $blkfront in
  *.xz) xz -dc "$blkfront" >"$work/out/guest/xen-blkfront.ko" ;;
  *) cp "$blkfront" "$work/out/guest/xen-blkfront.ko" ;;
esac

log "ext4 + qcow2"
nice -n 10 mkfs.ext4 -q -L xenroot -d "$R" "$work/base.raw" 3G
nice -n 10 qemu-img convert -O qcow2 "$work/base.raw" "$work/out/base.qcow2"
rm -f "$work/base.raw"
cp "$work/packages.txt" "$work/out/packages.txt"
echo "$PKGS" >"$work/out/inputs.txt"
touch "$work/out/.complete"
rm -rf "$out" && mv "$work/out" "$out"
# keep the two newest images (a branch switch back and forth stays cheap)
ls -1dt "$cache"/*/ 2>/dev/null | grep -vE '/build\.' | tail -n +3 | xargs -r rm -rf
log "done: $out ($(du -sh "$out" | cut -f1))"
echo "$out"
