//! The systemd readiness protocol (`sd_notify(3)`), without libsystemd:
//! when the service manager sets `NOTIFY_SOCKET`, newline-separated
//! `KEY=VALUE` assignments go to that unix datagram socket, one datagram per
//! message. A path starting with `@` names a socket in the abstract
//! namespace. Without `NOTIFY_SOCKET` every call does nothing.
//!
//! The daemon sends `READY=1` only once the vhost-user socket is listening
//! (or the FUSE mount is in place), so a `Type=notify` unit, and the VMM
//! ordered after it, never sees a socket that refuses connections. `STATUS=`
//! lines tell `systemctl status` what the daemon is waiting for.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// A connection to the service manager's notification socket, if any.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Uses `$NOTIFY_SOCKET` if it is set. A malformed or unusable value is
    /// logged and ignored: the daemon serves the same without a manager.
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) if !path.is_empty() => match Self::connect(&path) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(socket = ?path, error = %e, "NOTIFY_SOCKET unusable; not notifying");
                    Self::disabled()
                }
            },
            _ => Self::disabled(),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// Sends to the socket at `path` (`@name` for an abstract socket).
    pub fn connect(path: &std::ffi::OsStr) -> io::Result<Self> {
        let addr = socket_addr(path)?;
        let socket = UnixDatagram::unbound()?;
        Ok(Self {
            target: Some((socket, addr)),
        })
    }

    /// Whether a service manager is listening.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message of `KEY=VALUE` lines.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let Some((socket, addr)) = &self.target else {
            return Ok(());
        };
        let sent = socket.send_to_addr(message.as_bytes(), addr)?;
        if sent != message.len() {
            return Err(io::Error::other("short write to NOTIFY_SOCKET"));
        }
        Ok(())
    }

    /// `READY=1` with a status line: the service is up.
    pub fn ready(&self, status: &str) {
        self.log_failure(self.send(&format!("READY=1\nSTATUS={}", one_line(status))));
    }

    /// A new `STATUS=` line.
    pub fn status(&self, status: &str) {
        self.log_failure(self.send(&format!("STATUS={}", one_line(status))));
    }

    /// `STOPPING=1`: the daemon is shutting down by itself.
    pub fn stopping(&self, status: &str) {
        self.log_failure(self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status))));
    }

    fn log_failure(&self, result: io::Result<()>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not notify the service manager");
        }
    }
}

/// A status must stay one assignment: no newlines.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn socket_addr(path: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    let bytes = path.as_bytes();
    match bytes.first() {
        Some(b'@') => abstract_addr(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(path),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET must be an absolute path or @abstract, not {path:?}"),
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets are Linux-only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::time::Duration;

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.as_os_str()).unwrap();
        assert!(n.is_enabled());
        n.ready("waiting\nfor the VMM");
        assert_eq!(recv(&listener), "READY=1\nSTATUS=waiting for the VMM");
        n.status("serving");
        assert_eq!(recv(&listener), "STATUS=serving");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tvix-virtiofsd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
        n.stopping("bye");
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn rejects_relative_paths_and_does_nothing_when_disabled() {
        assert!(Notifier::connect(OsStr::new("relative.sock")).is_err());
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.send("READY=1").unwrap();
    }
}
