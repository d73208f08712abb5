//! Prometheus metrics of the daemon: FUSE requests, store RPCs, the cache,
//! verification failures, live inodes and open handles, store reachability.
//!
//! One registry per process ([`global`]), so that the transport, the store
//! client and the cache can record into it from a single line each. The
//! cache's own counters ([`crate::cache::Stats`]) and the filesystem's
//! gauges are not copied: they are read when the metrics are rendered.
//! Rendered as the Prometheus text format (version 0.0.4), which both a
//! Prometheus scrape of `--metrics-listen` and node_exporter's textfile
//! collector (`--metrics-file`) read.

mod collectors;
pub mod endpoint;
mod errno;
mod format;
pub mod fuse;
mod requests;
pub mod store;
pub mod textfile;

use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use endpoint::{MetricsAddress, MetricsListener};
pub use store::MeteredChannel;
pub use textfile::MetricsFile;

/// Prefix of every metric name.
pub const PREFIX: &str = "tvix_virtiofsd";

/// Labels of a verification failure: where the bad data came from and what
/// it was.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerificationLabels {
    source: &'static str,
    kind: &'static str,
}

/// What can fail verification when it comes from the store.
const STORE_KINDS: [&str; 5] = [
    "directory",
    "blob_digest",
    "blob_size",
    "chunk_list",
    "path_info",
];
/// What can fail verification when it is read back from the disk cache.
const DISK_KINDS: [&str; 6] = [
    "chunk",
    "blob",
    "directory",
    "chunk_list",
    "path_info",
    "outboard",
];

/// The process's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    fuse: fuse::FuseMetrics,
    store: store::StoreMetrics,
    verification_failures: Family<VerificationLabels, Counter>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The metrics of this process.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let fuse = fuse::FuseMetrics::register(&mut registry);
        let store = store::StoreMetrics::register(&mut registry);
        let verification_failures = Family::default();
        registry.register(
            "verification_failures",
            "Data from the store or the disk cache that failed its digest, size or checksum, \
             by source and kind",
            verification_failures.clone(),
        );
        // Every kind at 0 from the start: a dashboard shows 0, not "no data".
        let kinds = STORE_KINDS
            .iter()
            .map(|kind| ("store", *kind))
            .chain(DISK_KINDS.iter().map(|kind| ("disk", *kind)));
        for (source, kind) in kinds {
            drop(verification_failures.get_or_create(&VerificationLabels { source, kind }));
        }
        Self {
            registry: Mutex::new(registry),
            fuse,
            store,
            verification_failures,
        }
    }

    /// Reads the cache's counters at every render.
    pub fn watch_cache(&self, store: Arc<crate::cache::CachedStore>) {
        self.registry
            .lock()
            .register_collector(Box::new(collectors::CacheCollector::new(store)));
    }

    /// Reads the filesystem's live inodes and open handles at every render.
    pub fn watch_fs(&self, fs: Arc<crate::fs::StoreFs>) {
        self.registry
            .lock()
            .register_collector(Box::new(collectors::FsCollector::new(fs)));
    }

    /// Every metric, in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut open_metrics = String::new();
        let registry = self.registry.lock();
        // Writing into a String cannot fail; a collector's error would
        // leave a truncated text, which is still parseable up to there.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut open_metrics, &registry) {
            tracing::warn!(error = %e, "rendering the metrics failed part-way");
        }
        format::open_metrics_to_prometheus(&open_metrics)
    }
}

/// Counts data from the store that failed verification, by the kind of
/// error (a no-op for errors that are not about bad data).
pub fn store_rejected(error: &crate::store::StoreError) {
    use crate::store::StoreError as E;
    let kind = match error {
        E::InvalidDirectory { .. } => "directory",
        E::BlobDigestMismatch { .. } => "blob_digest",
        E::BlobSizeMismatch { .. } => "blob_size",
        E::InvalidChunkList { .. } => "chunk_list",
        E::InvalidPathInfo { .. } => "path_info",
        _ => return,
    };
    global().count_verification_failure("store", kind);
}

/// Counts a disk cache entry (a shared object or a private mapping) that
/// failed verification; `kind` is the cache's own label for it. The cache
/// names its kinds, so that this layer depends on nothing above it.
pub fn disk_entry_rejected(kind: &'static str) {
    global().count_verification_failure("disk", kind);
}

impl Metrics {
    fn count_verification_failure(&self, source: &'static str, kind: &'static str) {
        self.verification_failures
            .get_or_create(&VerificationLabels { source, kind })
            .inc();
    }
}
