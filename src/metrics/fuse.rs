//! FUSE requests: each one's time, its errors by errno, and the bytes READ
//! gave the guest, recorded by the one per-request layer both transports
//! serve through ([`crate::request_guard::RequestGuard`]), so the same
//! requests are seen over vhost-user and /dev/fuse, with their results.

use std::borrow::Cow;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::requests::{Help, RequestMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpcodeLabels {
    opcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    opcode: &'static str,
    errno: Cow<'static, str>,
}

/// The FUSE request metrics.
pub(super) struct FuseMetrics {
    requests: RequestMetrics<OpcodeLabels, ErrorLabels>,
    read_bytes: Counter,
}

/// 25 µs (a cached getattr) to 5 s (a cold read far from the store).
fn latency_histogram() -> Histogram {
    Histogram::new([
        25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0,
    ])
}

impl FuseMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let help = Help {
            requests: "FUSE requests handled, by opcode",
            duration: "Time the filesystem took to answer a FUSE request, by opcode",
            errors: "FUSE requests answered with an error, by opcode and errno (a lookup of a \
                     name that does not exist counts as ENOENT)",
        };
        let read_bytes = Counter::default();
        registry.register_with_unit(
            "fuse_read",
            "File content served to the guest by READ",
            Unit::Bytes,
            read_bytes.clone(),
        );
        Self {
            requests: RequestMetrics::register(registry, "fuse", help, latency_histogram),
            read_bytes,
        }
    }

    fn request(&self, opcode: &'static str, took: Duration) {
        self.requests.observe(&OpcodeLabels { opcode }, took);
    }

    fn error(&self, opcode: &'static str, errno: i32) {
        let errno = super::errno::name(errno);
        self.requests.error(&ErrorLabels { opcode, errno });
    }
}

/// Whether a reply is an error the guest sees, and its errno.
trait GuestError {
    fn guest_errno(&self) -> Option<i32>;
}

impl<T> GuestError for io::Result<T> {
    fn guest_errno(&self) -> Option<i32> {
        match self {
            Ok(_) => None,
            Err(e) => Some(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

/// Records one request's time and outcome.
pub(crate) fn observe<T>(opcode: &'static str, started: Instant, result: &io::Result<T>) {
    let metrics = &super::global().fuse;
    metrics.request(opcode, started.elapsed());
    if let Some(errno) = result.guest_errno() {
        metrics.error(opcode, errno);
    }
}

/// A LOOKUP answered with a negative entry: the guest gets ENOENT.
pub(crate) fn negative_lookup() {
    super::global().fuse.error("lookup", libc::ENOENT);
}

/// Bytes a READ gave the guest.
pub(crate) fn read_bytes(bytes: usize) {
    super::global().fuse.read_bytes.inc_by(bytes as u64);
}

/// Requests whose handler panicked since the daemon started. A plain
/// counter, not a series of the registry, so the stats file reads it too.
static REQUEST_PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts one request whose handler panicked; returns the total so far.
pub(crate) fn request_panicked() -> u64 {
    REQUEST_PANICS.fetch_add(1, Ordering::Relaxed) + 1
}

/// How many requests panicked (answered EIO) so far.
pub fn request_panics() -> u64 {
    REQUEST_PANICS.load(Ordering::Relaxed)
}

/// The panic counter as a `name value` line, like the stats file's.
pub fn render_request_panics() -> String {
    format!("request_panics {}\n", request_panics())
}
