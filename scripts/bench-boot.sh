#!/usr/bin/env bash
# bench-boot.sh — boot a whole system from the store: Debian 12 with systemd
# as PID 1, its root file system one store path in a real tvix-store (and
# the same tree in a real snix-store), under QEMU, to multi-user.target;
# how long that takes through tvix-virtiofsd (cold, cold behind a farther
# store, warm, and cold with the access trace of an earlier boot), through
# `tvix-store virtiofs` and `snix-store virtiofs`, and through virtiofsd
# sharing the same tree as a local directory (the baseline), in the same
# run.
#
# Usage: scripts/bench-boot.sh [--write-docs] [--smoke]
#   --write-docs  also write the result into docs/benchmarks.md, replacing
#                 only the section "## Boot from the store: Debian 12 with
#                 systemd to multi-user.target"
#   --smoke       one cold boot through ours (dev profile), checking that
#                 the guest reaches multi-user.target and that the daemon
#                 made store calls, and, if a snix-store binary is found,
#                 one boot through `snix-store virtiofs` (CI)
#
# Env:
#   REPS=3          repetitions; in each, every row once (rows interleaved)
#   ROWS=           the rows to run, in this order (default: all, as below);
#                   the report needs virtiofsd and, for the factors,
#                   ours-cold (and ours-10ms)
#   OURS_ARGS=      more flags for our daemon in every ours-* row (e.g.
#                   "--queue-poll-us 0")
#   DELAY_MS=5      delay each way of the proxies in front of the stores
#                   for the *-10ms rows (5: 10 ms per round trip)
#   TVIX_STORE_BIN= the real tvix-store (default: PATH, then
#                   ../shared/ref/bin next to the repository); required
#   SNIX_STORE_BIN= the real snix-store (the same places); without it the
#                   snix-virtiofs rows are not run (a WARNING in the log,
#                   "not run" in the report)
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
# tvix-store's own `import` into a tvix-store daemon on local disk (and
# with snix-store's into a snix-store daemon, for the snix-virtiofs rows);
# an initramfs that mounts the share read-only, puts a tmpfs over the store
# path with overlayfs and switches to systemd; boot-marker.service reports
# the uptime once multi-user.target is reached and powers off.
#
# Rows, one guest boot each, every boot a fresh daemon:
#   virtiofsd      virtiofsd --cache always --sandbox none --readonly,
#                  sharing the same tree as a local directory (baseline)
#   ours-cold      ours, an empty --cache-dir, the store over grpc+unix
#   ours-10ms      the same, through tvix-delay-proxy (benches/loadgen):
#                  every segment held DELAY_MS each way
#   ours-warm      ours on the --cache-dir (and --instance boot) that one
#                  boot before the first repetition filled
#   ours-trace-10ms  a second cold boot of another instance that has the
#                  first boot's trace: an empty --cache-dir holding only a
#                  copy of the access traces that the fill boot (that of
#                  ours-warm, or one of its own: instance boot, an empty
#                  cache, the store on loopback) left in
#                  v2/instances/boot/traces, as v2/instances/boot2/traces;
#                  --instance boot2, the store through the proxy of
#                  ours-10ms (the run fails if the fill left no trace)
#   tvix-virtiofs  tvix-store --otlp=false virtiofs on the same store
#   tvix-virtiofs-10ms  the same, through the proxy of ours-10ms
#   snix-virtiofs  snix-store --otlp=false virtiofs on a snix-store daemon
#                  holding the same tree
#   snix-virtiofs-10ms  the same, through a second proxy (DELAY_MS each
#                  way) in front of the snix-store daemon
# Figures: the guest's uptime when multi-user.target is reached (10 ms),
# and when the initramfs hands over to systemd; ours' --stats-file at exit.
#
# Progress goes to stderr; the markdown result to stdout.
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SECTION="## Boot from the store: Debian 12 with systemd to multi-user.target"
DOC=docs/benchmarks.md
ALL_ROWS="virtiofsd ours-cold ours-10ms ours-warm ours-trace-10ms tvix-virtiofs tvix-virtiofs-10ms snix-virtiofs snix-virtiofs-10ms"

