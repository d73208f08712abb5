#!/usr/bin/env bash
# check-nix.sh — evaluates nixos-module.nix, package.nix and flake.nix with
# the real nixpkgs library (../shared/nixpkgs-lib/lib beside the repository,
# or $NIXPKGS_LIB) and Debian's nix-instantiate, without a Nix store, a
# daemon or the network: tests/nixos/eval-{module,package,flake}.nix throw
# on any failed check. Nothing is built. UNIT_DIR=<dir> compares the module
# with the units in <dir> instead of systemd/.
# Under CI=1 a missing library or nix-instantiate fails; otherwise it skips.
set -euo pipefail
cd "$(dirname "$0")/.."

lib_dir=${NIXPKGS_LIB:-../shared/nixpkgs-lib/lib}
unit_dir=${UNIT_DIR:-systemd}

skip_or_fail() {
  if [ "${CI:-}" = 1 ]; then
    echo "check-nix: FAIL: $*" >&2
    exit 1
  fi
  echo "check-nix: SKIP: $*" >&2
  exit 0
}
[ -f "$lib_dir/default.nix" ] ||
  skip_or_fail "no nixpkgs library at $lib_dir (CI clones the repository next to shared/; or set NIXPKGS_LIB)"
command -v nix-instantiate >/dev/null || skip_or_fail "nix-instantiate missing: run scripts/install-deps.sh (nix-bin)"

# A dummy store: evaluation only, no /nix/store, no daemon, no build users.
nix=(nix-instantiate --store dummy:// --option build-users-group "" --option allow-import-from-derivation false)
for f in nixos-module.nix package.nix flake.nix tests/nixos/*.nix; do
  "${nix[@]}" --parse "$f" >/dev/null || { echo "check-nix: FAIL: $f does not parse" >&2; exit 1; }
done

evaluate() {
  local what=$1
  shift
  local out
  out=$(timeout 60 "${nix[@]}" --eval --strict --arg nixpkgsLib "$(realpath "$lib_dir")" "$@" 2>&1) || {
    echo "check-nix: FAIL: $what:" >&2
    echo "$out" >&2
    exit 1
  }
  echo "nix: $what: $out"
}
evaluate "nixos-module.nix against $unit_dir/" tests/nixos/eval-module.nix --arg unitDir "$(realpath "$unit_dir")"
evaluate package.nix tests/nixos/eval-package.nix -A passed
evaluate flake.nix tests/nixos/eval-flake.nix
