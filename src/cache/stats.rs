//! Counters of the cache and fetch path: hits and misses per layer, bytes
//! fetched, evictions, verification failures, fetches in flight. Cheap to
//! bump from any thread; written out as `name value` lines for tests and
//! operators (`--stats-file`), and logged at debug level, followed by the
//! lines of the daemon's other counters ([`ExtraCounters`]).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Counters since the daemon started (gauges where noted).
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            /// The verification failures again, by source and kind (for
            /// the metrics; not in the stats file).
            pub rejected: Rejections,
        }

        impl Stats {
            /// Every counter as `name value` lines.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(let _ = writeln!(out, "{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));)*
                out
            }
        }
    };
}

counters! {
    memory_hits: "Chunks, Directories and path infos found in memory.",
    memory_misses: "Lookups that had to go past memory.",
    memory_evictions: "Entries the memory cache let go to stay within its bound (and entries too big to be let in).",
    disk_hits: "Entries found on disk (verified).",
    disk_misses: "Entries not on disk, or failing verification there.",
    disk_range_reads: "Parts of chunks read from disk (and verified through their outboard).",
    disk_bytes_written: "Bytes this daemon added to the disk cache.",
    disk_bytes: "Gauge: bytes in the disk cache at the last scan.",
    disk_evictions: "Files this daemon evicted from the disk cache.",
    disk_writes_dropped: "Writes to the disk cache dropped because the writer was too far behind (the data was still served).",
    disk_junk_removed: "Files in the disk cache that no daemon writes (unknown names, not regular, too long), removed by a scan.",
    disk_lock_busy: "Evictions skipped because another process held the cache lock past the bounded wait.",
    store_path_info_calls: "PathInfoService.Get calls.",
    store_chunk_list_calls: "BlobService.Stat calls for a chunk list.",
    verification_failures: "Data from the store or the disk that failed its digest or checksum.",
    store_requests: "RPCs made to the store.",
    store_errors: "RPCs that failed (unreachable, timeout, bad answer).",
    store_bytes_fetched: "Blob bytes received from the store.",
    fetches_in_flight: "Gauge: chunk fetches running now.",
    singleflight_joins: "Chunk requests that joined a fetch already running.",
    readahead_chunks: "Chunks fetched ahead of sequential readers.",
    prefetched_files: "Files (or their first chunks) fetched ahead by the prefetch, from a trace or a guess (--prefetch-bytes).",
    prefetch_trace_files: "Files fetched ahead because this instance's access trace of their store path lists them.",
    prefetch_pauses: "Times the prefetch waited for the guest's own requests and fetches to finish before its next fetch.",
    traces_written: "Access traces of store paths written to this instance's mappings.",
}

