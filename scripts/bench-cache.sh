#!/usr/bin/env bash
# bench-cache.sh — what the two cache layers buy: reads through
# tvix-virtiofsd from a fixture store with injected per-call latency
# (standing in for a remote store), cold, warm disk and hot memory, next to
# reading the same tree from local disk, in the same run. Through a FUSE
# mount on the host (`tvix-virtiofsd --mount`) and through the QEMU guest.
#
# Usage: scripts/bench-cache.sh [--write-docs] [--smoke]
#   --write-docs  also write the result into docs/benchmarks.md, replacing
#                 only the section "## Cache: cold, warm disk, hot memory"
#   --smoke       4 MiB file, 200-file tree, 1 repetition, latency 2 ms
#                 only, no virtiofsd, dev-profile binaries: checks that the harness works and
#                 that the counters show the cache working (fails if not)
#
# Env:
#   REPS=3          repetitions; rows interleaved within each
#   SIZE_MB=1024    the sequentially read file (chunked by the store at 256 KiB)
#   FILES=10000     files in the find + stat tree (100 per directory, 0-2 KiB)
#   LATENCIES="2 20"  --latency-ms of the fixture stores (one store each)
#   STORE=            ignored (also --store): every row here needs the
#                     fixture store's injected latency, so it stays the fixture;
#                     real stores: scripts/bench-guest-read.sh, bench-peers.sh
#   MODES="fuse guest"  which halves to run
#   MEMORY_CACHE=   our --memory-cache-size (default 2 x SIZE_MB, at least
#                   256M: the hot rows need the whole file in memory)
#   ACCEL=tcg|kvm   passed to scripts/vm/run-guest.sh (default tcg)
#   NO_VIRTIOFSD=1  guest half without its local baseline (virtiofsd)
#   VIRTIOFSD=      path of virtiofsd (default: PATH, then ~/.cargo/bin)
#   PROFILE=        release (default) or dev (default with --smoke)
#   NO_BUILD=1      do not run cargo
#   TIMEOUT=600     seconds per guest boot
#   KEEP=1          keep the work dir (target/bench/run.*) with all logs
#
# Rows, per latency L (each row a fresh daemon unless said otherwise):
#   cold       empty --cache-dir: time to first byte (its own daemon and
#              cache dir), sequential read, find + stat
#   warm disk  fresh daemon on the cache dir the cold row filled: memory
#              empty, disk full
#   hot        the warm row's daemon again: everything in its memory
# and the local baseline: FUSE half, the source directory on the host, cold
# (page cache dropped) and hot; guest half, virtiofsd --cache=metadata
# sharing the source directory, host page cache dropped before the boot
# (cold), then again (hot).
# FUSE half: our daemon with its default --cache always; the host page,
# dentry and inode caches are dropped (echo 3 > /proc/sys/vm/drop_caches)
# before every measured pass, so every pass reaches the daemon.
# Guest half: ours with --cache never --entry-timeout 86400 (direct I/O,
# names cached: like virtiofsd --cache=metadata), guest caches dropped
# before every pass, host caches dropped before every boot.
# Fails (non-zero) on any wrong size, content or count; with --smoke also
# when the daemon's counters (--stats-file) do not show the expected layer.
#
# Progress goes to stderr; the markdown result to stdout.
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SECTION="## Cache: cold, warm disk, hot memory"
DOC=docs/benchmarks.md

bench_args "$@"
[ "${STORE:-fixture}" = fixture ] ||
  log "STORE=$STORE ignored: every row needs injected latency (--latency-ms), which only the fixture store has; using tvix-fixture-store"
[ "$(id -u)" = 0 ] || die "needs root (FUSE mounts, drop_caches, QEMU)"

ACCEL=${ACCEL:-tcg}
TIMEOUT=${TIMEOUT:-600}
export ACCEL
if [ "$smoke" = 1 ]; then
  size_mib=4 nfiles=200 reps=1 no_vfs=1 profile=${PROFILE:-dev}
