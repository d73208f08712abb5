#!/usr/bin/env bash
# demo.sh — the whole path on one machine: install what is needed, build,
# import a sample tree into a store, start the daemon, and boot a tiny QEMU
# guest that mounts the share and prints what it sees.
#
# Usage: scripts/demo.sh [--fuse | --boot] [TREE]
#   --fuse  no VM: mount through /dev/fuse on the host instead
#   --boot  boot a whole Debian 12 with systemd whose root file system is a
#           store path (scripts/boot-guest/), cold, and print the uptime at
#           multi-user.target (TREE is not used)
#   TREE    directory to import (each top-level entry becomes a store path);
#           default: a small generated sample
# The store is a real tvix-store or snix-store when one is at hand
# ($TVIX_STORE_BIN, $SNIX_STORE_BIN, tvix-store or snix-store on PATH, or
# ../shared/ref/bin beside the repository), and the bundled fixture store
# otherwise; the demo says which it used.
# Needs root (apt-get, FUSE, QEMU's shared memory). Work files go to
# target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

mode=vm
case ${1:-} in
  --fuse) mode=fuse; shift ;;
  --boot) mode=boot; shift ;;
esac
tree=${1:-}

scripts/install-deps.sh
# The daemon, the fixture store and the load generator (not the fuzz
# targets, which need their own instrumented build).
cargo build --release --locked --workspace --exclude tvix-virtiofsd-fuzz --bins
bin=$repo/target/release
work=$repo/target/demo
rm -rf "$work"; mkdir -p "$work"

if [ "$mode" = boot ]; then
  guest=$repo/target/boot-guest
  echo "== building the boot guest: Debian 12 minbase + systemd (debootstrap, cached), kernel, initramfs"
  scripts/boot-guest/build.sh "$guest"
  tree=$guest/tree
elif [ -z "$tree" ]; then
  tree=$work/tree
  mkdir -p "$tree/hello-2.12/bin" "$tree/hello-2.12/share/doc"
  printf '#!/bin/sh\necho "Hello from the store"\n' > "$tree/hello-2.12/bin/hello"
  chmod 755 "$tree/hello-2.12/bin/hello"
  echo "This file came from a tvix-store, verified on the way." > "$tree/hello-2.12/share/doc/README"
  ln -s ../share/doc/README "$tree/hello-2.12/bin/readme"
  head -c 8388608 /dev/urandom > "$tree/hello-2.12/share/data.bin"
  echo "a store path that is a single file" > "$tree/note.txt"
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# A real store if there is one: KIND and its binary.
real_store() {
  local kind var b
  for kind in tvix snix; do
    var=${kind^^}_STORE_BIN
    b=${!var:-}
    [ -n "$b" ] || b=$(command -v "$kind-store" || true)
    [ -n "$b" ] || b=$repo/../shared/ref/bin/$kind-store
    if [ -x "$b" ]; then echo "$kind $b"; return 0; fi
  done
  return 1
}

