#!/usr/bin/env bash
# build-deb.sh — build the Debian package with cargo-deb (pinned below,
# installed with `cargo install` when missing): the daemon in /usr/bin, the
# units, the sysusers.d entry, /etc/tvix-virtiofsd/common.env and the docs
# ([package.metadata.deb] in Cargo.toml, maintainer scripts in
# scripts/debian/).
#
# Usage: scripts/build-deb.sh [--dev]
#   --dev  package the debug build (stripped) instead of a release build:
#          what the tests install, so CI needs no release build.
# Prints the path of the .deb (under $CARGO_TARGET_DIR or target/, in debian/).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
profile=release
case ${1:-} in
  --dev) profile=dev ;;
  "") ;;
  *) echo "usage: $0 [--dev]" >&2; exit 2 ;;
esac

if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  echo "+ cargo install cargo-deb --version $CARGO_DEB_VERSION --locked" >&2
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked >&2
fi

out=${CARGO_TARGET_DIR:-$PWD/target}/debian
mkdir -p "$out"
cargo deb --locked -p tvix-virtiofsd --profile "$profile" --strip --no-dbgsym --fast --output "$out" >&2
deb=$(ls -t "$out"/tvix-virtiofsd_*.deb | head -n 1)
echo "$deb"