else
  size_mib=${SIZE_MB:-1024} nfiles=${FILES:-10000} reps=${REPS:-3}
  no_vfs=${NO_VIRTIOFSD:-0} profile=${PROFILE:-release}
fi
lat_default="2 20"
[ "$smoke" = 0 ] || lat_default=2
read -r -a latencies <<<"${LATENCIES:-$lat_default}"
read -r -a modes <<<"${MODES:-fuse guest}"
for v in "$reps" "$size_mib" "$nfiles"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "REPS, SIZE_MB and FILES must be positive integers: $v"
done
[ ${#latencies[@]} -gt 0 ] || die "LATENCIES is empty"
for v in "${latencies[@]}"; do [[ $v =~ ^[0-9]+$ ]] || die "LATENCIES: whole milliseconds, not $v"; done
for m in "${modes[@]}"; do [ "$m" = fuse ] || [ "$m" = guest ] || die "MODES: fuse and/or guest, not $m"; done
memcache=${MEMORY_CACHE:-$((size_mib * 2 > 256 ? size_mib * 2 : 256))M}
size_bytes=$((size_mib * 1048576))
file=f${size_mib}M.bin
has_mode() { [[ " ${modes[*]} " == *" $1 "* ]]; }

# ---- build, tools ----------------------------------------------------------------
bench_build "$profile"
readahead=$(bench_readahead)
[[ $readahead =~ ^[0-9]+$ ]] || die "cannot read the default --readahead-chunks from tvix-virtiofsd --help"
vfs_bin=
if has_mode guest; then
  scripts/vm/build-guest.sh >&2
  [ "$no_vfs" = 1 ] || bench_virtiofsd
fi
bench_workdir
log "work dir $work"

# ---- the tree ---------------------------------------------------------------------
tree=$work/tree
mkdir -p "$tree/bench-big" "$tree/bench-tools"
head -c "$size_bytes" /dev/urandom >"$tree/bench-big/$file"
bench_gen_files "$tree/bench-files" "$nfiles"
bench_tool "$tree/bench-tools/benchtool"
tool=$tree/bench-tools/benchtool
first_want=$("$tool" first "$tree/bench-big/$file" | awk '{ print $2, $4 }')
find_want=$(find "$tree/bench-files" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { print n, s }')
log "tree: bench-big/$file ($size_mib MiB), bench-files ($find_want: files, bytes)"

for L in "${latencies[@]}"; do
  bench_start_store "lat$L" "$tree" --latency-ms "$L"
done
big_path=$(bench_store_path "lat${latencies[0]}" bench-big)
files_path=$(bench_store_path "lat${latencies[0]}" bench-files)
tools_path=$(bench_store_path "lat${latencies[0]}" bench-tools)

# results: "<mode> <row> <rep> <phase> <value>" (seq: MiB/s; ttfb, find: s)
# counters: "<mode> <row> <rep> <phase> <fetched bytes> <store RPCs> <disk hits> <memory hits>"
results=$work/results counters=$work/counters
: >"$results"
: >"$counters"
unexpected=()

check_counters() {  # MODE ROW REP PHASE SNAPS FROM TO [DAEMON-START]
  local mode=$1 row=$2 rep=$3 phase=$4 snaps=$5 from=$6 to=$7 start=${8:-$6} fetched req dh mh why=
  fetched=$(snap_delta "$snaps" "$from" "$to" s.store_bytes_fetched)
  req=$(snap_delta "$snaps" "$from" "$to" s.store_requests)
  dh=$(snap_delta "$snaps" "$from" "$to" s.disk_hits)
  mh=$(snap_delta "$snaps" "$from" "$to" s.memory_hits)
  echo "$mode $row $rep $phase $fetched $req $dh $mh" >>"$counters"
  case $phase in
    ttfb | find-cold) [ "$req" -gt 0 ] || why="no store requests" ;;
    seq-cold)
      # read-ahead started by an earlier TTFB read may have fetched part or all of it
      local total
      total=$(snap_delta "$snaps" "$start" "$to" s.store_bytes_fetched)
      [ "$total" -ge "$size_bytes" ] && [ "$dh" = 0 ] || why="$total bytes fetched since the daemon started, disk hits $dh" ;;
    seq-warm | find-warm) [ "$req" = 0 ] && [ "$dh" -gt 0 ] || why="store requests $req, disk hits $dh" ;;
    seq-hot | find-hot) [ "$req" = 0 ] && [ "$dh" = 0 ] && [ "$mh" -gt 0 ] ||
      why="store requests $req, disk hits $dh, memory hits $mh" ;;
  esac
  if [ -n "$why" ]; then
    unexpected+=("$mode $row rep $rep $phase: $why")
    log "unexpected counters: $mode $row rep $rep $phase: $why"
    [ "$smoke" = 0 ] || die "the counters do not show the cache working"
  fi
}

