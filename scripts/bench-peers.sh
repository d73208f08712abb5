#!/usr/bin/env bash
# bench-peers.sh — guest workloads over virtio-fs: tvix-virtiofsd against the
# real stores' own virtio-fs daemons, `tvix-store virtiofs` and `snix-store
# virtiofs`, in the same run, on the same host, with the same guest. Every
# daemon reads from its own real store daemon (on local disk) holding the
# same tree: ours against tvix-store, tvix-store virtiofs against another
# tvix-store; ours (--store-protocol snix) against snix-store, snix-store
# virtiofs against another snix-store.
#
# Usage: scripts/bench-peers.sh [--write-docs] [--smoke]
#   --write-docs  also write the result into docs/benchmarks.md, replacing
#                 only the section "## Guest workloads vs tvix-store and
#                 snix-store virtiofs"
#   --smoke       tiny tree, 1 repetition, dev-profile binaries: a quick
#                 check (CI) that the harness still works
#
# Env:
#   REPS=3            repetitions; in each, every row once (rows interleaved)
#   FLAT=20000        entries of the find + stat directory (one directory,
#                     files of 0-2 KiB)
#   BIG_MB=24         the file read sequentially (random data)
#   CLOSURE_FILES=3000  closure-like tree: files of 1-64 KiB in store paths
#                     of 300 files each ...
#   CLOSURE_BIG="8 16 32"  ... plus one file of each of these MiB
#   TVIX_STORE_BIN=, SNIX_STORE_BIN=  the real stores (default: PATH, then
#                     ../shared/ref/bin next to the repository); without
#                     tvix-store the run fails, without snix-store its rows
#                     are reported as not run
#   ACCEL=tcg|kvm     passed to scripts/vm/run-guest.sh (default tcg)
#   PROFILE=          release (default) or dev (default with --smoke)
#   NO_BUILD=1        do not run cargo
#   TIMEOUT=600       seconds per guest boot (120 with --smoke)
#   KEEP=1            keep the work dir (target/bench/run.*) with all logs
#
# Rows, one guest boot each, with a fresh daemon: ours-tvix (ours, default
# options, an empty --cache-dir), ours-tvix-p0 (the same with
# --prefetch-bytes 0, against the same store: what the prefetch costs or
# gains), tvix (tvix-store virtiofs), ours-snix, ours-snix-p0, snix
# (snix-store virtiofs). Per boot, in the guest, timed with
# /proc/uptime (10 ms):
#   find   guest caches dropped; find DIR -type f | xargs stat -c %s over
#          the flat directory (file count and byte total checked)
#   cold   guest caches dropped; dd bs=1M of the big file (first read
#          through this daemon)
#   warm   guest caches dropped again; the same dd (the daemon's caches, if
#          any, are warm)
#   page   the same dd without dropping anything (guest page cache, if the
#          daemon lets the guest keep it)
#   tar    guest caches dropped; tar c of all closure store paths | wc -c
#          (length checked against the host's busybox tar of the same names)
#   tarw   guest caches dropped again; the same tar (the daemon's caches, if
#          any, are warm: what is left is the guest's and the transport's
#          share of tar)
# then an untimed sha256sum of the big file (checked). A wrong answer or a
# failed boot of ours fails the run; of a peer, it is reported as failed
# (with the reason) and, for a failed boot, that peer is not booted again.
# The peers' daemons may keep running after QEMU disconnects: they are
# stopped after every boot.
#
# Progress goes to stderr; the markdown result to stdout.
set -euo pipefail

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

SECTION="## Guest workloads vs tvix-store and snix-store virtiofs"
DOC=docs/benchmarks.md

bench_args "$@"
[ "$(id -u)" = 0 ] || die "needs root (QEMU, drop_caches)"

t_script=$(date +%s)
ACCEL=${ACCEL:-tcg}
export ACCEL
if [ "$smoke" = 1 ]; then
  nflat=300 big_mib=2 nclosure=330 closure_big="1" reps=1 profile=${PROFILE:-dev}
  TIMEOUT=${TIMEOUT:-120}
