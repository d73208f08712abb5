# shellcheck shell=bash
# bench-lib.sh — helpers shared by scripts/bench-*.sh. Sourced, not run.
#
# Sourcing sets REPO (the repository root, also made the cwd) and
# BENCH_SCRIPT (the calling script's absolute path, for usage). Functions
# report through log/die and keep their state in the globals named in their
# comments.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_SCRIPT=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$REPO"

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$BENCH_SCRIPT" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# ---- build -------------------------------------------------------------------
# bench_build PROFILE: cargo build (unless NO_BUILD=1); sets bindir.
bench_build() {
  local build
  case $1 in
    release) build=(cargo build --release --locked --workspace --exclude tvix-virtiofsd-fuzz --bins) bindir=$REPO/target/release ;;
    dev) build=(cargo build --locked --workspace --exclude tvix-virtiofsd-fuzz --bins) bindir=$REPO/target/debug ;;
    *) die "PROFILE must be release or dev: $1" ;;
  esac
  if [ "${NO_BUILD:-0}" = 1 ]; then
    log "NO_BUILD=1: using the binaries in $bindir as they are"
  else
    log "${build[*]}"
    "${build[@]}" >&2
  fi
  local b
  for b in tvix-virtiofsd tvix-fixture-store; do
    [ -x "$bindir/$b" ] || die "missing $bindir/$b"
  done
}

# bench_default FLAG: our daemon's default of --FLAG (a number, from --help).
bench_default() {
  "$bindir/tvix-virtiofsd" --help | awk -v flag="--$1" '$1 == flag { f = 1 } f && /\[default:/ { gsub(/.*\[default: |\].*/, ""); print; exit }'
}
# bench_readahead: our daemon's default --readahead-chunks.
bench_readahead() { bench_default readahead-chunks; }

# bench_virtiofsd: the reference daemon (VIRTIOFSD=, then PATH, then
# ~/.cargo/bin; installed with cargo if missing); sets vfs_bin, vfs_version.
VIRTIOFSD_VERSION=1.14.0
bench_virtiofsd() {
  vfs_bin=${VIRTIOFSD:-$(command -v virtiofsd || true)}
  local cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd
  [ -n "$vfs_bin" ] || [ ! -x "$cargo_bin" ] || vfs_bin=$cargo_bin
  if [ -z "$vfs_bin" ]; then
    local missing=() p
    for p in libcap-ng-dev libseccomp-dev pkg-config; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      log "apt-get install ${missing[*]} (virtiofsd build deps)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
    log "cargo install virtiofsd --version $VIRTIOFSD_VERSION --locked"
    cargo install virtiofsd --version "$VIRTIOFSD_VERSION" --locked >&2
    vfs_bin=$cargo_bin
  fi
  [ -x "$vfs_bin" ] || die "virtiofsd not executable: $vfs_bin"
  vfs_version=$("$vfs_bin" --version 2>/dev/null | awk '{ print $NF; exit }')
  [ "$vfs_version" = "$VIRTIOFSD_VERSION" ] ||
    log "warning: $vfs_bin is version $vfs_version, not $VIRTIOFSD_VERSION"
}