# ---- FUSE half -------------------------------------------------------------------------
hnow() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { d = b - a; if (d < 0.000001) d = 0.000001; printf "%.4f", d }'; }
mibs() { awk -v s="$1" -v m="$size_mib" 'BEGIN { printf "%.1f", m / s }'; }

host_ttfb() {  # FILE -> seconds
  local out
  out=$("$tool" first "$1") || die "benchtool first $1 failed"
  [ "$(awk '{ print $2, $4 }' <<<"$out")" = "$first_want" ] || die "first bytes of $1: '$out', want '$first_want'"
  awk '{ print $3 }' <<<"$out"
}
host_seq() {  # FILE -> MiB/s
  local t0 t1
  t0=$(hnow)
  dd if="$1" of=/dev/null bs=1M 2>"$work/dd.err" || { cat "$work/dd.err" >&2; die "dd $1 failed"; }
  t1=$(hnow)
  grep -q "^$size_bytes bytes" "$work/dd.err" || { cat "$work/dd.err" >&2; die "dd $1: not $size_bytes bytes"; }
  mibs "$(secs "$t0" "$t1")"
}
host_find() {  # DIR -> seconds
  local t0 t1 got
  t0=$(hnow)
  got=$(find "$1" -type f -print0 | xargs -0 stat -c %s | awk '{ n++; s += $1 } END { print n, s }')
  t1=$(hnow)
  [ "$got" = "$find_want" ] || die "find + stat $1: '$got' (files, bytes), want '$find_want'"
  secs "$t0" "$t1"
}
res() { echo "$1 $2 $3 $4 $5" >>"$results"; log "  $1 $2 rep $3 $4: $5"; }

mnt=$work/mnt
mkdir -p "$mnt"
mounts+=("$mnt")
fuse_start() {  # LAT CACHEDIR STATS LOG: sets fuse_pid
  "$bindir/tvix-virtiofsd" --mount "$mnt" --store "grpc+unix://$work/lat$1.sock" \
    --cache-dir "$2" --instance bench --memory-cache-size "$memcache" --stats-file "$3" 2>"$4" &
  fuse_pid=$!
  pids+=("$fuse_pid")
  local _
  for _ in $(seq 100); do
    grep -qF " $mnt fuse" /proc/mounts && return 0
    kill -0 "$fuse_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$4" >&2
  die "FUSE mount at $mnt did not appear"
}
fuse_stop() {  # SNAPS LABEL STATS: stop, then the final counters
  kill -TERM "$fuse_pid"
  wait "$fuse_pid" || die "FUSE daemon exited with $?"
  bench_forget "$fuse_pid"
  ! grep -qF " $mnt fuse" /proc/mounts || die "$mnt still mounted after the daemon exited"
  stats_snap "$1" "$2" "$3"
}
stats_snap() {  # SNAPS LABEL STATS
  { printf 'label=%s ' "$2"; [ ! -r "$3" ] || awk 'NF == 2 { printf "s.%s=%s ", $1, $2 }' "$3"; echo; } >>"$1"
}

