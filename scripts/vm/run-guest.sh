#!/usr/bin/env bash
# run-guest.sh — boot the test guest (build-guest.sh) against a vhost-user-fs
# daemon that is already listening on SOCK, mount the share, run one command
# in it, power off.
#
# Usage: scripts/vm/run-guest.sh SOCK TAG 'command' [TIMEOUT]
#   SOCK     the daemon's vhost-user socket
#   TAG      virtio-fs tag (given to QEMU's vhost-user-fs-pci and mounted)
#   command  shell text run by busybox sh in the guest, cwd = mount point;
#            /bin/tree-manifest is available there (tree-manifest.sh)
#   TIMEOUT  seconds for the whole QEMU run (default 120)
#
# Output contract:
#   stdout  exactly the guest command's stdout (it travels over a second
#           serial port, separate from the console), with every CR removed.
#           Nothing else is written to stdout.
#   stderr  with CONSOLE=1 the whole guest console, live; otherwise, after the
#           run, the console lines between the BEGIN and END markers (the
#           command's stderr, plus any kernel messages). Then one summary
#           line "run-guest: <what>: rc=N boot=S cmd=S wall=S accel=A"
#           (boot = guest uptime when the share was mounted, cmd = the
#           command's run time in the guest, wall = whole QEMU run).
#   LOG=F   the whole console (CR removed) is also written to F.
#
# Exit status:
#   0-255  the guest command's exit status (from the END marker)
#   124    timeout: QEMU was killed after TIMEOUT seconds
#   125    the guest failed outside the command: no END marker (boot, module
#          load or mount failed, kernel panic, QEMU error, daemon gone)
#   2      usage or setup error on the host (nothing was booted)
#
# Env knobs:
#   VM_DIR=<repo>/target/vm  where build-guest.sh put vmlinuz + initramfs
#   KERNEL=, INITRD=         override those two files
#   ACCEL=tcg|kvm            default tcg (KVM: -cpu host, for a normal host)
#   MEM=1G  SMP=2            guest memory (shared memfd backend) and vCPUs
#   QUEUE_SIZE=1024          vhost-user-fs-pci queue-size
#   NUM_QUEUES=              vhost-user-fs-pci num-request-queues (QEMU default 1)
#   MOUNT_OPTS=              options for the guest's mount -o
#   MNT=/mnt                 guest mount point
#   CONSOLE=0|1              stream the console to stderr while running
#   APPEND_EXTRA=            extra kernel command line
#   QEMU_EXTRA=              extra QEMU arguments (split on spaces)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
setup_error() { echo "run-guest: $*" >&2; exit 2; }

if [ $# -lt 3 ] || [ $# -gt 4 ]; then usage; fi
SOCK=$1 TAG=$2 CMD=$3 TIMEOUT=${4:-120}
[[ $TIMEOUT =~ ^[0-9]+$ ]] || setup_error "TIMEOUT must be whole seconds: $TIMEOUT"

VM_DIR=${VM_DIR:-$REPO/target/vm}
KERNEL=${KERNEL:-$VM_DIR/vmlinuz}
INITRD=${INITRD:-$VM_DIR/initramfs.cpio.gz}
ACCEL=${ACCEL:-tcg}
MEM=${MEM:-1G}
SMP=${SMP:-2}
QUEUE_SIZE=${QUEUE_SIZE:-1024}
NUM_QUEUES=${NUM_QUEUES:-}
MNT=${MNT:-/mnt}

for f in "$KERNEL" "$INITRD"; do
  [ -r "$f" ] || setup_error "missing $f (run scripts/vm/build-guest.sh)"
done
[ -S "$SOCK" ] || setup_error "$SOCK is not a socket (start the daemon first)"
QEMU=$(command -v qemu-system-x86_64) ||
  setup_error "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
case $ACCEL in
  tcg) ACCEL_ARGS=(-accel "tcg,thread=multi" -cpu max) ;;
  kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
  *) setup_error "ACCEL must be tcg or kvm, not $ACCEL" ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/run-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- per-run job: an uncompressed cpio segment appended to the initramfs --
