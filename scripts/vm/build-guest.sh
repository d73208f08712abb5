#!/usr/bin/env bash
# build-guest.sh — build the test guest: a kernel plus a tiny busybox
# initramfs that mounts a virtio-fs share and runs one command.
#
# Usage: scripts/vm/build-guest.sh [OUTDIR]
#   OUTDIR  default: <repo>/target/vm
#
# Env:
#   KVER=     kernel release in /boot (default: newest *-cloud-amd64)
#   FORCE=1   rebuild even if the outputs are up to date
#   NO_APT=1  never run apt-get; fail if something is missing
#   EXTRA_MODULES=  more modules to load after those below (e.g. overlay)
#   INIT=     a file to use as /init instead of the one below (it gets the
#             same busybox, modules list and /job segment)
#
# Writes to OUTDIR:
#   vmlinuz          copy of /boot/vmlinuz-$KVER
#   initramfs.cpio.gz
#   kernel.release   $KVER
# Nothing is rebuilt when these are newer than this script, tree-manifest.sh
# and the kernel.
#
# Installs (apt-get, Debian 12) what the harness needs when missing:
# busybox-static, cpio, linux-image-cloud-amd64, qemu-system-x86.
#
# The guest's /init (see below) mounts devtmpfs etc., loads virtio_pci, fuse
# and virtiofs (with their dependencies, in modules.dep order; built-in ones
# are skipped), mounts the virtio-fs tag at the mount point and runs the
# per-run job that run-guest.sh appends as an extra cpio segment:
#   /job/tag         virtio-fs tag to mount
#   /job/mnt         mount point (default /mnt)
#   /job/mount_opts  options for mount -o (may be empty)
#   /job/cmd         shell text, run with busybox sh, cwd = mount point,
#                    stdin /dev/null, stdout -> /dev/ttyS1 (run-guest's
#                    stdout), stderr -> console
# Console markers (one line each, CRLF on the serial line):
#   === VMTEST: BOOT uptime=S kernel=R
#   === VMTEST: MOUNTED tag=T at=M opts=O uptime=S
#   === VMTEST: BEGIN uptime=S
#   === VMTEST: END rc=N uptime=S
#   === VMTEST: FAIL <reason>        (setup failed; no END follows)
#   === VMTEST: POWEROFF uptime=S
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$REPO/target/vm}
MANIFEST_SCRIPT=$HERE/tree-manifest.sh

log() { echo "build-guest: $*" >&2; }
die() { log "$*"; exit 1; }

# ---- packages --------------------------------------------------------------
missing=()
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
for p in busybox-static cpio qemu-system-x86; do
  pkg_installed "$p" || missing+=("$p")
done
if [ -z "${KVER:-}" ] && ! compgen -G '/boot/vmlinuz-*-cloud-amd64' >/dev/null; then
  missing+=(linux-image-cloud-amd64)