# ---- work dir, background processes, FUSE mounts -------------------------------
# bench_workdir: makes target/bench/run.XXXXXX; sets work, pids, mounts and
# an EXIT trap that unmounts, stops everything started and removes the dir
# (KEEP=1 keeps it).
bench_workdir() {
  mkdir -p "$REPO/target/bench"
  work=$(mktemp -d "$REPO/target/bench/run.XXXXXX")
  pids=() mounts=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local p m
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for m in "${mounts[@]}"; do
    if grep -qF " $m fuse" /proc/mounts 2>/dev/null; then umount -l "$m" 2>/dev/null || true; fi
  done
  if [ "${KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
}

# bench_forget PID: drops a process that has ended from the cleanup list.
bench_forget() {
  local p keep=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# bench_start_store NAME TREE [ARGS...]: a fixture store importing TREE on
# grpc+unix://$work/NAME.sock (--chunk-size 262144 plus ARGS), its output in
# $work/NAME.out (STORE_PATH lines); sets store_pid and waits for LISTENING.
bench_start_store() {
  local name=$1 tree=$2
  shift 2
  "$bindir/tvix-fixture-store" --import "$tree" --listen "grpc+unix://$work/$name.sock" \
    --chunk-size 262144 "$@" >"$work/$name.out" 2>"$work/$name.log" &
  store_pid=$!
  pids+=("$store_pid")
  local _
  for _ in $(seq 600); do
    grep -q '^LISTENING' "$work/$name.out" 2>/dev/null && break
    kill -0 "$store_pid" 2>/dev/null || { cat "$work/$name.log" >&2; die "fixture store $name exited"; }
    sleep 0.1
  done
  grep -q '^LISTENING' "$work/$name.out" || die "fixture store $name not listening after 60 s"
}

# bench_store_path NAME ENTRY: the store path basename of top-level ENTRY.
bench_store_path() {
  local p
  p=$(sed -n "s/^STORE_PATH \(.*-$2\)\$/\1/p" "$work/$1.out")
  [ -n "$p" ] || die "no STORE_PATH *-$2 in $work/$1.out"
  echo "$p"
}

# ---- real stores (tvix-store, snix-store) ------------------------------------------
# bench_real_bin KIND: the path of the real KIND-store binary (KIND tvix or
# snix): $TVIX_STORE_BIN / $SNIX_STORE_BIN, then PATH, then
# $REPO/../shared/ref/bin; prints nothing (and fails) when there is none.
bench_real_bin() {
  local kind=$1 var b
  case $kind in tvix | snix) ;; *) die "no real store of kind $kind" ;; esac
  var=${kind^^}_STORE_BIN
  b=${!var:-}
  [ -n "$b" ] || b=$(command -v "$kind-store" || true)
  [ -n "$b" ] || [ ! -x "$REPO/../shared/ref/bin/$kind-store" ] || b=$(cd "$REPO/../shared/ref/bin" && pwd)/$kind-store
  [ -n "$b" ] && [ -x "$b" ] || return 1
  echo "$b"
}

# bench_store_choice: resolves STORE (env, or --store through bench_args):
# tvix (default), snix or fixture. Sets store_kind and, for a real store,
# store_bin. With no real binary it falls back, loudly, to the fixture.
bench_store_choice() {
  store_kind=${STORE:-tvix} store_bin=
  case $store_kind in
    fixture) return 0 ;;
    tvix | snix) ;;
    *) die "STORE must be tvix, snix or fixture: $store_kind" ;;
  esac
  if ! store_bin=$(bench_real_bin "$store_kind"); then
    log "################################################################"
    log "WARNING: STORE=$store_kind but no $store_kind-store binary found"
    log "(\$${store_kind^^}_STORE_BIN, PATH, $REPO/../shared/ref/bin):"
    log "FALLING BACK TO THE FIXTURE STORE (tvix-fixture-store)"
    log "################################################################"
    store_kind=fixture store_bin=
  fi
}

# bench_store_label: one phrase naming the chosen store, for reports.
bench_store_label() {
  case $store_kind in
    fixture) echo "\`tvix-fixture-store --chunk-size 262144\` over grpc+unix on the same host" ;;
    *) echo "real \`$store_kind-store daemon\` ($("$store_bin" --version 2>/dev/null | head -n 1 || echo "version unknown")) on local disk (objectstore+file:// blobs, redb:// directories and path infos) over grpc+unix on the same host" ;;
  esac
}

