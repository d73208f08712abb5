#!/usr/bin/env bash
# bench-boot.sh — boot a whole system from the store: Debian 12 with systemd
# as PID 1, its root file system one store path in the real tvix-store,
# under QEMU, to multi-user.target; how long that takes through
# tvix-virtiofsd (cold, cold behind a farther store, warm), through
# `tvix-store virtiofs`, and through virtiofsd sharing the same tree as a
# local directory (the baseline), in the same run.
#
# Usage: scripts/bench-boot.sh [--write-docs] [--smoke]
#   --write-docs  also write the result into docs/benchmarks.md, replacing
#                 only the section "## Boot from the store: Debian 12 with
#                 systemd to multi-user.target"
#   --smoke       one cold boot through ours (dev profile) only: checks that
#                 the guest reaches multi-user.target and that the daemon
#                 made store calls (CI)
#
# Env:
#   REPS=3          repetitions; in each, every row once (rows interleaved)
#   ROWS=           the rows to run, in this order (default: all, as below);
#                   the report needs virtiofsd and, for the factor, ours-cold
#   OURS_ARGS=      more flags for our daemon in every ours-* row (e.g.
#                   "--queue-poll-us 0")
#   DELAY_MS=5      delay each way of the proxy in front of the store for
#                   the ours-10ms row (5: 10 ms per round trip)
#   TVIX_STORE_BIN= the real tvix-store (default: PATH, then
#                   ../shared/ref/bin next to the repository); required
#   VIRTIOFSD=      virtiofsd (see scripts/bench-lib.sh; installed with
#                   cargo if missing, except with --smoke, which needs none)
#   ACCEL=tcg|kvm   passed to scripts/vm/run-guest.sh (default tcg)
#   PROFILE=        release (default) or dev (default with --smoke)
#   NO_BUILD=1      do not run cargo
#   TIMEOUT=600     seconds per guest boot (300 with --smoke)
#   KEEP=1          keep the work dir (target/bench/run.*) with all logs
#
# The guest (scripts/boot-guest/build.sh): the root file system of
# scripts/systemd-guest/build-rootfs.sh as one store path, imported with
# tvix-store's own `import` into a tvix-store daemon on local disk; an
# initramfs that mounts the share read-only, puts a tmpfs over the store
# path with overlayfs and switches to systemd; boot-marker.service reports
# the uptime once multi-user.target is reached and powers off.
#
# Rows, one guest boot each, every boot a fresh daemon:
#   virtiofsd      virtiofsd --cache always --sandbox none --readonly,
#                  sharing the same tree as a local directory (baseline)
#   ours-cold      ours, an empty --cache-dir, the store over grpc+unix
#   ours-10ms      the same, through tvix-delay-proxy (benches/loadgen):
#                  every segment held DELAY_MS each way
#   ours-warm      ours on the --cache-dir (and --instance) that one boot
#                  before the first repetition filled
#   tvix-virtiofs  tvix-store --otlp=false virtiofs on the same store
#   tvix-virtiofs-10ms  the same, through the proxy of ours-10ms
# Figures: the guest's uptime when multi-user.target is reached (10 ms),
# and when the initramfs hands over to systemd; ours' --stats-file at exit.
#
# Progress goes to stderr; the markdown result to stdout.
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SECTION="## Boot from the store: Debian 12 with systemd to multi-user.target"
DOC=docs/benchmarks.md

bench_args "$@"
read -r -a ours_args <<<"${OURS_ARGS:-}"
[ "$(id -u)" = 0 ] || die "needs root (QEMU, the rootfs build)"

t_script=$(date +%s)
ACCEL=${ACCEL:-tcg}
export ACCEL
delay_ms=${DELAY_MS:-5}
if [ "$smoke" = 1 ]; then
  reps=1 profile=${PROFILE:-dev} rows=(ours-cold)
  TIMEOUT=${TIMEOUT:-300}
