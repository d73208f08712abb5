#!/usr/bin/env bash
# profile-guest-walk.sh — what a guest's metadata walk and the cold read after
# it ask of the daemon: the FUSE requests by opcode (count and the daemon's
# time in them, from --metrics-file), the store calls, and the guest's time,
# for tvix-virtiofsd with one or more sets of options, next to
# `snix-store virtiofs` (guest time only: it exports no counters). Every row
# reads the same tree from its own real store daemon on local disk.
#
# Per row two guest boots, each with a fresh daemon and an empty cache:
#   walk   guest caches dropped; find DIR -type f | xargs stat -c %s over
#          one directory of FLAT entries (count and byte total checked)
#   read   the same walk, then guest caches dropped and dd bs=1M of a
#          BIG_MB file in another store path (as bench-peers pairs them)
# The read's requests are the second boot's minus the first's.
#
# Usage: scripts/profile-guest-walk.sh
#
# Env:
#   FLAT=20000  BIG_MB=24
#   VARIANTS='default;--prefetch-bytes 0'  our option sets, ';'-separated
#             ("default": no extra options)
#   TVIX_STORE_BIN=, SNIX_STORE_BIN=  as bench-peers.sh (without snix-store
#             its row is left out)
#   ACCEL=tcg|kvm  PROFILE=release|dev  NO_BUILD=1  TIMEOUT=600  KEEP=1
#
# Needs root (QEMU, drop_caches). The markdown result goes to stdout.
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