# bench_start_real_store KIND TREE...: the real KIND-store daemon (KIND tvix
# or snix; binary from bench_real_bin) on local disk in $work/KIND.store
# (objectstore+file:// blobs, redb:// directories and path infos),
# listening on $work/KIND.sock (address grpc+unix://$work/KIND.sock). Every
# top-level entry of every TREE is imported as one store path with the
# store's own `import` (which names a path by its basename: the same store
# path names as the fixture's), and recorded in $work/KIND.out as
# "STORE_PATH <hash>-<name>" lines, so bench_store_path KIND ENTRY works as
# for the fixture. Sets store_pid and real_bin; stopped by bench_cleanup.
bench_start_real_store() {
  local kind=$1 dir=$work/$1.store sock=$work/$1.sock addr t e n want got
  shift
  real_bin=$(bench_real_bin "$kind") || die "no $kind-store binary (\$${kind^^}_STORE_BIN, PATH, $REPO/../shared/ref/bin)"
  mkdir -p "$dir/blobs"
  rm -f "$sock"
  "$real_bin" --otlp=false daemon --listen-address "$sock" \
    --blob-service-addr "objectstore+file://$dir/blobs" \
    --directory-service-addr "redb://$dir/directories.redb" \
    --path-info-service-addr "redb://$dir/pathinfo.redb" >"$work/$kind.log" 2>&1 &
  store_pid=$!
  pids+=("$store_pid")
  bench_wait_socket "$sock" "$work/$kind.log"
  addr=grpc+unix://$sock
  local -a entries=()
  for t in "$@"; do
    for e in "$t"/* "$t"/.[!.]*; do [ -e "$e" ] && entries+=("$e"); done
  done
  [ ${#entries[@]} -gt 0 ] || die "$kind-store: nothing to import in $*"
  log "$kind-store: importing ${#entries[@]} store paths"
  "$real_bin" --otlp=false import --blob-service-addr "$addr" --directory-service-addr "$addr" \
    --path-info-service-addr "$addr" "${entries[@]}" >"$work/$kind.import" 2>>"$work/$kind.log" ||
    { tail -n 20 "$work/$kind.log" >&2; die "$kind-store import failed"; }
  : >"$work/$kind.out"
  for e in "${entries[@]}"; do
    n=$(basename "$e")
    got=$(grep -c "^/nix/store/[0-9a-z]\{32\}-$n\$" "$work/$kind.import" || true)
    [ "$got" = 1 ] || die "$kind-store import: $got store paths named *-$n in $work/$kind.import"
    sed -n "s|^/nix/store/\([0-9a-z]\{32\}-$n\)\$|STORE_PATH \1|p" "$work/$kind.import" >>"$work/$kind.out"
  done
  want=${#entries[@]}
  got=$(wc -l <"$work/$kind.out")
  [ "$got" = "$want" ] || die "$kind-store import: $got store paths, expected $want"
  echo "LISTENING $addr" >>"$work/$kind.out"
}

# bench_start_chosen_store NAME TREE: the store bench_store_choice chose,
# holding TREE's top-level entries: the fixture as bench_start_store NAME
# TREE, or the real one (bench_start_real_store; NAME is then its KIND).
# Sets store_addr (for --store) and store_name (for bench_store_path).
# shellcheck disable=SC2034  # used by the callers
bench_start_chosen_store() {
  if [ "$store_kind" = fixture ]; then
    bench_start_store "$1" "$2"
    store_name=$1
  else
    bench_start_real_store "$store_kind" "$2"
    store_name=$store_kind
  fi
  store_addr=grpc+unix://$work/$store_name.sock
}

# bench_loadgen_tree FILES FLAT SIZE_MIB: the load generator's tree in
# $work/tree (meta/: FILES small files, flat/: one directory of FLAT
# entries, big/data.bin: SIZE_MIB MiB), held by the chosen store. Sets tree,
# store_addr, store_name and names (tvix-loadgen's --name-* arguments).
# shellcheck disable=SC2034  # used by the callers
bench_loadgen_tree() {
  tree=$work/tree
  mkdir -p "$tree/big"
  bench_gen_files "$tree/meta" "$1"
  bench_gen_flat "$tree/flat" "$2"
  head -c "$(($3 * 1048576))" /dev/urandom >"$tree/big/data.bin"
  bench_start_chosen_store "$store_kind" "$tree"
  names=(--name-meta "$(bench_store_path "$store_name" meta)" --name-flat "$(bench_store_path "$store_name" flat)"
    --name-big "$(bench_store_path "$store_name" big)")
}

# bench_wait_socket SOCK LOG: waits up to 10 s for a daemon's socket.
bench_wait_socket() {
  local _
  for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
  cat "$2" >&2
  die "no socket $1"
}

# bench_wait_exit PID WHAT: waits up to 5 s for a daemon that should exit on
# its own (after QEMU disconnects), then kills it.
bench_wait_exit() {
  local _
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill "$1" 2>/dev/null && log "warning: $2 still running after the guest; killed"
  wait "$1" 2>/dev/null || true
}

# bench_drop_host_caches: write back, then drop the host's page, dentry and
# inode caches (every process on the host is affected).
bench_drop_host_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# ---- daemon resources and counters ---------------------------------------------
# bench_snapshot PID LABEL [STATSFILE]: one line of key=value words:
#   label= hwm= rss= anon= shm= (KiB: VmHWM, VmRSS, RssAnon, RssShmem)
#   cpu= (utime+stime, clock ticks) s.<counter>= (the daemon's --stats-file)
#   th.<thread name>@<tid>= (ticks per thread). Fails when the process is gone.
bench_snapshot() {
  local pid=$1 label=$2 stats=${3:-} t name ticks out
  ticks=$(bench_stat_ticks "/proc/$pid/stat") || return 1
  out="label=$label $(awk '/^VmHWM:/ { h = $2 } /^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^RssShmem:/ { s = $2 }
    END { printf "hwm=%s rss=%s anon=%s shm=%s", h, r, a, s }' "/proc/$pid/status" 2>/dev/null) cpu=$ticks"
  if [ -n "$stats" ] && [ -r "$stats" ]; then
    out+=" $(awk 'NF == 2 { printf "s.%s=%s ", $1, $2 }' "$stats")"
  fi
  for t in /proc/"$pid"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    ticks=$(bench_stat_ticks "$t/stat") || continue
    out+=" th.${name// /_}@${t##*/}=$ticks"
  done
  echo "$out"
}