fuse_local() {  # REP
  local rep=$1 src=$tree
  bench_drop_host_caches
  res fuse local "$rep" ttfb "$(host_ttfb "$src/bench-big/$file")"
  bench_drop_host_caches
  res fuse local "$rep" seq-cold "$(host_seq "$src/bench-big/$file")"
  res fuse local "$rep" seq-hot "$(host_seq "$src/bench-big/$file")"
  bench_drop_host_caches
  res fuse local "$rep" find-cold "$(host_find "$src/bench-files")"
  res fuse local "$rep" find-hot "$(host_find "$src/bench-files")"
}

fuse_ours() {  # LAT REP
  local L=$1 rep=$2 row=lat$1 id=$work/fuse.lat$1.$2 cdir snaps
  snaps=$id.snaps
  : >"$snaps"
  # time to first byte: a daemon and a cache dir of its own
  cdir=$id.cache-ttfb
  mkdir -p "$cdir"
  fuse_start "$L" "$cdir" "$id.ttfb.stats" "$id.ttfb.log"
  stats_snap "$snaps" t0 /nonexistent
  bench_drop_host_caches
  res fuse "$row" "$rep" ttfb "$(host_ttfb "$mnt/$big_path/$file")"
  fuse_stop "$snaps" ttfb "$id.ttfb.stats"
  check_counters fuse "$row" "$rep" ttfb "$snaps" t0 ttfb
  rm -rf "$cdir"
  # cold
  cdir=$id.cache
  mkdir -p "$cdir"
  fuse_start "$L" "$cdir" "$id.cold.stats" "$id.cold.log"
  stats_snap "$snaps" c0 /nonexistent
  bench_drop_host_caches
  res fuse "$row" "$rep" seq-cold "$(host_seq "$mnt/$big_path/$file")"
  sleep 1.1
  stats_snap "$snaps" seq-cold "$id.cold.stats"
  bench_drop_host_caches
  res fuse "$row" "$rep" find-cold "$(host_find "$mnt/$files_path")"
  fuse_stop "$snaps" find-cold "$id.cold.stats"
  check_counters fuse "$row" "$rep" seq-cold "$snaps" c0 seq-cold
  check_counters fuse "$row" "$rep" find-cold "$snaps" seq-cold find-cold
  # warm disk, then hot (same daemon)
  fuse_start "$L" "$cdir" "$id.warm.stats" "$id.warm.log"
  stats_snap "$snaps" w0 /nonexistent
  local phase prev=w0
  for phase in seq-warm seq-hot find-warm find-hot; do
    bench_drop_host_caches
    case $phase in
      seq-*) res fuse "$row" "$rep" "$phase" "$(host_seq "$mnt/$big_path/$file")" ;;
      find-*) res fuse "$row" "$rep" "$phase" "$(host_find "$mnt/$files_path")" ;;
    esac
    if [ "$phase" = find-hot ]; then
      fuse_stop "$snaps" "$phase" "$id.warm.stats"
    else
      sleep 1.1
      stats_snap "$snaps" "$phase" "$id.warm.stats"
    fi
    check_counters fuse "$row" "$rep" "$phase" "$snaps" "$prev" "$phase"
    prev=$phase
  done
  rm -rf "$cdir"
}

# ---- guest half ------------------------------------------------------------------------
# Guest output: "T <phase> <t0> <t1> <check...>" per measured pass.
guest_phase() {  # PHASE (seq-*, find-*, ttfb) BIG FILES -> shell text
  case $1 in
    ttfb) echo "echo \"T ttfb 0 0 \$(/tmp/benchtool first '$2/$file')\"" ;;
    seq-*) cat <<EOF
drop; t0=\$(now); dd if='$2/$file' of=/dev/null bs=1M 2>/tmp/dd || { cat /tmp/dd >&2; exit 4; }; t1=\$(now)
echo "T $1 \$t0 \$t1 \$(sed -n 's/ records in\$//p' /tmp/dd)"
EOF
      ;;
    find-*) cat <<EOF
