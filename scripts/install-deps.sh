#!/usr/bin/env bash
# install-deps.sh — install what building, testing and the demo need on a
# Debian 12 machine (run as root). Idempotent: only missing packages are
# installed.
#
#   qemu-system-x86          the VMM used by the guest tests and the demo
#   busybox-static cpio      the test guest's initramfs
#   linux-image-cloud-amd64  the test guest's kernel (virtiofs as a module)
#   fuse3                    /dev/fuse tooling for --mount
#   gcc pkg-config           C parts of crates (blake3's assembly)
#   g++                      libFuzzer, for the fuzz targets (fuzz/)
#   the shellcheck linter    checks the scripts (scripts/test.sh)
#   debootstrap e2fsprogs    the systemd test guest's Debian 12 root disk
#   initramfs-tools          and its initramfs (scripts/systemd-guest/)
#
# Rust itself (cargo, rustc, rustfmt, clippy) is expected from rustup;
# cargo-deb (the Debian package) is installed, pinned, by scripts/build-deb.sh.
set -euo pipefail
# nix-bin: nix-instantiate, which evaluates the NixOS module, package.nix and
# flake.nix with the nixpkgs library (scripts/check-nix.sh).
nix_packages=(nix-bin)

packages=(qemu-system-x86 attr busybox-static cpio linux-image-cloud-amd64 fuse3 gcc g++ pkg-config shellcheck
  debootstrap e2fsprogs initramfs-tools)
missing=()
for p in "${packages[@]}" "${nix_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "+ apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
# cargo-fuzz runs the fuzz targets (scripts/fuzz-smoke.sh); pinned.
cargo_fuzz_version=0.13.2
cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version" \
  || cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || echo "warning: /dev/fuse missing; FUSE tests will fail" >&2
