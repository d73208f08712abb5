//! Store RPCs: a tower layer under the gRPC clients that times each call
//! from its request to the end of its answer (the last message of a
//! stream), and takes its outcome from the `grpc-status` the store sent.
//! The last outcome also says whether the store is reachable.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicI64;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;

use super::requests::{Help, RequestMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: String,
    code: String,
}

/// The store RPC metrics.
pub(super) struct StoreMetrics {
    requests: RequestMetrics<MethodLabels, ErrorLabels>,
    up: Gauge<i64, AtomicI64>,
}

/// 100 µs (a local store's path info) to 30 s (past the default timeout).
fn latency_histogram() -> Histogram {
    Histogram::new([
        100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ])
}

impl StoreMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let help = Help {
            requests: "gRPC calls made to the store, by method",
            duration: "Time from a store call to the end of its answer (a stream's last \
                       message), by method",
            errors: "Store calls that did not end OK, by method and gRPC code (NotFound \
                     included; Unavailable: no connection; DeadlineExceeded: no answer in time; \
                     Cancelled: the daemon stopped reading the answer)",
        };
        let up = Gauge::default();
        registry.register(
            "store_up",
            "1 if the last store call got an answer from the store, 0 if the store could not \
             be reached or did not answer in time",
            up.clone(),
        );
        Self {
            requests: RequestMetrics::register(registry, "store", help, latency_histogram),
            up,
        }
    }
}

/// `BlobService.Read` for `/tvix.castore.v1.BlobService/Read` (or snix's).
fn method_name(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}.{method}")
}

/// How a call ended, as far as this layer can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The store answered with this status.
    Answered(Code),
    /// No connection, or it broke.
    Unreachable,
    /// Dropped before any answer: the caller's timeout.
    NoAnswer,
    /// Dropped part-way through an answer.
    Abandoned,
}

/// One call in progress; records itself once, when it ends or is dropped.
struct Call {
    method: String,
    started: Instant,
    answered: bool,
    done: bool,
}

impl Call {
    fn start(method: String) -> Self {
        Self {
            method,
            started: Instant::now(),
            answered: false,
            done: false,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let metrics = &super::global().store;
        let method = self.method.clone();
        metrics
            .requests
            .observe(&MethodLabels { method }, self.started.elapsed());
        let code = match outcome {
            Outcome::Answered(code) => code,
            Outcome::Unreachable => Code::Unavailable,
            Outcome::NoAnswer => Code::DeadlineExceeded,
            Outcome::Abandoned => Code::Cancelled,
        };
        if code != Code::Ok {
            metrics.requests.error(&ErrorLabels {
                method: self.method.clone(),
                code: format!("{code:?}"),
            });
        }
        match outcome {
            Outcome::Answered(Code::Unavailable) | Outcome::Unreachable | Outcome::NoAnswer => {
                metrics.up.set(0);
            }
            Outcome::Answered(_) => {
                metrics.up.set(1);
            }
            // The store did answer; what stopped the call was ours.
            Outcome::Abandoned => {}
        };
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let outcome = if self.answered {
            Outcome::Abandoned
        } else {
            Outcome::NoAnswer
        };
        self.finish(outcome);
    }
}

/// The status in a `grpc-status` header or trailer, if there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

/// A gRPC transport whose calls are measured.
#[derive(Clone, Debug)]
pub struct MeteredChannel<S> {
    inner: S,
}

impl<S> MeteredChannel<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for MeteredChannel<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut call = Call::start(method_name(request.uri().path()));
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    call.answered = true;
                    if let Some(code) = grpc_status(response.headers()) {
                        // Trailers-only: the whole answer is its headers.
                        call.finish(Outcome::Answered(code));
                        return Ok(response);
                    }
                    let (parts, body) = response.into_parts();
                    let body = tonic::body::Body::new(MeteredBody { inner: body, call });
                    Ok(http::Response::from_parts(parts, body))
                }
                Err(e) => {
                    call.finish(Outcome::Unreachable);
                    Err(e)
                }
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that ends the call's measurement at its trailers.
    struct MeteredBody {
        #[pin]
        inner: tonic::body::Body,
        call: Call,
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(Outcome::Answered(code));
                }
            }
            Some(Err(_)) => this.call.finish(Outcome::Unreachable),
            // Ended without a status: gRPC calls that UNKNOWN.
            None => this.call.finish(Outcome::Answered(Code::Unknown)),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_methods_without_their_package() {
        assert_eq!(
            method_name("/tvix.castore.v1.BlobService/Read"),
            "BlobService.Read"
        );
        assert_eq!(
            method_name("/snix.store.v1.PathInfoService/Get"),
            "PathInfoService.Get"
        );
    }
}
