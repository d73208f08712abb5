#!/usr/bin/env bash
# bench-loadgen.sh — the daemon without an emulated guest in the way: the
# vhost-user load generator (benches/loadgen, tvix-loadgen) plays the VMM
# and the guest's FUSE driver and runs the same workloads, in the same run,
# against tvix-virtiofsd from memory, from the warm disk cache and cold
# from the real tvix-store, and against virtiofsd on a local copy of the
# tree; for cold reads also against a plain gRPC client streaming the same
# blob from the same store (tvix-blob-stream). Prints a markdown table of
# ratios (medians over repetitions).
#
# Usage: scripts/bench-loadgen.sh [--write-docs] [--smoke]
#   --write-docs  also write the result into docs/benchmarks.md, replacing
#                 only the section "## Load generator: the daemon without a guest"
#   --smoke       tiny tree, 1 repetition, dev-profile binaries, every read
#                 byte checked against the tree; virtiofsd only if it is
#                 already installed (building it takes minutes), otherwise
#                 the baseline is our daemon with --thread-pool-size 2
#
# Env:
#   REPS=3          repetitions; the rows are interleaved within each
#   FILES=10000     files of the metadata walk (100 per directory, 0-2 KiB)
#   FLAT=10000      entries of the READDIRPLUS directory
#   SIZE_MB=1024    the file read sequentially (and at random)
#   RAND_READS=20000  4 KiB random READs per thread
#   THREADS=1       request queues, one thread each (virtiofsd offers one)
#   STORE=tvix      the store of the cold rows: tvix (default) or snix, the
#                   real binary (see scripts/bench-lib.sh bench_real_bin);
#                   with --smoke, the fixture store when there is none
#   OURS_ARGS=      more flags for our daemon in every ours-* row (e.g.
#                   "--queue-poll-us 0")
#   MEMORY_CACHE=   our --memory-cache-size in the memory rows (default
#                   SIZE_MB + 512 MiB: the whole tree in memory)
#   VIRTIOFSD=      path of virtiofsd (default: PATH, then ~/.cargo/bin;
#                   installed with cargo if missing, except with --smoke)
#   PROFILE=        release (default) or dev (default with --smoke)
#   NO_BUILD=1      do not run cargo
#   KEEP=1          keep the work dir (target/bench/run.*) with all logs
#
# Rows (every row a fresh daemon and connection, per repetition):
#   ours-mem    our daemon, no disk cache: an untimed pass, then the timed
#               pass from its memory cache
#   ours-disk   our daemon on a disk cache filled once before the first
#               repetition (so its files are in the host page cache), a
#               small memory cache, no warm-up pass
#   ours-cold   our daemon with an empty disk cache, one daemon per
#               workload, everything from the store
#   virtiofsd   virtiofsd --cache auto --sandbox chroot on a local copy of
#               the tree: an untimed pass, then the timed pass (tree in the
#               host page cache)
#   plain       tvix-blob-stream: BlobService.Read of data.bin, no hashing
#   plain-chunks  tvix-blob-stream --per-chunk: Stat with the chunk list,
#               then one Read per chunk, as many in flight as our
#               --readahead-chunks (what any reader of chunks costs the
#               store), no hashing
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

SECTION="## Load generator: the daemon without a guest"
DOC=docs/benchmarks.md

bench_args "$@"
if [ "$smoke" = 1 ]; then
  nfiles=300 nflat=300 size_mib=8 rand_reads=300 reps=1 profile=${PROFILE:-dev}
else
  nfiles=${FILES:-10000} nflat=${FLAT:-10000} size_mib=${SIZE_MB:-1024}
  rand_reads=${RAND_READS:-20000} reps=${REPS:-3} profile=${PROFILE:-release}
fi
threads=${THREADS:-1}
read -r -a ours_args <<<"${OURS_ARGS:-}"
for v in "$nfiles" "$nflat" "$size_mib" "$rand_reads" "$reps" "$threads"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "FILES, FLAT, SIZE_MB, RAND_READS, REPS and THREADS must be positive integers: $v"
done
memcache=${MEMORY_CACHE:-$((size_mib + 512))M}
workloads=meta,readdir,seq,seq1m,rand