else
  nflat=${FLAT:-20000} big_mib=${BIG_MB:-24} nclosure=${CLOSURE_FILES:-3000}
  closure_big=${CLOSURE_BIG:-8 16 32} reps=${REPS:-3} profile=${PROFILE:-release}
  TIMEOUT=${TIMEOUT:-600}
fi
for v in "$reps" "$nflat" "$big_mib" "$nclosure"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "REPS, FLAT, BIG_MB, CLOSURE_FILES: positive integers, not $v"
done
read -r -a closure_mibs <<<"$closure_big"
for v in "${closure_mibs[@]}"; do [[ $v =~ ^[1-9][0-9]*$ ]] || die "CLOSURE_BIG: MiB, not $v"; done
big=f${big_mib}M.bin

# ---- binaries -------------------------------------------------------------------
tvix_bin=$(bench_real_bin tvix) || die "no tvix-store binary (TVIX_STORE_BIN, PATH, $REPO/../shared/ref/bin)"
snix_bin=$(bench_real_bin snix) || snix_bin=
kinds=(tvix)
[ -z "$snix_bin" ] || kinds+=(snix)
[ -n "$snix_bin" ] || log "WARNING: no snix-store binary (SNIX_STORE_BIN, PATH, $REPO/../shared/ref/bin): its rows are not run"
bench_build "$profile"
scripts/vm/build-guest.sh >&2
bench_workdir
log "work dir $work"
case $work in *' '*) die "the work dir must not contain spaces: $work" ;; esac

# ---- the tree -----------------------------------------------------------------------
tree=$work/tree
mkdir -p "$tree/bench-big"
head -c "$((big_mib * 1048576))" /dev/urandom >"$tree/bench-big/$big"
bench_gen_flat "$tree/bench-flat" "$nflat"
# closure-like: every pkgNN of the generated tree is a store path of its own
bench_gen_closure "$work/closure" "$nclosure" "${closure_mibs[@]}"
closure=()
for d in "$work"/closure/pkg*; do
  mv "$d" "$tree/clos-${d##*/}"
  closure+=("clos-${d##*/}")
done
big_sha=$(sha256sum "$tree/bench-big/$big" | cut -d ' ' -f 1)
find_want=$(find "$tree/bench-flat" -type f -printf '%s\n' | awk '{ n++; s += $1 } END { print n, s }')
closure_files=$(cd "$tree" && find "${closure[@]}" -type f | wc -l)
closure_mib=$(cd "$tree" && du -scm --apparent-size "${closure[@]}" | tail -n 1 | cut -f 1)
log "tree: $big, $nflat flat files ($find_want), closure ${#closure[@]} store paths, $closure_files files, $closure_mib MiB"