# bench_stat_ticks STATFILE: utime + stime (clock ticks) of a process or
# thread from its /proc stat file; fails when it is gone.
bench_stat_ticks() {
  local st
  local -a f
  st=$(cat "$1" 2>/dev/null) || return 1
  st=${st##*) }
  read -r -a f <<<"$st"
  echo $((f[11] + f[12]))
}

# The guest and the host talk over a third serial port of the guest (ttyS2),
# a QEMU "pipe" chardev: CTL.out carries the guest's lines to the host,
# CTL.in the host's answers back. bench_ctl CTL makes the two fifos; start
# bench_monitor on them before bench_guest.
bench_ctl() {
  rm -f "$1.in" "$1.out"
  mkfifo "$1.in" "$1.out"
}

# bench_monitor PID CTL SNAPS [STATSFILE] (run in the background): appends
# an "idle" snapshot of the daemon PID to SNAPS at once; then, for every
# line the guest sends (GUEST_LIB's mark), waits 1.1 s (the daemon rewrites
# its stats file at most once a second), appends a snapshot labelled with
# that line, resets VmHWM (so every snapshot's hwm is the peak since the
# previous one) and answers, which lets the guest go on. Ends when the
# daemon exits.
bench_monitor() {
  local pid=$1 ctl=$2 snaps=$3 stats=${4:-} part buf='' line rc in out
  # read-write opens of the fifos never block, whether QEMU has them open or not
  exec {out}<>"$ctl.out" {in}<>"$ctl.in"
  bench_snapshot "$pid" idle "$stats" >>"$snaps" || return 0
  echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    rc=0
    read -r -t 0.2 -u "$out" part || rc=$?
    if [ "$rc" -gt 128 ]; then
      buf+=$part # timed out: keep a partial line
      continue
    fi
    [ "$rc" = 0 ] || return 0
    line=$buf$part buf=''
    line=${line//$'\r'/}
    [ -n "$line" ] || continue
    sleep 1.1
    bench_snapshot "$pid" "$line" "$stats" >>"$snaps" || true
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    echo ok >&"$in"
  done
}

# snap_get SNAPS LABEL KEY: the value of KEY in the snapshot LABEL (0 if absent).
snap_get() {
  awk -v l="label=$2" -v k="$3=" '$1 == l { for (i = 2; i <= NF; i++) if (index($i, k) == 1) { print substr($i, length(k) + 1); f = 1 } }
    END { if (!f) print 0 }' "$1" | tail -n 1
}
# snap_delta SNAPS FROM TO KEY: KEY in TO minus KEY in FROM.
snap_delta() { echo $(($(snap_get "$1" "$3" "$4") - $(snap_get "$1" "$2" "$4"))); }

# ---- the guest ---------------------------------------------------------------------
# Shell text to prepend to guest commands: now (uptime, 10 ms), drop (guest
# caches), mark LABEL (sends LABEL to bench_monitor on ttyS2 and waits for
# its answer, so the daemon's snapshot is taken between two passes; prints
# MARK-TIMEOUT to stderr if none comes within 120 s).
# shellcheck disable=SC2016  # expanded in the guest
GUEST_LIB='exec 4<>/dev/ttyS2
stty -echo -opost <&4 || exit 6
now() { cut -d " " -f 1 /proc/uptime; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mark() { echo "$1" >&4; read -t 120 -r _ack <&4 || echo "MARK-TIMEOUT $1" >&2; }
'

# bench_guest SOCK CTL OUT ERR CMD [TIMEOUT]: run-guest.sh with GUEST_LIB
# and a third serial port on the fifos of bench_ctl CTL; stdout to OUT,
# stderr to ERR. Returns its exit status (3 if a mark got no answer).
bench_guest() {
  local sock=$1 ctl=$2 out=$3 err=$4 cmd=$5 timeout=${6:-${TIMEOUT:-600}} rc
  case $ctl in *' '* | *,*) die "no spaces or commas allowed in $ctl" ;; esac
  set +e
  QEMU_EXTRA="${QEMU_EXTRA:-} -serial pipe:$ctl" \
    "$REPO/scripts/vm/run-guest.sh" "$sock" bench "$GUEST_LIB$cmd" "$timeout" >"$out" 2>"$err"
  rc=$?
  set -e
  sed 's/^/bench:   /' "$err" >&2
  if [ "$rc" = 0 ] && grep -q '^MARK-TIMEOUT' "$err"; then
    log "the host did not answer a mark in time"
    rc=3
  fi
  return "$rc"
}

# ---- test data -------------------------------------------------------------------------
# bench_gen_files DIR N: N small files (0-2 KiB) in directories of 100.
# bench_gen_flat DIR N: N small files (0-2 KiB) in DIR itself.
# bench_gen_closure DIR N MIB...: N files of 1-64 KiB under pkgNN/lib/subNN,
#   plus one file of each size MIB (random data) in DIR/pkg00.
# Contents are unique per file (the path leads) and reproducible.
bench_gen_files() { perl -e "$BENCH_GEN_PL" "$1" "$2" files 1; }
bench_gen_flat() { perl -e "$BENCH_GEN_PL" "$1" "$2" flat 3; }
bench_gen_closure() {
  local dir=$1 n=$2 m
  shift 2
  perl -e "$BENCH_GEN_PL" "$dir" "$n" closure 2
  mkdir -p "$dir/pkg00"
  for m in "$@"; do head -c "$((m * 1048576))" /dev/urandom >"$dir/pkg00/big$m.bin"; done
}
# shellcheck disable=SC2016  # perl
BENCH_GEN_PL='use strict; use warnings;
my ($dir, $n, $kind, $seed) = @ARGV;
srand($seed);
my $blk = join "", map { chr(int(rand(256))) } 1 .. 65536;
for (my $i = 0; $i < $n; $i++) {
  my $sub = $kind eq "flat" ? $dir : $kind eq "files" ? sprintf("%s/d%03d", $dir, int($i / 100))
    : sprintf("%s/pkg%02d/lib/sub%02d", $dir, int($i / 300), int(($i % 300) / 30));
  if (!-d $sub) { system("mkdir", "-p", $sub) == 0 or die "mkdir $sub"; }
  my $len = $kind ne "closure" ? int(rand(2048)) : 1024 + int(rand(63 * 1024));
  my $p = sprintf("%s/f%05d", $sub, $i);
  my $d = "$p\n";
  $d .= substr($blk, int(rand(60000)), 4096) while length($d) < $len;
  open(my $fh, ">", $p) or die "$p: $!";
  print $fh substr($d, 0, $len);
  close $fh or die "$p: $!";
}'

# bench_tool OUT: compiles the static helper (timed first read, random
# reads) to OUT; installs gcc/libc6-dev when missing. Usage of the helper:
#   benchtool first FILE            "FIRST <bytes> <seconds> <hex of first 8 bytes>"
#                                   (open + one 4 KiB read, CLOCK_MONOTONIC)
#   benchtool rand FILE COUNT SEED  "RAND <count> <checksum> <seconds>": COUNT
#                                   preads of 4 KiB at pseudo-random aligned
#                                   offsets (xorshift64 from SEED)
bench_tool() {
  local out=$1 missing=() p
  for p in gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]} (static benchmark helper)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  printf '%s\n' "$BENCH_TOOL_C" >"$out.c"
  gcc -O2 -static -o "$out" "$out.c" || die "compiling $out.c failed"
}
BENCH_TOOL_C='#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int fail(const char *what, const char *file) {
  fprintf(stderr, "benchtool: %s %s: ", what, file);
  perror(NULL);
  return 1;
}

