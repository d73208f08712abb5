#!/usr/bin/env bash
# bench-vm.sh — guest workloads over virtio-fs: tvix-virtiofsd (fixture
# store with --latency-ms, disk cache warm, hot or cold) against virtiofsd
# sharing a local copy of the same tree, with the same --cache policy, in the
# same run, on the same host, with the same guest.
#
# Usage: scripts/bench-vm.sh [--write-docs] [--smoke]
#   --write-docs  also write the result into docs/benchmarks.md, replacing
#                 only the section "## Guest workloads vs virtiofsd"
#   --smoke       tiny tree, 1 repetition, three boots of ours only (seq
#                 warm/hot with --cache never, the rest cold with --cache
#                 always, 4 readers on 4 queues), no virtiofsd, dev-profile
#                 binaries: a quick check (CI) that the harness still works
#
# Env (defaults are the full benchmark; under TCG here it would take roughly
# an hour with REPS=3; REPS=3 SIZE_MB=256 PAR_MB=64 FILES=2000
# CLOSURE_FILES=600 CLOSURE_BIG=8 took 14-18 min, see docs/benchmarks.md):
#   REPS=3            repetitions; rows interleaved (alternating daemons)
#   SIZE_MB=1024      the big file: sequential and 4 KiB random reads
#   PAR_MB=256        each of the 4 files read by 4 parallel readers
#   FILES=10000       find + stat tree: files of 0-2 KiB, 100 per directory
#   CLOSURE_FILES=3000  tar tree: files of 1-64 KiB ...
#   CLOSURE_BIG="8 16 24 32"  ... plus one file of each of these MiB
#   RAND_READS=500    4 KiB random reads per pass
#   LATENCY=2         the fixture store's --latency-ms
#   STORE=            ignored (also --store): every row here needs the
#                     fixture store's injected latency, so it stays the fixture;
#                     real stores: scripts/bench-guest-read.sh, bench-peers.sh
#   POLICIES="never always"  --cache policies to compare
#   MEMORY_CACHE=     our --memory-cache-size (default: twice the largest
#                     working set, so that the hot rows are served from memory)
#   ACCEL=tcg|kvm     passed to scripts/vm/run-guest.sh (default tcg)
#   NO_VIRTIOFSD=1    no baseline: only our rows
#   VIRTIOFSD=        path of virtiofsd (default: PATH, then ~/.cargo/bin)
#   PROFILE=          release (default) or dev (default with --smoke)
#   NO_BUILD=1        do not run cargo
#   TIMEOUT=900       seconds per guest boot
#   KEEP=1            keep the work dir (target/bench/run.*) with all logs
#
# Boots (one fresh daemon each; it exits when QEMU disconnects), per policy P:
#   seq  virtiofsd, ours warm disk, ours cold: dd bs=1M of the big file;
#        virtiofsd and ours-warm read it twice (guest caches dropped
#        between: the second pass is ours hot, from memory)
#   mix  the same rows: 4 KiB random reads of the big file (a static helper,
#        one process, pread), find + stat (second pass without dropping
#        anything), tar c | wc -c of the closure-like tree; two passes
#        each except for ours cold
#   par  virtiofsd, virtiofsd --thread-pool-size 4, ours with 1 queue, with
#        4 queues (--num-request-queues 4, NUM_QUEUES=4), with 1 queue and
#        --thread-pool-size 4: 4 dd readers of 4 files at once, ours warm disk
# Warm disk = a --cache-dir filled before the run through a FUSE mount; cold
# = an empty --cache-dir per boot. Guest caches are dropped before every
# pass (not between find passes); the host page cache is left alone (it
# holds virtiofsd's tree and our cache dir alike).
# Per pass: the guest's time (/proc/uptime, 10 ms; random reads: the
# helper's CLOCK_MONOTONIC), and on the host the daemon's CPU time
# (utime+stime), peak RSS (VmHWM, reset between passes through
# /proc/PID/clear_refs) and, for ours, its --stats-file counters; the guest
# signals the end of each pass on a third serial port. Idle RSS = VmRSS after
# start, before the guest connects.
# Fails (non-zero) if a guest run fails or reads wrong data (sizes, a
# checksum of the random reads, file counts and byte totals, tar length).
#
# Progress goes to stderr; the markdown result to stdout.
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SECTION="## Guest workloads vs virtiofsd"
DOC=docs/benchmarks.md

bench_args "$@"
[ "${STORE:-fixture}" = fixture ] ||
  log "STORE=$STORE ignored: every row needs injected latency (--latency-ms), which only the fixture store has; using tvix-fixture-store"
[ "$(id -u)" = 0 ] || die "needs root (FUSE mount, QEMU, /proc/PID/clear_refs)"

t_script=$(date +%s)
ACCEL=${ACCEL:-tcg}
TIMEOUT=${TIMEOUT:-900}
export ACCEL
if [ "$smoke" = 1 ]; then
  size_mib=8 par_mib=4 nfiles=100 nclosure=30 closure_big="1" nrand=50 reps=1
  no_vfs=1 profile=${PROFILE:-dev} policies=(never always)
