//! `--metrics-listen`: GET /metrics over HTTP/1, on a TCP address or a
//! unix socket. The socket is bound during start-up, before the sandbox,
//! so the sandboxed daemon only accepts on it: it needs no right to bind
//! anything. Whoever connects is not trusted: a connection gets 5 s to
//! send its request and 10 s in all, and at most 8 are served at once.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay open in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where to serve the metrics: a unix socket path (anything with a `/`)
/// or a TCP `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddress {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for MetricsAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        let resolved = s
            .to_socket_addrs()
            .map_err(|e| format!("{s:?} is neither a socket path nor a host:port ({e})"))?
            .next();
        resolved
            .map(Self::Tcp)
            .ok_or_else(|| format!("{s:?} resolves to no address"))
    }
}

impl std::fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "http://{addr}/metrics"),
        }
    }
}

/// A listening metrics socket, bound before the sandbox.
pub enum MetricsListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl MetricsListener {
    /// Binds `address` (replacing a stale unix socket file).
    pub fn bind(address: &MetricsAddress) -> std::io::Result<Self> {
        let listener = match address {
            MetricsAddress::Tcp(addr) => Self::Tcp(std::net::TcpListener::bind(addr)?),
            MetricsAddress::Unix(path) => Self::Unix(bind_unix(path)?),
        };
        // Here, not later: the sandbox does not allow the ioctl it takes.
        match &listener {
            Self::Tcp(l) => l.set_nonblocking(true)?,
            Self::Unix(l) => l.set_nonblocking(true)?,
        }
        Ok(listener)
    }

    /// Serves GET /metrics on the runtime `runtime` until the process exits.
    pub fn serve(self, runtime: &tokio::runtime::Handle) -> std::io::Result<()> {
        let _entered = runtime.enter();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        match self {
            Self::Tcp(listener) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                runtime.spawn(async move {
                    loop {
                        let accepted = listener.accept().await.map(|(stream, _)| stream);
                        accept(accepted, &slots).await;
                    }
                });
            }
            Self::Unix(listener) => {
                let listener = tokio::net::UnixListener::from_std(listener)?;
                runtime.spawn(async move {
                    loop {
                        let accepted = listener.accept().await.map(|(stream, _)| stream);
                        accept(accepted, &slots).await;
                    }
                });
            }
        }
        Ok(())
    }
}

fn bind_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    std::os::unix::net::UnixListener::bind(path)
}

/// Serves one accepted connection in a task of its own, once a slot is free.
async fn accept<S>(accepted: std::io::Result<S>, slots: &Arc<Semaphore>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = match accepted {
        Ok(stream) => stream,
        Err(e) => {
            // EMFILE and the like: wait instead of spinning.
            tracing::warn!(error = %e, "accepting a metrics connection failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
    };
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), hyper::service::service_fn(respond));
        match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
            Err(_) => tracing::debug!("metrics connection timed out"),
        }
    });
}

/// GET /metrics: the metrics; anything else: 404 or 405.
async fn respond(
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (200, CONTENT_TYPE, super::global().render()),
        (_, "/metrics") => (405, "text/plain", "only GET\n".to_string()),
        _ => (404, "text/plain", "metrics are at /metrics\n".to_string()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_paths_and_tcp_addresses() {
        assert_eq!(
            "/run/m.sock".parse(),
            Ok(MetricsAddress::Unix("/run/m.sock".into()))
        );
        assert_eq!(
            "./m.sock".parse(),
            Ok(MetricsAddress::Unix("./m.sock".into()))
        );
        assert_eq!(
            "127.0.0.1:9100".parse(),
            Ok(MetricsAddress::Tcp("127.0.0.1:9100".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:9100".parse(),
            Ok(MetricsAddress::Tcp("[::1]:9100".parse().unwrap()))
        );
        assert!("nonsense".parse::<MetricsAddress>().is_err());
    }
}