[ $# = 0 ] || usage
[ "$(id -u)" = 0 ] || die "needs root (QEMU, drop_caches)"
nflat=${FLAT:-20000} big_mib=${BIG_MB:-24} TIMEOUT=${TIMEOUT:-600}
export ACCEL=${ACCEL:-tcg}
IFS=';' read -r -a variants <<<"${VARIANTS:-default;--prefetch-bytes 0}"
big=f${big_mib}M.bin

bench_real_bin tvix >/dev/null || die "no tvix-store binary (TVIX_STORE_BIN, PATH, $REPO/../shared/ref/bin)"
snix_bin=$(bench_real_bin snix) || { snix_bin=; log "WARNING: no snix-store binary: its row is left out"; }
bench_build "${PROFILE:-release}"
scripts/vm/build-guest.sh >&2
bench_workdir
log "work dir $work"

tree=$work/tree
mkdir -p "$tree/bench-big"
head -c "$((big_mib << 20))" /dev/urandom >"$tree/bench-big/$big"
bench_gen_flat "$tree/bench-flat" "$nflat"
find_want=$(find "$tree/bench-flat" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { print n, s }')

# one store per kind; our rows and the peer's read the same store paths
declare -A addr=()
for k in tvix ${snix_bin:+snix}; do
  mkdir -p "$work/$k"
  work_saved=$work
  work=$work/$k
  bench_start_real_store "$k" "$tree"
  work=$work_saved
  addr[$k]=grpc+unix://$work/$k/$k.sock
done
flat=$(work=$work/tvix bench_store_path tvix bench-flat)
bigp=$(work=$work/tvix bench_store_path tvix bench-big)/$big

guest_lib='now() { cut -d " " -f 1 /proc/uptime; }; drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }; '
walk="${guest_lib}drop; t0=\$(now); r=\$(find '$flat' -type f | xargs stat -c %s | awk '{ n++; s += \$1 } END { print n + 0, s + 0 }'); t1=\$(now); echo \"T walk \$t0 \$t1 \$r\""
read_big="drop; t0=\$(now); dd if='$bigp' of=/dev/null bs=1M 2>/dev/null; t1=\$(now); echo \"T read \$t0 \$t1\""

# boot ID KIND ARGS... : one guest boot; ARGS empty for the peer
boot() {
  local name=$1 id=$work/$1 kind=$2 cmd=$walk sock dpid
  shift 2
  [[ $id != *.read ]] || cmd+="; $read_big"
  sock=$id.sock
  rm -f "$sock"
  if [ "$kind" = peer ]; then
    "$snix_bin" --otlp=false virtiofs "$sock" --blob-service-addr "${addr[snix]}" \
      --directory-service-addr "${addr[snix]}" --path-info-service-addr "${addr[snix]}" >"$id.log" 2>&1 &
  else
    local -a proto=()
    [ "$kind" = tvix ] || proto=(--store-protocol "$kind")
    mkdir -p "$id.cache"
    "$bindir/tvix-virtiofsd" --socket-path "$sock" --store "${addr[$kind]}" "${proto[@]}" \
      --cache-dir "$id.cache" --metrics-file "$id.prom" "$@" 2>"$id.log" &
  fi
  dpid=$!
  pids+=("$dpid")
  bench_wait_socket "$sock" "$id.log"
  scripts/vm/run-guest.sh "$sock" bench "$cmd" "$TIMEOUT" >"$id.out" 2>"$id.err" ||
    { cat "$id.err" >&2; die "$name: guest run failed"; }
  if [ "$kind" = peer ]; then
    kill "$dpid" 2>/dev/null || true
    wait "$dpid" 2>/dev/null || true
  else
    bench_wait_exit "$dpid" "$name daemon"
  fi
  bench_forget "$dpid"
  [ "$(awk '$2 == "walk" { print $5, $6 }' "$id.out")" = "$find_want" ] ||
    die "$name: walk answered '$(cat "$id.out")', expected '$find_want'"
}

# secs ID PASS: the guest's seconds for PASS
secs() { awk -v p="$2" '$1 == "T" && $2 == p { printf "%.2f", $4 - $3 }' "$work/$1.out"; }
# ops ID: "opcode count seconds" per FUSE opcode, and "store:<call> count"
ops() {
  awk '
    /^tvix_virtiofsd_fuse_requests_total\{/ { match($0, /opcode="[^"]+"/); o = substr($0, RSTART + 8, RLENGTH - 9); n[o] += $NF }
    /^tvix_virtiofsd_fuse_request_duration_seconds_sum\{/ { match($0, /opcode="[^"]+"/); o = substr($0, RSTART + 8, RLENGTH - 9); s[o] += $NF }
    /^tvix_virtiofsd_store_requests_total\{/ { match($0, /method="[^"]+"/); m = substr($0, RSTART + 8, RLENGTH - 9); n["store:" m] += $NF }
    END { for (o in n) printf "%s %d %.3f\n", o, n[o], s[o] }' "$work/$1.prom" | sort
}

rows=()
i=0
for v in "${variants[@]}"; do
  i=$((i + 1))
  read -r -a args <<<"${v/#default/}"
  for k in tvix ${snix_bin:+snix}; do
    rows+=("ours$i-$k")
    log "ours$i-$k: ${v}"
    boot "ours$i-$k.walk" "$k" "${args[@]}"
    boot "ours$i-$k.read" "$k" "${args[@]}"
  done
done
if [ -n "$snix_bin" ]; then
  rows+=(snix-virtiofs)
  log "snix-store virtiofs"
  boot snix-virtiofs.walk peer
  boot snix-virtiofs.read peer
fi

echo "## Profile of a guest's metadata walk and the cold read after it"
echo
echo "\`FLAT=$nflat BIG_MB=$big_mib VARIANTS='${VARIANTS:-default;--prefetch-bytes 0}' scripts/profile-guest-walk.sh\`, $(date -u +%F), ACCEL=$ACCEL, ${PROFILE:-release} build. Our rows: oursN-KIND is the N-th option set against KIND-store."
echo
i=0
for v in "${variants[@]}"; do i=$((i + 1)); echo "- ours$i: \`${v}\`"; done
echo
echo "| row | walk s | read s (after the walk) |"
echo "|---|---:|---:|"
for r in "${rows[@]}"; do echo "| $r | $(secs "$r.walk" walk) | $(secs "$r.read" read) |"; done
echo
echo "FUSE requests (count, daemon seconds) and store calls:"
echo
for r in "${rows[@]}"; do
  [ -f "$work/$r.walk.prom" ] || continue
  echo "- $r walk: $(ops "$r.walk" | awk '{ printf "%s%s %s (%s s)", (NR > 1 ? ", " : ""), $1, $2, $3 }')"
  echo "- $r read (minus walk): $(join -a 1 <(ops "$r.read") <(ops "$r.walk") |
    awk '{ d = $2 - ($4 + 0); t = $3 - ($5 + 0); if (d > 0) printf "%s%s %d (%.3f s)", (c++ ? ", " : ""), $1, d, t }')"
done