else
  size_mib=${SIZE_MB:-1024} par_mib=${PAR_MB:-256} nfiles=${FILES:-10000}
  nclosure=${CLOSURE_FILES:-3000} closure_big=${CLOSURE_BIG:-8 16 24 32}
  nrand=${RAND_READS:-500} reps=${REPS:-3} no_vfs=${NO_VIRTIOFSD:-0} profile=${PROFILE:-release}
  read -r -a policies <<<"${POLICIES:-never always}"
fi
latency=${LATENCY:-2}
for v in "$reps" "$size_mib" "$par_mib" "$nfiles" "$nclosure" "$nrand"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "REPS, SIZE_MB, PAR_MB, FILES, CLOSURE_FILES, RAND_READS: positive integers, not $v"
done
[[ $latency =~ ^[0-9]+$ ]] || die "LATENCY: whole milliseconds, not $latency"
read -r -a closure_mibs <<<"$closure_big"
for v in "${closure_mibs[@]}"; do [[ $v =~ ^[1-9][0-9]*$ ]] || die "CLOSURE_BIG: MiB, not $v"; done
[ ${#policies[@]} -gt 0 ] || die "POLICIES is empty"
for p in "${policies[@]}"; do [ "$p" = never ] || [ "$p" = always ] || die "POLICIES: never and/or always, not $p"; done
ws=$((size_mib > 4 * par_mib ? size_mib : 4 * par_mib))
memcache=${MEMORY_CACHE:-$((ws * 2 > 256 ? ws * 2 : 256))M}
big=f${size_mib}M.bin

# ---- build, tools, tree ------------------------------------------------------------
bench_build "$profile"
readahead=$(bench_readahead)
scripts/vm/build-guest.sh >&2
vfs_bin=
[ "$no_vfs" = 1 ] || bench_virtiofsd
bench_workdir
log "work dir $work"
case $work in *' '*) die "the work dir must not contain spaces: $work" ;; esac

tree=$work/tree
mkdir -p "$tree/bench-big" "$tree/bench-par" "$tree/bench-tools"
head -c "$((size_mib * 1048576))" /dev/urandom >"$tree/bench-big/$big"
for i in 0 1 2 3; do head -c "$((par_mib * 1048576))" /dev/urandom >"$tree/bench-par/p$i.bin"; done
bench_gen_files "$tree/bench-files" "$nfiles"
bench_gen_closure "$tree/bench-closure" "$nclosure" "${closure_mibs[@]}"
bench_tool "$tree/bench-tools/benchtool"
tool=$tree/bench-tools/benchtool
find_want=$(find "$tree/bench-files" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { print n, s }')
tar_want=$(cd "$tree/bench-closure" && busybox tar c . | wc -c)
closure_mib=$(du -sm --apparent-size "$tree/bench-closure" | cut -f 1)
first_want=$("$tool" first "$tree/bench-big/$big" | awk '{ print $2, $4 }')
declare -A rand_want=()
for rep in $(seq "$reps"); do
  rand_want[$rep]=$("$tool" rand "$tree/bench-big/$big" "$nrand" "$rep" | awk '{ print $2, $3 }')
done
log "tree: $big, 4 x $par_mib MiB, $nfiles files ($find_want), closure $nclosure files + ${closure_mibs[*]} MiB (tar $tar_want bytes)"

bench_start_store store "$tree" --latency-ms "$latency"
declare -A spath=()
for e in bench-big bench-par bench-files bench-closure bench-tools; do
  spath[$e]=$(bench_store_path store "$e")
done

# The warm disk cache: everything read once through a FUSE mount.
warm_cache=$work/cache-warm
mkdir -p "$warm_cache" "$work/mnt"
mounts+=("$work/mnt")
log "filling the warm disk cache through a FUSE mount"
"$bindir/tvix-virtiofsd" --mount "$work/mnt" --store "grpc+unix://$work/store.sock" \
  --cache-dir "$warm_cache" --instance bench --stats-file "$work/fill.stats" 2>"$work/fill.log" &
fill_pid=$!
pids+=("$fill_pid")
for _ in $(seq 100); do grep -qF " $work/mnt fuse" /proc/mounts && break; sleep 0.1; done
grep -qF " $work/mnt fuse" /proc/mounts || { cat "$work/fill.log" >&2; die "FUSE mount for the cache fill did not appear"; }
for e in "${!spath[@]}"; do
  find "$work/mnt/${spath[$e]}" -type f -print0
done | xargs -0 -n 64 -P 4 cat >/dev/null || die "reading through the FUSE mount failed"
kill -TERM "$fill_pid"
wait "$fill_pid" || die "the FUSE daemon exited with $?"
bench_forget "$fill_pid"
log "warm cache: $(du -sh "$warm_cache" | cut -f 1), $(awk '$1 == "store_requests" { print $2 }' "$work/fill.stats") store requests"

# ---- one boot ---------------------------------------------------------------------------
# Rows: vfs-P, vfs-P-tp4, ours-P-warm, ours-P-cold, ours-P-1q, ours-P-4q, ours-P-tp4
# results:   "<row> <rep> <phase> <value>" (seq*, par: MiB/s; the rest: s)
# resources: "<row> <rep> <phase> <cpu s> <peak RSS KiB> <RssAnon KiB at the end>"
# idle:      "<row> <rep> <VmRSS KiB>"
# counters:  "<row> <rep> <phase> <fetched bytes> <store RPCs> <disk hits> <memory hits>"
# threads:   "<row> <rep> <name>:<cpu s>:<busy>/<threads> ..." (par phase)
results=$work/results resources=$work/resources idle=$work/idle counters=$work/counters threads=$work/threads
for f in "$results" "$resources" "$idle" "$counters" "$threads"; do : >"$f"; done
unexpected=()
boots=0
tck=$(getconf CLK_TCK)

guest_seq_pass() {  # PHASE PATH
  cat <<EOF
drop; t0=\$(now); dd if='$2' of=/dev/null bs=1M 2>/tmp/dd || { cat /tmp/dd >&2; exit 4; }; t1=\$(now)
echo "T $1 \$t0 \$t1 \$(sed -n 's/ records in\$//p' /tmp/dd)"; mark $1
EOF
}
guest_cmd() {  # KIND PASSES REP SOURCE(local: the shared tree; store: store paths)
  local kind=$1 passes=$2 rep=$3 n
  local bigp=bench-big/$big parp=bench-par files=bench-files closure=bench-closure tools=bench-tools
  if [ "$4" = store ]; then
    bigp=${spath[bench-big]}/$big parp=${spath[bench-par]} files=${spath[bench-files]}
    closure=${spath[bench-closure]} tools=${spath[bench-tools]}
  fi
  echo "cp '$tools/benchtool' /tmp/benchtool || exit 3"
  echo "mark start"
  case $kind in
    seq)
      for n in $(seq "$passes"); do guest_seq_pass "seq$n" "$bigp"; done
      echo "echo \"T check 0 0 \$(/tmp/benchtool first '$bigp')\"" ;;
    mix)
      for n in $(seq "$passes"); do
        echo "drop; echo \"T rand$n 0 0 \$(/tmp/benchtool rand '$bigp' $nrand $rep)\"; mark rand$n"
      done
      echo "drop"
      for n in $(seq "$passes"); do
        echo "t0=\$(now); r=\$(find '$files' -type f | xargs stat -c %s | awk '{ n++; s += \$1 } END { print n, s }'); t1=\$(now)"
        echo "echo \"T find$n \$t0 \$t1 \$r\"; mark find$n"
      done
      for n in $(seq "$passes"); do
        echo "drop; t0=\$(now); r=\$(cd '$closure' && tar c . | wc -c); t1=\$(now); echo \"T tar$n \$t0 \$t1 \$r\"; mark tar$n"
      done ;;
    par)
      cat <<EOF
