//! Counters of the cache and fetch path: hits and misses per layer, bytes
//! fetched, evictions, verification failures, fetches in flight. Cheap to
//! bump from any thread; written out as `name value` lines for tests and
//! operators (`--stats-file`), and logged at debug level.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Counters since the daemon started (gauges where noted).
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
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
    disk_hits: "Entries found on disk (verified).",
    disk_misses: "Entries not on disk, or failing verification there.",
    disk_range_reads: "Parts of chunks read from disk (and verified through their outboard).",
    disk_bytes_written: "Bytes this daemon added to the disk cache.",
    disk_bytes: "Gauge: bytes in the disk cache at the last scan.",
    disk_evictions: "Files this daemon evicted from the disk cache.",
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
}

impl Stats {
    /// Writes the counters to `path` atomically (temporary file + rename).
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, path)
    }
}

/// Writes the counters to a file once a second while they change, and logs
/// them at debug level, from a thread of its own.
pub struct StatsReporter {
    stats: std::sync::Arc<Stats>,
    path: Option<std::path::PathBuf>,
}

impl StatsReporter {
    pub fn start(stats: std::sync::Arc<Stats>, path: Option<std::path::PathBuf>) -> Self {
        let reporter = Self {
            stats: stats.clone(),
            path: path.clone(),
        };
        let spawned = std::thread::Builder::new().name("stats".into()).spawn(move || {
            let mut last = String::new();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let now = stats.render();
                if now != last {
                    tracing::debug!(stats = %now.replace('\n', " "), "cache");
                    if let Some(p) = &path {
                        if let Err(e) = stats.write_to(p) {
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
            let _ = self.stats.write_to(p);
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
        assert_eq!(text.lines().count(), 19);
    }
}
