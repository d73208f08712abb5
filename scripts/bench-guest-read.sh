#!/usr/bin/env bash
# bench-guest-read.sh — guest sequential read throughput of one file over
# virtio-fs: tvix-virtiofsd (through the fixture store) against the reference
# virtiofsd, in the same run, on the same host, with the same guest.
#
# Usage: scripts/bench-guest-read.sh [--write-docs] [--smoke] [--store KIND]
#   --write-docs  also write the result into docs/benchmarks.md, replacing
#                 only the section "## Guest sequential read, 64 MiB" (with
#                 a real store: "## Guest sequential read, 64 MiB, tvix-store"
#                 or "..., snix-store")
#   --smoke       4 MiB file, 1 repetition, no virtiofsd, dev-profile
#                 binaries: a quick check (CI) that the harness still works
#   --store KIND  the same as STORE=KIND
#
# Env:
#   STORE=tvix      the store our daemon reads from: tvix (default: the real
#                   tvix-store daemon on local disk, binary from
#                   $TVIX_STORE_BIN, PATH, then ../shared/ref/bin next to the
#                   repository), snix (snix-store, $SNIX_STORE_BIN; ours with
#                   --store-protocol snix) or fixture (tvix-fixture-store);
#                   without a real binary: the fixture, with a warning
#   REPS=3          repetitions; each boots one guest per row, in the order
#                   ours, virtiofsd --cache=always, virtiofsd --cache=never
#   ACCEL=tcg|kvm   passed to scripts/vm/run-guest.sh (default tcg)
#   NO_VIRTIOFSD=1  no baseline: only our figures (virtiofsd not installed)
#   VIRTIOFSD=      path of the reference daemon (default: PATH, then
#                   ~/.cargo/bin/virtiofsd; installed with cargo if missing)
#   PROFILE=        cargo profile of our binaries: release (default), or dev
#                   (default with --smoke: CI has built it for the tests)
#   NO_BUILD=1      do not run cargo; use the binaries already built
#   TIMEOUT=300     seconds per guest boot
#   KEEP=1          keep the work dir (target/bench/run.*) with all logs
#
# Per guest boot: a fresh daemon (both exit when QEMU disconnects), then in
# the guest: stat the file, drop caches, time `dd bs=1M` to /dev/null with
# /proc/uptime (10 ms resolution) = cold; time a second dd = warm. The first
# boot of every row also checks the file's sha256 against the host's.
# Fails (non-zero) if any guest run fails or reads a wrong number of bytes.
#
# Progress goes to stderr; the markdown result to stdout.
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SECTION="## Guest sequential read, 64 MiB"
DOC=docs/benchmarks.md

bench_args "$@"
bench_store_choice
# The real stores' figures go into a section of their own.
[ "$store_kind" = fixture ] || SECTION+=", $store_kind-store"

ACCEL=${ACCEL:-tcg}
TIMEOUT=${TIMEOUT:-300}
export ACCEL
if [ "$smoke" = 1 ]; then
  size_mib=4 reps=1 no_vfs=1 profile=${PROFILE:-dev}
else
  size_mib=64 reps=${REPS:-3} no_vfs=${NO_VIRTIOFSD:-0} profile=${PROFILE:-release}
fi
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer: $reps"
size_bytes=$((size_mib * 1048576))
file=f${size_mib}M.bin

# ---- build ----------------------------------------------------------------
bench_build "$profile"
scripts/vm/build-guest.sh >&2

# ---- reference daemon -----------------------------------------------------
vfs_bin=
[ "$no_vfs" = 1 ] || bench_virtiofsd

# ---- work tree --------------------------------------------------------------
bench_workdir

mkdir -p "$work/tree/bench-data"
head -c "$size_bytes" /dev/urandom >"$work/tree/bench-data/$file"
host_sha=$(sha256sum "$work/tree/bench-data/$file" | cut -d ' ' -f 1)
log "work dir $work: bench-data/$file, $size_mib MiB, sha256 $host_sha"

# One store for the whole run; our daemon starts once per boot.
bench_start_chosen_store store "$work/tree"
store_path=$(bench_store_path "$store_name" bench-data)
ours_proto=()
[ "$store_kind" != snix ] || ours_proto=(--store-protocol snix)
log "store path $store_path"

