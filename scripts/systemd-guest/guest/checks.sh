#!/bin/bash
# checks.sh — runs inside the systemd test guest (PID 1 is systemd), from
# systemd-guest-checks.service. Installs the package the way
# docs/deploying.md says, checks the units against a real tvix-store, purges
# the package, then runs the manual install steps of docs/deploying.md.
#
# One line per check on /dev/ttyS1 (the host's results file):
#   CHECK <name> ok|FAIL <detail>
# and "DONE" at the end. Every wait is bounded.
set -u
exec 3>/dev/ttyS1
SRC=/root/src
INSTANCE=vm1
SERVICE=tvix-virtiofsd@$INSTANCE.service
SOCKET_UNIT=tvix-virtiofsd@$INSTANCE.socket
ACTIVATED=tvix-virtiofsd-activated@$INSTANCE.service
USER_NAME=tvix-virtiofsd
MAX_EXPOSURE=1.5
STORE=grpc+unix:///run/tvix-store.sock

report() { # name ok|FAIL detail...
  local name=$1 verdict=$2
  shift 2
  echo "CHECK $name $verdict $*" | tr '\n' ' ' | sed 's/ *$//' >&3
  echo >&3
  echo "systemd-guest: CHECK $name $verdict $*"
}
# check NAME COMMAND...: ok when the command (run in this shell, so a check
# may leave state for the next) succeeds; its output is the detail.
check() {
  local name=$1 out=/run/check.out
  shift
  if "$@" >"$out" 2>&1; then report "$name" ok "$(tail -n 3 "$out")"; else report "$name" FAIL "$(tail -n 20 "$out")"; fi
}
# wait_until SECS command...: poll every 0.2 s.
wait_until() {
  local until=$((SECONDS + $1))
  shift
  while ! "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || return 1
    sleep 0.2
  done
}
prop() { systemctl show -p "$2" --value "$1"; }
is_state() { [ "$(prop "$1" ActiveState)" = "$2" ]; }
fail_with() { echo "$*"; return 1; }

# The socket path as the units have it (so the checks follow the units).
service_socket() {
  prop "$SERVICE" ExecStart | grep -o -- '--socket-path [^ ;]*' | head -n 1 | cut -d' ' -f2
}
socket_unit_path() { prop "$SOCKET_UNIT" Listen | sed 's/ (Stream)$//'; }

store_import() {
  systemctl start tvix-store.service || return 1
  mkdir -p /root/sample/hello-1.0/bin
  echo 'hello from the store' >/root/sample/hello-1.0/README
  printf '#!/bin/sh\necho hello\n' >/root/sample/hello-1.0/bin/hello
  chmod 755 /root/sample/hello-1.0/bin/hello
  timeout 60 tvix-store --otlp=false import --blob-service-addr "$STORE" \
    --directory-service-addr "$STORE" --path-info-service-addr "$STORE" /root/sample/hello-1.0
}

readme_install() { # package|manual
  (cd "$SRC" && timeout 180 bash -euxo pipefail "$SRC/install-$1.sh")
}

static_user() {
  local entry uid shell
  entry=$(getent passwd "$USER_NAME") || fail_with "no user $USER_NAME"
  uid=$(cut -d: -f3 <<<"$entry")
  shell=$(cut -d: -f7 <<<"$entry")
  [ "$uid" -lt 1000 ] || fail_with "uid $uid is not a system uid: $entry"
  [ "$shell" = /usr/sbin/nologin ] || fail_with "login shell $shell"
  getent group "$USER_NAME" >/dev/null || fail_with "no group $USER_NAME"
  echo "$entry"
}

