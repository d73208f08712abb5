#!/usr/bin/env bash
# check-deploy.sh — checks of the deployment files (systemd/, nixos-module.nix)
# that need no running systemd:
#   1. systemd-analyze verify of the unit templates (ExecStart pointed at the
#      built binary in a temporary copy) must print nothing and succeed;
#   2. systemd-analyze security --offline=yes: overall exposure <= 1.5 for
#      both service templates, whose hardening blocks must be identical;
#   2b. each service's mount view: the cache and runtime directories are
#      empty tmpfs with only the shared objects and the instance's own
#      directories bound in, and the daemon is told its instance (the
#      namespace itself is exercised by tests/tenants_mount_view.rs);
#   3. systemd-sysusers creates the static user in a scratch root, from the
#      directory the package installs it in, which Debian must ship;
#   4. every --flag the units and the module pass exists in the binary;
#   5. nix-instantiate parses nixos-module.nix and evaluates
#      it, package.nix and flake.nix with the real nixpkgs library
#      (scripts/check-nix.sh; tests/nixos/eval-module.nix compares the
#      module's services with the units' hardening and mount view blocks,
#      and the services written out pass verify and exposure <= 1.5 too).
# Debian 12, as root: installs systemd if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

max_exposure=1.5
bin=$PWD/target/debug/tvix-virtiofsd
units=(tvix-virtiofsd@.service tvix-virtiofsd-activated@.service tvix-virtiofsd@.socket)
services=(tvix-virtiofsd@.service tvix-virtiofsd-activated@.service)

missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "+ apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
[ -x "$bin" ] || cargo build --locked --bin tvix-virtiofsd

fail() { echo "check-deploy: FAIL: $*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. verify, on copies whose ExecStart is the built binary.
mkdir "$tmp/units"
for u in "${units[@]}"; do
  sed "s|/usr/bin/tvix-virtiofsd|$bin|" "systemd/$u" >"$tmp/units/$u"
done
grep -q "$bin" "$tmp/units/tvix-virtiofsd@.service" || fail "ExecStart path not substituted"
out=$(cd "$tmp" && systemd-analyze verify --man=no "${units[@]/#/$tmp/units/}" 2>&1) ||
  fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify printed: $out"
echo "verify: ${units[*]} ok"

# 2. exposure, and the same hardening in both service templates.
for s in "${services[@]}"; do
  report=$(systemd-analyze security --offline=yes --no-pager "$tmp/units/$s" 2>&1) ||
    fail "systemd-analyze security $s: $report"
  score=$(sed -n 's/.*Overall exposure level for .*: \([0-9][0-9.]*\) .*/\1/p' <<<"$report")
  [ -n "$score" ] || fail "no exposure level for $s in: $report"
  awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }' ||
    fail "$s: exposure $score > $max_exposure:
$(grep '✗' <<<"$report")"
  echo "security: $s exposure $score (<= $max_exposure)"
done
block() { sed -n '/^# --- hardening/,/^# --- end of hardening/p' "systemd/$1"; }
[ "$(block "${services[0]}" | wc -l)" -gt 30 ] || fail "no hardening block in ${services[0]}"
diff <(block "${services[0]}") <(block "${services[1]}") >&2 ||
  fail "hardening blocks of ${services[*]} differ"

# 2b. mount view and instance, per service.
for s in "${services[@]}"; do
  u=systemd/$s
  grep -qx 'TemporaryFileSystem=/var/cache/tvix-virtiofsd:ro /run/tvix-virtiofsd:ro' "$u" ||
    fail "$s: no TemporaryFileSystem= over the cache and runtime directories"
  grep -qx 'BindPaths=/var/cache/tvix-virtiofsd/v2/objects /var/cache/tvix-virtiofsd/v2/instances/%i' "$u" ||
    fail "$s: BindPaths= must bring in exactly the shared objects and the instance's mappings"
  grep -q -- '--instance %i' "$u" || fail "$s: ExecStart lacks --instance %i"
  if grep -E '^BindPaths=.*/run/tvix-virtiofsd' "$u" | grep -qv '/run/tvix-virtiofsd/%i$'; then
    fail "$s: binds a runtime directory other than the instance's own"
  fi
done
grep -qx 'ListenStream=/run/tvix-virtiofsd/%i/vhost-user.sock' systemd/tvix-virtiofsd@.socket ||
  fail "the socket unit must listen in the instance's own directory"
echo "mount view: ${services[*]} see only the shared objects and their own instance"

# 3. sysusers.d file, where the package puts it. That directory must be one
# Debian itself ships (a scratch root has every directory one makes, so
# only the real system can tell that, e.g., /etc/sysusers.d is missing).
sysusers_dir=$(sed -n 's|^ *\["systemd/tvix-virtiofsd.conf", "\([^"]*\)/\?".*|\1|p' Cargo.toml)
sysusers_dir=/${sysusers_dir%/}
[ "$sysusers_dir" = /usr/lib/sysusers.d ] || fail "Cargo.toml installs the sysusers file in '$sysusers_dir'"
dpkg -S "$sysusers_dir" >/dev/null 2>&1 || fail "$sysusers_dir is not shipped by any installed package"
mkdir -p "$tmp/root/etc" "$tmp/root$sysusers_dir"
cp systemd/tvix-virtiofsd.conf "$tmp/root$sysusers_dir/"
out=$(systemd-sysusers --root="$tmp/root" 2>&1) || fail "systemd-sysusers: $out"
grep -q '^tvix-virtiofsd:' "$tmp/root/etc/passwd" || fail "sysusers did not create the user"
grep -q '^tvix-virtiofsd:' "$tmp/root/etc/group" || fail "sysusers did not create the group"
echo "sysusers: user and group tvix-virtiofsd"

# 4. flags used by the units and the module exist. The units' ExecStart and
# its continuation lines only (not comments or other settings).
help=$("$bin" --help)
flags=$( (
  for u in systemd/*.service; do
    # ExecStart= up to the first line without a trailing backslash.
    awk '/^ExecStart=/ { on = 1 } on { print; if (!/\\$/) on = 0 }' "$u"
  done | grep -oE -- '--[a-z][a-z-]+'
  grep -ohE -- '"--[a-z][a-z-]+"' nixos-module.nix systemd/nixos/*.nix tests/nixos/eval-module.nix | tr -d '"'
) | sort -u)
[ "$(wc -w <<<"$flags")" -gt 10 ] || fail "found too few flags: $flags"
known=0
for f in $flags; do
  grep -qE -- "(^|[ ,])$f([ ,=]|$)" <<<"$help" || fail "$f is not a flag of tvix-virtiofsd"
  known=$((known + 1))
done
echo "flags: $known of $(wc -w <<<"$flags") known to the binary"

# 5. the NixOS module against these units, the package and the flake.
scripts/check-nix.sh
