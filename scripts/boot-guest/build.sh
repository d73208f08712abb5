#!/usr/bin/env bash
# build.sh — the boot guest: a Debian 12 userland (systemd + dbus) made to
# live in a store path, and a kernel + initramfs that boot it from virtio-fs.
#
# Usage: scripts/boot-guest/build.sh [OUTDIR]
#   OUTDIR  default: $CARGO_TARGET_DIR/boot-guest (target/ by default)
# Env: FORCE=1 rebuilds both parts.
#
# Writes to OUTDIR:
#   tree/debian-rootfs/  the root file system as a store holds it: the tree
#       of scripts/systemd-guest/build-rootfs.sh without what a castore
#       cannot hold (device nodes, FIFOs, sockets), a .keep file in each
#       empty directory (see below), with what it would
#       report instead of the rest (owner root, directories 0555, files
#       0444 or 0555 when executable, every mtime 1), and boot-marker.service
#       (prints the uptime once multi-user.target is reached, then powers
#       off). The same directory is imported into the store and shared by
#       virtiofsd, so every daemon serves the same tree.
#   vm/  vmlinuz + initramfs.cpio.gz: scripts/vm/build-guest.sh with this
#       directory's init (virtio-fs read-only as the lower layer of an
#       overlay with a tmpfs upper, then switch_root to systemd) and the
#       overlay module. Boot with scripts/vm/run-guest.sh and
#       APPEND_EXTRA=boot.root=<store path basename>.
# Each part is rebuilt only when its inputs are newer.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-${CARGO_TARGET_DIR:-$REPO/target}/boot-guest}
SG_OUT=${CARGO_TARGET_DIR:-$REPO/target}/systemd-guest

log() { echo "boot-guest: $*" >&2; }

mkdir -p "$OUT"
INIT=$HERE/init EXTRA_MODULES=overlay "$REPO/scripts/vm/build-guest.sh" "$OUT/vm"
"$REPO/scripts/systemd-guest/build-rootfs.sh" "$SG_OUT"

tree=$OUT/tree/debian-rootfs
stamp=$OUT/tree.stamp
fresh=1
for i in "$SG_OUT/rootfs.tar" "${BASH_SOURCE[0]}" "$HERE/boot-marker" "$HERE/boot-marker.service"; do
  [ "$stamp" -nt "$i" ] || fresh=0
done
if [ "${FORCE:-0}" != 1 ] && [ "$fresh" = 1 ] && [ -d "$tree" ]; then
  log "up to date: $tree (FORCE=1 rebuilds)"
  exit 0
fi
start=$SECONDS
rm -rf "$OUT/tree" "$stamp"
mkdir -p "$tree"
tar -C "$tree" --numeric-owner -xf "$SG_OUT/rootfs.tar"
find "$tree" \( -type b -o -type c -o -type p -o -type s \) -delete
# No disk: nothing in fstab; the units the systemd guest masked stay masked.
echo '# the root is an overlay of the store path on a tmpfs, set up by the initramfs' >"$tree/etc/fstab"
echo boot-guest >"$tree/etc/hostname"
install -m 0755 "$HERE/boot-marker" "$tree/usr/local/lib/boot-marker"
install -m 0644 "$HERE/boot-marker.service" "$tree/etc/systemd/system/"
mkdir -p "$tree/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/boot-marker.service "$tree/etc/systemd/system/multi-user.target.wants/"
# A castore names a directory by its content, and `tvix-store virtiofs`
# gives identical directories one inode: the guest kernel then takes /proc,
# /sys, /tmp and every other empty directory for one directory (a directory
# inode has one dentry), and systemd cannot mount its API file systems. A
# file naming the path makes each empty directory unique, for every daemon
# alike.
find "$tree" -type d -empty -exec sh -c 'for d; do echo "${d#"$1"}" >"$d/.keep"; done' sh "$tree" {} +
# Everything as a castore reports it.
chown -hR 0:0 "$tree"
find "$tree" -type f -perm /0111 -exec chmod 0555 {} +
find "$tree" -type f ! -perm /0111 -exec chmod 0444 {} +
find "$tree" -type d -exec chmod 0555 {} +
find "$tree" -exec touch -h -d @1 {} +
touch "$stamp"
log "$tree: $(find "$tree" | wc -l) entries, $(du -sm --apparent-size "$tree" | cut -f 1) MiB, in $((SECONDS - start)) s"