drop; t0=\$(now); r=\$(find '$3' -type f | xargs stat -c %s | awk '{ n++; s += \$1 } END { print n, s }'); t1=\$(now)
echo "T $1 \$t0 \$t1 \$r"
EOF
      ;;
  esac
  echo "mark $1"
}

guest_row() {  # ROW REP BOOT(cold|warm|local)
  local row=$1 rep=$2 boot=$3 id=$work/guest.$1.$2.$3 sock dpid mpid rc phases phase big files tools cmd
  local -a f
  sock=$id.sock
  rm -f "$sock" "$id.snaps"
  case $boot in
    local)
      phases=(ttfb seq-cold find-cold seq-hot find-hot)
      big=bench-big files=bench-files tools=bench-tools
      bench_drop_host_caches
      "$vfs_bin" --socket-path "$sock" --shared-dir "$tree" --sandbox=none --cache=metadata 2>"$id.log" & ;;
    cold | warm)
      if [ "$boot" = cold ]; then
        phases=(ttfb seq-cold find-cold)
        rm -rf "$work/guest.$row.cache"
        mkdir -p "$work/guest.$row.cache"
      else
        phases=(seq-warm seq-hot find-warm find-hot)
      fi
      big=$big_path files=$files_path tools=$tools_path
      bench_drop_host_caches
      "$bindir/tvix-virtiofsd" --socket-path "$sock" --store "grpc+unix://$work/$row.sock" \
        --cache never --entry-timeout 86400 --cache-dir "$work/guest.$row.cache" --instance bench \
        --memory-cache-size "$memcache" --stats-file "$id.stats" 2>"$id.log" & ;;
  esac
  dpid=$!
  pids+=("$dpid")
  bench_wait_socket "$sock" "$id.log"
  bench_ctl "$id.ctl"
  bench_monitor "$dpid" "$id.ctl" "$id.snaps" "$id.stats" &
  mpid=$!
  pids+=("$mpid")
  cmd="cp '$tools/benchtool' /tmp/benchtool || exit 3
mark start
"
  for phase in "${phases[@]}"; do cmd+="$(guest_phase "$phase" "$big" "$files")"$'\n'; done
  log "rep $rep/$reps: guest $row ($boot)"
  rc=0
  bench_guest "$sock" "$id.ctl" "$id.out" "$id.err" "$cmd" "$TIMEOUT" || rc=$?
  bench_wait_exit "$dpid" "guest $row daemon"
  bench_forget "$dpid"
  wait "$mpid" 2>/dev/null || true
  bench_forget "$mpid"
  if [ "$rc" != 0 ]; then
    sed 's/^/bench: daemon| /' "$id.log" | tail -n 20 >&2
    die "guest $row ($boot) rep $rep: guest run failed (rc=$rc)"
  fi
  local prev=start line
  for phase in "${phases[@]}"; do
    line=$(grep "^T $phase " "$id.out" | tail -n 1) || die "guest $row rep $rep: no result for $phase (see $id.out)"
    read -r -a f <<<"$line"
    case $phase in
      ttfb)
        [ "${f[5]} ${f[7]}" = "$first_want" ] || die "guest $row rep $rep: first bytes '${line}', want '$first_want'"
        res guest "$row" "$rep" ttfb "${f[6]}" ;;
      seq-*)
        [ "${f[4]:-}" = "$size_mib+0" ] || die "guest $row rep $rep $phase: dd records '${f[4]:-}', want $size_mib+0"
        res guest "$row" "$rep" "$phase" "$(mibs "$(awk -v a="${f[2]}" -v b="${f[3]}" 'BEGIN { d = b - a; if (d < 0.01) d = 0.01; print d }')")" ;;
      find-*)
        [ "${f[4]:-} ${f[5]:-}" = "$find_want" ] || die "guest $row rep $rep $phase: '${line}', want '$find_want'"
        res guest "$row" "$rep" "$phase" "$(secs "${f[2]}" "${f[3]}")" ;;
    esac
    if [ "$boot" != local ]; then
      grep -q "^label=$phase " "$id.snaps" || die "guest $row rep $rep: no daemon snapshot after $phase (see $id.snaps)"
      check_counters guest "$row" "$rep" "$phase" "$id.snaps" "$prev" "$phase" start
    fi
    prev=$phase
  done
}