drop; t0=\$(now)
for i in 0 1 2 3; do dd if='$parp/p'\$i.bin of=/dev/null bs=1M 2>/tmp/dd\$i & done
wait; t1=\$(now)
echo "T par \$t0 \$t1 \$(for i in 0 1 2 3; do sed -n 's/ records in\$//p' /tmp/dd\$i; done | sort | uniq -c | awk '{ printf "%s*%s ", \$1, \$2 }')"; mark par
EOF
      ;;
  esac
}

check_counters() {  # ROW REP PHASE SNAPS FROM STATE(warm|hot|cold)
  local row=$1 rep=$2 phase=$3 snaps=$4 from=$5 state=$6 fetched req dh mh why=
  fetched=$(snap_delta "$snaps" "$from" "$phase" s.store_bytes_fetched)
  req=$(snap_delta "$snaps" "$from" "$phase" s.store_requests)
  dh=$(snap_delta "$snaps" "$from" "$phase" s.disk_hits)
  mh=$(snap_delta "$snaps" "$from" "$phase" s.memory_hits)
  echo "$row $rep $phase $fetched $req $dh $mh" >>"$counters"
  case $state in
    cold) [ "$req" -gt 0 ] || why="no store requests" ;;
    warm) if [ "$req" != 0 ] || [ "$dh" = 0 ]; then why="store requests $req, disk hits $dh"; fi ;;
    hot) if [ "$req" != 0 ] || [ "$dh" != 0 ]; then why="store requests $req, disk hits $dh"; fi ;;
  esac
  if [ -n "$why" ]; then
    unexpected+=("$row rep $rep $phase: $why")
    log "unexpected counters: $row rep $rep $phase ($state): $why"
    [ "$smoke" = 0 ] || die "the counters do not show the cache working"
  fi
}