else
  reps=${REPS:-3} profile=${PROFILE:-release}
  read -r -a rows <<<"${ROWS:-virtiofsd ours-cold ours-10ms ours-warm tvix-virtiofs tvix-virtiofs-10ms}"
  for r in "${rows[@]}"; do
    case $r in virtiofsd | ours-cold | ours-10ms | ours-warm | tvix-virtiofs | tvix-virtiofs-10ms) ;;
      *) die "ROWS: no row $r" ;;
    esac
  done
  TIMEOUT=${TIMEOUT:-600}
fi
for v in "$reps" "$delay_ms"; do
  [[ $v =~ ^[0-9]+$ ]] && [ "$reps" -gt 0 ] || die "REPS (> 0) and DELAY_MS: whole numbers, not $v"
done

# ---- binaries, guest, store --------------------------------------------------------
tvix_bin=$(bench_real_bin tvix) || die "no tvix-store binary (TVIX_STORE_BIN, PATH, $REPO/../shared/ref/bin)"
bench_build "$profile"
[ -x "$bindir/tvix-delay-proxy" ] || die "missing $bindir/tvix-delay-proxy"
[[ " ${rows[*]} " != *" virtiofsd "* ]] || bench_virtiofsd
guest=${CARGO_TARGET_DIR:-$REPO/target}/boot-guest
scripts/boot-guest/build.sh "$guest" >&2
tree=$guest/tree
bench_workdir
log "work dir $work"
case $work in *' '* | *,*) die "no spaces or commas allowed in the work dir: $work" ;; esac

t0=$(date +%s)
bench_start_real_store tvix "$tree"
t_import=$(($(date +%s) - t0))
root_path=$(bench_store_path tvix debian-rootfs)
store_sock=$work/tvix.sock
log "store path $root_path (store started and imported in $t_import s)"

if [[ " ${rows[*]} " == *"-10ms "* ]]; then
  "$bindir/tvix-delay-proxy" --listen "unix:$work/delay.sock" --connect "unix:$store_sock" \
    --delay-ms "$delay_ms" >"$work/delay.out" 2>"$work/delay.log" &
  pids+=($!)
  bench_wait_socket "$work/delay.sock" "$work/delay.log"
fi

# ---- one boot ---------------------------------------------------------------------------
# results: "<row> <rep> <multiuser s> <switch s> <wall s> <store calls> <bytes> <disk hits> <prefetched files>"
results=$work/results
: >"$results"
boots=0