# ---- run --------------------------------------------------------------------------------
load_before=$(cut -d ' ' -f 1 /proc/loadavg)
t_start=$(date +%s)
for rep in $(seq "$reps"); do
  if has_mode fuse; then
    log "rep $rep/$reps: FUSE, local"
    fuse_local "$rep"
    for L in "${latencies[@]}"; do
      log "rep $rep/$reps: FUSE, store latency $L ms"
      fuse_ours "$L" "$rep"
    done
  fi
  if has_mode guest; then
    [ "$no_vfs" = 1 ] || guest_row local "$rep" local
    for L in "${latencies[@]}"; do
      guest_row "lat$L" "$rep" cold
      guest_row "lat$L" "$rep" warm
    done
  fi
done
t_total=$(($(date +%s) - t_start))
load_after=$(cut -d ' ' -f 1 /proc/loadavg)

# ---- report -------------------------------------------------------------------------------
vals() { awk -v m="$1" -v r="$2" -v p="$3" '$1 == m && $2 == r && $4 == p { print $5 }' "$results"; }
val_rep() { awk -v m="$1" -v r="$2" -v p="$3" -v n="$4" '$1 == m && $2 == r && $4 == p && $3 == n { print $5 }' "$results"; }
# ratios MODE ROW PHASE BASEPHASE KIND(speed|time): per rep, > 1 = ours faster
ratios() {
  local rep a b
  for rep in $(seq "$reps"); do
    a=$(val_rep "$1" "$2" "$3" "$rep") b=$(val_rep "$1" local "$4" "$rep")
    if [ -z "$a" ] || [ -z "$b" ]; then continue; fi
    if [ "$5" = speed ]; then
      awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f\n", a / b }'
    else
      awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f\n", b / a }'
    fi
  done
}
cell() {  # MODE ROW PHASE FMT
  local v
  # shellcheck disable=SC2046  # one number per word
  v=$(median_fmt "$4" $(vals "$1" "$2" "$3"))
  [ "$v" != - ] || { echo "–"; return; }
  echo "$v"
}
rcell() {  # MODE ROW PHASE BASEPHASE KIND
  local r
  r=$(ratios "$@")
  [ -n "$r" ] || { echo "–"; return; }
  # shellcheck disable=SC2046,SC2086  # one number per word
  echo "$(median2 $r) ($(join_list $r))"
}
ctr() {  # MODE ROW PHASE COL(5 fetched, 6 RPCs, 7 disk, 8 memory): median
  # shellcheck disable=SC2046  # one number per word
  median0 $(awk -v m="$1" -v r="$2" -v p="$3" -v c="$4" '$1 == m && $2 == r && $4 == p { print $c }' "$counters")
}

bench_host_info
if [ "$smoke" = 1 ]; then
  repro="ACCEL=$ACCEL LATENCIES=\"${latencies[*]}\" MODES=\"${modes[*]}\" scripts/bench-cache.sh --smoke"
else
  repro="REPS=$reps SIZE_MB=$size_mib FILES=$nfiles LATENCIES=\"${latencies[*]}\" MODES=\"${modes[*]}\" ACCEL=$ACCEL"
  [ "$profile" = release ] || repro+=" PROFILE=$profile"
  [ "$no_vfs" != 1 ] || repro+=" NO_VIRTIOFSD=1"
  repro+=" scripts/bench-cache.sh"
fi