boot() {  # ROW REP KIND(seq|mix|par)
  local row=$1 rep=$2 kind=$3 id=$work/$3.$1.$2 sock dpid mpid rc passes=2 src=local pol state='' w
  local -a dargs=() f
  local nq=
  sock=$id.sock
  rm -f "$sock"
  pol=${row#*-}
  pol=${pol%%-*}
  case $row in
    vfs-*)
      dargs=("$vfs_bin" --socket-path "$sock" --shared-dir "$tree" --sandbox=none "--cache=$pol")
      [[ $row != *-tp4 ]] || dargs+=(--thread-pool-size 4) ;;
    ours-*)
      src=store
      local cdir=$warm_cache
      if [[ $row == *-cold ]]; then
        cdir=$id.cache
        rm -rf "$cdir"
        mkdir -p "$cdir"
        passes=1
        state=cold
      else
        state=warm
      fi
      dargs=("$bindir/tvix-virtiofsd" --socket-path "$sock" --store "grpc+unix://$work/store.sock"
        --cache "$pol" --cache-dir "$cdir" --instance bench --memory-cache-size "$memcache" --stats-file "$id.stats")
      case $row in
        *-4q) dargs+=(--num-request-queues 4) nq=4 ;;
        *-tp4) dargs+=(--thread-pool-size 4) ;;
      esac ;;
  esac
  [ "$kind" != par ] || passes=1
  boots=$((boots + 1))
  "${dargs[@]}" 2>"$id.log" &
  dpid=$!
  pids+=("$dpid")
  bench_wait_socket "$sock" "$id.log"
  sleep 0.5 # idle: settled after start, no guest yet
  bench_ctl "$id.ctl"
  bench_monitor "$dpid" "$id.ctl" "$id.snaps" "$id.stats" &
  mpid=$!
  pids+=("$mpid")
  log "rep $rep/$reps: $kind, $row"
  rc=0
  NUM_QUEUES=$nq bench_guest "$sock" "$id.ctl" "$id.out" "$id.err" \
    "$(guest_cmd "$kind" "$passes" "$rep" "$src")" "$TIMEOUT" || rc=$?
  bench_wait_exit "$dpid" "$row daemon"
  bench_forget "$dpid"
  wait "$mpid" 2>/dev/null || true
  bench_forget "$mpid"
  if [ "$rc" != 0 ]; then
    sed 's/^/bench: daemon| /' "$id.log" | tail -n 20 >&2
    die "$kind $row rep $rep: guest run failed (rc=$rc)"
  fi
  grep -q '^label=idle ' "$id.snaps" || die "$row rep $rep: no idle snapshot of the daemon"
  echo "$row $rep $(snap_get "$id.snaps" idle rss)" >>"$idle"

  local phases=() phase n line prev=start v
  case $kind in
    seq) for n in $(seq "$passes"); do phases+=("seq$n"); done ;;
    mix) for w in rand find tar; do for n in $(seq "$passes"); do phases+=("$w$n"); done; done ;;
    par) phases=(par) ;;
  esac
  for phase in "${phases[@]}"; do
    line=$(grep "^T $phase " "$id.out" | tail -n 1) || die "$row rep $rep: no result for $phase (see $id.out)"
    read -r -a f <<<"$line"
    case $phase in
      seq*)
        [ "${f[4]:-}" = "$size_mib+0" ] || die "$row rep $rep $phase: dd records '${f[4]:-}', want $size_mib+0"
        v=$(awk -v a="${f[2]}" -v b="${f[3]}" -v m="$size_mib" 'BEGIN { d = b - a; if (d < 0.01) d = 0.01; printf "%.1f", m / d }') ;;
      rand*)
        [ "${f[5]:-} ${f[6]:-}" = "${rand_want[$rep]}" ] || die "$row rep $rep $phase: '$line', want RAND ${rand_want[$rep]}"
        v=${f[7]} ;;
      find*)
        [ "${f[4]:-} ${f[5]:-}" = "$find_want" ] || die "$row rep $rep $phase: '$line', want $find_want (files, bytes)"
        v=$(awk -v a="${f[2]}" -v b="${f[3]}" 'BEGIN { printf "%.2f", b - a }') ;;
      tar*)
        [ "${f[4]:-}" = "$tar_want" ] || die "$row rep $rep $phase: tar length '${f[4]:-}', want $tar_want"
        v=$(awk -v a="${f[2]}" -v b="${f[3]}" 'BEGIN { printf "%.2f", b - a }') ;;
      par)
        [ "${f[4]:-}" = "4*$par_mib+0" ] || die "$row rep $rep par: dd records '${f[*]:4}', want 4*$par_mib+0"
        v=$(awk -v a="${f[2]}" -v b="${f[3]}" -v m="$((4 * par_mib))" 'BEGIN { d = b - a; if (d < 0.01) d = 0.01; printf "%.1f", m / d }') ;;
    esac
    echo "$row $rep $phase $v" >>"$results"
    grep -q "^label=$phase " "$id.snaps" || die "$row rep $rep: no daemon snapshot after $phase (see $id.snaps)"
    echo "$row $rep $phase $(awk -v c="$(snap_delta "$id.snaps" "$prev" "$phase" cpu)" -v t="$tck" 'BEGIN { printf "%.2f", c / t }') $(snap_get "$id.snaps" "$phase" hwm) $(snap_get "$id.snaps" "$phase" anon)" >>"$resources"
    if [ -n "$state" ]; then
      local st=$state
      [[ $phase != *2 ]] || st=hot
      check_counters "$row" "$rep" "$phase" "$id.snaps" "$prev" "$st"
    fi
    if [ "$phase" = par ]; then
      # per thread name: CPU seconds during the pass, threads that used any / threads
      echo "$row $rep $(awk -v p="$prev" -v q="$phase" -v t="$tck" '
        $1 == "label=" p { for (i = 2; i <= NF; i++) if ($i ~ /^th\./) { split($i, kv, "="); a[kv[1]] = kv[2] } }
        $1 == "label=" q { for (i = 2; i <= NF; i++) if ($i ~ /^th\./) {
            split($i, kv, "="); d = kv[2] - a[kv[1]]; name = substr(kv[1], 4); sub(/@[0-9]+$/, "", name)
            if (!(name in n)) order[++k] = name
            n[name]++; if (d > 0) { busy[name]++; c[name] += d } } }
        END { for (i = 1; i <= k; i++) { x = order[i]; printf "%s:%.2f:%d/%d ", x, c[x] / t, busy[x], n[x] } }' "$id.snaps")" >>"$threads"
    fi
    prev=$phase
  done
  if [ "$kind" = seq ]; then
    line=$(grep '^T check ' "$id.out" | tail -n 1)
    read -r -a f <<<"$line"
    [ "${f[5]:-} ${f[7]:-}" = "$first_want" ] || die "$row rep $rep: first bytes of $big '$line', want '$first_want'"
  fi
  log "  $(awk -v r="$row" -v n="$rep" '$1 == r && $2 == n { printf "%s %s  ", $3, $4 }' "$results" | tail -c 400)"
}