# While the store does not answer (stopped with SIGSTOP) the daemon listens
# but has not sent READY=1: the unit must stay "activating". Once the store
# answers, it becomes active.
active_only_after_ready() {
  local sock state
  systemctl stop "$SERVICE"
  sock=$(service_socket)
  [ -n "$sock" ] || fail_with "no --socket-path in $SERVICE's ExecStart"
  rm -f "$sock"
  systemctl kill -s SIGSTOP tvix-store.service
  systemctl start --no-block "$SERVICE"
  wait_until 30 test -S "$sock" || { systemctl kill -s SIGCONT tvix-store.service; fail_with "no socket $sock"; }
  state=$(prop "$SERVICE" ActiveState)
  systemctl kill -s SIGCONT tvix-store.service
  [ "$state" = activating ] || fail_with "listening on $sock, READY not sent yet, but the unit was $state"
  [ "$(prop "$SERVICE" Type)" = notify ] || fail_with "Type=$(prop "$SERVICE" Type)"
  wait_until 30 is_state "$SERVICE" active || fail_with "not active: $(systemctl status --no-pager "$SERVICE")"
  echo "activating while listening before READY, then active"
}

# A fresh start with the store answering: the daemon's protocol check got
# an answer (no warning in this invocation's journal).
store_answered() {
  local id log
  systemctl restart "$SERVICE" || return 1
  id=$(prop "$SERVICE" InvocationID)
  log=$(journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID="$id")
  grep -q 'waiting for the VMM' <<<"$log" || fail_with "no 'waiting for the VMM' in: $log"
  ! grep -Eq 'store not usable|did not answer' <<<"$log" || fail_with "store unreachable: $log"
  grep 'store' <<<"$log" | head -n 1
}

status_text() {
  local text want
  want="waiting for the VMM on $(service_socket)"
  text=$(prop "$SERVICE" StatusText)
  [ "$text" = "$want" ] || fail_with "StatusText '$text', want '$want'"
  echo "$text"
}

socket_mode_group() { # socket path
  local got
  got=$(stat -c '%a %G' "$1") || return 1
  [ "$got" = "660 $USER_NAME" ] || fail_with "$1: mode and group $got, want 660 $USER_NAME"
  echo "$1 $got"
}

# proc_status_field FIELD WANT: every thread of the service's main process.
proc_status_all() {
  local pid field=$1 want=$2 f value n=0
  pid=$(prop "$SERVICE" MainPID)
  [ "$pid" -gt 0 ] || fail_with "no main PID"
  for f in /proc/"$pid"/task/*/status; do
    value=$(awk -v k="$field:" '$1 == k { print $2 }' "$f")
    [ "$value" = "$want" ] || fail_with "$f: $field $value, want $want"
    n=$((n + 1))
  done
  echo "$field $want in $n threads of $pid"
}
no_capabilities() {
  local c
  for c in CapInh CapPrm CapEff CapBnd CapAmb; do
    proc_status_all "$c" 0000000000000000 >/dev/null || { proc_status_all "$c" 0000000000000000; return 1; }
  done
  echo "CapInh CapPrm CapEff CapBnd CapAmb all 0"
}

security_score() {
  local report score
  report=$(systemd-analyze security --no-pager "$SERVICE" 2>&1) || fail_with "$report"
  score=$(sed -n 's/.*Overall exposure level for .*: \([0-9][0-9.]*\) .*/\1/p' <<<"$report")
  [ -n "$score" ] || fail_with "no score in: $report"
  awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
    fail_with "exposure $score > $MAX_EXPOSURE: $(grep '✗' <<<"$report")"
  echo "exposure=$score"
}

journal_lines() {
  local log
  log=$(journalctl --no-pager -o cat -u "$SERVICE")
  grep -q 'sandboxed' <<<"$log" && grep -q 'waiting for the VMM' <<<"$log" ||
    fail_with "journal of $SERVICE lacks the start-up lines: $log"
  echo "$(wc -l <<<"$log") lines"
}

