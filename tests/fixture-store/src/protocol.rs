//! Which package names the services are served under.
//!
//! tvix and snix use the same messages under different protobuf packages,
//! so a gRPC method path names the protocol: `/tvix.castore.v1.BlobService/Read`
//! versus `/snix.castore.v1.BlobService/Read`. The generated servers answer
//! tvix paths; in snix mode a tower layer in front of them rewrites snix
//! paths to tvix ones and refuses tvix paths, so the fixture behaves like a
//! snix-only store and a plain tvix client fails against it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::Status;

/// The `--protocol` choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// `tvix.castore.v1` / `tvix.store.v1` only.
    #[default]
    Tvix,
    /// `snix.castore.v1` / `snix.store.v1` only.
    Snix,
}

/// What to do with a request path in snix mode.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Serve it as this tvix path.
    Rewrite(String),
    /// Answer UNIMPLEMENTED: a tvix path at a snix-only store.
    Refuse,
    /// Leave it alone (the router answers unknown paths itself).
    Pass,
}

fn snix_route(path_and_query: &str) -> Route {
    for (snix, tvix) in [
        ("/snix.castore.v1.", "/tvix.castore.v1."),
        ("/snix.store.v1.", "/tvix.store.v1."),
    ] {
        if let Some(rest) = path_and_query.strip_prefix(snix) {
            return Route::Rewrite(format!("{tvix}{rest}"));
        }
    }
    if path_and_query.starts_with("/tvix.") {
        Route::Refuse
    } else {
        Route::Pass
    }
}

/// Tower layer applying [`Protocol`] to the router.
#[derive(Clone, Copy, Debug)]
pub struct ProtocolLayer(pub Protocol);

impl<S> tower::Layer<S> for ProtocolLayer {
    type Service = ProtocolService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProtocolService {
            inner,
            protocol: self.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProtocolService<S> {
    inner: S,
    protocol: Protocol,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tower::Service<http::Request<Body>> for ProtocolService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if self.protocol == Protocol::Snix {
            let path = request
                .uri()
                .path_and_query()
                .map_or("", PathAndQuery::as_str);
            match snix_route(path) {
                Route::Rewrite(new_path) => {
                    let mut parts = request.uri().clone().into_parts();
                    let rewritten = PathAndQuery::try_from(new_path)
                        .map_err(|e| e.to_string())
                        .and_then(|pq| {
                            parts.path_and_query = Some(pq);
                            http::Uri::from_parts(parts).map_err(|e| e.to_string())
                        });
                    match rewritten {
                        Ok(uri) => *request.uri_mut() = uri,
                        Err(e) => return answer(Status::internal(format!("rewriting path: {e}"))),
                    }
                }
                Route::Refuse => {
                    tracing::debug!(path, "refusing a tvix method path: serving snix only");
                    return answer(Status::unimplemented(
                        "this store serves the snix protocol only (snix.castore.v1, snix.store.v1)",
                    ));
                }
                Route::Pass => {}
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// A ready response carrying a gRPC status.
fn answer<E: Send + 'static>(status: Status) -> BoxFuture<Result<http::Response<Body>, E>> {
    let response = status.into_http::<Body>();
    Box::pin(std::future::ready(Ok(response)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_snix_paths_and_refuses_tvix_ones() {
        assert_eq!(
            snix_route("/snix.castore.v1.BlobService/Read"),
            Route::Rewrite("/tvix.castore.v1.BlobService/Read".into())
        );
        assert_eq!(
            snix_route("/snix.store.v1.PathInfoService/Get"),
            Route::Rewrite("/tvix.store.v1.PathInfoService/Get".into())
        );
        assert_eq!(
            snix_route("/tvix.castore.v1.DirectoryService/Get"),
            Route::Refuse
        );
        assert_eq!(snix_route("/grpc.health.v1.Health/Check"), Route::Pass);
    }
}