int main(int argc, char **argv) {
  static uint64_t buf[512];
  if (argc == 3 && !strcmp(argv[1], "first")) {
    double t0 = now();
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) return fail("open", argv[2]);
    ssize_t n = read(fd, buf, sizeof buf);
    double t1 = now();
    if (n < 8) return fail("read", argv[2]);
    printf("FIRST %zd %.6f %016" PRIx64 "\n", n, t1 - t0, buf[0]);
    return 0;
  }
  if (argc == 5 && !strcmp(argv[1], "rand")) {
    long count = atol(argv[3]);
    uint64_t x = strtoull(argv[4], NULL, 10) * 0x9E3779B97F4A7C15ull + 1, h = 0;
    double t0 = now();
    int fd = open(argv[2], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) return fail("open", argv[2]);
    uint64_t blocks = st.st_size / 4096;
    if (blocks == 0) return fail("smaller than 4 KiB:", argv[2]);
    for (long i = 0; i < count; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      if (pread(fd, buf, 4096, (off_t)(x % blocks) * 4096) != 4096) return fail("pread", argv[2]);
      for (int j = 0; j < 512; j++) h = h * 31 + buf[j];
    }
    double t1 = now();
    printf("RAND %ld %016" PRIx64 " %.6f\n", count, h, t1 - t0);
    return 0;
  }
  fprintf(stderr, "usage: benchtool first FILE | benchtool rand FILE COUNT SEED\n");
  return 2;
}'