# ---- the run ------------------------------------------------------------------------------
seq_rows=() par_rows=()
for p in "${policies[@]}"; do
  [ "$no_vfs" = 1 ] || seq_rows+=("vfs-$p")
  seq_rows+=("ours-$p-warm" "ours-$p-cold")
  [ "$no_vfs" = 1 ] || par_rows+=("vfs-$p" "vfs-$p-tp4")
  par_rows+=("ours-$p-1q" "ours-$p-4q" "ours-$p-tp4")
done
plan=()
if [ "$smoke" = 1 ]; then
  plan=("seq ours-never-warm" "mix ours-always-cold" "par ours-never-4q")
else
  for r in "${seq_rows[@]}"; do plan+=("seq $r"); done
  for r in "${seq_rows[@]}"; do plan+=("mix $r"); done
  for r in "${par_rows[@]}"; do plan+=("par $r"); done
fi

load_before=$(cut -d ' ' -f 1 /proc/loadavg)
t_start=$(date +%s)
for rep in $(seq "$reps"); do
  for item in "${plan[@]}"; do
    read -r kind row <<<"$item"
    boot "$row" "$rep" "$kind"
  done
done
t_total=$(($(date +%s) - t_start))
load_after=$(cut -d ' ' -f 1 /proc/loadavg)

# ---- report ---------------------------------------------------------------------------------
vals() { awk -v r="$1" -v p="$2" '$1 == r && $3 == p { print $4 }' "$results"; }
val_rep() { awk -v r="$1" -v p="$2" -v n="$3" '$1 == r && $3 == p && $2 == n { print $4 }' "$results"; }
kind_of() { case $1 in seq* | par) echo speed ;; *) echo time ;; esac; }
# ratios ROW PHASE BASEROW BASEPHASE: per rep, as speed (> 1: ROW faster)
ratios() {
  local rep a b k
  k=$(kind_of "$2")
  for rep in $(seq "$reps"); do
    a=$(val_rep "$1" "$2" "$rep") b=$(val_rep "$3" "$4" "$rep")
    if [ -z "$a" ] || [ -z "$b" ]; then continue; fi
    awk -v a="$a" -v b="$b" -v k="$k" 'BEGIN { if (k == "speed") printf "%.2f\n", a / b; else printf "%.2f\n", b / a }'
  done
}
cell() {  # ROW PHASE: median, formatted per phase
  local v
  # shellcheck disable=SC2046  # one number per word
  v=$(median_fmt %.4f $(vals "$1" "$2"))
  [ "$v" != - ] || { echo "–"; return; }
  case $2 in
    seq* | par) printf '%.1f MiB/s' "$v" ;;
    rand*) awk -v v="$v" -v n="$nrand" 'BEGIN { printf "%.2f ms/read", v * 1000 / n }' ;;
    *) printf '%.2f s' "$v" ;;
  esac
}
rmed() {  # ROW PHASE BASEROW BASEPHASE: median of the per-rep ratios, or –
  local r
  r=$(ratios "$@")
  # shellcheck disable=SC2086  # one number per word
  if [ -n "$r" ]; then median2 $r; else echo "–"; fi
}
rcell() {
  local r
  r=$(ratios "$@")
  # shellcheck disable=SC2046,SC2086  # one number per word
  if [ -n "$r" ]; then echo "$(median2 $r) ($(join_list $r))"; else echo "–"; fi
}
res_med() {  # ROW PHASE COL(4 cpu, 5 peak KiB)
  # shellcheck disable=SC2046  # one number per word
  median_fmt %.4f $(awk -v r="$1" -v p="$2" -v c="$3" '$1 == r && $3 == p { print $c }' "$resources")
}
res_cell() {  # ROW PHASE: "cpu s / peak MiB / anon MiB"
  local c m a
  c=$(res_med "$1" "$2" 4) m=$(res_med "$1" "$2" 5) a=$(res_med "$1" "$2" 6)
  [ "$c" != - ] || { echo "–"; return; }
  awk -v c="$c" -v m="$m" -v a="$a" 'BEGIN { printf "%.2f / %.0f / %.0f", c, m / 1024, a / 1024 }'
}
ctr_cell() {  # ROW PHASE: fetched MiB / RPCs / disk / memory (medians)
  local c out=""
  for c in 4 5 6 7; do
    # shellcheck disable=SC2046  # one number per word
    out+="$(median0 $(awk -v r="$1" -v p="$2" -v c="$c" '$1 == r && $3 == p { print $c }' "$counters")) / "
  done
  out=${out% / }
  [[ $out != "- / "* ]] || { echo "–"; return; }
  awk -v o="$out" 'BEGIN { split(o, a, " / "); printf "%.1f / %s / %s / %s", a[1] / 1048576, a[2], a[3], a[4] }'
}
idle_med() {  # ROW-PATTERN (awk regex) -> MiB
  # shellcheck disable=SC2046  # one number per word
  median_fmt %.1f $(awk -v p="$1" '$1 ~ p { printf "%.2f\n", $3 / 1024 }' "$idle")
}