mode_table() {  # MODE
  local mode=$1 L row base
  if [ "$mode" = fuse ]; then
    base="local disk (the source directory on the host)"
    echo "### FUSE mount on the host"
  else
    base="virtiofsd --cache=metadata sharing the source directory"
    echo "### QEMU guest (accel ${ACCEL^^})"
  fi
  echo
  echo "Medians over $reps repetition(s). Sequential read of the $size_mib MiB file in MiB/s; time to first byte (open + first 4 KiB read of that file, cold) and find + stat of the $nfiles-file tree in seconds."
  echo
  echo "| Row | TTFB s | Seq cold | Seq warm disk | Seq hot | find+stat cold s | warm disk s | hot s |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  if [ "$mode" = fuse ] || [ "$no_vfs" != 1 ]; then
    echo "| local: $base | $(cell "$mode" local ttfb %.4f) | $(cell "$mode" local seq-cold %.1f) | – | $(cell "$mode" local seq-hot %.1f) | $(cell "$mode" local find-cold %.3f) | – | $(cell "$mode" local find-hot %.3f) |"
  fi
  for L in "${latencies[@]}"; do
    row=lat$L
    echo "| tvix-virtiofsd, store latency $L ms | $(cell "$mode" "$row" ttfb %.4f) | $(cell "$mode" "$row" seq-cold %.1f) | $(cell "$mode" "$row" seq-warm %.1f) | $(cell "$mode" "$row" seq-hot %.1f) | $(cell "$mode" "$row" find-cold %.3f) | $(cell "$mode" "$row" find-warm %.3f) | $(cell "$mode" "$row" find-hot %.3f) |"
  done
  if [ "$mode" = fuse ] || [ "$no_vfs" != 1 ]; then
    echo
    echo "Speed ratio ours / local, same repetition (> 1: ours faster; for times, local time / our time); median, then per repetition. Cold and warm disk are compared with local cold, hot with local hot:"
    echo
    echo "| Store latency | TTFB | Seq cold | Seq warm disk | Seq hot | find+stat cold | warm disk | hot |"
    echo "|---|---|---|---|---|---|---|---|"
    for L in "${latencies[@]}"; do
      row=lat$L
      echo "| $L ms | $(rcell "$mode" "$row" ttfb ttfb time) | $(rcell "$mode" "$row" seq-cold seq-cold speed) | $(rcell "$mode" "$row" seq-warm seq-cold speed) | $(rcell "$mode" "$row" seq-hot seq-hot speed) | $(rcell "$mode" "$row" find-cold find-cold time) | $(rcell "$mode" "$row" find-warm find-cold time) | $(rcell "$mode" "$row" find-hot find-hot time) |"
    done
  fi
  echo
  echo "The daemon's counters per pass (\`--stats-file\`, differences across the pass; medians): MiB fetched from the store / store RPCs / disk-cache hits / memory-cache hits:"
  echo
  echo "| Store latency | TTFB | Seq cold | Seq warm disk | Seq hot | find+stat cold | warm disk | hot |"
  echo "|---|---|---|---|---|---|---|---|"
  local p line
  for L in "${latencies[@]}"; do
    line="| $L ms |"
    for p in ttfb seq-cold seq-warm seq-hot find-cold find-warm find-hot; do
      line+=" $(awk -v b="$(ctr "$mode" "lat$L" "$p" 5)" 'BEGIN { printf "%.1f", b / 1048576 }') / $(ctr "$mode" "lat$L" "$p" 6) / $(ctr "$mode" "lat$L" "$p" 7) / $(ctr "$mode" "lat$L" "$p" 8) |"
    done
    echo "$line"
  done
  echo
}

