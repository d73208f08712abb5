//! Store RPCs, by method: how many, how long (from the request to the end
//! of the answer), which did not end OK, and whether the store is
//! reachable, from what the store client's [`CallObserver`] is told.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;

use super::requests::{Help, RequestMetrics};
use crate::store::observed::{CallObserver, CallOutcome};

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
pub struct StoreMetrics {
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

impl CallObserver for StoreMetrics {
    fn call_ended(&self, method: &str, elapsed: Duration, outcome: CallOutcome) {
        let labels = MethodLabels {
            method: method.to_owned(),
        };
        self.requests.observe(&labels, elapsed);
        let code = match outcome {
            CallOutcome::Answered(code) => code,
            CallOutcome::Unreachable => Code::Unavailable,
            CallOutcome::NoAnswer => Code::DeadlineExceeded,
            CallOutcome::Abandoned => Code::Cancelled,
        };
        if code != Code::Ok {
            self.requests.error(&ErrorLabels {
                method: labels.method,
                code: format!("{code:?}"),
            });
        }
        match outcome {
            CallOutcome::Answered(Code::Unavailable)
            | CallOutcome::Unreachable
            | CallOutcome::NoAnswer => {
                self.up.set(0);
            }
            CallOutcome::Answered(_) => {
                self.up.set(1);
            }
            // The store did answer; what stopped the call was ours.
            CallOutcome::Abandoned => {}
        };
    }
}