# boot ROW REP: one guest boot through a fresh daemon of ROW; appends to
# $results. A failed boot or a wrong answer ends the run.
boot() {
  local row=$1 rep=$2 id=$work/$1.$2 sock dpid rc root=$root_path line
  local -a f
  sock=$id.sock
  rm -f "$sock"
  case $row in
    ours-*)
      local addr=grpc+unix://$store_sock cache=$id.cache
      [ "$row" != ours-10ms ] || addr=grpc+unix://$work/delay.sock
      [ "$row" != ours-warm ] || [ "$rep" = fill ] || cache=$work/ours-warm.fill.cache
      mkdir -p "$cache"
      "$bindir/tvix-virtiofsd" --socket-path "$sock" --store "$addr" --cache-dir "$cache" \
        --instance boot --stats-file "$id.stats" "${ours_args[@]}" 2>"$id.daemon.log" & ;;
    tvix-virtiofs*)
      local addr=grpc+unix://$store_sock
      [ "$row" != tvix-virtiofs-10ms ] || addr=grpc+unix://$work/delay.sock
      "$tvix_bin" --otlp=false virtiofs "$sock" --blob-service-addr "$addr" \
        --directory-service-addr "$addr" --path-info-service-addr "$addr" >"$id.daemon.log" 2>&1 & ;;
    virtiofsd)
      root=debian-rootfs
      "$vfs_bin" --socket-path "$sock" --shared-dir "$tree" --cache always --sandbox none \
        --readonly >"$id.daemon.log" 2>&1 & ;;
  esac
  dpid=$!
  pids+=("$dpid")
  bench_wait_socket "$sock" "$id.daemon.log"
  log "rep $rep/$reps: $row"
  boots=$((boots + 1))
  local t_start t_end
  t_start=$(date +%s.%N)
  set +e
  VM_DIR=$guest/vm APPEND_EXTRA="boot.root=$root" LOG=$id.console \
    scripts/vm/run-guest.sh "$sock" store - "$TIMEOUT" >"$id.out" 2>"$id.err"
  rc=$?
  set -e
  t_end=$(date +%s.%N)
  tail -n 1 "$id.err" | sed 's/^/bench:   /' >&2
  case $row in
    tvix-virtiofs*)  # it may keep running after QEMU disconnects
      for _ in $(seq 10); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
      kill "$dpid" 2>/dev/null || true
      wait "$dpid" 2>/dev/null || true ;;
    *) bench_wait_exit "$dpid" "$row daemon" ;;
  esac
  bench_forget "$dpid"
  if [ "$rc" != 0 ]; then
    tail -n 30 "$id.console" | sed 's/^/bench: console| /' >&2
    tail -n 10 "$id.daemon.log" | sed 's/^/bench: daemon| /' >&2
    die "$row rep $rep: the guest did not reach multi-user.target (run-guest rc=$rc$([ "$rc" != 124 ] || echo ": timeout after $TIMEOUT s"))"
  fi
  local mu sw failed
  mu=$(sed -n 's/^MULTIUSER //p' "$id.out")
  sw=$(sed -n 's/^SWITCH //p' "$id.out")
  failed=$(sed -n 's/^FAILED //p' "$id.out")
  [[ $mu =~ ^[0-9.]+$ ]] && [[ $sw =~ ^[0-9.]+$ ]] || die "$row rep $rep: no MULTIUSER/SWITCH uptime in $id.out"
  [ "$failed" = 0 ] || die "$row rep $rep: failed units in the guest: ${failed:-no FAILED line}"
  local calls=- bytes=- hits=- prefetched=-
  if [ -r "$id.stats" ]; then
    calls=$(awk '$1 == "store_requests" { print $2 }' "$id.stats")
    bytes=$(awk '$1 == "store_bytes_fetched" { print $2 }' "$id.stats")
    hits=$(awk '$1 == "disk_hits" { print $2 }' "$id.stats")
    prefetched=$(awk '$1 == "prefetched_files" { print $2 }' "$id.stats")
  fi
  line="$row $rep $mu $sw $(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }') $calls $bytes $hits ${prefetched:--}"
  echo "$line" >>"$results"
  read -r -a f <<<"$line"
  log "  multi-user.target at ${f[2]} s (systemd from ${f[3]} s), QEMU ran ${f[4]} s; store calls $calls, bytes $bytes, disk hits $hits"
}

load_before=$(cut -d ' ' -f 1 /proc/loadavg)
t_start=$(date +%s)
if [[ " ${rows[*]} " == *" ours-warm "* ]]; then
  boot ours-warm fill
fi
for rep in $(seq "$reps"); do
  for row in "${rows[@]}"; do boot "$row" "$rep"; done
done
t_boots=$(($(date +%s) - t_start))
load_after=$(cut -d ' ' -f 1 /proc/loadavg)

if [ "$smoke" = 1 ]; then
  read -r -a f < <(awk '$1 == "ours-cold"' "$results")
  [ "${f[5]:-0}" != - ] && [ "${f[5]:-0}" -gt 0 ] || die "ours-cold made no store calls (stats: ${f[5]:-none})"
  log "smoke: multi-user.target at ${f[2]} s through ours cold, ${f[5]} store calls, ${f[6]} bytes; $(($(date +%s) - t_script)) s in all"
  exit 0
fi