# Installing the package again (as an upgrade does) keeps the user and
# does not restart a running instance (that would cut its VM off).
package_reinstall_keeps_instance() {
  local pid uid
  pid=$(prop "$SERVICE" MainPID)
  uid=$(id -u "$USER_NAME")
  (cd "$SRC" && timeout 180 apt-get install -y --reinstall ./target/debian/tvix-virtiofsd_*_amd64.deb) || return 1
  [ "$(prop "$SERVICE" MainPID)" = "$pid" ] || fail_with "main PID $pid -> $(prop "$SERVICE" MainPID)"
  is_state "$SERVICE" active || fail_with "$SERVICE $(prop "$SERVICE" ActiveState)"
  [ "$(id -u "$USER_NAME")" = "$uid" ] || fail_with "uid $uid -> $(id -u "$USER_NAME")"
  echo "pid $pid and uid $uid kept"
}

kill9_restarted() {
  local old restarts
  old=$(prop "$SERVICE" MainPID)
  restarts=$(prop "$SERVICE" NRestarts)
  kill -9 "$old"
  restarted() { local p; p=$(prop "$SERVICE" MainPID); [ "$p" -gt 0 ] && [ "$p" != "$old" ] && is_state "$SERVICE" active; }
  wait_until 30 restarted || fail_with "not restarted: $(systemctl status --no-pager "$SERVICE")"
  [ "$(prop "$SERVICE" NRestarts)" -gt "$restarts" ] || fail_with "NRestarts did not grow"
  echo "pid $old -> $(prop "$SERVICE" MainPID), NRestarts $(prop "$SERVICE" NRestarts)"
}

# A second instance's mount view holds neither the first's socket nor its
# private mappings (TemporaryFileSystem= + BindPaths=), only its own and the
# shared objects.
second_instance_isolated() {
  local other=tvix-virtiofsd@vm2.service pid root
  systemctl start "$other" || return 1
  wait_until 60 is_state "$other" active || fail_with "$other $(prop "$other" ActiveState)"
  pid=$(prop "$other" MainPID)
  root=/proc/$pid/root
  [ -S "$root/run/tvix-virtiofsd/vm2/vhost-user.sock" ] || fail_with "vm2 does not see its own socket"
  [ -d "$root/var/cache/tvix-virtiofsd/v2/objects" ] || fail_with "vm2 does not see the shared objects"
  [ -S "/run/tvix-virtiofsd/$INSTANCE/vhost-user.sock" ] || fail_with "the host view lacks $INSTANCE's socket"
  [ -d "/var/cache/tvix-virtiofsd/v2/instances/$INSTANCE" ] || fail_with "the host view lacks $INSTANCE's mappings"
  [ ! -e "$root/run/tvix-virtiofsd/$INSTANCE" ] || fail_with "vm2 sees $INSTANCE's socket directory"
  [ ! -e "$root/var/cache/tvix-virtiofsd/v2/instances/$INSTANCE" ] || fail_with "vm2 sees $INSTANCE's mappings"
  timeout 60 systemctl stop "$other" || return 1
  echo "vm2 (pid $pid) sees its socket and the objects, not $INSTANCE's socket or mappings"
}

stop_clean() {
  timeout 60 systemctl stop "$SERVICE" || return 1
  is_state "$SERVICE" inactive || fail_with "state $(prop "$SERVICE" ActiveState)"
  [ "$(prop "$SERVICE" Result)" = success ] || fail_with "Result=$(prop "$SERVICE" Result)"
  echo "inactive, Result=success"
}

socket_activation_starts() {
  local sock
  systemctl start "$SOCKET_UNIT" || return 1
  sock=$(socket_unit_path)
  [ -S "$sock" ] || fail_with "no socket '$sock' for $SOCKET_UNIT"
  socket_mode_group "$sock" >/dev/null || { socket_mode_group "$sock"; return 1; }
  is_state "$ACTIVATED" inactive || fail_with "$ACTIVATED already $(prop "$ACTIVATED" ActiveState)"
  rm -f /run/client-release /run/client.out
  /usr/local/lib/systemd-guest/vhost-user-client.py "$sock" /run/client-release 60 >/run/client.out 2>&1 &
  CLIENT=$!
  wait_until 60 grep -q features= /run/client.out || fail_with "client: $(cat /run/client.out)"
  wait_until 30 is_state "$ACTIVATED" active || fail_with "$ACTIVATED $(prop "$ACTIVATED" ActiveState)"
  echo "$sock $(stat -c '%a %G' "$sock"), $(cat /run/client.out), $ACTIVATED active"
}

