//! systemd readiness (`Type=notify`): the daemon sends `READY=1` to
//! `$NOTIFY_SOCKET` only once its vhost-user socket accepts connections, with
//! `STATUS=` lines along the way, both with a socket of its own
//! (`--socket-path`) and with one inherited from a socket unit (`--fd`).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{sample_tree, scratch, Fixture, DAEMON_BIN};

/// Kills the daemon if a test fails half-way.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The next notification datagram; panics with the daemon's log on timeout.
fn recv(socket: &UnixDatagram, log: &Path) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => String::from_utf8(buf[..n].to_vec()).unwrap(),
        Err(e) => panic!(
            "no notification ({e}); daemon log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

fn assignments(message: &str) -> Vec<(&str, &str)> {
    message
        .lines()
        .map(|l| l.split_once('=').expect("KEY=VALUE"))
        .collect()
}

fn value<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    assignments(message)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[test]
fn ready_only_once_the_socket_accepts_connections() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    let dir = scratch("notify");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let socket = dir.join("fs.sock");
    let log = dir.join("daemon.log");
    let mut daemon = Guard(
        Command::new(DAEMON_BIN)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--store")
            .arg(fixture.address())
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    // Every message up to READY=1 must come while the socket may still be
    // missing; READY=1 itself only once a VMM can connect.
    let ready = loop {
        let message = recv(&notify, &log);
        if value(&message, "READY") == Some("1") {
            break message;
        }
    };
    // Right away, before anything else: the socket must exist and accept.
    assert!(socket.exists(), "READY=1 before the socket file existed");
    let vmm = UnixStream::connect(&socket).expect("READY=1 but the socket refuses connections");
    let status = value(&ready, "STATUS").expect("READY=1 comes with a STATUS= line");
    assert!(
        status.contains("waiting for the VMM") && status.contains(&socket.display().to_string()),
        "unexpected status {status:?}"
    );

    // The "VMM" leaves: without --persistent the daemon says it is stopping
    // and exits 0.
    drop(vmm);
    let stopping = recv(&notify, &log);
    assert_eq!(value(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    assert!(value(&stopping, "STATUS").is_some_and(|s| s.contains("disconnected")));
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn socket_activation_with_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    let fixture = Fixture::start(&sample_tree(), &[]);
    let dir = scratch("notify-fd");
    let name = format!("tvix-virtiofsd-test-notify-{}", std::process::id());
    let notify =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    // The listening socket a socket unit would pass: already bound, so it
    // accepts connections before the daemon is even started; READY=1 still
    // waits for the daemon to take it over.
    let socket = dir.join("fs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let listener_fd = listener.as_raw_fd();
    let log = dir.join("daemon.log");
    let mut command = Command::new(DAEMON_BIN);
    command
        .args(["--fd", "3", "--persistent", "--store"])
        .arg(fixture.address())
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: only async-signal-safe dup2 between fork and exec; dup2 clears
    // close-on-exec on the new descriptor.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(listener_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = Guard(command.spawn().unwrap());
    drop(listener);

    let ready = recv(&notify, &log);
    assert_eq!(value(&ready, "READY"), Some("1"), "{ready:?}");
    assert!(
        value(&ready, "STATUS").is_some_and(|s| s.contains("fd 3")),
        "{ready:?}"
    );

    // Two VMMs one after the other: --persistent keeps serving and says so.
    for _ in 0..2 {
        let vmm = UnixStream::connect(&socket).unwrap();
        drop(vmm);
        let status = recv(&notify, &log);
        assert_eq!(
            value(&status, "STATUS"),
            Some("VMM disconnected; waiting for the next on inherited fd 3"),
            "{status:?}"
        );
        assert_eq!(value(&status, "READY"), None);
    }
    assert!(daemon.0.try_wait().unwrap().is_none(), "daemon exited");
}