bench_args "$@"
read -r -a ours_args <<<"${OURS_ARGS:-}"
[ "$(id -u)" = 0 ] || die "needs root (QEMU, the rootfs build)"

t_script=$(date +%s)
ACCEL=${ACCEL:-tcg}
export ACCEL
delay_ms=${DELAY_MS:-5}
snix_bin=$(bench_real_bin snix) || snix_bin=
if [ "$smoke" = 1 ]; then
  reps=1 profile=${PROFILE:-dev} rows=(ours-cold snix-virtiofs)
  TIMEOUT=${TIMEOUT:-300}
else
  reps=${REPS:-3} profile=${PROFILE:-release}
  read -r -a rows <<<"${ROWS:-$ALL_ROWS}"
  [ ${#rows[@]} -gt 0 ] || die "ROWS: no rows"
  for r in "${rows[@]}"; do
    [[ " $ALL_ROWS " == *" $r "* ]] || die "ROWS: no row $r (rows: $ALL_ROWS)"
  done
  TIMEOUT=${TIMEOUT:-600}
fi
for v in "$reps" "$delay_ms"; do
  [[ $v =~ ^[0-9]+$ ]] && [ "$reps" -gt 0 ] || die "REPS (> 0) and DELAY_MS: whole numbers, not $v"
done
# has ROW: whether ROW is one of the rows asked for
has() { [[ " ${rows[*]} " == *" $1 "* ]]; }
# run_rows: the rows booted (the snix-store rows only with its binary)
run_rows=() skipped=()
for r in "${rows[@]}"; do
  case $r in
    snix-virtiofs*) [ -z "$snix_bin" ] || { run_rows+=("$r"); continue; } ;;
    *) run_rows+=("$r"); continue ;;
  esac
  skipped+=("$r")