fi
if [ ${#missing[@]} -gt 0 ]; then
  [ "${NO_APT:-0}" != 1 ] || die "missing packages: ${missing[*]} (NO_APT=1)"
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "missing packages: ${missing[*]}; run as root"
    SUDO=(sudo -n)
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# ---- kernel ----------------------------------------------------------------
if [ -z "${KVER:-}" ]; then
  k=$(compgen -G '/boot/vmlinuz-*-cloud-amd64' | sort -V | tail -n 1)
  KVER=${k#/boot/vmlinuz-}
fi
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[ -r "$KERNEL" ] || die "cannot read $KERNEL"
[ -r "$MODDIR/modules.dep" ] || die "no $MODDIR/modules.dep"

# ---- up to date? -----------------------------------------------------------
outputs=("$OUT/vmlinuz" "$OUT/initramfs.cpio.gz" "$OUT/kernel.release")
INIT=${INIT:-}
[ -z "$INIT" ] || [ -r "$INIT" ] || die "cannot read INIT=$INIT"
read -r -a EXTRA <<<"${EXTRA_MODULES:-}"
inputs=("${BASH_SOURCE[0]}" "$MANIFEST_SCRIPT" "$KERNEL" ${INIT:+"$INIT"})
extra_args="${EXTRA[*]}|$INIT"  # outputs without extra.args were built with neither
up_to_date() {
  [ "${FORCE:-0}" != 1 ] || return 1
  [ "$(cat "$OUT/kernel.release" 2>/dev/null)" = "$KVER" ] || return 1
  [ "$(cat "$OUT/extra.args" 2>/dev/null || echo '|')" = "$extra_args" ] || return 1
  local o i
  for o in "${outputs[@]}"; do
    for i in "${inputs[@]}"; do
      [ "$o" -nt "$i" ] || return 1
    done
  done
}
if up_to_date; then
  log "up to date: $OUT (kernel $KVER; FORCE=1 rebuilds)"
  exit 0
fi
log "kernel $KVER -> $OUT"

# ---- modules and load order --------------------------------------------
# modules.dep lines: "kernel/path/mod.ko: kernel/path/dep1.ko kernel/path/dep2.ko"
declare -A MODPATH=() MODDEPS=() LOADED=()
modname() { local b=${1##*/}; b=${b%%.ko*}; echo "${b//-/_}"; }
while IFS= read -r line; do
  m=$(modname "${line%%:*}")
  MODPATH[$m]=${line%%:*}
  MODDEPS[$m]=${line#*:}
done <"$MODDIR/modules.dep"
BUILTIN=" "
if [ -r "$MODDIR/modules.builtin" ]; then
  while IFS= read -r line; do BUILTIN+="$(modname "$line") "; done <"$MODDIR/modules.builtin"
fi

ORDER=()
add_module() {  # depth first: dependencies before the module itself
  local m=$1 d
  [ -z "${LOADED[$m]:-}" ] || return 0
  LOADED[$m]=1
  if [ -z "${MODPATH[$m]:-}" ]; then
    [[ $BUILTIN == *" $m "* ]] || die "module $m: neither in modules.dep nor built in ($KVER)"
    log "  $m: built in"
    return 0
  fi
  for d in ${MODDEPS[$m]}; do add_module "$(modname "$d")"; done
  ORDER+=("$m")
}
for m in virtio_pci fuse virtiofs "${EXTRA[@]}"; do add_module "$m"; done
log "module load order: ${ORDER[*]:-(all built in)}"

# ---- assemble the initramfs --------------------------------------------
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/vm-guest.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,dev,proc,sys,tmp,mnt,job,lib/vmtest}
cp /bin/busybox "$STAGE/bin/busybox"
for applet in $("$STAGE/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$STAGE/bin/$applet"
done
install -m 755 "$MANIFEST_SCRIPT" "$STAGE/bin/tree-manifest"

for m in "${ORDER[@]}"; do
  src=$MODDIR/${MODPATH[$m]}
  dst=$STAGE/lib/vmtest/$m.ko
  case $src in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) die "unknown module format: $src" ;;
  esac
  echo "$m" >>"$STAGE/lib/vmtest/modules"
done
touch "$STAGE/lib/vmtest/modules"

cat >"$STAGE/init" <<'EOF'
#!/bin/sh
# Test guest /init (written by scripts/vm/build-guest.sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/null >/dev/console 2>&1

uptime_s() { cut -d ' ' -f 1 /proc/uptime; }
marker() { echo "=== VMTEST: $*"; }
halt() {
  marker "POWEROFF uptime=$(uptime_s)"
  sync
  poweroff -f
  sleep 30
}
fail() { marker "FAIL $*"; halt; }

marker "BOOT uptime=$(uptime_s) kernel=$(uname -r)"
while read -r m; do
  insmod "/lib/vmtest/$m.ko" || fail "insmod $m"
done </lib/vmtest/modules

[ -r /job/cmd ] || fail "no /job/cmd (run the guest with run-guest.sh)"
tag=$(cat /job/tag)
mnt=$(cat /job/mnt 2>/dev/null)
mnt=${mnt:-/mnt}
opts=$(cat /job/mount_opts 2>/dev/null)
mkdir -p "$mnt"
tries=0
until mount -t virtiofs ${opts:+-o "$opts"} "$tag" "$mnt"; do
  tries=$((tries + 1))
  [ "$tries" -lt 10 ] || fail "mount -t virtiofs ${opts:+-o $opts} $tag $mnt"
  sleep 0.2
done
marker "MOUNTED tag=$tag at=$mnt opts=${opts:--} uptime=$(uptime_s)"

# The command's stdout goes to the second serial port, which run-guest.sh
# captures into a file of its own; no output post-processing on this tty.
[ -c /dev/ttyS1 ] || fail "no /dev/ttyS1 (run-guest.sh adds a second -serial)"
exec 3<>/dev/ttyS1
stty -opost <&3 || true
marker "BEGIN uptime=$(uptime_s)"
(cd "$mnt" && exec sh /job/cmd) >&3
rc=$?
# Closing a serial tty waits until its output is transmitted.
exec 3>&-
marker "END rc=$rc uptime=$(uptime_s)"
cd /
umount "$mnt" || marker "umount $mnt failed (ignored)"
halt
EOF
[ -z "$INIT" ] || cp "$INIT" "$STAGE/init"
chmod 755 "$STAGE/init"

mkdir -p "$OUT"
( cd "$STAGE" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc -R 0:0 --quiet ) | gzip -9 >"$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
cp "$KERNEL" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$KVER" >"$OUT/kernel.release"
echo "$extra_args" >"$OUT/extra.args"
log "wrote $(du -h "$OUT/initramfs.cpio.gz" | cut -f 1) initramfs, kernel $KVER"
