//! Prometheus metrics of the daemon: FUSE requests, store RPCs, the cache,
//! verification failures, live inodes and open handles, store reachability.
//!
//! One registry per process ([`global`]), so that the transport and the
//! store client can record into it from a single line each. The cache's
//! own counters ([`crate::cache::Stats`], verification failures included)
//! and the filesystem's gauges are not copied: they are read when the
//! metrics are rendered, so the cache knows nothing of this module.
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
use prometheus_client::registry::Registry;

pub use endpoint::{MetricsAddress, MetricsListener};
pub use textfile::MetricsFile;

/// Prefix of every metric name.
pub const PREFIX: &str = "tvix_virtiofsd";

/// The process's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    fuse: fuse::FuseMetrics,
    store: store::StoreMetrics,
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
        Self {
            registry: Mutex::new(registry),
            fuse,
            store,
        }
    }

    /// What the store client tells how each of its calls ended.
    pub fn store_calls(&'static self) -> &'static dyn crate::store::observed::CallObserver {
        &self.store
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
