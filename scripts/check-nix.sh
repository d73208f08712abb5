#!/usr/bin/env bash
# check-nix.sh — evaluates nixos-module.nix, package.nix and flake.nix with
# the real nixpkgs library (../shared/nixpkgs-lib/lib beside the repository,
# or $NIXPKGS_LIB) and Debian's nix-instantiate, without a Nix store, a
# daemon or the network: tests/nixos/eval-{module,package,flake}.nix throw
# on any failed check. Nothing is built. UNIT_DIR=<dir> compares the module
# with the units in <dir> instead of systemd/. With systemd-analyze and the
# built daemon (as scripts/check-deploy.sh provides them), the module's
# services, written out as NixOS writes them, must pass systemd-analyze
# verify and an exposure of at most 1.5, as the units do.
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
for f in nixos-module.nix systemd/nixos/*.nix package.nix flake.nix tests/nixos/*.nix; do
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

# package.nix's postInstall, run by bash on this tree into a scratch $out:
# the units, the sysusers file and the docs land where NixOS and systemd
# look, pointing at the package's binary and at coreutils.
install_script=$(timeout 60 nix --extra-experimental-features nix-command "${nix[@]:1}" eval --raw \
  --file tests/nixos/eval-package.nix --arg nixpkgsLib "$(realpath "$lib_dir")" postInstall)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(
  set -euo pipefail
  eval "$install_script"
) || { echo "check-nix: FAIL: package.nix postInstall failed" >&2; exit 1; }
units=$out/lib/systemd/system
for f in "$units/tvix-virtiofsd@.service" "$units/tvix-virtiofsd-activated@.service" \
  "$units/tvix-virtiofsd@.socket" "$out/lib/sysusers.d/tvix-virtiofsd.conf" \
  "$out/share/doc/tvix-virtiofsd/README.md" "$out/share/doc/tvix-virtiofsd/systemd.md"; do
  [ -s "$f" ] || { echo "check-nix: FAIL: postInstall did not install $f" >&2; exit 1; }
done
grep -q "^ExecStart=$out/bin/tvix-virtiofsd " "$units/tvix-virtiofsd@.service" ||
  { echo "check-nix: FAIL: installed unit's ExecStart is not the package's binary" >&2; exit 1; }
if grep -nE '(^|[= ])/(usr/(local/)?)?s?bin/' "$units"/*.service >&2; then
  echo "check-nix: FAIL: installed units still name host paths (above)" >&2
  exit 1
fi
echo "nix: package.nix postInstall: $(find "$out" -type f | wc -l) files, units point into the package"

# The module's services as unit files: systemd must accept every line, and
# their exposure must be that of the units.
bin=$PWD/target/debug/tvix-virtiofsd
if ! command -v systemd-analyze >/dev/null || [ ! -x "$bin" ]; then
  skip_or_fail "systemd-analyze or $bin missing: the module's services were not verified (scripts/check-deploy.sh provides both)"
fi
mkdir -p "$out/pkg/bin" "$out/generated"
ln -s "$bin" "$out/pkg/bin/tvix-virtiofsd"
timeout 60 nix --extra-experimental-features nix-command "${nix[@]:1}" eval --raw \
  --file tests/nixos/render-units.nix --arg nixpkgsLib "$(realpath "$lib_dir")" text |
  sed -e "s|/nix/store/11111111111111111111111111111111-tvix-virtiofsd-0.1.0|$out/pkg|g" \
    -e "s|/nix/store/00000000000000000000000000000000-coreutils|/usr|g" |
  awk -v dir="$out/generated" '/^### / { file = dir "/" $2; next } { print > file }'
generated=("$out"/generated/*.service)
[ ${#generated[@]} -ge 3 ] && [ -f "$out/generated/tvix-virtiofsd-vm3.socket" ] ||
  { echo "check-nix: FAIL: the sample's services and socket were not rendered" >&2; exit 1; }
report=$(cd "$out" && systemd-analyze verify --man=no "$out"/generated/* 2>&1) &&
  [ -z "$report" ] || { echo "check-nix: FAIL: systemd-analyze verify of the module's units: $report" >&2; exit 1; }
for unit in "${generated[@]}"; do
  report=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || {
    echo "check-nix: FAIL: systemd-analyze security $unit: $report" >&2
    exit 1
  }
  score=$(sed -n 's/.*Overall exposure level for .*: \([0-9][0-9.]*\) .*/\1/p' <<<"$report")
  awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' || {
    echo "check-nix: FAIL: $(basename "$unit"): exposure ${score:-unknown} > 1.5:" >&2
    grep '✗' <<<"$report" >&2
    exit 1
  }
  echo "nix: module's $(basename "$unit"): verified, exposure $score"
done