done
if [ ${#skipped[@]} -gt 0 ]; then
  log "################################################################"
  log "WARNING: no snix-store binary found"
  log "(\$SNIX_STORE_BIN, PATH, $REPO/../shared/ref/bin):"
  log "NOT RUN: $(join_list "${skipped[@]}")"
  log "################################################################"
fi
# ran ROW: whether ROW is booted in this run
ran() { [[ " ${run_rows[*]} " == *" $1 "* ]]; }

# ---- binaries, guest, stores -------------------------------------------------------
tvix_bin=$(bench_real_bin tvix) || die "no tvix-store binary (TVIX_STORE_BIN, PATH, $REPO/../shared/ref/bin)"
bench_build "$profile"
[ -x "$bindir/tvix-delay-proxy" ] || die "missing $bindir/tvix-delay-proxy"
! ran virtiofsd || bench_virtiofsd
guest=${CARGO_TARGET_DIR:-$REPO/target}/boot-guest
scripts/boot-guest/build.sh "$guest" >&2
tree=$guest/tree
bench_workdir
log "work dir $work"
case $work in *' '* | *,*) die "no spaces or commas allowed in the work dir: $work" ;; esac

t0=$(date +%s)
bench_start_real_store tvix "$tree"
root_path=$(bench_store_path tvix debian-rootfs)
store_sock=$work/tvix.sock
snix_root_path=
if ran snix-virtiofs || ran snix-virtiofs-10ms; then
  bench_start_real_store snix "$tree"
  snix_root_path=$(bench_store_path snix debian-rootfs)
  [ "$snix_root_path" = "$root_path" ] ||
    log "warning: the snix-store names the tree $snix_root_path, the tvix-store $root_path"
fi
t_import=$(($(date +%s) - t0))
log "store path $root_path (stores started and imported in $t_import s)"

# delay_proxy NAME STORE_SOCK: a tvix-delay-proxy on $work/NAME.sock in
# front of STORE_SOCK, DELAY_MS each way
delay_proxy() {
  "$bindir/tvix-delay-proxy" --listen "unix:$work/$1.sock" --connect "unix:$2" \
    --delay-ms "$delay_ms" >"$work/$1.out" 2>"$work/$1.log" &
  pids+=($!)
  bench_wait_socket "$work/$1.sock" "$work/$1.log"
}
if ran ours-10ms || ran ours-trace-10ms || ran tvix-virtiofs-10ms; then
  delay_proxy delay "$store_sock"
fi
if ran snix-virtiofs-10ms; then
  delay_proxy delay-snix "$work/snix.sock"
fi

# ---- one boot ---------------------------------------------------------------------------
# results: "<row> <rep> <multiuser s> <switch s> <wall s> <store calls> <bytes> <disk hits>
#   <prefetched files> <trace files>" (the last: prefetch_trace_files)
results=$work/results
: >"$results"
boots=0
# the cache dir of the untimed fill boot (ours-warm reuses it), and the copy
# of the access traces it left (ours-trace-10ms starts from them)
fill_cache='' fill_traces=$work/fill.traces

# boot ROW REP: one guest boot through a fresh daemon of ROW; appends to
# $results. A failed boot or a wrong answer ends the run. REP "fill": the
# untimed boot that fills $fill_cache (ours, instance boot, an empty cache,
# the store on loopback).
boot() {
  local row=$1 rep=$2 id=$work/$1.$2 sock dpid rc root=$root_path line
  local -a f
  sock=$id.sock
  rm -f "$sock"
  case $row in
    ours-*)
      local addr=grpc+unix://$store_sock cache=$id.cache instance=boot
      if [ "$rep" != fill ]; then
        case $row in
          ours-10ms) addr=grpc+unix://$work/delay.sock ;;
          ours-warm) cache=$fill_cache ;;
          ours-trace-10ms)
            addr=grpc+unix://$work/delay.sock instance=boot2
            [ -d "$fill_traces" ] || die "ours-trace-10ms: no copy of the fill boot's trace in $fill_traces"
            mkdir -p "$cache/v2/instances/$instance"
            cp -a "$fill_traces" "$cache/v2/instances/$instance/traces" ;;
        esac
      fi
      mkdir -p "$cache"
      "$bindir/tvix-virtiofsd" --socket-path "$sock" --store "$addr" --cache-dir "$cache" \
        --instance "$instance" --stats-file "$id.stats" "${ours_args[@]}" 2>"$id.daemon.log" & ;;
    tvix-virtiofs* | snix-virtiofs*)
      local bin=$tvix_bin addr=grpc+unix://$store_sock
      [ "$row" != tvix-virtiofs-10ms ] || addr=grpc+unix://$work/delay.sock
      if [[ $row == snix-* ]]; then
        bin=$snix_bin addr=grpc+unix://$work/snix.sock root=$snix_root_path
        [ "$row" != snix-virtiofs-10ms ] || addr=grpc+unix://$work/delay-snix.sock
      fi
      "$bin" --otlp=false virtiofs "$sock" --blob-service-addr "$addr" \
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
    tvix-virtiofs* | snix-virtiofs*)  # it may keep running after QEMU disconnects
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
  local calls=- bytes=- hits=- prefetched=- traced=-
  if [ -r "$id.stats" ]; then
    calls=$(awk '$1 == "store_requests" { print $2 }' "$id.stats")
    bytes=$(awk '$1 == "store_bytes_fetched" { print $2 }' "$id.stats")
    hits=$(awk '$1 == "disk_hits" { print $2 }' "$id.stats")
    prefetched=$(awk '$1 == "prefetched_files" { print $2 }' "$id.stats")
    traced=$(awk '$1 == "prefetch_trace_files" { print $2 }' "$id.stats")
  fi
  line="$row $rep $mu $sw $(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }') ${calls:--} ${bytes:--} ${hits:--} ${prefetched:--} ${traced:--}"
  echo "$line" >>"$results"
  read -r -a f <<<"$line"
  log "  multi-user.target at ${f[2]} s (systemd from ${f[3]} s), QEMU ran ${f[4]} s; store calls ${f[5]}, bytes ${f[6]}, disk hits ${f[7]}$([ "$row" != ours-trace-10ms ] || echo ", files from the trace ${f[9]}")"
}

