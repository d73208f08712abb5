#!/usr/bin/env bash
# build-initramfs.sh — kernel and initramfs of the systemd test guest: the
# host's linux-image-cloud-amd64 and an initramfs-tools image that loads
# virtio_pci and virtio_blk (ext4 is built into that kernel) and mounts the
# root from root=/dev/vda.
#
# Usage: scripts/systemd-guest/build-initramfs.sh [OUTDIR]
#   OUTDIR  default: $CARGO_TARGET_DIR/systemd-guest (target/ by default)
# Env: KVER= kernel release in /boot (default: newest *-cloud-amd64),
#      FORCE=1 rebuild.
# Writes OUTDIR/vmlinuz and OUTDIR/initrd.img; rebuilt only when this script
# or the kernel is newer. Needs initramfs-tools (scripts/install-deps.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-${CARGO_TARGET_DIR:-$REPO/target}/systemd-guest}

log() { echo "build-initramfs: $*" >&2; }

if [ -z "${KVER:-}" ]; then
  k=$(compgen -G '/boot/vmlinuz-*-cloud-amd64' | sort -V | tail -n 1) ||
    { log "no /boot/vmlinuz-*-cloud-amd64 (linux-image-cloud-amd64)"; exit 1; }
  KVER=${k#/boot/vmlinuz-}
fi
kernel=/boot/vmlinuz-$KVER
mkdir -p "$OUT"
if [ "${FORCE:-0}" != 1 ] && [ "$OUT/initrd.img" -nt "${BASH_SOURCE[0]}" ] &&
  [ "$OUT/initrd.img" -nt "$kernel" ] && [ "$(cat "$OUT/kernel.release" 2>/dev/null)" = "$KVER" ]; then
  log "up to date: $OUT (kernel $KVER)"
  exit 0
fi
command -v mkinitramfs >/dev/null || { log "mkinitramfs missing (initramfs-tools)"; exit 1; }

conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
# Only the listed modules (and what they depend on): small and quick to
# build, and independent of the host's own initramfs settings.
mkdir -p "$conf/conf.d" "$conf/hooks" "$conf/scripts"
cat >"$conf/initramfs.conf" <<'CONF'
MODULES=list
BUSYBOX=auto
COMPRESS=gzip
FSTYPE=ext4
CONF
printf '%s\n' virtio_pci virtio_blk >"$conf/modules"
mkinitramfs -d "$conf" -o "$OUT/initrd.img.tmp" "$KVER"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
cp "$kernel" "$OUT/vmlinuz"
echo "$KVER" >"$OUT/kernel.release"
log "kernel $KVER, initrd $(du -k "$OUT/initrd.img" | cut -f1) KiB -> $OUT"