# ---- one guest boot ---------------------------------------------------------
# Guest output lines: SIZE <bytes>; READ <cold|warm> <records> <t0> <t1>
# (busybox dd prints no byte count: "64+0 records in" with bs=1M is exactly
# 64 MiB in full blocks, no short read);
# SHA256 <hex> (when asked).
guest_cmd() {  # guest_cmd PATH CHECKSUM(0|1)
  cat <<EOF
f='$1'
sz=\$(stat -c %s "\$f") || exit 3
echo "SIZE \$sz"
rd() {
  t0=\$(cut -d ' ' -f 1 /proc/uptime)
  dd if="\$f" of=/dev/null bs=1M 2>/tmp/dd.\$1 || { cat /tmp/dd.\$1 >&2; exit 4; }
  t1=\$(cut -d ' ' -f 1 /proc/uptime)
  r=\$(sed -n 's/^\([0-9][0-9]*+[0-9][0-9]*\) records in\$/\1/p' /tmp/dd.\$1)
  echo "READ \$1 \${r:-?} \$t0 \$t1"
}
echo 3 > /proc/sys/vm/drop_caches || exit 5
rd cold
rd warm
if [ $2 = 1 ]; then echo "SHA256 \$(sha256sum "\$f" | cut -d ' ' -f 1)"; fi
EOF
}

# results: lines "<row> <rep> <cold MiB/s> <warm MiB/s> <cold s> <warm s>"
results=$work/results
: >"$results"

run_one() {  # run_one ROW REP
  local row=$1 rep=$2 sock=$work/$1.$2.sock dlog=$work/$1.$2.daemon.log
  local out=$work/$1.$2.out err=$work/$1.$2.err path dpid rc check=0
  [ "$rep" != 1 ] || check=1
  rm -f "$sock"
  case $row in
    ours)
      "$bindir/tvix-virtiofsd" --socket-path "$sock" --store "$store_addr" "${ours_proto[@]}" \
        2>"$dlog" &
      path=$store_path/$file ;;
    vfs-always | vfs-never)
      "$vfs_bin" --socket-path "$sock" --shared-dir "$work/tree" --sandbox=none \
        --cache="${row#vfs-}" 2>"$dlog" &
      path=bench-data/$file ;;
  esac
  dpid=$!
  pids+=("$dpid")
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { cat "$dlog" >&2; die "$row: no socket $sock"; }

  log "rep $rep/$reps: $row"
  set +e
  scripts/vm/run-guest.sh "$sock" bench "$(guest_cmd "$path" "$check")" "$TIMEOUT" >"$out" 2>"$err"
  rc=$?
  set -e
  sed 's/^/bench:   /' "$err" >&2
  # The daemon exits when QEMU disconnects; give it a moment, then stop it.
  for _ in $(seq 50); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
  kill "$dpid" 2>/dev/null && log "warning: $row daemon still running after the guest; killed"
  wait "$dpid" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    sed 's/^/bench: daemon| /' "$dlog" | tail -n 20 >&2
    die "$row rep $rep: guest run failed (rc=$rc)"
  fi

  local sz
  sz=$(sed -n 's/^SIZE //p' "$out")
  [ "$sz" = "$size_bytes" ] || die "$row rep $rep: guest sees size '${sz}', expected $size_bytes"
  if [ "$check" = 1 ]; then
    local sha
    sha=$(sed -n 's/^SHA256 //p' "$out")
    [ "$sha" = "$host_sha" ] || die "$row: guest sha256 '${sha}' != host $host_sha"
    log "  sha256 in the guest matches the host"
  fi
  awk -v row="$row" -v rep="$rep" -v want="$size_bytes" '
    $1 == "READ" {
      if ($3 != want / 1048576 "+0") {
        printf "bench: error: %s rep %s: %s read: dd records in %s, expected %s+0 (%s bytes in 1 MiB blocks)\n", row, rep, $2, $3, want / 1048576, want > "/dev/stderr"; bad = 1
      }
      dt = $5 - $4; if (dt < 0.01) dt = 0.01   # /proc/uptime ticks are 10 ms
      mibs[$2] = want / 1048576 / dt; secs[$2] = $5 - $4; n++
    }
    END {
      if (bad || n != 2 || !("cold" in mibs) || !("warm" in mibs)) {
        if (!bad) printf "bench: error: %s rep %s: missing READ lines\n", row, rep > "/dev/stderr"
        exit 1
      }
      printf "%s %s %.1f %.1f %.2f %.2f\n", row, rep, mibs["cold"], mibs["warm"], secs["cold"], secs["warm"]
    }' "$out" >>"$results" || die "$row rep $rep: bad guest output (see $out)"
  log "  $(tail -n 1 "$results" | awk '{ printf "cold %s MiB/s (%s s), warm %s MiB/s (%s s)", $3, $5, $4, $6 }')"
}

rows=(ours)
[ "$no_vfs" = 1 ] || rows+=(vfs-always vfs-never)
load_before=$(cut -d ' ' -f 1 /proc/loadavg)
t_start=$(date +%s)
for rep in $(seq "$reps"); do
  for row in "${rows[@]}"; do run_one "$row" "$rep"; done
done
t_total=$(($(date +%s) - t_start))
load_after=$(cut -d ' ' -f 1 /proc/loadavg)