# ---- the stores: one per daemon, each with the same tree ------------------------------------
# rows: ours-KIND and KIND (the peer), for every KIND; store NAME.KIND each
rows=()
for k in "${kinds[@]}"; do rows+=("ours-$k" "ours-$k-p0" "$k"); done
declare -A spath=() store_sock=()
for r in "${rows[@]}"; do
  k=${r#ours-}
  if [ "$k" != "${k%-p0}" ]; then  # prefetch off: the store of ours-KIND
    store_sock[$r]=${store_sock[ours-${k%-p0}]}
    continue
  fi
  # bench_start_real_store names everything after its KIND: one store per
  # row through a kind directory of its own
  mkdir -p "$work/$r"
  work_saved=$work
  work=$work/$r
  bench_start_real_store "$k" "$tree"
  work=$work_saved
  store_sock[$r]=$work/$r/$k.sock
  for e in bench-big bench-flat "${closure[@]}"; do
    p=$(work=$work/$r bench_store_path "$k" "$e")
    if [ -z "${spath[$e]:-}" ]; then
      spath[$e]=$p
    elif [ "${spath[$e]}" != "$p" ]; then
      die "$r: store path $p for $e, another store made ${spath[$e]}"
    fi
  done
done
# the expected tar length: the host's busybox tar over the same names
mkdir -p "$work/tarref"
for e in "${closure[@]}"; do mv "$tree/$e" "$work/tarref/${spath[$e]}"; done
closure_paths=()
for e in "${closure[@]}"; do closure_paths+=("${spath[$e]}"); done
tar_want=$(cd "$work/tarref" && busybox tar c "${closure_paths[@]}" | wc -c)
log "store paths: ${spath[bench-big]}, ${spath[bench-flat]}, ${closure_paths[0]}, ... (tar $tar_want bytes)"

# ---- one boot ---------------------------------------------------------------------------------
# guest output: "T <pass> <t0> <t1> <result...>", "SHA <hex>"
workloads=(find cold warm page tar tarw)
guest_cmd() {
  local bigp=${spath[bench-big]}/$big flat=${spath[bench-flat]}
  cat <<EOF
now() { cut -d " " -f 1 /proc/uptime; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
rd() { t0=\$(now); dd if='$bigp' of=/dev/null bs=1M 2>/tmp/dd || cat /tmp/dd >&2; t1=\$(now); echo "T \$1 \$t0 \$t1 \$(sed -n 's/ records in\$//p' /tmp/dd)"; }
drop; t0=\$(now); r=\$(find '$flat' -type f | xargs stat -c %s | awk '{ n++; s += \$1 } END { print n + 0, s + 0 }'); t1=\$(now)
echo "T find \$t0 \$t1 \$r"
drop; rd cold
drop; rd warm
rd page
drop; t0=\$(now); r=\$(tar c ${closure_paths[*]} | wc -c); t1=\$(now)
echo "T tar \$t0 \$t1 \$r"
drop; t0=\$(now); r=\$(tar c ${closure_paths[*]} | wc -c); t1=\$(now)
echo "T tarw \$t0 \$t1 \$r"
echo "SHA \$(sha256sum '$bigp' | cut -d ' ' -f 1)"
EOF
}

# results: "<row> <rep> <workload> <seconds>"; failures: "<row> <rep> <workload> <reason>"
results=$work/results failures=$work/failures
: >"$results"
: >"$failures"
declare -A dead=()
boots=0

# fail ROW REP WORKLOAD REASON: a wrong or missing answer; fatal for ours
fail() {
  local row=$1 rep=$2 w=$3
  shift 3
  case $row in ours-*) die "$row rep $rep $w: $*" ;; esac
  log "FAILED: $row rep $rep $w: $*"
  echo "$row $rep $w $*" >>"$failures"
}

boot() {  # ROW REP
  local row=$1 rep=$2 id=$work/$1.$2 sock dpid rc addr why w line
  local k=${row#ours-}
  local -a f prefetch=()
  [ "$k" = "${k%-p0}" ] || prefetch=(--prefetch-bytes 0) k=${k%-p0}
  sock=$id.sock
  addr=grpc+unix://${store_sock[$row]}
  rm -f "$sock"
  case $row in
    ours-*)
      local -a proto=()
      [ "$k" = tvix ] || proto=(--store-protocol "$k")
      mkdir -p "$id.cache"
      "$bindir/tvix-virtiofsd" --socket-path "$sock" --store "$addr" "${proto[@]}" \
        --cache-dir "$id.cache" "${prefetch[@]}" 2>"$id.daemon.log" & ;;
    *)
      local bin=$tvix_bin
      [ "$k" = tvix ] || bin=$snix_bin
      "$bin" --otlp=false virtiofs "$sock" --blob-service-addr "$addr" \
        --directory-service-addr "$addr" --path-info-service-addr "$addr" >"$id.daemon.log" 2>&1 & ;;
  esac
  dpid=$!
  pids+=("$dpid")
  for _ in $(seq 100); do [ -S "$sock" ] && break; kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
  if [ ! -S "$sock" ]; then
    why="no vhost-user socket: $(tail -n 3 "$id.daemon.log" | tr '\n' ' ')"
    kill "$dpid" 2>/dev/null || true
    wait "$dpid" 2>/dev/null || true
    bench_forget "$dpid"
    for w in "${workloads[@]}" sha; do fail "$row" "$rep" "$w" "$why"; done
    dead[$row]=$why
    return 0
  fi

  log "rep $rep/$reps: $row"
  boots=$((boots + 1))
  set +e
  scripts/vm/run-guest.sh "$sock" bench "$(guest_cmd)" "$TIMEOUT" >"$id.out" 2>"$id.err"
  rc=$?
  set -e
  sed 's/^/bench:   /' "$id.err" >&2
  case $row in
    ours-*)  # ours exits when QEMU disconnects
      bench_wait_exit "$dpid" "$row daemon" ;;
    *)  # the peers may not: a moment, then stop them
      for _ in $(seq 10); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
      kill "$dpid" 2>/dev/null && log "  $row daemon still running after the guest: stopped"
      wait "$dpid" 2>/dev/null || true ;;
  esac
  bench_forget "$dpid"
  if [ "$rc" != 0 ]; then
    sed 's/^/bench: daemon| /' "$id.daemon.log" | tail -n 10 >&2
    why="guest run failed (rc=$rc$([ "$rc" != 124 ] || echo ": timeout after $TIMEOUT s"))"
    case $row in ours-*) die "$row rep $rep: $why" ;; esac
    dead[$row]=$why
  fi
  # every pass the guest reported, checked
  for w in "${workloads[@]}"; do
    line=$(awk -v w="$w" '$1 == "T" && $2 == w' "$id.out")
    if [ -z "$line" ]; then fail "$row" "$rep" "$w" "${why:-no result}"; continue; fi
    read -r -a f <<<"$line"
    local got=${f[*]:4} want
    case $w in
      find) want=$find_want ;;
      tar | tarw) want=$tar_want ;;
      *) want="$big_mib+0" ;;
    esac
    if [ "$got" != "$want" ]; then
      fail "$row" "$rep" "$w" "wrong answer: '$got', expected '$want'"
      continue
    fi
    awk -v r="$row" -v p="$rep" -v w="$w" -v a="${f[2]}" -v b="${f[3]}" \
      'BEGIN { d = b - a; if (d < 0.01) d = 0.01; printf "%s %s %s %.2f\n", r, p, w, d }' >>"$results"
  done
  line=$(sed -n 's/^SHA //p' "$id.out")
  [ "$line" = "$big_sha" ] || fail "$row" "$rep" sha "sha256 of $big '${line:-none}', expected $big_sha"
  log "  $(awk -v r="$row" -v p="$rep" '$1 == r && $2 == p { printf "%s %s s  ", $3, $4 }' "$results")"
}