# ---- build, tools, store ------------------------------------------------------------
bench_build "$profile"
for b in tvix-loadgen tvix-blob-stream tvix-copy-hash-rate; do [ -x "$bindir/$b" ] || die "missing $bindir/$b"; done
bench_store_choice
[ "$smoke" = 1 ] || [ "$store_kind" != fixture ] || die "the cold rows need a real store (STORE=tvix or snix)"
baseline=virtiofsd
if [ "$smoke" = 1 ] && ! { [ -n "${VIRTIOFSD:-}" ] || command -v virtiofsd >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd" ]; }; then
  log "--smoke: virtiofsd is not installed (building it takes minutes); baseline: ours with --thread-pool-size 2"
  baseline=ours-pool
else
  bench_virtiofsd
fi
bench_workdir
log "work dir $work"

bench_loadgen_tree "$nfiles" "$nflat" "$size_mib"
# virtiofsd's copy, on the same file system as the tree
cp -a "$tree" "$work/vfs-tree"
results=$work/results
: >"$results"

# ---- one row --------------------------------------------------------------------------
# run_ours LABEL WORKLOADS LOADGEN-ARGS... -- DAEMON-ARGS...: a fresh daemon
# serving the store, the load generator against it; RESULT lines to $results.
run_ours() {
  local label=$1 wl=$2 sock=$work/$1.sock pid rc=0
  shift 2
  local -a lg=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do lg+=("$1"); shift; done
  shift
  rm -f "$sock"
  "$bindir/tvix-virtiofsd" --socket-path "$sock" --store "$store_addr" --store-protocol "${store_kind/fixture/tvix}" \
    --num-request-queues "$threads" "${ours_args[@]}" "$@" 2>>"$work/$label.log" &
  pid=$!
  pids+=("$pid")
  bench_wait_socket "$sock" "$work/$label.log"
  loadgen "$label" "$wl" "$sock" "$pid" "$tree" "${names[@]}" "${lg[@]}" || rc=$?
  bench_wait_exit "$pid" "$label"
  bench_forget "$pid"
  [ "$rc" = 0 ] || { tail -n 20 "$work/$label.log" >&2; die "$label: load generator failed"; }
}

# loadgen LABEL WORKLOADS SOCK PID TREE ARGS...: tvix-loadgen checking
# against TREE (two minutes at most per reply), its RESULT lines appended
# to $results.
loadgen() {
  local label=$1 wl=$2 sock=$3 pid=$4 lg_tree=$5
  shift 5
  local -a verify=(--verify warm)
  [ "$smoke" = 0 ] || verify=(--verify all)
  timeout 3600 "$bindir/tvix-loadgen" --socket "$sock" --tree "$lg_tree" --threads "$threads" \
    --workload "$wl" --rand-reads "$rand_reads" --daemon-pid "$pid" --label "$label" --timeout 120 \
    "${verify[@]}" "$@" >"$work/lg.out" 2>>"$work/$label.log" || return 1
  grep '^RESULT .* pass=timed ' "$work/lg.out" >>"$results"
}

run_virtiofsd() {
  local sock=$work/virtiofsd.sock pid rc=0
  rm -f "$sock"
  "$vfs_bin" --socket-path "$sock" --shared-dir "$work/vfs-tree" --cache auto --sandbox chroot \
    2>>"$work/virtiofsd.log" &
  pid=$!
  pids+=("$pid")
  bench_wait_socket "$sock" "$work/virtiofsd.log"
  loadgen virtiofsd "$workloads" "$sock" "$pid" "$work/vfs-tree" --warm || rc=$?
  bench_wait_exit "$pid" virtiofsd
  bench_forget "$pid"
  [ "$rc" = 0 ] || { tail -n 20 "$work/virtiofsd.log" >&2; die "virtiofsd: load generator failed"; }
}

run_plain() {
  local -a verify=()
  [ "$smoke" = 0 ] || verify=(--verify)
  "$bindir/tvix-blob-stream" --store "$store_addr" --file "$tree/big/data.bin" --label plain "${verify[@]}" \
    >>"$results" 2>>"$work/plain.log" || { cat "$work/plain.log" >&2; die "tvix-blob-stream failed"; }
}

run_plain_chunks() {
  local -a verify=()
  [ "$smoke" = 0 ] || verify=(--verify)
  "$bindir/tvix-blob-stream" --store "$store_addr" --file "$tree/big/data.bin" --label plain-chunks \
    --per-chunk "$(bench_readahead)" "${verify[@]}" >>"$results" 2>>"$work/plain.log" ||
    { cat "$work/plain.log" >&2; die "tvix-blob-stream --per-chunk failed"; }
}

# store_ticks: the store process's CPU so far (utime + stime, clock ticks).
store_ticks() {
  bench_stat_ticks "/proc/$store_pid/stat" || die "the store (pid $store_pid) is gone"
}
# with_store_cpu LABEL CMD...: runs CMD and appends the store's CPU during
# it, in clock ticks, to $store_cpu as "LABEL TICKS".
store_cpu=$work/store-cpu
: >"$store_cpu"
with_store_cpu() {
  local label=$1 before
  shift
  before=$(store_ticks)
  "$@"
  echo "$label $(($(store_ticks) - before))" >>"$store_cpu"
}

# ---- the run ----------------------------------------------------------------------------
log "filling the disk cache (untimed)"
run_ours fill "$workloads" --verify all -- --cache-dir "$work/cache" --instance bench
sed -i '/label=fill /d' "$results"
for rep in $(seq "$reps"); do
  log "repetition $rep of $reps"
  run_ours ours-mem "$workloads" --warm -- --memory-cache-size "$memcache"
  run_ours ours-disk "$workloads" -- --cache-dir "$work/cache" --instance bench --memory-cache-size 64M
  # A new empty cache dir per cold run, all removed with the work dir at
  # the end: on an ext4 without a journal (as this host's), creating a file
  # skips every inode deleted in the last minutes, so deleting the last
  # run's thousands of chunk files would slow the next run's creates.
  for w in meta readdir seq rand; do
    if [ "$w" = seq ]; then
      with_store_cpu ours-cold run_ours ours-cold "$w" -- --cache-dir "$work/cold-cache.$rep.$w"
    else
      run_ours ours-cold "$w" -- --cache-dir "$work/cold-cache.$rep.$w"
    fi
  done
  with_store_cpu plain run_plain
  with_store_cpu plain-chunks run_plain_chunks
  if [ "$baseline" = virtiofsd ]; then
    run_virtiofsd
  else
    run_ours ours-pool "$workloads" --warm -- --memory-cache-size "$memcache" --thread-pool-size 2
  fi
done

# ---- the report ---------------------------------------------------------------------------
# value LABEL WORKLOAD KEY: the median of KEY over the timed passes
# (KEY also cpu_per_op, cpu_per_gb).
value() {
  local -a v
  mapfile -t v < <(awk -v l="label=$1" -v w="workload=$2" -v k="$3" '$2 == l && $3 == w {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      if (k == "cpu_per_op") print f["cpu"] / f["ops"]
      else if (k == "cpu_per_gb") print f["cpu"] / (f["bytes"] / 1e9)
      else print f[k] }' "$results")
  [ ${#v[@]} -gt 0 ] || die "no result for $1 $2"
  median_fmt %.6g "${v[@]}"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# Every row must have answered every workload (the load generator checked
# each reply against the tree and exits non-zero otherwise).
for l in ours-mem ours-disk "$baseline"; do
  for w in ${workloads//,/ }; do
    n=$(grep -c "label=$l workload=$w " "$results" || true)
    [ "$n" = "$reps" ] || die "$l $w: $n results, expected $reps"
  done
done
for w in meta readdir seq rand; do
  n=$(grep -c "label=ours-cold workload=$w " "$results" || true)
  [ "$n" = "$reps" ] || die "ours-cold $w: $n results, expected $reps"
done

bench_host_info
# The per-byte bounds on one core of this host, measured now.
rates=$("$bindir/tvix-copy-hash-rate" "$tree/big/data.bin")
rate() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<" ${rates#RATE }"; }
report=$work/report.md
{
  if [ "$smoke" = 1 ]; then
    repro="scripts/bench-loadgen.sh --smoke"
  else
    repro="REPS=$reps THREADS=$threads scripts/bench-loadgen.sh"
  fi
  bench_report_head "## Load generator (smoke)" "$repro"
  echo "- Machine: $cpu, $(nproc) CPUs shared with other work, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; Linux $(uname -r)"
  echo "- Tree: $nfiles files of 0-2 KiB in directories of 100 (meta), one directory of $nflat entries (flat), data.bin of $size_mib MiB (random); store: $(bench_store_label)"
  echo "- One core of this host, measured in the same run (\`tvix-copy-hash-rate\`): memcpy $(rate memcpy_gb_s) GB/s, BLAKE3 in 16 KiB groups $(rate blake3_gb_s) GB/s, a read from the page cache into a buffer $(rate page_cache_read_gb_s) GB/s"
  echo "- $threads request queue(s), one load generator thread each, one request in flight per queue; $reps repetitions, medians; our daemon ($profile build) with its defaults (seccomp, Landlock, --readahead-chunks $(bench_readahead), --queue-poll-us $(bench_default queue-poll-us)) and --num-request-queues $threads${OURS_ARGS:+ $OURS_ARGS}"
  if [ "$baseline" = virtiofsd ]; then
    echo "- Baseline: virtiofsd $vfs_version (\`--cache auto --sandbox chroot\`, seccomp on) on a local copy of the tree in the host page cache"
  else
    echo "- Baseline: our daemon with \`--thread-pool-size 2\` from memory (virtiofsd not installed)"
  fi
  echo "- Daemon CPU: the daemon process's CPU-time clock (all its threads, user + system, in nanoseconds), read by the load generator around each timed pass"
  tick=$(getconf CLK_TCK)
  store_s_per_gb() {
    local -a v
    mapfile -t v < <(awk -v l="$1" -v t="$tick" -v b="$((size_mib * 1048576))" '$1 == l { print $2 / t / (b / 1e9) }' "$store_cpu")
    median_fmt %.2f "${v[@]}"
  }
  echo "- The store's own CPU per GB of data.bin streamed (its /proc/PID/stat around each read, medians): $(store_s_per_gb plain) s for the plain client (one Read of the blob), $(store_s_per_gb plain-chunks) s for the plain client reading chunk by chunk ($(value plain-chunks blob ops) chunks, $(bench_readahead) Reads in flight), $(store_s_per_gb ours-cold) s for ours cold; the store, our daemon and the load generator share the host's $(nproc) CPUs"
  echo "- The plain client: $(value plain blob mb_per_s) MB/s with $(value plain blob cpu_per_gb | xargs printf %.2f) s of its own CPU per GB in one Read, $(value plain-chunks blob mb_per_s) MB/s with $(value plain-chunks blob cpu_per_gb | xargs printf %.2f) s chunk by chunk; ours cold: $(value ours-cold seq mb_per_s) MB/s with $(value ours-cold seq cpu_per_gb | xargs printf %.2f) s of daemon CPU per GB, every chunk verified and written to the disk cache (medians)"
  echo
  echo "| workload | figure | ours-mem / $baseline | ours-disk / $baseline | ours-cold / $baseline | ours-cold / plain client |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for w in ${workloads//,/ }; do
    case $w in
      meta) what="LOOKUP + GETATTR, ops/s" key=ops_per_s cpu=cpu_per_op ;;
      readdir) what="READDIRPLUS (4 KiB), entries/s" key=ops_per_s cpu=cpu_per_op ;;
      seq) what="READ 128 KiB sequential, MB/s" key=mb_per_s cpu=cpu_per_gb ;;
      seq1m) what="READ 1 MiB sequential, MB/s" key=mb_per_s cpu=cpu_per_gb ;;
      rand) what="READ 4 KiB random, ops/s" key=ops_per_s cpu=cpu_per_op ;;
    esac
    b=$(value "$baseline" "$w" "$key") bc=$(value "$baseline" "$w" "$cpu")
    cold=- coldc=- plain=-
    if [ "$w" != seq1m ]; then
      cold=$(ratio "$(value ours-cold "$w" "$key")" "$b")
      coldc=$(ratio "$(value ours-cold "$w" "$cpu")" "$bc")
    fi
    [ "$w" != seq ] || plain="$(ratio "$(value ours-cold seq mb_per_s)" "$(value plain blob mb_per_s)") (chunk by chunk: $(ratio "$(value ours-cold seq mb_per_s)" "$(value plain-chunks blob mb_per_s)"))"
    echo "| $w | $what | $(ratio "$(value ours-mem "$w" "$key")" "$b") | $(ratio "$(value ours-disk "$w" "$key")" "$b") | $cold | $plain |"
    unit=${cpu#cpu_per_}
    [ "$unit" = op ] || unit=GB
    echo "| $w | daemon CPU s per $unit | $(ratio "$(value ours-mem "$w" "$cpu")" "$bc") | $(ratio "$(value ours-disk "$w" "$cpu")" "$bc") | $coldc | |"
  done
  echo
  echo "Ratios above 1 mean ours is faster (throughput rows) or uses more CPU (CPU rows)."
} >"$report"
cat "$report"
log "raw results: $(wc -l <"$results") timed passes"
sed 's/^/bench:   /' "$results" >&2
if [ "$write_docs" = 1 ]; then
  [ "$smoke" = 0 ] || die "--smoke results do not go into $DOC"
  bench_write_docs "$DOC" "$SECTION" "$report"
fi
