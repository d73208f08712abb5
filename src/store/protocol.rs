//! tvix and snix speak the same wire format under different protobuf
//! package names. The generated clients use tvix's method paths; for snix,
//! [`PackagePrefix`] rewrites `/tvix.` to `/snix.` on every request.

use std::task::{Context, Poll};

/// Which package names the remote store serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreProtocol {
    /// `tvix.castore.v1` / `tvix.store.v1` (tvix-store).
    #[default]
    Tvix,
    /// `snix.castore.v1` / `snix.store.v1` (snix, tvix's successor).
    Snix,
}

impl StoreProtocol {
    /// The protocol a store that refuses this one probably speaks.
    pub fn other(self) -> Self {
        match self {
            Self::Tvix => Self::Snix,
            Self::Snix => Self::Tvix,
        }
    }
}

impl std::fmt::Display for StoreProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tvix => "tvix",
            Self::Snix => "snix",
        })
    }
}

/// A tower service that sends every gRPC call under the chosen package names.
#[derive(Clone, Debug)]
pub struct PackagePrefix<S> {
    inner: S,
    protocol: StoreProtocol,
}

impl<S> PackagePrefix<S> {
    pub fn new(inner: S, protocol: StoreProtocol) -> Self {
        Self { inner, protocol }
    }
}

/// The path of `uri` with its leading `/tvix.` replaced by `/snix.`, if any.
fn snix_path(path: &str) -> Option<String> {
    path.strip_prefix("/tvix.")
        .map(|rest| format!("/snix.{rest}"))
}

impl<S, B> tower::Service<http::Request<B>> for PackagePrefix<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if self.protocol == StoreProtocol::Snix {
            if let Some(path) = snix_path(req.uri().path()) {
                let mut parts = req.uri().clone().into_parts();
                // A path without a query always parses as PathAndQuery.
                if let Ok(pq) = http::uri::PathAndQuery::try_from(path) {
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_tvix_paths() {
        assert_eq!(
            snix_path("/tvix.castore.v1.BlobService/Read").as_deref(),
            Some("/snix.castore.v1.BlobService/Read")
        );
        assert_eq!(snix_path("/other.Service/X"), None);
    }
}
