#!/usr/bin/env bash
# profile-guest-walk.sh — what a guest's metadata walk and the cold read right
# after it ask of the daemon, and what they cost the guest: the FUSE requests
# by opcode (count and the daemon's time in them, from --metrics-file) and
# the store calls of tvix-virtiofsd, with its default options and with
# --prefetch-bytes 0, optionally of an older build of it too (BASE_BIN: a
# before / after in one run), next to `tvix-store virtiofs` and `snix-store
# virtiofs` (guest times only: they export no counters). Every row reads the
# same tree from a real store daemon on local disk: ours against tvix-store
# and (--store-protocol snix) snix-store, each peer against its own kind.
#
# Per row and repetition two guest boots, each with a fresh daemon and an
# empty cache:
#   walk   guest caches dropped; find DIR -type f | xargs stat -c %s over
#          one directory of FLAT entries (count and byte total checked)
#          then the same walk again without dropping anything (again: the
#          guest's own share, its dentries and inodes being cached)
#   read   the same walk, then guest caches dropped and dd bs=1M of a
#          BIG_MB file in another store path (the pairing of bench-peers),
#          its sha256 checked afterwards
# The read's requests are the second boot's minus the first's.
#
# Usage: scripts/profile-guest-walk.sh
#
# Env:
#   REPS=1  FLAT=20000  BIG_MB=24
#   VARIANTS='default;--prefetch-bytes 0'  our option sets, ';'-separated
#             ("default": no extra options)
#   BASE_BIN=   another tvix-virtiofsd binary (say, a release build of an
#             older commit): its rows run with the same option sets
#   TVIX_STORE_BIN=, SNIX_STORE_BIN=  as bench-peers.sh (without snix-store
#             its rows are left out)
#   ACCEL=tcg|kvm  PROFILE=release|dev  NO_BUILD=1  TIMEOUT=600  KEEP=1
#
# Needs root (QEMU, drop_caches). The markdown result goes to stdout.
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

