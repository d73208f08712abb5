#!/usr/bin/env bash
# build-rootfs.sh — the systemd test guest's root file system: a Debian 12
# minbase from debootstrap plus systemd as PID 1, dbus (systemctl and
# systemd-analyze talk to PID 1 over it), and python3-minimal (the tiny
# vhost-user client of the socket-activation check).
#
# Usage: scripts/systemd-guest/build-rootfs.sh [OUTDIR]
#   OUTDIR  default: $CARGO_TARGET_DIR/systemd-guest (target/ by default)
#
# Env:
#   MIRROR=   Debian mirror (default http://deb.debian.org/debian)
#   FORCE=1   rebuild even if the cached tree is up to date
#
# Writes OUTDIR/rootfs.tar: the tree, as a tarball (ownership and modes
# kept, unpacked by run.sh into each run's disk image). It is rebuilt only
# when this script changes; the build takes 2-4 minutes (download and
# unpack), so reruns reuse it. Needs root and debootstrap.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-${CARGO_TARGET_DIR:-$REPO/target}/systemd-guest}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,python3-minimal

log() { echo "build-rootfs: $*" >&2; }

mkdir -p "$OUT"
tarball=$OUT/rootfs.tar
if [ "${FORCE:-0}" != 1 ] && [ "$tarball" -nt "${BASH_SOURCE[0]}" ]; then
  log "up to date: $tarball (FORCE=1 rebuilds)"
  exit 0
fi
command -v debootstrap >/dev/null || { log "debootstrap missing (scripts/install-deps.sh)"; exit 1; }

root=$(mktemp -d "$OUT/rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
start=$SECONDS
log "debootstrap --variant=minbase $SUITE (+ $PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 ||
  { tail -n 30 "$OUT/debootstrap.log" >&2; log "debootstrap failed (log: $OUT/debootstrap.log)"; exit 1; }

# The root is the virtio-blk disk; nothing else is mounted.
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$root/etc/fstab"
echo systemd-guest >"$root/etc/hostname"
# Nothing the checks do not need: no timers that wake apt under TCG, no
# login prompts, no fsck of a disk made a second ago.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
  getty@tty1.service serial-getty@ttyS0.service systemd-fsck-root.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# apt inside the guest installs only from local files: no index to fetch.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages

tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
log "built $tarball in $((SECONDS - start)) s ($(du -m "$tarball" | cut -f1) MiB)"