mkdir "$WORK/seg" "$WORK/seg/job"
printf '%s\n' "$TAG" >"$WORK/seg/job/tag"
printf '%s\n' "$MNT" >"$WORK/seg/job/mnt"
printf '%s\n' "${MOUNT_OPTS:-}" >"$WORK/seg/job/mount_opts"
printf '%s\n' "$CMD" >"$WORK/seg/job/cmd"
( cd "$WORK/seg" && find job -print0 | cpio --null -o -H newc -R 0:0 --quiet ) >"$WORK/job.cpio"
# The kernel unpacks concatenated archives, but each one must start at a
# 4-byte aligned offset; the zero padding in between is skipped.
size=$(stat -c %s "$INITRD")
{
  cat "$INITRD"
  head -c $(( (4 - size % 4) % 4 )) /dev/zero
  cat "$WORK/job.cpio"
} >"$WORK/initrd"

FS_DEV="vhost-user-fs-pci,chardev=vfs,tag=$TAG,queue-size=$QUEUE_SIZE"
[ -z "$NUM_QUEUES" ] || FS_DEV+=",num-request-queues=$NUM_QUEUES"
# shellcheck disable=SC2206  # QEMU_EXTRA is split on purpose
EXTRA=(${QEMU_EXTRA:-})
ARGS=(
  -nodefaults -no-user-config -machine q35 "${ACCEL_ARGS[@]}"
  -smp "$SMP" -m "$MEM"
  -object "memory-backend-memfd,id=mem,size=$MEM,share=on" -numa "node,memdev=mem"
  -chardev "socket,id=vfs,path=$SOCK"
  -device "$FS_DEV"
  -kernel "$KERNEL" -initrd "$WORK/initrd"
  -append "console=ttyS0 quiet loglevel=4 panic=-1 ${APPEND_EXTRA:-}"
  -display none -monitor none -no-reboot
  -serial stdio                       # ttyS0: console
  -serial "file:$WORK/stdout.raw"     # ttyS1: the command's stdout
  "${EXTRA[@]}"
)

# ---- run -----------------------------------------------------------------
start=$(date +%s.%N)
set +e
if [ "${CONSOLE:-0}" = 1 ]; then
  timeout -k 5 "$TIMEOUT" "$QEMU" "${ARGS[@]}" </dev/null 2>&1 | tee "$WORK/console.raw" >&2
  qrc=${PIPESTATUS[0]}
else
  timeout -k 5 "$TIMEOUT" "$QEMU" "${ARGS[@]}" </dev/null >"$WORK/console.raw" 2>&1
  qrc=$?
fi
set -e
end=$(date +%s.%N)

tr -d '\r' <"$WORK/console.raw" >"$WORK/console.log"
[ -z "${LOG:-}" ] || cp "$WORK/console.log" "$LOG"
[ ! -e "$WORK/stdout.raw" ] || tr -d '\r' <"$WORK/stdout.raw"

# ---- result ----------------------------------------------------------------
# marker_field WORD FIELD: FIELD=value on the last "=== VMTEST: WORD ..." line
marker_field() {
  sed -n "/^=== VMTEST: $1 /s/.* $2=\([^ ]*\).*/\1/p" "$WORK/console.log" | tail -n 1
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
boot=$(marker_field MOUNTED uptime)
begin=$(marker_field BEGIN uptime)
endt=$(marker_field END uptime)
rc=$(marker_field END rc)
cmdt=-
[ -z "$begin" ] || [ -z "$endt" ] || cmdt=$(elapsed "$begin" "$endt")
summary="boot=${boot:--}s cmd=${cmdt}s wall=$(elapsed "$start" "$end")s accel=$ACCEL"

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  status=124 what="TIMEOUT after ${TIMEOUT}s"
elif [ -z "$rc" ]; then
  status=125 what="guest failed (no END marker, qemu rc=$qrc)"
else
  status=$rc what="guest command finished"
fi
if [ "${CONSOLE:-0}" != 1 ]; then
  if [ -n "$rc" ]; then
    # the command's stderr: console lines between the BEGIN and END markers
    sed -n '/^=== VMTEST: BEGIN /,/^=== VMTEST: END /{/^=== VMTEST: /!p}' "$WORK/console.log" >&2
  else
    tail -n 20 "$WORK/console.log" | sed 's/^/run-guest: console| /' >&2
  fi
fi
echo "run-guest: $what: rc=$status $summary" >&2
exit "$status"
