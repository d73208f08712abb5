#!/usr/bin/env bash
# make-seeds.sh — regenerates fuzz/corpus/ from a real tvix-store: imports a
# small tree (every node kind, a blob the store chunks) and the nixpkgs lib
# when present, then writes what the store answers (examples/seeds.rs).
#
#   fuzz/make-seeds.sh [TVIX_STORE_BIN]
set -euo pipefail
cd "$(dirname "$0")"
store_bin=${1:-${TVIX_STORE_BIN:-../../shared/ref/bin/tvix-store}}
[ -x "$store_bin" ] || { echo "no tvix-store at $store_bin" >&2; exit 1; }

work=$(mktemp -d)
daemon=
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

tree=$work/tree
mkdir -p "$tree/bin" "$tree/share/doc" "$tree/empty-dir"
printf 'hello\n' > "$tree/share/doc/README"
: > "$tree/share/empty"
printf '#!/bin/sh\necho hi\n' > "$tree/bin/hello"
chmod +x "$tree/bin/hello"
ln -s ../share/doc/README "$tree/bin/readme"
ln -s /nix/store/elsewhere "$tree/abs"
# Large enough for the store's content-defined chunker to split.
head -c $((3 << 20)) /dev/urandom > "$tree/share/blob"
printf 'single file\n' > "$work/file"
ln -s /nix/store/somewhere "$work/link"

mkdir -p "$work/store"
"$store_bin" --otlp=false daemon --listen-address "$work/store/grpc.sock" \
  --blob-service-addr "objectstore+file://$work/store/blobs" \
  --directory-service-addr memory:// --path-info-service-addr memory:// \
  >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -S "$work/store/grpc.sock" ] && break; sleep 0.1; done
address=grpc+unix://$work/store/grpc.sock

imports=("$tree" "$work/file" "$work/link")
[ -d ../../shared/nixpkgs-lib/lib ] && imports+=(../../shared/nixpkgs-lib/lib)
names=()
for path in "${imports[@]}"; do
  out=$("$store_bin" --otlp=false import --blob-service-addr "$address" \
    --directory-service-addr "$address" --path-info-service-addr "$address" "$path" 2>>"$work/import.log" | tail -n1)
  names+=("$(basename "$out")")
done

mkdir -p corpus
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/seeds} \
  cargo run --quiet --example seeds -- corpus "$address" "${names[@]}"
du -sh corpus