# ---- report -------------------------------------------------------------------------------------
# col ROW N: the values of results column N (1-based) of ROW, one per line
col() { awk -v r="$1" -v n="$2" '$1 == r && $2 != "fill" { print $n }' "$results"; }
# per_rep A B: per repetition, A's multi-user time / B's
per_rep() {
  join <(awk -v r="$1" '$1 == r && $2 != "fill" { print $2, $3 }' "$results" | sort) \
    <(awk -v r="$2" '$1 == r && $2 != "fill" { print $2, $3 }' "$results" | sort) |
    sort -n | awk '{ printf "%.2f\n", $2 / $3 }'
}
# ratio_cell A B: median of per_rep A B (bold), then the per-repetition values
ratio_cell() {
  local r
  r=$(per_rep "$1" "$2")
  # shellcheck disable=SC2046,SC2086  # one number per word
  echo "**$(median2 $r)** ($(join_list $r))"
}
med() {
  # shellcheck disable=SC2046  # one number per word
  median_fmt "$3" $(col "$1" "$2")
}
label() {
  case $1 in
    virtiofsd) echo "virtiofsd $vfs_version \`--cache always\`, local directory" ;;
    ours-cold) echo "ours, cold (empty cache), store on loopback" ;;
    ours-10ms) echo "ours, cold, store behind $((2 * delay_ms)) ms per round trip" ;;
    ours-warm) echo "ours, warm (disk cache of an earlier boot, fresh daemon)" ;;
    tvix-virtiofs) echo "\`tvix-store virtiofs\`, store on loopback" ;;
    tvix-virtiofs-10ms) echo "\`tvix-store virtiofs\`, store behind $((2 * delay_ms)) ms per round trip" ;;
  esac
}
# six_times M: whether a speed factor of M meets the 6× target
six_times() {
  awk -v m="$1" 'BEGIN { if (m >= 6) printf "**met**"; else printf "**not met** by %.0f %%", (1 - m / 6) * 100 }'
  echo " (${1}× faster, target ≥ 6×)"
}
target_of() {
  case $1 in
    ours-cold) echo 1.2 ;;
    ours-10ms) echo 1.6 ;;
    ours-warm) echo 1.0 ;;
  esac
}

bench_host_info
vfs_version=${vfs_version:-(not run)}
kver=$(cat "$guest/vm/kernel.release")
repro="REPS=$reps ACCEL=$ACCEL"
[ "$delay_ms" = 5 ] || repro+=" DELAY_MS=$delay_ms"
[ "$profile" = release ] || repro+=" PROFILE=$profile"
repro+=" scripts/bench-boot.sh"
n_entries=$(find "$tree/debian-rootfs" | wc -l)
tree_mib=$(du -sm --apparent-size "$tree/debian-rootfs" | cut -f 1)
cold_calls=$(med ours-cold 6 %.0f)
cold_mib=$(awk -v b="$(med ours-cold 7 %.0f)" 'BEGIN { printf "%.1f", b / 1048576 }')
# the 10 ms row's extra time over cold loopback, per repetition, and its median
delay_extra=$(join <(awk '$1 == "ours-10ms" && $2 != "fill" { print $2, $3 }' "$results" | sort) \
  <(awk '$1 == "ours-cold" && $2 != "fill" { print $2, $3 }' "$results" | sort) |
  sort -n | awk '{ printf "%.2f\n", $2 - $3 }')