socket_activation_exit0() {
  [ -n "$CLIENT" ] || fail_with "no client running"
  touch /run/client-release
  wait_until 30 sh -c "! kill -0 $CLIENT" || fail_with "client did not leave"
  wait "$CLIENT" || fail_with "client failed: $(cat /run/client.out)"
  wait_until 30 is_state "$ACTIVATED" inactive || fail_with "$ACTIVATED still $(prop "$ACTIVATED" ActiveState)"
  local code status result
  code=$(prop "$ACTIVATED" ExecMainCode)
  status=$(prop "$ACTIVATED" ExecMainStatus)
  result=$(prop "$ACTIVATED" Result)
  [ "$code" = 1 ] && [ "$status" = 0 ] && [ "$result" = success ] ||
    fail_with "ExecMainCode=$code ExecMainStatus=$status Result=$result"
  is_state "$SOCKET_UNIT" active || fail_with "$SOCKET_UNIT $(prop "$SOCKET_UNIT" ActiveState)"
  systemctl stop "$SOCKET_UNIT"
  echo "exited 0, socket still listening"
}

package_purge() {
  timeout 120 apt-get purge -y tvix-virtiofsd || return 1
  local p
  for p in /usr/bin/tvix-virtiofsd /usr/lib/systemd/system/tvix-virtiofsd@.service \
    /var/cache/tvix-virtiofsd /etc/tvix-virtiofsd \
    /etc/systemd/system/multi-user.target.wants/$SERVICE; do
    [ ! -e "$p" ] && [ ! -L "$p" ] || fail_with "$p left after purge"
  done
  getent passwd "$USER_NAME" >/dev/null || fail_with "purge removed the user"
  systemctl list-units --all --no-legend 'tvix-virtiofsd*' | grep -q running && fail_with "an instance still runs"
  echo "files gone, user kept"
}

manual_install_serves() {
  wait_until 30 is_state "$SERVICE" active || fail_with "$(systemctl status --no-pager "$SERVICE")"
  [ "$(prop "$SERVICE" ExecStart | grep -o '/usr/local/bin/tvix-virtiofsd' | head -n 1)" ] ||
    fail_with "ExecStart $(prop "$SERVICE" ExecStart)"
  static_user >/dev/null || { static_user; return 1; }
  status_text
}

service_socket_mode() { socket_mode_group "$(service_socket)"; }

echo "systemd-guest: checks start, systemd $(systemctl --version | head -n 1)"
check store_import store_import
check readme_package_install readme_install package
check static_user static_user
check active_only_after_ready active_only_after_ready
check store_answered store_answered
check status_text status_text
check service_socket_mode service_socket_mode
check no_capabilities no_capabilities
check no_new_privs proc_status_all NoNewPrivs 1
check seccomp_filter proc_status_all Seccomp 2
check security_score security_score
check journal_lines journal_lines
check package_reinstall_keeps_instance package_reinstall_keeps_instance
check kill9_restarted kill9_restarted
check second_instance_isolated second_instance_isolated
check stop_clean stop_clean
CLIENT=
check socket_activation_starts socket_activation_starts
check socket_activation_exit0 socket_activation_exit0
check package_purge package_purge
userdel "$USER_NAME" 2>/dev/null
groupdel "$USER_NAME" 2>/dev/null
check readme_manual_install readme_install manual
check manual_install_serves manual_install_serves
echo DONE >&3