[ $# = 0 ] || usage
[ "$(id -u)" = 0 ] || die "needs root (QEMU, drop_caches)"
reps=${REPS:-1} nflat=${FLAT:-20000} big_mib=${BIG_MB:-24} TIMEOUT=${TIMEOUT:-600}
for v in "$reps" "$nflat" "$big_mib"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "REPS, FLAT, BIG_MB: positive integers, not $v"
done
export ACCEL=${ACCEL:-tcg}
variants_text=${VARIANTS:-default;--prefetch-bytes 0}
IFS=';' read -r -a variants <<<"$variants_text"
base_bin=${BASE_BIN:-}
[ -z "$base_bin" ] || [ -x "$base_bin" ] || die "BASE_BIN is not an executable: $base_bin"
big=f${big_mib}M.bin

tvix_bin=$(bench_real_bin tvix) || die "no tvix-store binary (TVIX_STORE_BIN, PATH, $REPO/../shared/ref/bin)"
snix_bin=$(bench_real_bin snix) || { snix_bin=; log "WARNING: no snix-store binary: its rows are left out"; }
kinds=(tvix ${snix_bin:+snix})
bench_build "${PROFILE:-release}"
scripts/vm/build-guest.sh >&2
bench_workdir
log "work dir $work"

tree=$work/tree
mkdir -p "$tree/bench-big"
head -c "$((big_mib << 20))" /dev/urandom >"$tree/bench-big/$big"
big_sha=$(sha256sum "$tree/bench-big/$big" | cut -d ' ' -f 1)
bench_gen_flat "$tree/bench-flat" "$nflat"
find_want=$(find "$tree/bench-flat" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { print n, s }')

# one store per kind; every row of a kind reads the same store paths
declare -A addr=()
for k in "${kinds[@]}"; do
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
walk="${guest_lib}drop; t0=\$(now); r=\$(find '$flat' -type f | xargs stat -c %s | awk '{ n++; s += \$1 } END { print n + 0, s + 0 }'); t1=\$(now); echo \"T walk \$t0 \$t1 \$r\"; t0=\$(now); r=\$(find '$flat' -type f | xargs stat -c %s | awk '{ n++; s += \$1 } END { print n + 0, s + 0 }'); t1=\$(now); echo \"T again \$t0 \$t1 \$r\""
read_big="drop; t0=\$(now); dd if='$bigp' of=/dev/null bs=1M 2>/dev/null; t1=\$(now); echo \"T read \$t0 \$t1\"; echo \"SHA \$(sha256sum '$bigp' | cut -d ' ' -f 1)\""

# rows: "<name> <binary|peer> <kind> <variant index>"
rows=()
for k in "${kinds[@]}"; do
  for i in "${!variants[@]}"; do
    [ -z "$base_bin" ] || rows+=("base$((i + 1))-$k $base_bin $k $i")
    rows+=("ours$((i + 1))-$k $bindir/tvix-virtiofsd $k $i")
  done
  rows+=("$k-virtiofs peer $k -")
done

# boot ID BIN KIND VARIANT: one guest boot; ID ends in .walk or .read
boot() {
  local name=$1 bin=$2 kind=$3 variant=$4 id=$work/$1 cmd=$walk sock dpid
  [[ $name != *.read.* ]] || cmd+="; $read_big"
  sock=$id.sock
  rm -f "$sock"
  if [ "$bin" = peer ]; then
    local peer=$tvix_bin
    [ "$kind" = tvix ] || peer=$snix_bin
    "$peer" --otlp=false virtiofs "$sock" --blob-service-addr "${addr[$kind]}" \
      --directory-service-addr "${addr[$kind]}" --path-info-service-addr "${addr[$kind]}" >"$id.log" 2>&1 &
  else
    local -a args=()
    read -r -a args <<<"${variants[$variant]/#default/}"
    [ "$kind" = tvix ] || args+=(--store-protocol "$kind")
    mkdir -p "$id.cache"
    "$bin" --socket-path "$sock" --store "${addr[$kind]}" --cache-dir "$id.cache" \
      --metrics-file "$id.prom" "${args[@]}" 2>"$id.log" &
  fi
  dpid=$!
  pids+=("$dpid")
  bench_wait_socket "$sock" "$id.log"
  scripts/vm/run-guest.sh "$sock" bench "$cmd" "$TIMEOUT" >"$id.out" 2>"$id.err" ||
    { cat "$id.err" >&2; die "$name: guest run failed"; }
  if [ "$bin" = peer ]; then
    kill "$dpid" 2>/dev/null || true
    wait "$dpid" 2>/dev/null || true
  else
    bench_wait_exit "$dpid" "$name daemon"
  fi
  bench_forget "$dpid"
  [ "$(awk '$2 == "walk" || $2 == "again" { print $5, $6 }' "$id.out" | uniq)" = "$find_want" ] ||
    die "$name: walk answered '$(cat "$id.out")', expected '$find_want'"
  [[ $name != *.read.* ]] || [ "$(sed -n 's/^SHA //p' "$id.out")" = "$big_sha" ] ||
    die "$name: sha256 of $big is not $big_sha: $(cat "$id.out")"
}

# results: "<row> <rep> <pass> <seconds>"
results=$work/results
: >"$results"
t_start=$(date +%s)
for rep in $(seq "$reps"); do
  for r in "${rows[@]}"; do
    read -r name bin kind variant <<<"$r"
    log "rep $rep/$reps: $name"
    boot "$name.walk.$rep" "$bin" "$kind" "$variant"
    boot "$name.read.$rep" "$bin" "$kind" "$variant"
    awk -v r="$name" -v p="$rep" '$1 == "T" && ($2 == "walk" || $2 == "again") { printf "%s %s %s %.2f\n", r, p, $2, $4 - $3 }' "$work/$name.walk.$rep.out" >>"$results"
    awk -v r="$name" -v p="$rep" '$1 == "T" && $2 == "read" { printf "%s %s read %.2f\n", r, p, $4 - $3 }' "$work/$name.read.$rep.out" >>"$results"
  done
done
t_total=$(($(date +%s) - t_start))

vals() { awk -v r="$1" -v w="$2" '$1 == r && $3 == w { print $4 }' "$results"; }
# ratio A B PASS: per repetition B's time / A's (> 1: A faster); median first
ratio() {
  local r
  r=$(join <(awk -v r="$1" -v w="$3" '$1 == r && $3 == w { print $2, $4 }' "$results" | sort) \
    <(awk -v r="$2" -v w="$3" '$1 == r && $3 == w { print $2, $4 }' "$results" | sort) |
    awk '{ printf "%.2f\n", $3 / ($2 > 0 ? $2 : 0.01) }' | sort -g)
  [ -n "$r" ] || { echo "–"; return; }
  # shellcheck disable=SC2046,SC2086  # one number per word
  echo "**$(median2 $r)** ($(join_list $r))"
}
# ops ID: "opcode count seconds" per FUSE opcode, and "store:<method> count seconds"
ops() {
  awk '
    function label(k) { match($0, k "=\"[^\"]+\""); return substr($0, RSTART + length(k) + 2, RLENGTH - length(k) - 3) }
    /^tvix_virtiofsd_fuse_requests_total\{/ { n[label("opcode")] += $NF }
    /^tvix_virtiofsd_fuse_request_duration_seconds_sum\{/ { s[label("opcode")] += $NF }
    /^tvix_virtiofsd_store_requests_total\{/ { n["store:" label("method")] += $NF }
    /^tvix_virtiofsd_store_request_duration_seconds_sum\{/ { s["store:" label("method")] += $NF }
    END { for (o in n) printf "%s %d %.3f\n", o, n[o], s[o] }' "$work/$1.prom" | sort
}

echo "## Profile of a guest's metadata walk and the cold read after it"
echo
echo "\`REPS=$reps FLAT=$nflat BIG_MB=$big_mib VARIANTS='$variants_text'${base_bin:+ BASE_BIN=…} ACCEL=$ACCEL scripts/profile-guest-walk.sh\`, $(date -u +%F), at $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src || echo ' (modified)'), ${PROFILE:-release} build; host $(nproc) CPUs, load average before / after $(cut -d ' ' -f 1 /proc/loadavg) (1 min). Guest boots took $t_total s."
echo
for i in "${!variants[@]}"; do echo "- ours$((i + 1))${base_bin:+, base$((i + 1))}: \`${variants[$i]}\`"; done
[ -z "$base_bin" ] || echo "- base: $base_bin ($("$base_bin" --version 2>/dev/null | head -n 1))"
echo "- KIND-virtiofs: \`KIND-store --otlp=false virtiofs SOCK\` with the three service addresses of the same store"
echo
echo "Median guest seconds (walk: find + stat of $nflat entries; walk again: the same at once, nothing dropped: ours is asked nothing, its 24 h timeouts keep every entry; read: dd of $big_mib MiB right after the walk), and the peers' time over ours per repetition (> 1: ours faster):"
echo
head="| row | walk s | walk again s | read s |" sep="|---|---:|---:|---:|"
for k in "${kinds[@]}"; do head+=" walk vs $k-virtiofs | read vs $k-virtiofs |"; sep+="---|---|"; done
echo "$head"
echo "$sep"
for r in "${rows[@]}"; do
  read -r name _ kind _ <<<"$r"
  # shellcheck disable=SC2046  # one number per word
  line="| $name | $(median2 $(vals "$name" walk)) | $(median2 $(vals "$name" again)) | $(median2 $(vals "$name" read)) |"
  for k in "${kinds[@]}"; do
    if [[ $name == *-virtiofs ]] || [ "$kind" != "$k" ]; then line+=" | |"; continue; fi
    line+=" $(ratio "$name" "$k-virtiofs" walk) | $(ratio "$name" "$k-virtiofs" read) |"
  done
  echo "$line"
done
if [ "${#variants[@]}" -gt 1 ]; then
  echo
  echo "Option set 1 against each other set, same binary and kind (the other's time / set 1's, < 1: set 1 costs the guest time):"
  echo
  for r in "${rows[@]}"; do
    read -r name _ <<<"$r"
    [[ $name =~ ^(ours|base)1- ]] || continue
    for i in "${!variants[@]}"; do
      [ "$i" != 0 ] || continue
      other=${name/1-/$((i + 1))-}
      echo "- $name vs $other: walk $(ratio "$name" "$other" walk), read $(ratio "$name" "$other" read)"
    done
  done
fi
echo
echo "FUSE requests (count, the daemon's seconds in them) and store calls (count, seconds), repetition 1:"
echo
for r in "${rows[@]}"; do
  read -r name _ _ _ <<<"$r"
  [ -f "$work/$name.walk.1.prom" ] || continue
  echo "- $name walk: $(ops "$name.walk.1" | awk '{ printf "%s%s %s (%s s)", (NR > 1 ? ", " : ""), $1, $2, $3 }')"
  echo "- $name read (minus walk): $(join -a 1 <(ops "$name.read.1") <(ops "$name.walk.1") |
    awk '{ d = $2 - ($4 + 0); t = $3 - ($5 + 0); if (d > 0) printf "%s%s %d (%.3f s)", (c++ ? ", " : ""), $1, d, t }')"
done
