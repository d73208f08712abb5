//! Store addresses (`grpc+unix:///abs/path.sock`, `grpc+http://host:port`,
//! `grpc+https://host:port`) and the lazily connecting channels behind them.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// Bytes the store may send on one call before we read them: a stream of
/// a whole blob behind a 10 ms round trip moves at most this per round
/// trip (h2's default, 2 MiB here, held it to about 150 MB/s).
const STREAM_WINDOW: u32 = 8 << 20;
/// The same for all calls on one connection together: the most a store
/// can make us hold unread.
const CONNECTION_WINDOW: u32 = 32 << 20;

/// Where one of the store's services listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAddress {
    Unix(PathBuf),
    /// `http://host:port`
    Http(String),
    /// `https://host:port`
    Https(String),
}

/// How to reach a store over TLS. Files are read when channels are made;
/// their contents are never logged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trust this CA (PEM) instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS, with `cert`.
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(
        "unsupported store address {0:?}: use grpc+unix:///abs/path.sock, grpc+http://host:port or grpc+https://host:port"
    )]
    UnsupportedScheme(String),
    #[error("store address {0:?}: the unix socket path must be absolute")]
    RelativeSocketPath(String),
    #[error("store address {0:?}: {1}")]
    InvalidUri(String, String),
    #[error("reading TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS setup for {address}: {detail}")]
    Tls { address: String, detail: String },
    #[error(
        "a client certificate needs a key and a key a certificate (--store-cert with --store-key)"
    )]
    IncompleteIdentity,
}

fn parse_host_port(s: &str, scheme: &str, rest: &str) -> Result<String, AddressError> {
    let uri = format!("{scheme}://{rest}");
    let parsed: Uri = uri.parse().map_err(|e: http::uri::InvalidUri| {
        AddressError::InvalidUri(s.to_owned(), e.to_string())
    })?;
    if parsed.host().is_none() {
        return Err(AddressError::InvalidUri(s.to_owned(), "no host".into()));
    }
    Ok(uri)
}

impl std::str::FromStr for StoreAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("grpc+unix://") {
            if !path.starts_with('/') {
                return Err(AddressError::RelativeSocketPath(s.to_owned()));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(rest) = s.strip_prefix("grpc+http://") {
            parse_host_port(s, "http", rest).map(Self::Http)
        } else if let Some(rest) = s.strip_prefix("grpc+https://") {
            parse_host_port(s, "https", rest).map(Self::Https)
        } else {
            Err(AddressError::UnsupportedScheme(s.to_owned()))
        }
    }
}

impl std::fmt::Display for StoreAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "grpc+unix://{}", p.display()),
            Self::Http(u) | Self::Https(u) => write!(f, "grpc+{u}"),
        }
    }
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>, AddressError> {
    std::fs::read(path).map_err(|source| AddressError::TlsFile {
        path: path.clone(),
        source,
    })
}

impl TlsSettings {
    fn client_config(&self) -> Result<ClientTlsConfig, AddressError> {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read_pem(ca)?)),
            None => config.with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
            }
            (None, None) => {}
            _ => return Err(AddressError::IncompleteIdentity),
        }
        Ok(config)
    }
}

impl StoreAddress {
    /// A channel that connects on first use and reconnects after the store
    /// went away, so a restarted store needs no daemon restart. Must be
    /// called inside a tokio runtime.
    pub fn channel(
        &self,
        connect_timeout: Duration,
        tls: &TlsSettings,
    ) -> Result<Channel, AddressError> {
        let keepalive = Duration::from_secs(30);
        let endpoint = |uri: &String| {
            Endpoint::from_shared(uri.clone())
                .map_err(|e| AddressError::InvalidUri(uri.clone(), e.to_string()))
                .map(|e| {
                    e.connect_timeout(connect_timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(keepalive)
                        .keep_alive_timeout(connect_timeout)
                        .initial_stream_window_size(STREAM_WINDOW)
                        .initial_connection_window_size(CONNECTION_WINDOW)
                })
        };
        match self {
            Self::Http(uri) => Ok(endpoint(uri)?.connect_lazy()),
            Self::Https(uri) => Ok(endpoint(uri)?
                .tls_config(tls.client_config()?)
                .map_err(|e| AddressError::Tls {
                    address: self.to_string(),
                    detail: e.to_string(),
                })?
                .connect_lazy()),
            Self::Unix(path) => {
                let path = path.clone();
                // The URI is required by the API but unused: the connector
                // below decides where to connect.
                Ok(Endpoint::from_static("http://[::]:50051")
                    .connect_timeout(connect_timeout)
                    .http2_keep_alive_interval(keepalive)
                    .keep_alive_timeout(connect_timeout)
                    .initial_stream_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONNECTION_WINDOW)
                    .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_addresses() {
        assert_eq!(
            "grpc+unix:///run/store.sock"
                .parse::<StoreAddress>()
                .unwrap(),
            StoreAddress::Unix("/run/store.sock".into())
        );
        assert_eq!(
            "grpc+http://127.0.0.1:8000"
                .parse::<StoreAddress>()
                .unwrap(),
            StoreAddress::Http("http://127.0.0.1:8000".into())
        );
        assert_eq!(
            "grpc+https://store.example:443"
                .parse::<StoreAddress>()
                .unwrap(),
            StoreAddress::Https("https://store.example:443".into())
        );
    }

    #[test]
    fn rejects_unsupported_addresses() {
        assert!(matches!(
            "grpc+unix://relative.sock".parse::<StoreAddress>(),
            Err(AddressError::RelativeSocketPath(_))
        ));
        assert!(matches!(
            "http://127.0.0.1:8000".parse::<StoreAddress>(),
            Err(AddressError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            "grpc+http://".parse::<StoreAddress>(),
            Err(AddressError::InvalidUri(..))
        ));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let half = TlsSettings {
            cert: Some("/c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            half.client_config(),
            Err(AddressError::IncompleteIdentity)
        ));
        let missing = TlsSettings {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            missing.client_config(),
            Err(AddressError::TlsFile { .. })
        ));
    }
}