load_before=$(cut -d ' ' -f 1 /proc/loadavg)
t_start=$(date +%s)
for rep in $(seq "$reps"); do
  for row in "${rows[@]}"; do
    if [ -n "${dead[$row]:-}" ]; then
      log "rep $rep/$reps: $row not booted again (${dead[$row]})"
      for w in "${workloads[@]}"; do fail "$row" "$rep" "$w" "not run: failed before (${dead[$row]})"; done
      continue
    fi
    boot "$row" "$rep"
  done
done
t_total=$(($(date +%s) - t_start))
load_after=$(cut -d ' ' -f 1 /proc/loadavg)

# ---- report -------------------------------------------------------------------------------
vals() { awk -v r="$1" -v w="$2" '$1 == r && $3 == w { print $4 }' "$results"; }
label() {
  case $1 in
    ours-tvix) echo "ours → tvix-store" ;;
    ours-snix) echo "ours → snix-store (\`--store-protocol snix\`)" ;;
    ours-*-p0) echo "$(label "${1%-p0}"), \`--prefetch-bytes 0\`" ;;
    *) echo "\`$1-store virtiofs\`" ;;
  esac
}
wlabel() {
  case $1 in
    find) echo "find + stat, $nflat entries in one directory" ;;
    cold) echo "sequential read, $big_mib MiB, cold" ;;
    warm) echo "sequential read, warm (2nd pass, guest caches dropped)" ;;
    page) echo "sequential read, 3rd pass (guest page cache kept)" ;;
    tar) echo "tar c \\| wc -c, $closure_files files ($closure_mib MiB) in ${#closure[@]} store paths" ;;
    tarw) echo "tar again, warm (guest caches dropped, the daemon's caches kept)" ;;
  esac
}
# cell ROW W: the median time (and MiB/s for reads), or why it failed
cell() {
  local v n
  # shellcheck disable=SC2046  # one number per word
  v=$(median2 $(vals "$1" "$2"))
  n=$(vals "$1" "$2" | wc -l)
  if [ "$n" = 0 ]; then
    echo "**failed**: $(awk -v r="$1" -v w="$2" '$1 == r && $3 == w { $1 = $2 = $3 = ""; sub(/^ +/, ""); print; exit }' "$failures")"
    return
  fi
  case $2 in
    cold | warm | page) v+=" s ($(awk -v m="$big_mib" -v t="$v" 'BEGIN { printf "%.0f", m / t }') MiB/s)" ;;
    *) v+=" s" ;;
  esac
  [ "$n" = "$reps" ] || v+=" ($n of $reps passes; the others failed)"
  echo "$v"
}
# ratio OURS PEER W: per repetition peer time / our time (> 1: ours faster)
ratio() {
  local r
  r=$(join -j 1 <(awk -v r="$1" -v w="$3" '$1 == r && $3 == w { print $2, $4 }' "$results" | sort) \
    <(awk -v r="$2" -v w="$3" '$1 == r && $3 == w { print $2, $4 }' "$results" | sort) |
    sort -n | awk '{ printf "%.2f\n", $3 / $2 }')
  if [ -z "$r" ]; then echo "–"; return; fi
  # shellcheck disable=SC2046,SC2086  # one number per word
  echo "**$(median2 $r)** ($(join_list $r))"
}

