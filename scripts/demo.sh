#!/usr/bin/env bash
# demo.sh — the whole path on one machine: install what is needed, build,
# import a sample tree into a store, start the daemon, and boot a tiny QEMU
# guest that mounts the share and prints what it sees.
#
# Usage: scripts/demo.sh [--fuse] [TREE]
#   --fuse  no VM: mount through /dev/fuse on the host instead
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
if [ "${1:-}" = --fuse ]; then mode=fuse; shift; fi
tree=${1:-}

scripts/install-deps.sh
cargo build --release --locked --workspace --bins
bin=$repo/target/release
work=$repo/target/demo
rm -rf "$work"; mkdir -p "$work"

if [ -z "$tree" ]; then
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
      --path-info-service-addr "$addr" "$entry" 2>>"$work/store.log" | sed 's/^/   /'
  done
  protocol=(--store-protocol "$kind")
else
  echo "== no tvix-store or snix-store at hand: the bundled fixture store, importing $tree"
  "$bin/tvix-fixture-store" --import "$tree" --listen "grpc+unix://$work/store.sock" \
    --chunk-size 262144 >"$work/store.out" 2>"$work/store.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^LISTENING' "$work/store.out" 2>/dev/null && break; sleep 0.1; done
  grep '^STORE_PATH' "$work/store.out" | sed 's/^STORE_PATH /   \/nix\/store\//'
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