# ---- reporting ----------------------------------------------------------------------------
# median / median2 / median0 N...: median with 1 / 2 / 0 decimals.
median_fmt() {
  local fmt=$1
  shift
  printf '%s\n' "$@" | sort -g | awk -v f="$fmt" 'NF { v[++n] = $1 } END { if (n == 0) { print "-"; exit } if (n % 2) printf f, v[(n + 1) / 2]; else printf f, (v[n / 2] + v[n / 2 + 1]) / 2 }'
}
median() { median_fmt %.1f "$@"; }
median2() { median_fmt %.2f "$@"; }
median0() { median_fmt %.0f "$@"; }
join_list() { local out="" x; for x in "$@"; do out+="${out:+, }$x"; done; echo "$out"; }

# bench_report_head SMOKE_TITLE REPRO: the first lines of a report: $SECTION
# (with --smoke: SMOKE_TITLE, marked as no measurement), how to reproduce it
# (the command REPRO) and when, at which $commit.
bench_report_head() {
  local heading=$SECTION repro=$2
  [ "$smoke" = 0 ] || heading="$1 (smoke run, not a measurement)"
  echo "$heading"
  echo
  if [ "$smoke" = 1 ]; then
    echo "Reproduce: \`$repro\`"
  else
    echo "Reproduce (from the repository root, as root): \`$repro\` (\`--write-docs\` also updates this section of $DOC)."
  fi
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $commit"
}

# bench_host_info: sets cpu, commit, qemu_v, kver for report headers.
# shellcheck disable=SC2034  # used by the callers
bench_host_info() {
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  [ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit+=" (with uncommitted changes in the work tree)"
  qemu_v=$(qemu-system-x86_64 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p')
  kver=$(cat "$REPO/target/vm/kernel.release" 2>/dev/null || echo unknown)
}

# bench_write_docs DOC SECTION REPORT: replaces the section SECTION (from its
# heading to the next "## " heading) of DOC with the file REPORT, or appends it.
bench_write_docs() {
  local doc=$1 section=$2 report=$3
  mkdir -p "$(dirname "$doc")"
  if [ ! -e "$doc" ]; then
    { echo "# Benchmarks"; echo; cat "$report"; } >"$doc"
  elif grep -qxF "$section" "$doc"; then
    awk -v head="$section" -v new="$report" '
      $0 == head { while ((getline l < new) > 0) print l; skip = 1; next }
      skip && /^## / { skip = 0; print "" }
      !skip { print }' "$doc" >"$report.doc"
    cat "$report.doc" >"$doc"
  else
    { cat "$doc"; echo; cat "$report"; } >"$report.doc"
    cat "$report.doc" >"$doc"
  fi
  log "wrote $doc"
}

# bench_args ARGS...: the options every benchmark takes; sets write_docs and
# smoke (--write-docs, --smoke; -h prints the script's usage) and STORE
# (--store KIND or --store=KIND, for bench_store_choice).
bench_args() {
  write_docs=0 smoke=0
  while [ $# -gt 0 ]; do
    case $1 in
      --write-docs) write_docs=1 ;;
      --smoke) smoke=1 ;;
      --store) [ $# -ge 2 ] || usage; STORE=$2; shift ;;
      --store=*) STORE=${1#--store=} ;;
      -h | --help) usage ;;
      *) log "unknown argument: $1"; usage ;;
    esac
    shift
  done
  [ "$smoke" = 0 ] || [ "$write_docs" = 0 ] || die "--smoke results do not go into $DOC"
}