protocol=()
if read -r kind store_bin < <(real_store); then
  echo "== real $kind-store ($store_bin): importing each entry of $tree"
  mkdir -p "$work/store"
  "$store_bin" --otlp=false daemon --listen-address "$work/store.sock" \
    --blob-service-addr "objectstore+file://$work/store/blobs" \
    --directory-service-addr "redb://$work/store/directories.redb" \
    --path-info-service-addr "redb://$work/store/pathinfo.redb" 2>"$work/store.log" &
  pids+=($!)
  for _ in $(seq 100); do [ -S "$work/store.sock" ] && break; sleep 0.1; done
  addr=grpc+unix://$work/store.sock
  for entry in "$tree"/*; do
    "$store_bin" --otlp=false import --blob-service-addr "$addr" --directory-service-addr "$addr" \
      --path-info-service-addr "$addr" "$entry" 2>>"$work/store.log" | tee -a "$work/imported" | sed 's/^/   /'
  done
  protocol=(--store-protocol "$kind")
else
  echo "== no tvix-store or snix-store at hand: the bundled fixture store, importing $tree"
  "$bin/tvix-fixture-store" --import "$tree" --listen "grpc+unix://$work/store.sock" \
    --chunk-size 262144 >"$work/store.out" 2>"$work/store.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^LISTENING' "$work/store.out" 2>/dev/null && break; sleep 0.1; done
  grep '^STORE_PATH' "$work/store.out" | sed 's/^STORE_PATH /\/nix\/store\//' | tee "$work/imported" | sed 's/^/   /'
fi

if [ "$mode" = boot ]; then
  root=$(sed -n 's|^/nix/store/\([0-9a-z]\{32\}-debian-rootfs\)$|\1|p' "$work/imported")
  [ -n "$root" ] || { echo "no debian-rootfs store path among those imported" >&2; exit 1; }
  "$bin/tvix-virtiofsd" --socket-path "$work/fs.sock" --store "grpc+unix://$work/store.sock" \
    "${protocol[@]}" --cache-dir "$work/cache" --stats-file "$work/stats" 2>"$work/daemon.log" &
  pids+=($!)
  for _ in $(seq 100); do [ -S "$work/fs.sock" ] && break; sleep 0.1; done
  echo "== booting QEMU (accel ${ACCEL:-tcg}) with the root file system /nix/store/$root"
  echo "   the initramfs mounts virtio-fs read-only, lays a tmpfs over the store path (overlayfs)"
  echo "   and starts systemd; every file systemd reads is fetched from the store, verified and"
  echo "   kept in $work/cache. The guest's console follows."
  VM_DIR=$guest/vm APPEND_EXTRA="boot.root=$root" CONSOLE=1 \
    scripts/vm/run-guest.sh "$work/fs.sock" nix-store - 600 >"$work/boot.out"
  wait "${pids[-1]}" || true
  switch=$(sed -n 's/^SWITCH //p' "$work/boot.out")
  multi=$(sed -n 's/^MULTIUSER //p' "$work/boot.out")
  echo "== systemd started at ${switch:-?} s of guest uptime; multi-user.target reached at ${multi:-?} s"
  echo "   failed units: $(sed -n 's/^FAILED //p' "$work/boot.out")"
  echo "== the daemon: $(awk '$1 == "store_requests" { c = $2 } $1 == "store_bytes_fetched" { b = $2 }
    END { printf "%d store calls, %.1f MiB fetched from the store", c, b / 1048576 }' "$work/stats")"
  [ -n "$multi" ]
  exit
fi

if [ "$mode" = fuse ]; then
  mkdir -p "$work/mnt"
  "$bin/tvix-virtiofsd" --mount "$work/mnt" --store "grpc+unix://$work/store.sock" --list-root \
    "${protocol[@]}" 2>"$work/daemon.log" &
  pids+=($!)
  for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
  echo "== FUSE mount at $work/mnt"
  (cd "$work/mnt" && ls -l && for d in */; do ls -lR "$d"; done && cat ./*/share/doc/README 2>/dev/null || true)
  kill -TERM "${pids[-1]}"; wait "${pids[-1]}" || true
  echo "== unmounted"
  exit 0
fi

scripts/vm/build-guest.sh >/dev/null
"$bin/tvix-virtiofsd" --socket-path "$work/fs.sock" --store "grpc+unix://$work/store.sock" \
  --list-root "${protocol[@]}" 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/fs.sock" ] && break; sleep 0.1; done
echo "== booting a guest that mounts the share (tag 'nix-store')"
scripts/vm/run-guest.sh "$work/fs.sock" nix-store \
  'echo "--- ls -l /nix/store (the virtio-fs mount)"; ls -l; for d in */; do ls -lR "$d"; done;
   for f in */bin/hello; do [ -r "$f" ] && echo "--- $f:" && sh "$f"; done;
   for f in */share/doc/README; do [ -r "$f" ] && echo "--- $f:" && cat "$f"; done; true' 180