report() {
  bench_report_head "## Cache: cold, warm disk, hot memory" "$repro"
  echo "- Host: $(nproc) CPUs, $cpu, $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory; the host's disk is itself virtual. Guest: accel **${ACCEL^^}**, QEMU $qemu_v, kernel $kver, ${SMP:-2} vCPUs, ${MEM:-1G} memory"
  echo "- Store: \`tvix-fixture-store --chunk-size 262144 --latency-ms L\` over grpc+unix on the same host (every RPC waits L ms first; it reads blob data from its source files). Ours: \`--memory-cache-size $memcache\` (the hot rows need the whole file in memory), default \`--readahead-chunks\` ($readahead), a fresh \`--cache-dir\` for every cold row; $profile profile."
  echo "- Rows: **cold** = fresh daemon, empty cache dir (TTFB on a daemon and cache dir of its own); **warm disk** = fresh daemon on the cache dir the cold row filled (memory empty); **hot** = that same daemon again (everything in memory)."
  echo "- FUSE: ours with its default \`--cache always\`; before every pass \`echo 3 > /proc/sys/vm/drop_caches\` on the host (page cache, dentries, inodes), so every pass reaches the daemon and local cold reads come from the disk. Local hot = the same pass again without dropping. Timed with \`date +%s.%N\`."
  echo "- Guest: ours with \`--cache never --entry-timeout 86400\` (direct I/O, names and attributes cached: the same as virtiofsd \`--cache=metadata\`, the local baseline here). Guest caches dropped before every pass, host caches before every boot; timed in the guest with /proc/uptime (10 ms) and, for TTFB, CLOCK_MONOTONIC (a static helper)."
  echo "- Workloads: sequential \`dd bs=1M\` of the $size_mib MiB random file; TTFB = open + first 4 KiB read of it; \`find -type f | xargs stat -c %s\` over $nfiles files of 0–2 KiB in directories of 100. Every pass is checked (byte count, first bytes, file count and byte total)."
  if [ "$no_vfs" = 1 ] && has_mode guest; then
    local why=NO_VIRTIOFSD=1
    [ "$smoke" = 0 ] || why=--smoke
    echo "- **No guest baseline**: virtiofsd was not run ($why)."
  elif has_mode guest; then
    echo "- Guest baseline: virtiofsd $vfs_version --sandbox=none --cache=metadata."
  fi
  echo
  local m
  for m in "${modes[@]}"; do mode_table "$m"; done
  if [ ${#unexpected[@]} -gt 0 ]; then
    echo "Counters that did not show the expected layer: $(join_list "${unexpected[@]}")."
  else
    echo "Every cold pass fetched from the store, every warm-disk pass was served from disk without a store call, every hot pass from memory without disk or store."
  fi
  echo
  echo "What limits these figures:"
  echo
  echo "- Cold sequential read: at most \`--readahead-chunks\` ($readahead) chunks of 256 KiB are in flight, so one round trip of L ms moves at most $((readahead / 4)) MiB: $(for L in "${latencies[@]}"; do [ "$L" = 0 ] || printf '%s MiB/s at %s ms, ' "$((readahead * 250 / L))" "$L"; done)whatever the bandwidth. Below that bound the CPU limits: the fixture store reading and sending, our BLAKE3 verification and the disk-cache write, all on $(nproc) CPUs (with the guest's vCPU threads on top in the guest half)."
  echo "- Time to first byte, cold: a chain of dependent round trips (path info, blob stat, first chunk), each paying L; the first read also starts the read-ahead (the TTFB row's counters)."
  echo "- find + stat, cold: one Directory fetch per directory as find descends, one after another: about (directories + 1) × L on top of the walk; warm disk and hot need no store call."
  echo "- Warm disk: reading the chunk files (from the device, after drop_caches) and hashing every chunk again before it is served; hot: a copy out of memory plus the FUSE or virtio round trip per request. Local hot on the host is the kernel page cache with no daemon at all, so that ratio compares our whole path with a memcpy."
  echo "- Guest half under TCG: every request is a guest exit and an interrupt in emulated code; with direct I/O the daemon writes straight into guest memory, so the sequential figures still mostly show the daemon."
  echo
  echo "Measuring took $t_total s in all. Host load average (1 min) before / after: $load_before / $load_after (other jobs share this host: compare rows of one repetition)."
}

report >"$work/report.md"
cat "$work/report.md"
[ "$write_docs" = 0 ] || bench_write_docs "$DOC" "$SECTION" "$work/report.md"