# ---- report -------------------------------------------------------------------
col() { awk -v row="$1" -v c="$2" '$1 == row { print $c }' "$results"; }

policy() {
  case $1 in
    ours) echo "tvix-virtiofsd: FOPEN_KEEP_CACHE, entry/attr timeout 86400 s (guest page cache, like --cache=always)" ;;
    vfs-always) echo "virtiofsd --cache=always --sandbox=none (guest page cache, keep_cache)" ;;
    vfs-never) echo "virtiofsd --cache=never --sandbox=none (DIRECT_IO: guest page cache bypassed, every read goes to the daemon)" ;;
  esac
}
label() {
  case $1 in
    ours) echo "tvix-virtiofsd" ;;
    vfs-always) echo "virtiofsd --cache=always" ;;
    vfs-never) echo "virtiofsd --cache=never" ;;
  esac
}

bench_host_info
if [ "$smoke" = 1 ]; then
  repro="STORE=$store_kind ACCEL=$ACCEL scripts/bench-guest-read.sh --smoke"
else
  repro="STORE=$store_kind REPS=$reps ACCEL=$ACCEL"
  [ "$profile" = release ] || repro+=" PROFILE=$profile"
  [ "$no_vfs" != 1 ] || repro+=" NO_VIRTIOFSD=1"
  repro+=" scripts/bench-guest-read.sh"
fi

report() {
  bench_report_head "## Guest sequential read, $size_mib MiB${SECTION#*MiB}" "$repro"
  echo "- Host: $(nproc) CPUs, $cpu; guest accel **${ACCEL^^}**, QEMU $qemu_v, guest kernel $kver, ${SMP:-2} vCPUs, ${MEM:-1G} memory"
  echo "- Workload: one $size_mib MiB file of random data; per guest boot \`echo 3 > /proc/sys/vm/drop_caches\`, then \`dd if=FILE of=/dev/null bs=1M\` twice (cold, then warm), timed with /proc/uptime (10 ms resolution). A fresh daemon per boot; the host page cache holds the file for both daemons."
  echo "- Store (ours): $(bench_store_label)."
  echo "- Repetitions: $reps, rows interleaved within each repetition; figures are medians over repetitions, MiB/s. Our binaries: $profile profile."
  if [ "$no_vfs" = 1 ]; then
    local why=NO_VIRTIOFSD=1
    [ "$smoke" = 0 ] || why=--smoke
    echo "- **No baseline**: virtiofsd was not run ($why), so these figures compare to nothing."
  else
    echo "- Reference: virtiofsd $vfs_version"
  fi
  echo
  echo "| Daemon | Cold MiB/s (time) | Warm MiB/s (time) | Cold per rep | Warm per rep | Cache policy |"
  echo "|---|---:|---:|---|---|---|"
  local row
  for row in "${rows[@]}"; do
    # shellcheck disable=SC2046  # one number per word
    echo "| $(label "$row") | $(median $(col "$row" 3)) ($(median2 $(col "$row" 5)) s) | $(median $(col "$row" 4)) ($(median2 $(col "$row" 6)) s) | $(join_list $(col "$row" 3)) | $(join_list $(col "$row" 4)) | $(policy "$row") |"
  done
  if [ "$no_vfs" != 1 ]; then
    echo
    echo "Ratio tvix-virtiofsd / virtiofsd per repetition (same repetition, > 1: ours faster), and their median:"
    echo
    echo "| Ratio | Cold, median | Warm, median | Cold per rep | Warm per rep |"
    echo "|---|---:|---:|---|---|"
    local base c w
    for base in vfs-always vfs-never; do
      c=$(paste <(col ours 3) <(col "$base" 3) | awk '{ printf "%.2f\n", $1 / $2 }')
      w=$(paste <(col ours 4) <(col "$base" 4) | awk '{ printf "%.2f\n", $1 / $2 }')
      # shellcheck disable=SC2086  # one number per word
      echo "| ours / $(label "$base") | $(median2 $c) | $(median2 $w) | $(join_list $c) | $(join_list $w) |"
    done
  fi
  echo
  echo "Guest boots took $t_total s in all ($(wc -l <"$results") boots). Host load average (1 min) before / after the boots: $load_before / $load_after (the host may be shared)."
  echo "The guest clock ticks in 10 ms: a read that takes 0.05 s is only known to about ±20 %."
  if [ "$ACCEL" = tcg ]; then
    echo "Under TCG every copy the guest CPU makes is emulated: reads that go through the guest page cache (ours, --cache=always, and every warm read) are bounded by that, while --cache=never has the daemon write straight into guest memory. Compare rows of one run only; on KVM the figures differ."
  fi
}

report >"$work/report.md"
cat "$work/report.md"

[ "$write_docs" = 0 ] || bench_write_docs "$DOC" "$SECTION" "$work/report.md"