bench_host_info
if [ "$smoke" = 1 ]; then
  repro="ACCEL=$ACCEL scripts/bench-vm.sh --smoke"
else
  repro="REPS=$reps SIZE_MB=$size_mib PAR_MB=$par_mib FILES=$nfiles CLOSURE_FILES=$nclosure CLOSURE_BIG=\"${closure_mibs[*]}\" RAND_READS=$nrand ACCEL=$ACCEL"
  [ "$latency" = 2 ] || repro+=" LATENCY=$latency"
  [ "${POLICIES:-never always}" = "never always" ] || repro+=" POLICIES=\"${policies[*]}\""
  [ "$profile" = release ] || repro+=" PROFILE=$profile"
  [ "$no_vfs" != 1 ] || repro+=" NO_VIRTIOFSD=1"
  repro+=" scripts/bench-vm.sh"
fi

phase_label() {
  case $1 in
    seq1) echo "sequential read, $size_mib MiB, pass 1" ;;
    seq2) echo "sequential read, pass 2" ;;
    rand1) echo "$nrand random 4 KiB reads, pass 1" ;;
    rand2) echo "random 4 KiB reads, pass 2" ;;
    find1) echo "find + stat, $nfiles files, pass 1" ;;
    find2) echo "find + stat, pass 2 (nothing dropped)" ;;
    tar1) echo "tar c \\| wc -c, $nclosure + ${#closure_mibs[@]} files ($closure_mib MiB), pass 1" ;;
    tar2) echo "tar c \\| wc -c, pass 2" ;;
  esac
}
all_phases=(seq1 seq2 rand1 rand2 find1 find2 tar1 tar2)

policy_tables() {  # POLICY
  local p=$1 ph base warm cold
  base=vfs-$p warm=ours-$p-warm cold=ours-$p-cold
  echo "### --cache $p"
  echo
  if [ "$no_vfs" != 1 ]; then
    echo "Medians; ratios are ours / virtiofsd per repetition as speed (> 1: ours faster; for times: virtiofsd's time / ours), their median first. Warm disk and cold are compared with virtiofsd's pass 1, hot (ours-warm's pass 2) with virtiofsd's pass 2."
  else
    echo "Medians (no virtiofsd rows in this run)."
  fi
  echo
  echo "| Workload | virtiofsd --cache=$p | ours: warm disk (pass 1) / hot (pass 2) | ours: cold | ratio warm disk or hot | ratio cold |"
  echo "|---|---:|---:|---:|---|---|"
  for ph in "${all_phases[@]}"; do
    local rc="–" rcold="–"
    if [ "$no_vfs" != 1 ]; then
      rc=$(rcell "$warm" "$ph" "$base" "$ph")
      [[ $ph == *2 ]] || rcold=$(rcell "$cold" "$ph" "$base" "$ph")
    fi
    local cc="–"
    [[ $ph == *2 ]] || cc=$(cell "$cold" "$ph")
    echo "| $(phase_label "$ph") | $(cell "$base" "$ph") | $(cell "$warm" "$ph") | $cc | $rc | $rcold |"
  done
  echo
  echo "Daemon CPU time (utime+stime, s) / peak RSS (VmHWM during the pass, MiB) / RssAnon at the end of the pass (MiB), medians. VmHWM also counts the pages of guest memory the daemon has written into (the memfd is mapped shared), which is why virtiofsd's peak with \`--cache=always\` (the guest keeps every page it was sent) comes close to the file size; RssAnon is the daemon's own memory (ours: mostly the memory cache)."
  echo
  echo "| Pass | virtiofsd | ours warm disk / hot | ours cold |"
  echo "|---|---:|---:|---:|"
  for ph in "${all_phases[@]}"; do
    echo "| $ph | $(res_cell "$base" "$ph") | $(res_cell "$warm" "$ph") | $(res_cell "$cold" "$ph") |"
  done
  echo
  echo "Our counters per pass (\`--stats-file\`, medians): MiB fetched from the store / store RPCs / disk-cache hits / memory-cache hits:"
  echo
  echo "| Pass | ours warm disk / hot | ours cold |"
  echo "|---|---|---|"
  for ph in "${all_phases[@]}"; do
    echo "| $ph | $(ctr_cell "$warm" "$ph") | $(ctr_cell "$cold" "$ph") |"
  done
  echo
}

