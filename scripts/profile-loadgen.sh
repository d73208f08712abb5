#!/usr/bin/env bash
# profile-loadgen.sh — where the daemon's CPU goes on the read paths, with
# no guest in the way: `perf record` (cpu-clock samples, DWARF call graphs)
# on tvix-virtiofsd while tvix-loadgen (benches/loadgen) reads big/data.bin
# sequentially, once per mode:
#   mem   from the memory cache (an untimed pass first, not recorded)
#   disk  from a warm disk cache (filled once beforehand; its files are in
#         the host page cache), a small memory cache
#   cold  from the real tvix-store, with an empty disk cache
# For each mode it prints the daemon's CPU seconds per GB, the hottest
# symbols by self time, by thread, and by inclusive time (children).
#
# Usage: scripts/profile-loadgen.sh [mem|disk|cold]...   (default: all three)
#
# Env:
#   SIZE_MB=512     the file read
#   WORKLOAD=seq    the load generator workload (seq, seq1m, rand, meta,
#                   readdir)
#   FILES=10000     files of the metadata walk; FLAT=10000 entries of the
#                   READDIRPLUS directory
#   STORE=tvix      tvix, snix (the real binary) or fixture
#   FREQ=1999       samples per second
#   TOP=30          symbols to print
#   DAEMON=         the daemon binary (default: the one built), e.g. an
#                   older build to compare with
#   NO_BUILD=1      do not run cargo
#   KEEP=1          keep the work dir (target/bench/run.*) with perf.*.data
#
# Needs root and perf (Debian: linux-perf).
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

command -v perf >/dev/null || die "perf not found (apt install linux-perf)"
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(mem disk cold)
for m in "${modes[@]}"; do
  case $m in mem | disk | cold) ;; *) usage ;; esac
done
size_mib=${SIZE_MB:-512} workload=${WORKLOAD:-seq} freq=${FREQ:-1999} top=${TOP:-30}

bench_build release
daemon_bin=${DAEMON:-$bindir/tvix-virtiofsd}
bench_store_choice
bench_workdir
log "work dir $work"
bench_loadgen_tree "${FILES:-10000}" "${FLAT:-10000}" "$size_mib"

# daemon LABEL [PERF-ARGS... --] ARGS...: starts our daemon on
# $work/LABEL.sock, under `perf record PERF-ARGS` when given (so threads
# it starts later are recorded too); sets pid (the daemon's) and wrapper.
daemon() {
  local label=$1 _
  shift
  local -a rec=()
  if [[ " $* " == *" -- "* ]]; then
    while [ "$1" != -- ]; do rec+=("$1"); shift; done
    shift
  fi
  rm -f "$work/$label.sock"
  if [ ${#rec[@]} -gt 0 ]; then
    perf record "${rec[@]}" -- "$daemon_bin" --socket-path "$work/$label.sock" --store "$store_addr" \
      --store-protocol "${store_kind/fixture/tvix}" "$@" 2>>"$work/$label.log" &
    wrapper=$!
    pids+=("$wrapper")
    bench_wait_socket "$work/$label.sock" "$work/$label.log"
    pid=$(pgrep -P "$wrapper")
  else
    "$daemon_bin" --socket-path "$work/$label.sock" --store "$store_addr" \
      --store-protocol "${store_kind/fixture/tvix}" "$@" 2>>"$work/$label.log" &
    pid=$! wrapper=
    pids+=("$pid")
    bench_wait_socket "$work/$label.sock" "$work/$label.log"
  fi
}

# loadgen LABEL ARGS...: the load generator against the daemon $pid.
loadgen() {
  local label=$1
  shift
  timeout 1800 "$bindir/tvix-loadgen" --socket "$work/$label.sock" --tree "$tree" --threads 1 \
    --workload "$workload" --daemon-pid "$pid" --label "$label" --timeout 120 "${names[@]}" "$@" \
    >>"$work/$label.out" 2>>"$work/$label.log" || { tail -n 20 "$work/$label.log" >&2; die "$label: load generator failed"; }
  bench_wait_exit "$pid" "$label"
  bench_forget "$pid"
}

# report FILE KEY N [ARGS...]: the first N lines of perf's table sorted by KEY.
report() {
  local data=$1 key=$2 n=$3
  shift 3
  perf report -i "$data" --sort "$key" -g none --stdio "$@" 2>/dev/null |
    grep -v '^#' | grep -v '^$' | sed 's/ *- *- *$//' >"$data.$key" || true
  head -n "$n" "$data.$key"
}

if [[ " ${modes[*]} " == *" disk "* ]]; then
  log "filling the disk cache (not recorded)"
  daemon fill --cache-dir "$work/cache"
  loadgen fill --verify all
fi

for mode in "${modes[@]}"; do
  label=prof-$mode
  rec=(-F "$freq" -e cpu-clock --call-graph "dwarf,32768" -o "$work/perf.$mode.data")
  warm=()
  # From memory, only the timed pass is recorded: perf starts disabled
  # and is enabled once the untimed pass has printed its RESULT line.
  if [ "$mode" = mem ]; then
    rm -f "$work/perf.ctl"
    mkfifo "$work/perf.ctl"
    rec+=(-D -1 --control "fifo:$work/perf.ctl") warm=(--warm)
    (
      until grep -q 'pass=warm' "$work/$label.out" 2>/dev/null; do sleep 0.05; done
      echo enable >"$work/perf.ctl"
    ) &
  fi
  case $mode in
    mem) daemon "$label" "${rec[@]}" -- --memory-cache-size "$((size_mib + 512))M" ;;
    disk) daemon "$label" "${rec[@]}" -- --cache-dir "$work/cache" --memory-cache-size 64M ;;
    cold) daemon "$label" "${rec[@]}" -- --cache-dir "$work/cold-cache" ;;
  esac
  loadgen "$label" --verify warm "${warm[@]}"
  wait "$wrapper" 2>/dev/null || true
  bench_forget "$wrapper"
  result=$(grep '^RESULT .* pass=timed ' "$work/$label.out" | tail -n 1)
  echo "# $mode: $workload over $size_mib MiB"
  echo
  echo '```'
  echo "$result"
  awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    if (f["bytes"] > 0) printf "daemon CPU s per GB: %.2f\n", f["cpu"] / (f["bytes"] / 1e9) }' <<<"$result"
  echo '```'
  echo
  echo "Threads:"
  echo '```'
  report "$work/perf.$mode.data" comm 8 --no-children
  echo '```'
  echo "Self time:"
  echo '```'
  report "$work/perf.$mode.data" symbol "$top" --no-children
  echo '```'
  echo "Inclusive time:"
  echo '```'
  report "$work/perf.$mode.data" symbol "$top" --children
  echo '```'
  echo
done
