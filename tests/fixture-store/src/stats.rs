//! Per-method call counters, written to `--stats-file` after every call so
//! tests can assert how often the daemon asked the store for something (for
//! example, that a cached file is not fetched twice).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tracing::warn;

/// The counted RPCs, in the order they appear in the stats file.
#[derive(Clone, Copy, Debug)]
pub enum Method {
    BlobStat,
    BlobRead,
    BlobPut,
    DirectoryGet,
    DirectoryPut,
    PathInfoGet,
    PathInfoList,
    PathInfoPut,
}

const NAMES: [&str; 8] = [
    "blob_stat",
    "blob_read",
    "blob_put",
    "directory_get",
    "directory_put",
    "pathinfo_get",
    "pathinfo_list",
    "pathinfo_put",
];

pub struct Stats {
    counters: [AtomicU64; 8],
    file: Option<PathBuf>,
    /// Serialises rewrites: concurrent calls would otherwise share the
    /// temporary file.
    write_lock: Mutex<()>,
}

impl Stats {
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            counters: Default::default(),
            file,
            write_lock: Mutex::new(()),
        }
    }

    /// Counts one call and rewrites the stats file.
    pub fn record(&self, method: Method) {
        self.counters[method as usize].fetch_add(1, Ordering::SeqCst);
        self.write();
    }

    /// Rewrites the stats file atomically (FILE.tmp, then rename), so a
    /// reader never sees a half-written file. Failures are logged, not fatal:
    /// a call should not fail because of bookkeeping.
    pub fn write(&self) {
        let Some(file) = &self.file else {
            return;
        };
        let _guard = self.write_lock.lock();
        // Read the counters under the lock, so the last rename carries the
        // latest values.
        let mut text = String::new();
        for (name, counter) in NAMES.iter().zip(&self.counters) {
            let _ = writeln!(text, "{name} {}", counter.load(Ordering::SeqCst));
        }
        let mut tmp = file.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file)) {
            warn!(file = %file.display(), error = %e, "could not write stats file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_all_counters() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("stats");
        let stats = Stats::new(Some(file.clone()));
        stats.record(Method::BlobRead);
        stats.record(Method::BlobRead);
        stats.record(Method::PathInfoPut);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            "blob_stat 0\nblob_read 2\nblob_put 0\ndirectory_get 0\ndirectory_put 0\n\
             pathinfo_get 0\npathinfo_list 0\npathinfo_put 1\n"
        );
    }
}
