#!/usr/bin/env bash
# profile-vm.sh — where the daemon's CPU goes while a guest reads one file
# sequentially: `perf record` (cpu-clock samples, call graphs) on
# tvix-virtiofsd serving a QEMU guest that runs `dd bs=1M` over the file
# three times with the guest caches dropped before each pass. The first
# pass reads a warm disk cache (filled through a FUSE mount beforehand),
# the other two the memory cache. Prints each pass's guest time, the
# daemon's CPU time, and the hottest symbols and threads.
#
# Usage: scripts/profile-vm.sh
#
# Env:
#   SIZE_MB=256     the file
#   POLICY=never    our --cache policy (never: the daemon's own work shows)
#   MEMORY_CACHE=1G our --memory-cache-size
#   TOP=25          symbols to print
#   ACCEL=tcg|kvm   passed to scripts/vm/run-guest.sh (default tcg)
#   NO_BUILD=1      do not run cargo
#   KEEP=1          keep the work dir (target/bench/run.*) with perf.data
#
# Needs root and perf (Debian: linux-perf).
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

[ $# = 0 ] || usage
[ "$(id -u)" = 0 ] || die "needs root (FUSE mount, QEMU)"
command -v perf >/dev/null || die "perf not found (apt install linux-perf)"
SIZE_MB=${SIZE_MB:-256} POLICY=${POLICY:-never} MEMORY_CACHE=${MEMORY_CACHE:-1G} TOP=${TOP:-25}
export ACCEL=${ACCEL:-tcg}

bench_build release
bench_workdir
mkdir -p "$work/tree/big-1.0" "$work/mnt" "$work/cache"
head -c "$((SIZE_MB << 20))" /dev/urandom >"$work/tree/big-1.0/big.bin"
bench_start_store store "$work/tree" --latency-ms 2
path=$(bench_store_path store big-1.0)

log "filling the disk cache through a FUSE mount"
"$bindir/tvix-virtiofsd" --mount "$work/mnt" --store "grpc+unix://$work/store.sock" \
  --cache-dir "$work/cache" 2>"$work/fill.log" &
fill=$!
pids+=("$fill") mounts+=("$work/mnt")
for _ in $(seq 100); do grep -qF " $work/mnt fuse" /proc/mounts && break; sleep 0.1; done
cat "$work/mnt/$path/big.bin" >/dev/null
umount "$work/mnt"
wait "$fill" || die "the FUSE daemon failed; see $work/fill.log"
bench_forget "$fill"

log "profiling: $SIZE_MB MiB, --cache $POLICY, --memory-cache-size $MEMORY_CACHE, accel $ACCEL"
perf stat -x, -e task-clock -o "$work/task-clock" -- \
  "$bindir/tvix-virtiofsd" --socket-path "$work/fs.sock" --store "grpc+unix://$work/store.sock" \
  --cache-dir "$work/cache" --cache "$POLICY" --memory-cache-size "$MEMORY_CACHE" \
  2>"$work/daemon.log" &
wrapper=$!
pids+=("$wrapper")
bench_wait_socket "$work/fs.sock" "$work/daemon.log"
daemon=$(pgrep -P "$wrapper")
perf record -F 2000 -e cpu-clock -g -p "$daemon" -o "$work/perf.data" 2>"$work/perf.log" &
recorder=$!
cmd="for i in 1 2 3; do echo 3 > /proc/sys/vm/drop_caches; a=\$(cut -d' ' -f1 /proc/uptime);
  dd if=$path/big.bin of=/dev/null bs=1M 2>/dev/null; b=\$(cut -d' ' -f1 /proc/uptime); echo pass\$i \$a \$b; done"
"$REPO/scripts/vm/run-guest.sh" "$work/fs.sock" prof "$cmd" 600 >"$work/guest.out" 2>"$work/guest.err" ||
  { cat "$work/guest.err" >&2; die "guest run failed"; }
wait "$wrapper" || true
bench_forget "$wrapper"
wait "$recorder" || true

# report KEY N: the first N lines of perf's self-time table sorted by KEY,
# without comments (through a file: `head` closing a pipe would fail the
# script under pipefail).
report() {
  perf report -i "$work/perf.data" --no-children --sort "$1" -g none --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | sed 's/ *- *- *$//' >"$work/report-$1" || true
  head -n "$2" "$work/report-$1"
}

echo "# Warm-disk then hot sequential read, $SIZE_MB MiB, --cache $POLICY (accel $ACCEL)"
echo
awk '{printf "- %s: %.2f s in the guest%s\n", $1, $3 - $2, ($1 == "pass1" ? " (warm disk)" : " (memory)")}' "$work/guest.out"
echo "- daemon CPU time, all passes: $(cut -d, -f1 "$work/task-clock" | grep -E '^[0-9.]+$' | head -1) ms"
echo
echo "## Threads"
echo '```'
report comm 8
echo '```'
echo
echo "## Hottest symbols (self time)"
echo '```'
report symbol "$TOP"
echo '```'
