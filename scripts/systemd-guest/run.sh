#!/usr/bin/env bash
# run.sh — boot the systemd test guest and run its checks: a Debian 12
# rootfs (build-rootfs.sh) on a virtio-blk ext4 disk, the host's cloud
# kernel (build-initramfs.sh), PID 1 systemd, under QEMU.
#
# Usage: scripts/systemd-guest/run.sh DEB TVIX_STORE_BIN [TIMEOUT_SECS]
#   DEB             the package to install (scripts/build-deb.sh --dev)
#   TVIX_STORE_BIN  a real tvix-store, run in the guest as tvix-store.service
#   TIMEOUT_SECS    bound on the whole boot, checks and power-off (default 600)
# Env: ACCEL=tcg|kvm (default tcg), OUT= work directory
#      (default $CARGO_TARGET_DIR/systemd-guest, target/ by default).
#
# The disk image holds, besides the rootfs: the .deb and the binary it
# contains (as target/debian/ and target/release/ under /root/src, with
# systemd/ and scripts/debian/common.env), docs/deploying.md's install blocks
# (marked "<!-- install: package -->" and "<!-- install: manual -->") as
# install-package.sh and install-manual.sh, and guest/ (the checks and the
# store unit). Prints the results file (guest/checks.sh: "CHECK name ok|FAIL
# detail" lines, then DONE) on stdout; the console is in OUT/console.log.
# Exits 0 when the guest powered off by itself, 1 otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[ $# -ge 2 ] || { echo "usage: $0 DEB TVIX_STORE_BIN [TIMEOUT_SECS]" >&2; exit 2; }
deb=$(realpath "$1")
store_bin=$(realpath "$2")
timeout_secs=${3:-600}
OUT=${OUT:-${CARGO_TARGET_DIR:-$REPO/target}/systemd-guest}
ACCEL=${ACCEL:-tcg}

log() { echo "systemd-guest: $*" >&2; }
start=$SECONDS
"$HERE/build-rootfs.sh" "$OUT"
"$HERE/build-initramfs.sh" "$OUT"

# The shell block of docs/deploying.md after a marker line.
deploying_block() {
  awk -v marker="<!-- install: $1 -->" '
    $0 == marker { found = 1; next }
    found && !body && /^```sh$/ { body = 1; next }
    body && /^```$/ { exit }
    body { print }' "$REPO/docs/deploying.md"
}

stage=$(mktemp -d "$OUT/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
tar -C "$stage" -xf "$OUT/rootfs.tar"
src=$stage/root/src
mkdir -p "$src/target/debian" "$src/target/release" "$src/scripts/debian"
cp "$deb" "$src/target/debian/"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/tvix-virtiofsd >"$src/target/release/tvix-virtiofsd"
chmod 755 "$src/target/release/tvix-virtiofsd"
cp -r "$REPO/systemd" "$src/"
cp "$REPO/scripts/debian/common.env" "$src/scripts/debian/"
for way in package manual; do
  deploying_block "$way" >"$src/install-$way.sh"
  [ -s "$src/install-$way.sh" ] || { log "docs/deploying.md has no '<!-- install: $way -->' block"; exit 1; }
done
install -m 0755 "$store_bin" "$stage/usr/local/bin/tvix-store"
install -D -m 0755 "$HERE/guest/checks.sh" "$stage/usr/local/lib/systemd-guest/checks.sh"
install -m 0755 "$HERE/guest/vhost-user-client.py" "$stage/usr/local/lib/systemd-guest/"
install -m 0644 "$HERE/guest/tvix-store.service" "$HERE/guest/systemd-guest-checks.service" \
  "$stage/etc/systemd/system/"
mkdir -p "$stage/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/systemd-guest-checks.service "$stage/etc/systemd/system/multi-user.target.wants/"

disk=$OUT/disk.img
rm -f "$disk"
size_mib=$(($(du -sm "$stage" | cut -f1) + 256))
mkfs.ext4 -q -F -L root -d "$stage" "$disk" "${size_mib}M"
log "disk image ${size_mib} MiB ready after $((SECONDS - start)) s"

case $ACCEL in
  kvm) accel=(-accel kvm -cpu host) ;;
  *) accel=(-accel tcg -cpu max) ;;
esac
results=$OUT/results.txt
console=$OUT/console.log
rm -f "$results" "$console"
boot=$SECONDS
rc=0
timeout --signal=KILL "$timeout_secs" qemu-system-x86_64 -machine q35 "${accel[@]}" -smp 2 -m 1024 \
  -display none -monitor none -nic none -no-reboot \
  -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw rootfstype=ext4 panic=-1 systemd.show_status=1" \
  -drive "file=$disk,format=raw,if=virtio" \
  -serial "file:$console" -serial "file:$results" || rc=$?
log "guest ran $((SECONDS - boot)) s (qemu rc=$rc; total $((SECONDS - start)) s; console: $console)"
tr -d '\r' <"$results" 2>/dev/null || true
rm -f "$disk"
[ "$rc" = 0 ]
