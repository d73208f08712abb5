//! Store addresses (`grpc+unix:///abs/path.sock`, `grpc+http://host:port`)
//! and the lazily connecting channels behind them.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where one of the store's services listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAddress {
    Unix(PathBuf),
    Http(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(
        "unsupported store address {0:?}: use grpc+unix:///abs/path.sock or grpc+http://host:port"
    )]
    UnsupportedScheme(String),
    #[error("store address {0:?}: the unix socket path must be absolute")]
    RelativeSocketPath(String),
    #[error("store address {0:?}: {1}")]
    InvalidUri(String, String),
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
            let uri = format!("http://{rest}");
            let parsed: Uri = uri.parse().map_err(|e: http::uri::InvalidUri| {
                AddressError::InvalidUri(s.to_owned(), e.to_string())
            })?;
            if parsed.host().is_none() {
                return Err(AddressError::InvalidUri(s.to_owned(), "no host".into()));
            }
            Ok(Self::Http(uri))
        } else {
            Err(AddressError::UnsupportedScheme(s.to_owned()))
        }
    }
}

impl std::fmt::Display for StoreAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "grpc+unix://{}", p.display()),
            Self::Http(u) => write!(f, "grpc+{u}"),
        }
    }
}

impl StoreAddress {
    /// A channel that connects on first use and reconnects after the store
    /// went away, so a restarted store needs no daemon restart. Must be
    /// called inside a tokio runtime.
    pub fn channel(&self, connect_timeout: Duration) -> Result<Channel, AddressError> {
        let keepalive = Duration::from_secs(30);
        match self {
            Self::Http(uri) => Ok(Endpoint::from_shared(uri.clone())
                .map_err(|e| AddressError::InvalidUri(uri.clone(), e.to_string()))?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(keepalive)
                .keep_alive_timeout(connect_timeout)
                .connect_lazy()),
            Self::Unix(path) => {
                let path = path.clone();
                // The URI is required by the API but unused: the connector
                // below decides where to connect.
                Ok(Endpoint::from_static("http://[::]:50051")
                    .connect_timeout(connect_timeout)
                    .http2_keep_alive_interval(keepalive)
                    .keep_alive_timeout(connect_timeout)
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
}