bench_host_info
if [ "$smoke" = 1 ]; then
  repro="ACCEL=$ACCEL scripts/bench-peers.sh --smoke"
else
  repro="REPS=$reps FLAT=$nflat BIG_MB=$big_mib CLOSURE_FILES=$nclosure CLOSURE_BIG=\"${closure_mibs[*]}\" ACCEL=$ACCEL"
  [ "$profile" = release ] || repro+=" PROFILE=$profile"
  repro+=" scripts/bench-peers.sh"
fi
report() {
  bench_report_head "## Guest workloads vs tvix-store and snix-store virtiofs" "$repro"
  echo "- Host: $(nproc) CPUs, $cpu; guest accel **${ACCEL^^}**, QEMU $qemu_v, guest kernel $kver, ${SMP:-2} vCPUs, ${MEM:-1G} memory"
  echo "- Stores: every daemon has a store daemon of its own, all holding the same tree on local disk (objectstore+file:// blobs, redb:// directories and path infos), over grpc+unix on the same host: $("$tvix_bin" --version | head -n 1) ($tvix_bin)$([ -z "$snix_bin" ] || echo ", $("$snix_bin" --version | head -n 1) ($snix_bin)"). The tree went in with the stores' own \`import\`, one store path per top-level entry; store files are in the host page cache for every row alike."
  echo "- Peers: \`tvix-store --otlp=false virtiofs SOCK\`$([ -z "$snix_bin" ] || echo " and \`snix-store --otlp=false virtiofs SOCK\`") with the three service addresses of their store (no other options). Ours: $profile profile, default options (\`--cache always\`, \`--memory-cache-size\` 128M) plus an empty \`--cache-dir\` per boot; against snix-store with \`--store-protocol snix\`; the \`--prefetch-bytes 0\` rows read the same store as the default row of their kind."
  echo "- One guest boot per row and repetition, with a fresh daemon; rows interleaved in the order $(join_list "${rows[@]}"); repetitions: $reps. Per boot: find + stat (\`find DIR -type f | xargs stat -c %s\`), a sequential \`dd bs=1M\` of the $big_mib MiB file three times (cold; warm: guest caches dropped, the daemon's own caches kept; then once more without dropping anything), \`tar c\` of the ${#closure[@]} closure store paths \`| wc -c\` twice (cold, then warm: guest caches dropped, the daemon's own caches kept). Guest caches dropped before find, cold, warm and both tars; timed with /proc/uptime (10 ms)."
  echo "- Every pass checked: file count and byte total of find + stat, dd's record count, the tar length against the host's busybox tar of the same names, and the big file's sha256 once per boot."
  if [ "$smoke" = 0 ] && [ "$nflat $big_mib $nclosure ${closure_mibs[*]}" != "20000 24 3000 8 16 32" ]; then
    echo "- Sizes differ from the defaults (20000 entries, 24 MiB, 3000 closure files plus 8, 16 and 32 MiB): with the defaults one repetition took about 10 min under TCG here (\`tar\` of 155 MiB: 74 s through ours, 104 s through tvix-store virtiofs; find + stat through tvix-store virtiofs: 77 s), so the closure was made smaller to keep the whole run near 20 min."
  fi
  echo
  echo "Median seconds per pass (MiB/s for reads). Ratios are ours / peer as speed, per repetition (the peer's time / ours, > 1: ours faster; \"default / prefetch off\": the prefetch-off time / the default's, < 1: the prefetch costs the guest time); median first, in bold."
  echo
  local k w
  local head="| Workload |" sep="|---|"
  for k in "${kinds[@]}"; do
    head+=" $(label "ours-$k") | $(label "ours-$k-p0") | $(label "$k") | ratio ours / $k-store virtiofs | ratio default / prefetch off |"
    sep+="---:|---:|---:|---|---|"
  done
  echo "$head"
  echo "$sep"
  for w in "${workloads[@]}"; do
    local line
    line="| $(wlabel "$w") |"
    for k in "${kinds[@]}"; do
      line+=" $(cell "ours-$k" "$w") | $(cell "ours-$k-p0" "$w") | $(cell "$k" "$w") | $(ratio "ours-$k" "$k" "$w") | $(ratio "ours-$k" "ours-$k-p0" "$w") |"
    done
    echo "$line"
  done
  echo
  if [ -s "$failures" ]; then
    echo "Failed passes (row, repetition, pass, reason):"
    echo
    sort -k 2,2n -k 1,1 "$failures" | awk '{ r = $1; p = $2; w = $3; $1 = $2 = $3 = ""; sub(/^ +/, ""); gsub(/\|/, "\\|"); printf "- %s, rep %s, %s: %s\n", r, p, w, $0 }'
    echo
  fi
  [ -n "$snix_bin" ] || { echo "snix-store was not found: its rows were not run."; echo; }
  echo "Guest boots took $t_total s ($boots boots; the whole script $(($(date +%s) - t_script)) s). Host load average (1 min) before / after the boots: $load_before / $load_after (the host may be shared)."
  echo "The guest clock ticks in 10 ms: a pass of 0.05 s is only known to about ±20 %."
  if [ "$ACCEL" = tcg ]; then
    echo "Under TCG every copy the guest CPU makes is emulated, and the guest's own work (find, stat, tar, dd) is a large part of every time here; compare rows of one run only."
  fi
}
report >"$work/report.md"
cat "$work/report.md"

[ "$write_docs" = 0 ] || bench_write_docs "$DOC" "$SECTION" "$work/report.md"
