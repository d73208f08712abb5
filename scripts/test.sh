#!/usr/bin/env bash
# test.sh — the whole test suite: formatting, lints, unit tests, and the
# end-to-end tests (real gRPC fixture store, real FUSE mounts, real
# vhost-user, a real QEMU guest). Needs root (FUSE mounts, drop_caches).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
shellcheck -x -S warning scripts/*.sh scripts/vm/*.sh .ci/run
scripts/vm/build-guest.sh
# The fixture store's binary: `cargo test` builds only its unit tests, and
# the integration tests spawn it.
cargo build --locked --workspace --bins
cargo test --locked --workspace --all-targets
# Every fuzz target briefly on its seed corpus (docs/fuzzing.md).
scripts/fuzz-smoke.sh
# Deployment files: systemd units (verify, exposure), NixOS module (eval).
scripts/check-deploy.sh
# The benchmark harness must keep working: a tiny run of it.
scripts/bench-guest-read.sh --smoke
scripts/bench-cache.sh --smoke
scripts/bench-vm.sh --smoke
scripts/bench-peers.sh --smoke
