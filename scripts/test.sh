#!/usr/bin/env bash
# test.sh — the whole test suite: formatting, lints, unit tests, and the
# end-to-end tests (real gRPC fixture store, real FUSE mounts, real
# vhost-user, a real QEMU guest). Needs root (FUSE mounts, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# The systemd guest's Debian rootfs (tests/systemd_guest.rs): mostly
# download and unpacking, so it is built while the lints compile.
mkdir -p target
scripts/systemd-guest/build-rootfs.sh >target/build-rootfs.log 2>&1 &
rootfs_build=$!
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
shellcheck -x -S warning scripts/*.sh scripts/vm/*.sh scripts/systemd-guest/*.sh scripts/boot-guest/*.sh \
  scripts/systemd-guest/guest/*.sh .ci/run
shellcheck -s sh -S warning scripts/debian/postinst scripts/debian/prerm scripts/debian/postrm \
  scripts/boot-guest/init scripts/boot-guest/boot-marker
scripts/vm/build-guest.sh
# The fixture store's binary: `cargo test` builds only its unit tests, and
# the integration tests spawn it.
cargo build --locked --workspace --bins
# The Debian package of that build, which tests/systemd_guest.rs installs
# (this also installs the pinned cargo-deb).
scripts/build-deb.sh --dev >/dev/null
wait "$rootfs_build" || { cat target/build-rootfs.log >&2; exit 1; }
cargo test --locked --workspace --all-targets
# Every fuzz target briefly (10 s) on its seed corpus (docs/fuzzing.md).
scripts/fuzz-smoke.sh 10
# Deployment files: systemd units (verify, exposure, flags) and, through
# scripts/check-nix.sh, the NixOS module, package.nix and flake.nix evaluated
# with the real nixpkgs library.
scripts/check-deploy.sh
# The benchmark harness must keep working: a tiny run of it.
scripts/bench-guest-read.sh --smoke
scripts/bench-cache.sh --smoke
scripts/bench-vm.sh --smoke
scripts/bench-peers.sh --smoke
scripts/bench-loadgen.sh --smoke
scripts/bench-boot.sh --smoke