# shellcheck disable=SC2086  # one number per word
delay_med=$(median2 $delay_extra)
n_keep=$(find "$tree/debian-rootfs" -name .keep | wc -l)
range() { col "$1" 3 | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { printf "%s–%s s", a, b }'; }

report() {
  bench_report_head "$SECTION" "$repro"
  echo "- Host: $(nproc) CPUs, $cpu, $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory, shared with other work; guest accel **${ACCEL^^}**, QEMU $qemu_v, guest kernel $kver (the host's linux-image-cloud-amd64), ${SMP:-2} vCPUs, ${MEM:-1G} memory"
  echo "- Guest (\`scripts/boot-guest/\`): the Debian 12 minbase + systemd + dbus of \`scripts/systemd-guest/build-rootfs.sh\` as one store path ($n_entries entries, $tree_mib MiB; device nodes, FIFOs and sockets removed; owner root, modes 0444/0555, mtime 1, as a castore holds them), imported with \`tvix-store import\` into a real \`tvix-store daemon\` ($("$tvix_bin" --version | head -n 1)) on local disk (objectstore+file:// blobs, redb:// directories and path infos), over grpc+unix on the same host. A busybox initramfs loads virtiofs and overlay, mounts the tag read-only, puts a tmpfs over the store path with overlayfs, mounts a tmpfs of mode 1777 on /tmp and /var/tmp and switches to systemd; \`boot-marker.service\` (After=multi-user.target) reports the uptime and powers off. Every boot is checked: multi-user.target reached, no failed unit. Each of the $n_keep empty directories holds a \`.keep\` file naming its path: \`tvix-store virtiofs\` gives identical directories one inode, which the guest kernel takes for one directory (/proc, /sys and /tmp became one, and systemd stopped at \"Failed to mount API filesystems\"); the file makes them differ, for every row alike."
  echo "- Ours: $profile profile, default options plus \`--cache-dir\` and \`--instance boot\`: an empty cache directory per cold boot; the warm rows reuse the cache directory that one untimed boot filled before the first repetition (the instance's mappings and the shared objects), with a fresh daemon each time. The $((2 * delay_ms)) ms row goes through \`tvix-delay-proxy\` (benches/loadgen), which holds every forwarded segment $delay_ms ms in each direction without limiting throughput (\`tc netem\` on lo would also delay every other user of the host's loopback, and the store is on a unix socket)."
  echo "- Baseline: virtiofsd $vfs_version \`--cache always --sandbox none --readonly\` sharing the same directory that was imported. \`tvix-store --otlp=false virtiofs\` with the three addresses of the same store daemon."
  echo "- One guest boot per row and repetition, with a fresh daemon; rows interleaved in the order $(join_list "${rows[@]}"); repetitions: $reps; the store's files and virtiofsd's tree are in the host page cache for every row alike. Times are the guest's /proc/uptime (10 ms) when multi-user.target is reached, medians; ratios are per repetition, row time / virtiofsd time of the same repetition (< 1: faster than virtiofsd), median first."
  echo
  echo "| Row | multi-user.target s | per rep | systemd started at s | time / virtiofsd | target | store calls | MiB from the store | disk-cache hits |"
  echo "|---|---:|---|---:|---|---|---:|---:|---:|"
  local r t calls
  for r in "${rows[@]}"; do
    t=$(target_of "$r")
    calls=$(med "$r" 6 %.0f)
    local mib=- hits=-
    if [ "$calls" != - ] && [ -n "$(col "$r" 6 | grep -v '^-$' || true)" ]; then
      mib=$(awk -v b="$(med "$r" 7 %.0f)" 'BEGIN { printf "%.1f", b / 1048576 }')
      hits=$(med "$r" 8 %.0f)
    else
      calls=-
    fi
    # shellcheck disable=SC2046  # one number per word
    echo "| $(label "$r") | $(med "$r" 3 %.2f) | $(join_list $(col "$r" 3)) | $(med "$r" 4 %.2f) | $([ "$r" = virtiofsd ] && echo 1.00 || ratio_cell "$r" virtiofsd) | ${t:+≤ $t×} | $calls | $mib | $hits |"
  done
  echo
  if [ -n "$(col tvix-virtiofs 3)" ] && [ -n "$(col ours-cold 3)" ]; then
    echo "\`tvix-store virtiofs\` / ours cold, as a speed factor (its time / ours, per repetition): store on loopback $(ratio_cell tvix-virtiofs ours-cold) (target ≥ 6×)$(
      [ -z "$(col tvix-virtiofs-10ms 3)" ] || [ -z "$(col ours-10ms 3)" ] ||
        echo "; both behind $((2 * delay_ms)) ms per round trip $(ratio_cell tvix-virtiofs-10ms ours-10ms)")."
    echo
  fi
  echo "Targets (medians of the per-repetition ratios above):"
  echo
  local m
  for r in ours-warm ours-cold ours-10ms; do
    [ -n "$(col "$r" 3)" ] || { echo "- $(label "$r"): not run"; continue; }
    t=$(target_of "$r")
    # shellcheck disable=SC2046  # one number per word
    m=$(median2 $(per_rep "$r" virtiofsd))
    echo "- $(label "$r"): $(awk -v m="$m" -v t="$t" 'BEGIN { if (m <= t) print "**met**"; else printf "**not met** by %.0f %%", (m / t - 1) * 100 }') ($m×, target ≤ $t×)"
  done
  # shellcheck disable=SC2046  # one number per word
  m=$(median2 $(per_rep tvix-virtiofs ours-cold))
  if [ "$m" = - ]; then
    echo "- ours cold vs \`tvix-store virtiofs\`, store on loopback: not run"
  else
    echo "- ours cold vs \`tvix-store virtiofs\`, store on loopback: $(six_times "$m")"
  fi
  if [ -n "$(col tvix-virtiofs-10ms 3)" ] && [ -n "$(col ours-10ms 3)" ]; then
    # shellcheck disable=SC2046  # one number per word
    m=$(median2 $(per_rep tvix-virtiofs-10ms ours-10ms))
    echo "- the same, both behind $((2 * delay_ms)) ms per round trip (a store on another host): $(six_times "$m")"
  fi
  echo
  echo "What bounds each figure:"
  echo
  echo "- Every row: the guest kernel and systemd run in emulated code on 2 host CPUs that also run the daemons and the store: the kernel alone takes about $(med virtiofsd 4 %.1f) s to the initramfs's hand-over here, and systemd's own start-up (units, dbus, journald under TCG) is most of the rest. What the file system adds shows in the difference to the virtiofsd row."
  echo "- Ours cold: one boot fetches $cold_mib MiB in $cold_calls store calls: the root's path info, then Directories in few recursive calls, then $(med ours-cold 9 %.0f) small files that the prefetch of the store path fetches in the background (\`--prefetch-bytes\`, default 64M: the files of up to 256 KiB, breadth first, 8 at a time), and the chunk lists and chunks of the larger files the guest opens. The guest's own calls are made when it first opens a file, one after another in the order systemd and the programs it starts open them. Every fetch is verified and written to the disk cache."
  # shellcheck disable=SC2086  # one number per word
  echo "- Ours behind $((2 * delay_ms)) ms: per repetition it took $(join_list $delay_extra) s longer than cold on loopback (median $delay_med s). What the guest waits for is the round trips of the files it opens before their prefetch has fetched them, one after another, and those of the larger files' chunk lists and chunks; the bytes ($cold_mib MiB) are not the bound. Differences smaller than the spread between repetitions (below) are noise."
  echo "- Ours warm: no store calls when the disk cache holds everything (calls column); every chunk read back is hashed again before it is served (the price of sharing the cache between daemons), and each first open of a file is a guest exit and a daemon round trip, as for virtiofsd."
  local six=""
  if [ -n "$(col tvix-virtiofs 3)" ] && [ -n "$(col virtiofsd 3)" ]; then
    six=$(awk -v t="$(med tvix-virtiofs 3 %.2f)" -v v="$(med virtiofsd 3 %.2f)" 'BEGIN {
      printf " Being 6× faster than it would take ours to multi-user.target in %.2f s, %.2f× the time of virtiofsd on a local directory (%.2f s): faster than the baseline row, whose time is mostly the emulated kernel and systemd.", t / 6, t / 6 / v, v }')
  fi
  echo "- \`tvix-store virtiofs\`: the same store and tree, a fresh daemon per boot; its store calls are not counted (it has no stats file).$six"
  echo
  echo "The host's load changed during the run, and with it every row: virtiofsd took $(range virtiofsd), ours cold $(range ours-cold), ours warm $(range ours-warm), \`tvix-store virtiofs\` $(range tvix-virtiofs)$([ -z "$(col tvix-virtiofs-10ms 3)" ] || echo " (behind $((2 * delay_ms)) ms: $(range tvix-virtiofs-10ms))") to multi-user.target. Compare rows within a repetition (the ratios), not across them."
  echo
  echo "Guest boots took $t_boots s in all ($boots boots, one of them the untimed fill); the store's start and import $t_import s; the whole script $(($(date +%s) - t_script)) s. Host load average (1 min) before / after the boots: $load_before / $load_after (other jobs share this host: compare rows of one repetition)."
}
report >"$work/report.md"
cat "$work/report.md"

[ "$write_docs" = 0 ] || bench_write_docs "$DOC" "$SECTION" "$work/report.md"