impl Stats {
    /// Counts a memory cache lookup.
    pub fn memory_hit(&self, hit: bool) {
        let counter = if hit {
            &self.memory_hits
        } else {
            &self.memory_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a store call that failed, and what it sent that failed
    /// verification, by kind.
    pub fn store_failed(&self, e: &crate::store::StoreError) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = e.rejected_kind() {
            self.rejected.from_store(kind);
            self.verification_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the store can send that fails verification (the `kind` label of
/// [`Rejections`] from the store: [`crate::store::StoreError::rejected_kind`]).
pub const STORE_KINDS: [&str; 5] = [
    "directory",
    "blob_digest",
    "blob_size",
    "chunk_list",
    "path_info",
];
/// What can fail verification when it is read back from the disk cache
/// (the labels of `ObjectKind` and `MappingKind`).
pub const DISK_KINDS: [&str; 7] = [
    "chunk",
    "blob",
    "directory",
    "chunk_list",
    "path_info",
    "outboard",
    "trace",
];

/// Data that failed verification, by where it came from and what it was:
/// one counter per kind, zeros included (a dashboard shows 0, not "no
/// data").
#[derive(Debug, Default)]
pub struct Rejections {
    store: [AtomicU64; STORE_KINDS.len()],
    disk: [AtomicU64; DISK_KINDS.len()],
}

impl Rejections {
    /// Counts bad data from the store, of a kind in [`STORE_KINDS`].
    pub fn from_store(&self, kind: &'static str) {
        Self::count(&self.store, &STORE_KINDS, kind);
    }

    /// Counts a disk cache entry that failed its check, of a kind in
    /// [`DISK_KINDS`].
    pub fn from_disk(&self, kind: &'static str) {
        Self::count(&self.disk, &DISK_KINDS, kind);
    }

    fn count(counters: &[AtomicU64], kinds: &[&str], kind: &str) {
        match kinds.iter().position(|k| *k == kind) {
            Some(i) => {
                counters[i].fetch_add(1, Ordering::Relaxed);
            }
            None => debug_assert!(false, "no counter for the kind {kind}"),
        }
    }

    /// Every counter: (source, kind, count), the store's first.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        STORE_KINDS
            .iter()
            .zip(&self.store)
            .map(|(kind, n)| ("store", *kind, n.load(Ordering::Relaxed)))
            .chain(
                DISK_KINDS
                    .iter()
                    .zip(&self.disk)
                    .map(|(kind, n)| ("disk", *kind, n.load(Ordering::Relaxed))),
            )
    }
}

/// Counts what a memory cache evicts into [`Stats::memory_evictions`];
/// the evicted entries are dropped after the cache's lock is released, as
/// quick_cache's default lifecycle does.
pub struct CountEvictions<K, V> {
    stats: std::sync::Arc<Stats>,
    _entries: std::marker::PhantomData<fn(K, V)>,
}

impl<K, V> CountEvictions<K, V> {
    pub fn new(stats: std::sync::Arc<Stats>) -> Self {
        Self {
            stats,
            _entries: std::marker::PhantomData,
        }
    }
}

impl<K, V> Clone for CountEvictions<K, V> {
    fn clone(&self) -> Self {
        Self::new(self.stats.clone())
    }
}

impl<K, V> quick_cache::Lifecycle<K, V> for CountEvictions<K, V> {
    /// Up to two evicted entries, dropped when the request ends; more are
    /// dropped at once (an insert rarely evicts more than two).
    type RequestState = [Option<(K, V)>; 2];

    fn begin_request(&self) -> Self::RequestState {
        [None, None]
    }

    fn on_evict(&self, state: &mut Self::RequestState, key: K, val: V) {
        self.stats.memory_evictions.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = state.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some((key, val));
        }
    }
}

/// More `name value` lines for the stats file, from counters that live
/// outside the cache (the request guard's, the guest bounds').
pub type ExtraCounters = Box<dyn Fn() -> String + Send + Sync>;

/// The cache's counters, then the extra ones.
fn render_all(stats: &Stats, extra: &[ExtraCounters]) -> String {
    let mut out = stats.render();
    for lines in extra {
        out.push_str(&lines());
    }
    out
}

/// Writes `text` to `path` atomically (temporary file + rename).
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Writes the counters to a file once a second while they change, and logs
/// them at debug level, from a thread of its own.
pub struct StatsReporter {
    stats: std::sync::Arc<Stats>,
    extra: std::sync::Arc<Vec<ExtraCounters>>,
    path: Option<std::path::PathBuf>,
}

impl StatsReporter {
    pub fn start(
        stats: std::sync::Arc<Stats>,
        extra: Vec<ExtraCounters>,
        path: Option<std::path::PathBuf>,
    ) -> Self {
        let extra = std::sync::Arc::new(extra);
        let reporter = Self {
            stats: stats.clone(),
            extra: extra.clone(),
            path: path.clone(),
        };
        let spawned = std::thread::Builder::new().name("stats".into()).spawn(move || {
            let mut last = String::new();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let now = render_all(&stats, &extra);
                if now != last {
                    tracing::debug!(stats = %now.replace('\n', " "), "cache");
                    if let Some(p) = &path {
                        if let Err(e) = write_atomically(p, &now) {
                            tracing::warn!(path = %p.display(), error = %e, "writing the stats file failed");
                        }
                    }
                    last = now;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "starting the stats thread failed; counters are written at exit only");
        }
        reporter
    }

    /// Writes the final counters.
    pub fn finish(&self) {
        if let Some(p) = &self.path {
            let _ = write_atomically(p, &render_all(&self.stats, &self.extra));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter() {
        let s = Stats::default();
        s.disk_hits.fetch_add(3, Ordering::Relaxed);
        let text = s.render();
        assert!(text.contains("disk_hits 3\n"));
        assert!(text.contains("fetches_in_flight 0\n"));
        assert_eq!(text.lines().count(), 25);
    }

    #[test]
    fn rejections_are_counted_by_source_and_kind() {
        let s = Stats::default();
        s.rejected.from_store("blob_digest");
        s.rejected.from_disk("trace");
        s.rejected.from_disk("trace");
        let all: Vec<_> = s.rejected.each().collect();
        assert_eq!(all.len(), STORE_KINDS.len() + DISK_KINDS.len());
        assert!(all.contains(&("store", "blob_digest", 1)));
        assert!(all.contains(&("disk", "trace", 2)));
        assert!(all.contains(&("disk", "chunk", 0)));
        assert_eq!(all.iter().map(|(_, _, n)| n).sum::<u64>(), 3);
    }

    #[test]
    fn memory_evictions_are_counted() {
        let stats = std::sync::Arc::new(Stats::default());
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(4)
            .weight_capacity(4)
            .build()
            .unwrap();
        let cache: quick_cache::sync::Cache<u32, u32, quick_cache::UnitWeighter, _, _> =
            quick_cache::sync::Cache::with_options(
                options,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                CountEvictions::new(stats.clone()),
            );
        for i in 0..100 {
            cache.insert(i, i);
        }
        let evicted = stats.memory_evictions.load(Ordering::Relaxed);
        assert_eq!(evicted as usize, 100 - cache.len(), "{evicted} evictions");
    }
}