load_before=$(cut -d ' ' -f 1 /proc/loadavg)
t_start=$(date +%s)
fill_row=
if ran ours-warm; then
  fill_row=ours-warm
elif ran ours-trace-10ms; then
  fill_row=ours-trace-10ms
fi
if [ -n "$fill_row" ]; then
  fill_cache=$work/$fill_row.fill.cache
  boot "$fill_row" fill
fi
if ran ours-trace-10ms; then
  # a copy taken now: the ours-warm boots go on using the fill's cache dir
  t=$fill_cache/v2/instances/boot/traces
  [ -d "$t" ] || die "ours-trace-10ms: the fill boot left no trace: no directory $t (KEEP=1 keeps the fill daemon's log, $work/$fill_row.fill.daemon.log)"
  [ -n "$(ls -A "$t")" ] || die "ours-trace-10ms: the fill boot left no trace: $t is empty (KEEP=1 keeps the fill daemon's log, $work/$fill_row.fill.daemon.log)"
  cp -a "$t" "$fill_traces"
  log "the fill boot's trace: $(find "$fill_traces" -type f | wc -l) files, $(du -sk --apparent-size "$fill_traces" | cut -f 1) KiB"
fi
for rep in $(seq "$reps"); do
  for row in "${run_rows[@]}"; do boot "$row" "$rep"; done
done
t_boots=$(($(date +%s) - t_start))
load_after=$(cut -d ' ' -f 1 /proc/loadavg)

if [ "$smoke" = 1 ]; then
  read -r -a f < <(awk '$1 == "ours-cold"' "$results")
  [ "${f[5]:-0}" != - ] && [ "${f[5]:-0}" -gt 0 ] || die "ours-cold made no store calls (stats: ${f[5]:-none})"
  log "smoke: multi-user.target at ${f[2]} s through ours cold, ${f[5]} store calls, ${f[6]} bytes"
  if ran snix-virtiofs; then
    read -r -a f < <(awk '$1 == "snix-virtiofs"' "$results")
    log "smoke: multi-user.target at ${f[2]} s through snix-store virtiofs"
  else
    log "smoke: WARNING: snix-store virtiofs not run (no snix-store binary)"
  fi
  log "smoke: $(($(date +%s) - t_script)) s in all"
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
  [ -n "$r" ] || { echo -; return; }
  # shellcheck disable=SC2046,SC2086  # one number per word
  echo "**$(median2 $r)** ($(join_list $r))"
}
med() {
  # shellcheck disable=SC2046  # one number per word
  median_fmt "$3" $(col "$1" "$2")
}
# med_known ROW N FMT: as med, of the values that are not "-" ("-" if none)
med_known() {
  # shellcheck disable=SC2046  # one number per word
  median_fmt "$3" $(col "$1" "$2" | grep -v '^-$' || true)
}
label() {
  case $1 in
    virtiofsd) echo "virtiofsd $vfs_version \`--cache always\`, local directory" ;;
    ours-cold) echo "ours, cold (empty cache), store on loopback" ;;
    ours-10ms) echo "ours, cold, store behind $((2 * delay_ms)) ms per round trip" ;;
    ours-warm) echo "ours, warm (disk cache of an earlier boot, fresh daemon)" ;;
    ours-trace-10ms) echo "ours, cold, another instance with the first boot's trace, store behind $((2 * delay_ms)) ms per round trip" ;;
    tvix-virtiofs) echo "\`tvix-store virtiofs\`, store on loopback" ;;
    tvix-virtiofs-10ms) echo "\`tvix-store virtiofs\`, store behind $((2 * delay_ms)) ms per round trip" ;;
    snix-virtiofs) echo "\`snix-store virtiofs\`, store on loopback" ;;
    snix-virtiofs-10ms) echo "\`snix-store virtiofs\`, store behind $((2 * delay_ms)) ms per round trip" ;;
  esac
}
# short ROW: a short name of ROW, for running text
short() {
  case $1 in
    virtiofsd) echo virtiofsd ;;
    ours-cold) echo "ours cold" ;;
    ours-10ms) echo "ours cold behind $((2 * delay_ms)) ms" ;;
    ours-warm) echo "ours warm" ;;
    ours-trace-10ms) echo "ours with the trace behind $((2 * delay_ms)) ms" ;;
    tvix-virtiofs) echo "\`tvix-store virtiofs\`" ;;
    tvix-virtiofs-10ms) echo "\`tvix-store virtiofs\` behind $((2 * delay_ms)) ms" ;;
    snix-virtiofs) echo "\`snix-store virtiofs\`" ;;
    snix-virtiofs-10ms) echo "\`snix-store virtiofs\` behind $((2 * delay_ms)) ms" ;;
  esac
}
# target_of ROW: the target of ROW's time / virtiofsd time (median), if any
target_of() {
  case $1 in
    ours-warm) echo 1.0 ;;
    ours-cold) echo 1.1 ;;
    ours-10ms) echo 1.2 ;;
    ours-trace-10ms) echo 1.05 ;;
  esac
}

