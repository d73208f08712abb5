//! Every store call observed: a tower layer under the gRPC clients that
//! times each call from its request to the end of its answer (the last
//! message of a stream), takes its outcome from the `grpc-status` the
//! store sent, and tells a [`CallObserver`] (the metrics) once per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;

/// Told how every store call ended.
pub trait CallObserver: Send + Sync {
    /// `method` (as `BlobService.Read`) ended after `elapsed` with
    /// `outcome`.
    fn call_ended(&self, method: &str, elapsed: Duration, outcome: CallOutcome);
}

/// An observer that is told nothing (for clients nobody measures):
/// `&Unobserved`.
pub struct Unobserved;

impl CallObserver for Unobserved {
    fn call_ended(&self, _: &str, _: Duration, _: CallOutcome) {}
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
pub enum CallOutcome {
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
    observer: &'static dyn CallObserver,
}

impl Call {
    fn start(method: String, observer: &'static dyn CallObserver) -> Self {
        Self {
            method,
            started: Instant::now(),
            answered: false,
            done: false,
            observer,
        }
    }

    fn finish(&mut self, outcome: CallOutcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.observer
            .call_ended(&self.method, self.started.elapsed(), outcome);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let outcome = if self.answered {
            CallOutcome::Abandoned
        } else {
            CallOutcome::NoAnswer
        };
        self.finish(outcome);
    }
}

/// The status in a `grpc-status` header or trailer, if there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

/// A gRPC transport whose calls are observed.
#[derive(Clone)]
pub struct ObservedChannel<S> {
    inner: S,
    observer: &'static dyn CallObserver,
}

impl<S> ObservedChannel<S> {
    pub fn new(inner: S, observer: &'static dyn CallObserver) -> Self {
        Self { inner, observer }
    }
}

impl<S, B> tower::Service<http::Request<B>> for ObservedChannel<S>
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
        let mut call = Call::start(method_name(request.uri().path()), self.observer);
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    call.answered = true;
                    if let Some(code) = grpc_status(response.headers()) {
                        // Trailers-only: the whole answer is its headers.
                        call.finish(CallOutcome::Answered(code));
                        return Ok(response);
                    }
                    let (parts, body) = response.into_parts();
                    let body = tonic::body::Body::new(MeteredBody { inner: body, call });
                    Ok(http::Response::from_parts(parts, body))
                }
                Err(e) => {
                    call.finish(CallOutcome::Unreachable);
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
                    this.call.finish(CallOutcome::Answered(code));
                }
            }
            Some(Err(_)) => this.call.finish(CallOutcome::Unreachable),
            // Ended without a status: gRPC calls that UNKNOWN.
            None => this.call.finish(CallOutcome::Answered(Code::Unknown)),
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