par_table() {
  local p r
  echo "### 4 parallel readers, 4 × $par_mib MiB"
  echo
  echo "Ours on the warm disk cache. MiB/s of the four together (medians, per repetition in brackets); CPU s / peak RSS / RssAnon (MiB) of the daemon:"
  echo
  local hdr="| Row |" sep="|---|"
  for p in "${policies[@]}"; do hdr+=" --cache $p | CPU / peak / anon |" sep+="---|---:|"; done
  echo "$hdr"
  echo "$sep"
  for r in vfs vfs-tp4 ours-1q ours-4q ours-tp4; do
    local line label
    case $r in
      vfs) label="virtiofsd (1 queue, no thread pool)" ;;
      vfs-tp4) label="virtiofsd --thread-pool-size 4" ;;
      ours-1q) label="ours, 1 queue" ;;
      ours-4q) label="ours, --num-request-queues 4 (NUM_QUEUES=4)" ;;
      ours-tp4) label="ours, 1 queue, --thread-pool-size 4" ;;
    esac
    line="| $label |"
    for p in "${policies[@]}"; do
      local row=${r%%-*}-$p
      [ "$r" = "${r%%-*}" ] || row+=-${r#*-}
      [ "$r" != vfs ] || row=vfs-$p
      # shellcheck disable=SC2046  # one number per word
      line+=" $(cell "$row" par) ($(join_list $(vals "$row" par))) | $(res_cell "$row" par) |"
    done
    echo "$line"
  done
  echo
  hdr="| Ratio |" sep="|---|"
  for p in "${policies[@]}"; do hdr+=" --cache $p |" sep+="---|"; done
  echo "$hdr"
  echo "$sep"
  local pairs=("ours-1q vfs" "ours-4q ours-1q" "ours-tp4 ours-1q" "vfs-tp4 vfs")
  local pr a b
  for pr in "${pairs[@]}"; do
    read -r a b <<<"$pr"
    line="| $a / $b |"
    for p in "${policies[@]}"; do
      local ra=${a%%-*}-$p rb=${b%%-*}-$p
      [ "$a" = "${a%%-*}" ] || ra+=-${a#*-}
      [ "$b" = "${b%%-*}" ] || rb+=-${b#*-}
      line+=" $(rcell "$ra" par "$rb" par) |"
    done
    echo "$line"
  done
  echo
  echo "Daemon threads during the 4 readers (repetition 1): CPU seconds per thread name, and how many threads of that name used any CPU (vring_worker: one per virtqueue, the first the high-priority queue). Thread times count in whole clock ticks ($((1000 / tck)) ms), so time spread thinly over many threads (ours: the \"store-client\" runtime threads that fetch from the store) mostly shows as 0 here although the process total above includes it; ours reads the warm disk cache on the request threads and on one \"disk-readahead\" thread:"
  echo
  for r in "${par_rows[@]}"; do
    echo "- $r: $(awk -v r="$r" '$1 == r && $2 == 1 { for (i = 3; i <= NF; i++) { split($i, a, ":"); if (a[2] + 0 > 0 || a[1] == "vring_worker") printf "%s%s %s s on %s threads", (n++ ? ", " : ""), a[1], a[2], a[3] } }' "$threads")"
  done
  echo
}

target_line() {  # TEXT FIGURE THRESHOLD
  local met
  if [ "$2" = – ] || [ -z "$2" ]; then
    met="n/a (not measured)"
  elif awk -v v="$2" -v t="$3" 'BEGIN { exit !(v >= t) }'; then
    met=MET
  else
    met="NOT MET"
  fi
  echo "- $1: **$met** ($2, target ≥ $3)"
}

report() {
  local p
  bench_report_head "## Guest workloads vs virtiofsd" "$repro"
  echo "- Host: $(nproc) CPUs, $cpu; guest accel **${ACCEL^^}**, QEMU $qemu_v, guest kernel $kver, ${SMP:-2} vCPUs, ${MEM:-1G} memory, queue size ${QUEUE_SIZE:-1024}"
  if [ "$no_vfs" = 1 ]; then
    local why=NO_VIRTIOFSD=1
    [ "$smoke" = 0 ] || why=--smoke
    echo "- **No baseline**: virtiofsd was not run ($why)."
  else
    echo "- virtiofsd $vfs_version \`--sandbox=none --cache=P\` sharing a local copy of the tree (in the host page cache)."
  fi
  echo "- Ours: $profile profile, \`--cache P --memory-cache-size $memcache\` (the hot rows need the file in memory), default \`--readahead-chunks\` (${readahead:-?}); \`tvix-fixture-store --chunk-size 262144 --latency-ms $latency\` over grpc+unix on the same host. Warm disk: a \`--cache-dir\` filled through a FUSE mount before the run (its files in the host page cache, like virtiofsd's tree); cold: an empty one per boot."
  echo "- One fresh daemon per boot; per boot the passes of one workload group (sequential; random + find + tar; 4 readers). Guest caches dropped before every pass except between the find passes. Repetitions: $reps; in each, every row once, daemons alternating."
  echo "- Random reads: one process (static helper) doing $nrand \`pread\`s of 4 KiB at pseudo-random 4 KiB-aligned offsets, the same offsets for every row of a repetition, checksummed against the host."
  if [ "$smoke" = 0 ] && [ "$size_mib $par_mib $nfiles $nclosure ${closure_mibs[*]}" != "1024 256 10000 3000 8 16 24 32" ]; then
    echo "- Sizes below the defaults (a 1024 MiB file, 4 × 256 MiB, 10000 files, 3000 closure files plus 8, 16, 24 and 32 MiB) so that the whole run stays under 25 min under TCG here (run time at the end); the defaults take roughly an hour, mostly \`tar c | wc -c\` and find + stat with \`--cache never\`."
  fi
  echo
  for p in "${policies[@]}"; do policy_tables "$p"; done
  par_table
  echo "### Idle daemon and targets"
  echo
  echo "Idle RSS (VmRSS after start, before the guest connects; median over all boots): ours $(idle_med '^ours-') MiB$([ "$no_vfs" = 1 ] || echo ", virtiofsd $(idle_med '^vfs-') MiB")."
  echo
  for p in "${policies[@]}"; do
    local f1=– f2=– f3=– f4=–
    if [ "$no_vfs" != 1 ]; then
      f1=$(rmed "ours-$p-warm" seq1 "vfs-$p" seq1)
      f2=$(rmed "ours-$p-warm" seq2 "vfs-$p" seq2)
      f3=$(rmed "ours-$p-warm" find2 "vfs-$p" find2)
    fi
    [ "$smoke" = 1 ] || f4=$(rmed "ours-$p-4q" par "ours-$p-1q" par)
    target_line "--cache $p: warm-disk sequential read, ours / virtiofsd" "$f1" 1.0
    target_line "--cache $p: hot-memory sequential read, ours / virtiofsd" "$f2" 1.0
    target_line "--cache $p: find + stat second pass, ours / virtiofsd (speed)" "$f3" 1.5
    target_line "--cache $p: 4 readers, ours 4 queues / ours 1 queue" "$f4" 1.6
  done
  local idle_ours
  idle_ours=$(idle_med '^ours-')
  if [ "$idle_ours" != - ]; then
    if awk -v v="$idle_ours" 'BEGIN { exit !(v <= 20) }'; then
      echo "- idle RSS of ours: **MET** ($idle_ours MiB, target ≤ 20 MiB)"
    else
      echo "- idle RSS of ours: **NOT MET** ($idle_ours MiB, target ≤ 20 MiB)"
    fi
  fi
  echo
  if [ ${#unexpected[@]} -gt 0 ]; then
    echo "Counters that did not show the expected layer: $(join_list "${unexpected[@]}")."
  else
    echo "Counters as expected: warm-disk passes made no store call, hot passes no store call and no disk read, cold passes fetched from the store."
  fi
  echo
  if [ "$ACCEL" = tcg ]; then
    echo "What limits each figure under TCG (2 host CPUs shared by the two vCPU threads, the daemons and the fixture store):"
    echo
    echo "- Sequential read, \`--cache never\`: the daemon writes straight into guest memory, so its own work per request shows: virtiofsd does one \`pread\`; ours copies from its memory cache (hot), or reads the 256 KiB chunk file into new memory and hashes it again with BLAKE3 before serving it (warm disk: on the request thread and one read-ahead thread; \`scripts/profile-vm.sh\` shows hashing, the read's copy and the page faults of the growing memory cache as the largest parts), or fetches it over gRPC, verifies it and writes it to disk (cold, where the ${latency} ms store latency is hidden by read-ahead as long as the CPU keeps up). Every cycle the daemon spends is taken from the vCPU threads."
    echo "- Sequential read and 4 readers, \`--cache always\`: the guest kernel copies every byte into its page cache and out to \`dd\` in emulated code; that memcpy bounds both daemons alike, so the ratios stay near 1."
    echo "- Random 4 KiB reads: one round trip each (guest exit, daemon, interrupt). A warm-disk read of ours reads and hashes the 16 KiB group it falls in (4 times the bytes virtiofsd reads) and checks it against the chunk digest through the chunk's outboard; it keeps nothing in memory, so pass 2 does the same again (the ours \"hot\" row is the same disk read); cold ones fetch the whole 256 KiB chunk from the store."
    echo "- find + stat: one round trip per lookup and getattr, plus busybox's own work in emulated code; with \`--cache never\` every \`stat\` looks up each path component again, with \`--cache always\` the second pass does not leave the guest."
    echo "- tar c | wc -c: the pipe between two processes in the guest costs more than either daemon (a few MB/s under TCG)."
    case $kver in
      6.[0-9].* | 6.10.* | [1-5].*) echo "- 4 readers, 4 queues: the guest kernel $kver puts every virtio-fs request on the first request queue (spreading them over queues, one per vCPU, came with Linux 6.11), so extra queues get no work (see the busy vring_worker threads above); a thread pool can overlap requests, but two host CPUs already run the two vCPU threads." ;;
      *) echo "- 4 readers, 4 queues: the guest kernel $kver sends each vCPU's virtio-fs requests to its own request queue, so with ${SMP:-2} vCPUs at most ${SMP:-2} of the 4 queues get work (see the busy vring_worker threads above); the daemon serves each queue on its own thread, but two host CPUs already run the two vCPU threads, so a second busy queue thread takes CPU from them rather than adding any." ;;
    esac
    echo
  fi
  echo "Guest boots took $t_total s in all ($boots boots); the whole run, with building the tree and filling the cache, $(($(date +%s) - t_script)) s. Host load average (1 min) before / after: $load_before / $load_after (other jobs share this host: compare rows of one repetition)."
}

report >"$work/report.md"
cat "$work/report.md"
[ "$write_docs" = 0 ] || bench_write_docs "$DOC" "$SECTION" "$work/report.md"