bench_host_info
vfs_version=${vfs_version:-(not run)}
kver=$(cat "$guest/vm/kernel.release")
repro="REPS=$reps ACCEL=$ACCEL"
[ "$delay_ms" = 5 ] || repro+=" DELAY_MS=$delay_ms"
[ "$profile" = release ] || repro+=" PROFILE=$profile"
[ "${rows[*]}" = "$ALL_ROWS" ] || repro+=" ROWS=\"${rows[*]}\""
repro+=" scripts/bench-boot.sh"
n_entries=$(find "$tree/debian-rootfs" | wc -l)
tree_mib=$(du -sm --apparent-size "$tree/debian-rootfs" | cut -f 1)
cold_calls=$(med ours-cold 6 %.0f)
cold_mib=$(awk -v b="$(med ours-cold 7 %.0f)" 'BEGIN { printf "%.1f", b / 1048576 }')
# delay_extra A B: per repetition, A's multi-user time minus B's
delay_extra() {
  join <(awk -v r="$1" '$1 == r && $2 != "fill" { print $2, $3 }' "$results" | sort) \
    <(awk -v r="$2" '$1 == r && $2 != "fill" { print $2, $3 }' "$results" | sort) |
    sort -n | awk '{ printf "%.2f\n", $2 - $3 }'
}
# the 10 ms row's extra time over cold loopback, per repetition, and its median
delay_extra=$(delay_extra ours-10ms ours-cold)
# shellcheck disable=SC2086  # one number per word
delay_med=$(median2 $delay_extra)
n_keep=$(find "$tree/debian-rootfs" -name .keep | wc -l)
range() { col "$1" 3 | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { printf "%s–%s s", a, b }'; }
snix_version=
[ -z "$snix_bin" ] || snix_version=$("$snix_bin" --version 2>/dev/null | head -n 1 || echo "version unknown")

report() {
  bench_report_head "$SECTION" "$repro"
  echo "- Host: $(nproc) CPUs, $cpu, $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory, shared with other work; guest accel **${ACCEL^^}**, QEMU $qemu_v, guest kernel $kver (the host's linux-image-cloud-amd64), ${SMP:-2} vCPUs, ${MEM:-1G} memory"
  local snix_store=""
  if [ -n "$snix_root_path" ]; then
    snix_store=" For the \`snix-store virtiofs\` rows the same tree is imported with \`snix-store import\` into a real \`snix-store daemon\` ($snix_version) set up alike$([ "$snix_root_path" = "$root_path" ] && echo ", which names it with the same store path" || echo ", which names it $snix_root_path (the tvix-store: $root_path)")."
  fi
  echo "- Guest (\`scripts/boot-guest/\`): the Debian 12 minbase + systemd + dbus of \`scripts/systemd-guest/build-rootfs.sh\` as one store path ($n_entries entries, $tree_mib MiB; device nodes, FIFOs and sockets removed; owner root, modes 0444/0555, mtime 1, as a castore holds them), imported with \`tvix-store import\` into a real \`tvix-store daemon\` ($("$tvix_bin" --version | head -n 1)) on local disk (objectstore+file:// blobs, redb:// directories and path infos), over grpc+unix on the same host.$snix_store A busybox initramfs loads virtiofs and overlay, mounts the tag read-only, puts a tmpfs over the store path with overlayfs, mounts a tmpfs of mode 1777 on /tmp and /var/tmp and switches to systemd; \`boot-marker.service\` (After=multi-user.target) reports the uptime and powers off. Every boot is checked: multi-user.target reached, no failed unit. Each of the $n_keep empty directories holds a \`.keep\` file naming its path: \`tvix-store virtiofs\` gives identical directories one inode (so does \`snix-store\`: on its FUSE mount two empty directories, or two with the same content, have one inode number), which the guest kernel takes for one directory (/proc, /sys and /tmp became one, and systemd stopped at \"Failed to mount API filesystems\"); the file makes them differ, for every row alike."
  echo "- Ours: $profile profile, default options plus \`--cache-dir\` and \`--instance boot\`: an empty cache directory per cold boot; the warm rows reuse the cache directory that one untimed boot filled before the first repetition (the instance's mappings and the shared objects), with a fresh daemon each time. The $((2 * delay_ms)) ms rows go through \`tvix-delay-proxy\` (benches/loadgen), which holds every forwarded segment $delay_ms ms in each direction without limiting throughput (\`tc netem\` on lo would also delay every other user of the host's loopback, and the stores are on unix sockets)$(! ran snix-virtiofs-10ms || echo "; the snix-store's row through a second one in front of its daemon")."
  ! has ours-trace-10ms || echo "- Ours with the trace: a second cold boot of another instance that has the first boot's trace. The untimed boot before the first repetition (instance \`boot\`, an empty cache, the store on loopback; the same boot that fills the warm rows' cache) records per store path which files the guest opens, in \`v2/instances/boot/traces\` of its cache directory; each boot of this row starts from an empty cache directory holding only a copy of those files as \`v2/instances/boot2/traces\`, with \`--instance boot2\` and the store behind $((2 * delay_ms)) ms as the cold $((2 * delay_ms)) ms row: no mappings, no objects, only the list of what to fetch first."
  echo "- Baseline: virtiofsd $vfs_version \`--cache always --sandbox none --readonly\` sharing the same directory that was imported. \`tvix-store --otlp=false virtiofs\` and \`snix-store --otlp=false virtiofs\` with the three addresses of their store daemons."
  echo "- One guest boot per row and repetition, with a fresh daemon; rows interleaved in the order $(join_list "${run_rows[@]}"); repetitions: $reps; the stores' files and virtiofsd's tree are in the host page cache for every row alike. Times are the guest's /proc/uptime (10 ms) when multi-user.target is reached, medians; ratios are per repetition, row time / virtiofsd time of the same repetition (< 1: faster than virtiofsd), median first."
  echo
  echo "| Row | multi-user.target s | per rep | systemd started at s | time / virtiofsd | target | store calls | MiB from the store | disk-cache hits | files from the trace |"
  echo "|---|---:|---|---:|---|---|---:|---:|---:|---:|"
  local r t calls
  for r in "${rows[@]}"; do
    t=$(target_of "$r")
    if ! ran "$r"; then
      echo "| $(label "$r") | not run (no snix-store binary) | | | | ${t:+≤ $t×} | | | | |"
      continue
    fi
    calls=$(med_known "$r" 6 %.0f)
    local mib=- hits=-
    if [ "$calls" != - ]; then
      mib=$(awk -v b="$(med_known "$r" 7 %.0f)" 'BEGIN { printf "%.1f", b / 1048576 }')
      hits=$(med_known "$r" 8 %.0f)
    fi
    # shellcheck disable=SC2046  # one number per word
    echo "| $(label "$r") | $(med "$r" 3 %.2f) | $(join_list $(col "$r" 3)) | $(med "$r" 4 %.2f) | $([ "$r" = virtiofsd ] && echo 1.00 || ratio_cell "$r" virtiofsd) | ${t:+≤ $t×} | $calls | $mib | $hits | $(med_known "$r" 10 %.0f) |"
  done
  echo
  local kind
  for kind in tvix snix; do
    if ! has "$kind-virtiofs" && ! has "$kind-virtiofs-10ms"; then
      continue
    fi
    if ! ran "$kind-virtiofs" && ! ran "$kind-virtiofs-10ms"; then
      echo "\`$kind-store virtiofs\` / ours, as a speed factor: not run (no $kind-store binary)."
      echo
      continue
    fi
    local factors=""
    [ -z "$(col "$kind-virtiofs" 3)" ] || [ -z "$(col ours-cold 3)" ] ||
      factors="store on loopback $(ratio_cell "$kind-virtiofs" ours-cold)"
    [ -z "$(col "$kind-virtiofs-10ms" 3)" ] || [ -z "$(col ours-10ms 3)" ] ||
      factors+="${factors:+; }both behind $((2 * delay_ms)) ms per round trip $(ratio_cell "$kind-virtiofs-10ms" ours-10ms)"
    if [ -z "$factors" ]; then
      echo "\`$kind-store virtiofs\` / ours cold, as a speed factor: no ours-cold (or ours-10ms) row to compare with."
    else
      echo "\`$kind-store virtiofs\` / ours cold, as a speed factor (its time / ours, per repetition): $factors."
    fi
    echo
  done
  echo "Targets (medians of the per-repetition ratios above, time / virtiofsd time):"
  echo
  local m
  for r in ours-warm ours-cold ours-10ms ours-trace-10ms; do
    t=$(target_of "$r")
    [ -n "$(col "$r" 3)" ] || { echo "- $(label "$r"): not run (target ≤ $t×)"; continue; }
    # shellcheck disable=SC2046  # one number per word
    m=$(median2 $(per_rep "$r" virtiofsd))
    if [ "$m" = - ]; then
      echo "- $(label "$r"): no virtiofsd row to compare with (target ≤ $t×)"
      continue
    fi
    echo "- $(label "$r"): $(awk -v m="$m" -v t="$t" 'BEGIN { if (m <= t) print "**met**"; else printf "**not met** by %.0f %%", (m / t - 1) * 100 }') ($m×, target ≤ $t×)"
  done
  echo
  echo "What bounds each figure:"
  echo
  echo "- Every row: the guest kernel and systemd run in emulated code on 2 host CPUs that also run the daemons and the stores: the kernel alone takes about $(med virtiofsd 4 %.1f) s to the initramfs's hand-over here, and systemd's own start-up (units, dbus, journald under TCG) is most of the rest. What the file system adds shows in the difference to the virtiofsd row."
  if ran ours-cold; then
    echo "- Ours cold: one boot fetches $cold_mib MiB in $cold_calls store calls: the root's path info, then Directories in few recursive calls, then $(med_known ours-cold 9 %.0f) files that the prefetch fetches in the background (no trace yet: the default \`--prefetch-guess directory\` fetches a directory's files of up to 256 KiB once the guest opens a file in it, at most 4 at a time and only while the guest waits for nothing else), and the chunk lists and chunks of the larger files the guest opens. The guest's own calls are made when it first opens a file, one after another in the order systemd and the programs it starts open them. Every fetch is verified and written to the disk cache."
  fi
  if ran ours-10ms && ran ours-cold; then
    # shellcheck disable=SC2086  # one number per word
    echo "- Ours behind $((2 * delay_ms)) ms: per repetition it took $(join_list $delay_extra) s longer than cold on loopback (median $delay_med s). What the guest waits for is the round trips of the files it opens before the prefetch of their directory has fetched them, one after another, and those of the larger files' chunk lists and chunks; the bytes ($cold_mib MiB) are not the bound. Differences smaller than the spread between repetitions (below) are noise."
  fi
  if ran ours-trace-10ms; then
    local trace_extra="" trace_files
    trace_files=$(med_known ours-trace-10ms 10 %.0f)
    if ran ours-10ms; then
      local e
      e=$(delay_extra ours-trace-10ms ours-10ms)
      # shellcheck disable=SC2086  # one number per word
      trace_extra=" Its time minus that of the cold $((2 * delay_ms)) ms row without a trace, per repetition: $(join_list $e) s (median $(median2 $e) s; negative: faster)."
    fi
    local trace_calls per_file
    trace_calls=$(med_known ours-trace-10ms 6 %.0f)
    per_file=$(awk -v c="$trace_calls" -v f="$trace_files" 'BEGIN { if (f > 0 && c != "-") printf "%.2f", c / f; else print "-" }')
    echo "- Ours with the trace behind $((2 * delay_ms)) ms: the trace lists the files the first boot opened (the fill left $(find "$fill_traces" -type f | wc -l) file(s) of traces, $(du -sk --apparent-size "$fill_traces" | cut -f 1) KiB); the daemon fetches them first, ahead of the guest ($trace_files files from the trace per boot, median), so the guest's opens find them fetched or on their way instead of waiting a round trip each.$trace_extra Store calls per boot: $trace_calls, $per_file per file of the trace (target ≤ 1.2): one path info and one recursive Directory call per store path, one Read per file, and for a file of several chunks its chunk list and one stream of its blob (not a Read per chunk)."
  fi
  if ran ours-warm; then
    echo "- Ours warm: no store calls when the disk cache holds everything (calls column); every chunk read back is hashed again before it is served (the price of sharing the cache between daemons), and each first open of a file is a guest exit and a daemon round trip, as for virtiofsd."
  fi
  if ran tvix-virtiofs || ran tvix-virtiofs-10ms; then
    echo "- \`tvix-store virtiofs\`: the same store and tree, a fresh daemon per boot; its store calls are not counted (it has no stats file)."
  fi
  if ran snix-virtiofs || ran snix-virtiofs-10ms; then
    echo "- \`snix-store virtiofs\`: the same tree in its own store daemon, a fresh daemon per boot; its store calls are not counted (it has no stats file)."
  fi
  echo
  local ranges=()
  for r in "${run_rows[@]}"; do ranges+=("$(short "$r") $(range "$r")"); done
  echo "The host's load changed during the run, and with it every row: $(join_list "${ranges[@]}") to multi-user.target. Compare rows within a repetition (the ratios), not across them."
  echo
  [ ${#skipped[@]} -eq 0 ] || { echo "snix-store was not found: its rows ($(join_list "${skipped[@]}")) were not run."; echo; }
  echo "Guest boots took $t_boots s in all ($boots boots$([ -z "$fill_row" ] || echo ", one of them the untimed fill")); the stores' start and import $t_import s; the whole script $(($(date +%s) - t_script)) s. Host load average (1 min) before / after the boots: $load_before / $load_after (other jobs share this host: compare rows of one repetition)."
}
report >"$work/report.md"
cat "$work/report.md"

[ "$write_docs" = 0 ] || bench_write_docs "$DOC" "$SECTION" "$work/report.md"
