//! Metrics read when they are rendered, from counters that live elsewhere:
//! the cache's [`Stats`](crate::cache::Stats) (verification failures
//! included) and memory use, the
//! filesystem's live inodes, open handles and guest bounds hit, and the
//! request guard's panics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::cache::CachedStore;
use crate::fs::StoreFs;

/// Writes one counter or gauge, optionally with one label.
fn write(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: &[(Option<(&str, &str)>, Sample)],
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = samples.first() else {
        return Ok(());
    };
    let metric_type = match first {
        Sample::Counter(_) => ConstCounter::new(0u64).metric_type(),
        Sample::Gauge(_) => ConstGauge::new(0i64).metric_type(),
    };
    let mut metric = encoder.encode_descriptor(name, help, unit, metric_type)?;
    if let [(None, value)] = samples {
        return value.encode(metric);
    }
    for (label, value) in samples {
        let label: &[(&str, &str)] = match label {
            Some(label) => std::slice::from_ref(label),
            None => &[],
        };
        value.encode(metric.encode_family(&label)?)?;
    }
    Ok(())
}

/// A value read at render time.
#[derive(Clone, Copy)]
enum Sample {
    Counter(u64),
    Gauge(u64),
}

impl Sample {
    fn encode(
        self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self {
            Sample::Counter(v) => ConstCounter::new(v).encode(encoder),
            Sample::Gauge(v) => {
                ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(encoder)
            }
        }
    }
}

/// The cache's counters, by layer where they have one.
pub(super) struct CacheCollector {
    store: Arc<CachedStore>,
}

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheCollector")
    }
}

impl CacheCollector {
    pub(super) fn new(store: Arc<CachedStore>) -> Self {
        Self { store }
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.store.stats();
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let memory = Some(("layer", "memory"));
        let disk = Some(("layer", "disk"));
        use Sample::{Counter, Gauge};
        write(
            &mut encoder,
            "cache_hits",
            "Lookups answered by a cache layer (chunks, Directories, chunk lists, path infos).",
            None,
            &[
                (memory, Counter(read(&stats.memory_hits))),
                (disk, Counter(read(&stats.disk_hits))),
            ],
        )?;
        write(
            &mut encoder,
            "cache_misses",
            "Lookups that went past a cache layer (on disk: also entries that failed \
             verification there).",
            None,
            &[
                (memory, Counter(read(&stats.memory_misses))),
                (disk, Counter(read(&stats.disk_misses))),
            ],
        )?;
        let mut bytes = vec![(memory, Gauge(self.store.memory_bytes()))];
        if self.store.disk().is_some() {
            bytes.push((disk, Gauge(read(&stats.disk_bytes))));
        }
        write(
            &mut encoder,
            "cache",
            "Bytes in a cache layer (memory: now; disk: the whole shared directory at the last \
             scan).",
            Some(&Unit::Bytes),
            &bytes,
        )?;
        write(
            &mut encoder,
            "cache_evictions",
            "Entries a cache layer let go to stay within its bound (memory: chunks, \
             Directories, chunk lists and path infos, and entries too big to be let in; disk: \
             files this daemon evicted).",
            None,
            &[
                (memory, Counter(read(&stats.memory_evictions))),
                (disk, Counter(read(&stats.disk_evictions))),
            ],
        )?;
        write(
            &mut encoder,
            "cache_disk_written",
            "Bytes this daemon added to the disk cache.",
            Some(&Unit::Bytes),
            &[(None, Counter(read(&stats.disk_bytes_written)))],
        )?;
        write(
            &mut encoder,
            "cache_disk_writes_dropped",
            "Writes to the disk cache dropped because the writer was too far behind (the data \
             was still served).",
            None,
            &[(None, Counter(read(&stats.disk_writes_dropped)))],
        )?;
        write(
            &mut encoder,
            "cache_disk_range_reads",
            "Parts of chunks read from disk and verified through their outboard.",
            None,
            &[(None, Counter(read(&stats.disk_range_reads)))],
        )?;
        write(
            &mut encoder,
            "store_fetched",
            "Blob bytes received from the store.",
            Some(&Unit::Bytes),
            &[(None, Counter(read(&stats.store_bytes_fetched)))],
        )?;
        write(
            &mut encoder,
            "store_fetches_in_flight",
            "Chunk fetches running now.",
            None,
            &[(None, Gauge(read(&stats.fetches_in_flight)))],
        )?;
        write(
            &mut encoder,
            "cache_singleflight_joins",
            "Chunk requests that joined a fetch already running.",
            None,
            &[(None, Counter(read(&stats.singleflight_joins)))],
        )?;
        write(
            &mut encoder,
            "readahead_chunks",
            "Chunks fetched ahead of sequential readers.",
            None,
            &[(None, Counter(read(&stats.readahead_chunks)))],
        )?;
        write(
            &mut encoder,
            "prefetched_files",
            "Files fetched ahead by the prefetch, from a trace or a guess.",
            None,
            &[(None, Counter(read(&stats.prefetched_files)))],
        )?;
        write(
            &mut encoder,
            "prefetch_trace_files",
            "Files fetched ahead because the access trace of their store path lists them.",
            None,
            &[(None, Counter(read(&stats.prefetch_trace_files)))],
        )?;
        write(
            &mut encoder,
            "prefetch_pauses",
            "Times the prefetch waited for the guest's own requests and fetches.",
            None,
            &[(None, Counter(read(&stats.prefetch_pauses)))],
        )?;
        let mut metric = encoder.encode_descriptor(
            "verification_failures",
            "Data from the store or the disk cache that failed its digest, size or checksum, by \
             source and kind",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (source, kind, count) in stats.rejected.each() {
            let labels: [(&str, &str); 2] = [("source", source), ("kind", kind)];
            Counter(count).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Live inodes and open handles of the filesystem.
pub(super) struct FsCollector {
    fs: Arc<StoreFs>,
}

impl std::fmt::Debug for FsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FsCollector")
    }
}

impl FsCollector {
    pub(super) fn new(fs: Arc<StoreFs>) -> Self {
        Self { fs }
    }
}

impl Collector for FsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        write(
            &mut encoder,
            "inodes",
            "Inodes the guest holds (besides the root).",
            None,
            &[(None, Sample::Gauge(self.fs.inode_count() as u64))],
        )?;
        write(
            &mut encoder,
            "open_handles",
            "Open file and directory handles.",
            None,
            &[(None, Sample::Gauge(self.fs.open_handle_count() as u64))],
        )?;
        let limits = self.fs.limit_counters();
        let read = |counter: &std::sync::atomic::AtomicU64| {
            Sample::Counter(counter.load(Ordering::Relaxed))
        };
        write(
            &mut encoder,
            "guest_limit_refusals",
            "Requests refused or cut short at a guest bound: handles (ENFILE at \
             --max-open-handles), inodes (ENOMEM at --max-inodes), read (a READ larger than \
             negotiated, answered short).",
            None,
            &[
                (Some(("bound", "handles")), read(&limits.handles_refused)),
                (Some(("bound", "inodes")), read(&limits.inodes_refused)),
                (Some(("bound", "read")), read(&limits.reads_capped)),
            ],
        )?;
        write(
            &mut encoder,
            "request_panics",
            "Requests whose handler panicked, answered EIO (a bug: the log has the panic).",
            None,
            &[(None, Sample::Counter(super::fuse::request_panics()))],
        )
    }
}
