//! Keeping the disk cache under its bound without ever being held up by
//! another daemon, and without trusting what it finds there.
//!
//! - The lock (`objects/lock`) is taken with a bounded wait
//!   ([`LOCK_WAIT`]); if another process holds it longer, this eviction is
//!   skipped and tried again after the next writes. Only writers (which run
//!   off the read path) ever evict; reads and start-up never wait for it.
//! - Space is counted in allocated blocks, so a sparse file claiming a
//!   terabyte costs what it really takes.
//! - Files no daemon writes (names that are not a digest, anything not a
//!   regular file, objects longer than their kind allows) are removed as
//!   junk on their own, not by evicting honest entries to make room.
//! - A temporary file is removed only if it is old and no writer holds its
//!   lock (every writer locks its temporary file until it is in place, and
//!   the kernel drops that lock when a writer dies).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::files::try_flock;
use super::layout::{MappingKind, ObjectKind, MAX_CHUNK_BYTES, MAX_DIRECTORY_BYTES};
use super::stats::Stats;

/// The longest an eviction waits for the lock before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_millis(100);
/// A temporary file untouched this long, and unlocked, belongs to a writer
/// that died.
const ABANDONED_TEMP_AGE: Duration = Duration::from_secs(3600);

/// What an eviction pass did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Scanned; this many honest files evicted, this many junk removed.
    Done { evicted: u64, junk: u64, total: u64 },
    /// Another process held the lock past [`LOCK_WAIT`].
    LockBusy,
    /// Another thread of this daemon is evicting already.
    Running,
}

pub struct Eviction {
    objects: PathBuf,
    mappings: Option<PathBuf>,
    max_bytes: u64,
    /// Bytes this daemon may write between two scans.
    slack: u64,
    written_since_scan: AtomicU64,
    /// Held by the scan, and by a writer from counting its entry until it
    /// is in place: no entry of this daemon lands between the scan's sum
    /// and its evictions.
    running: parking_lot::Mutex<()>,
    stats: Arc<Stats>,
}

/// A file found by a scan.
struct Found {
    path: PathBuf,
    allocated: u64,
    modified: SystemTime,
}

impl Eviction {
    pub fn new(objects: &Path, mappings: Option<&Path>, max_bytes: u64, stats: Arc<Stats>) -> Self {
        Self {
            objects: objects.to_path_buf(),
            mappings: mappings.map(Path::to_path_buf),
            max_bytes,
            slack: (max_bytes / 16).max(1 << 20),
            // The first write of a daemon scans: a cache left over the
            // bound is brought under it soon, but never at start-up.
            written_since_scan: AtomicU64::new(u64::MAX / 2),
            running: parking_lot::Mutex::new(()),
            stats,
        }
    }

    /// The bound plus the slack one daemon may overshoot it by.
    pub fn max_bytes_with_slack(&self) -> u64 {
        self.max_bytes + self.slack
    }

    /// Counts `len` bytes about to be put in place; past the slack since
    /// the last scan, evicts first (bounded, see the module). Hold the
    /// guard until the entry is in place.
    pub fn admit(&self, len: u64) -> parking_lot::MutexGuard<'_, ()> {
        let guard = self.running.lock();
        let before = self.written_since_scan.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > self.slack {
            self.scan_and_evict();
        }
        guard
    }

    /// One eviction pass, if the lock can be had within [`LOCK_WAIT`].
    pub fn run(&self) -> Outcome {
        let Some(_running) = self.running.try_lock() else {
            return Outcome::Running;
        };
        self.scan_and_evict()
    }

    fn scan_and_evict(&self) -> Outcome {
        let Some(_lock) = self.lock() else {
            // Tried again once another slack's worth has been written, not
            // on every write.
            self.written_since_scan.store(0, Ordering::Relaxed);
            self.stats.disk_lock_busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(wait = ?LOCK_WAIT, "the disk cache lock is held by another process; eviction skipped, tried again after the next writes");
            return Outcome::LockBusy;
        };
        self.written_since_scan.store(0, Ordering::Relaxed);
        let mut files = Vec::new();
        let mut junk = 0u64;
        for kind in ObjectKind::ALL {
            let max = match kind {
                ObjectKind::Chunk => MAX_CHUNK_BYTES,
                ObjectKind::Directory => MAX_DIRECTORY_BYTES,
                ObjectKind::Blob => self.max_bytes,
                // 32 bytes per 16 KiB group of a blob.
                ObjectKind::Outboard => self.max_bytes / 512 + 32,
            };
            junk += scan(&self.objects.join(kind.dir()), 32, max, &mut files);
        }
        if let Some(dir) = &self.mappings {
            for kind in MappingKind::ALL {
                junk += scan(
                    &dir.join(kind.dir()),
                    kind.key_len(),
                    kind.max_bytes(),
                    &mut files,
                );
            }
        }
        let mut total: u64 = files.iter().map(|f| f.allocated).sum();
        total += self.clean_temps();
        self.stats.disk_bytes.store(total, Ordering::Relaxed);
        self.stats
            .disk_junk_removed
            .fetch_add(junk, Ordering::Relaxed);
        let target = self.max_bytes.saturating_sub(self.slack);
        let mut evicted = 0u64;
        if total > target {
            files.sort_by_key(|f| f.modified);
            for f in files {
                if total <= target {
                    break;
                }
                if fs::remove_file(&f.path).is_ok() {
                    total = total.saturating_sub(f.allocated);
                    evicted += 1;
                }
            }
        }
        self.stats
            .disk_evictions
            .fetch_add(evicted, Ordering::Relaxed);
        self.stats.disk_bytes.store(total, Ordering::Relaxed);
        tracing::debug!(evicted, junk, total, "disk cache eviction");
        Outcome::Done {
            evicted,
            junk,
            total,
        }
    }

    /// The shared lock, or `None` after [`LOCK_WAIT`].
    fn lock(&self) -> Option<File> {
        let path = self.objects.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path);
        let file = match file {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
            other => {
                tracing::warn!(path = %path.display(), error = ?other.err(), "the cache lock is not a regular file; removed, eviction skipped");
                let _ = fs::remove_file(&path);
                return None;
            }
        };
        try_flock(&file, libc::LOCK_EX, LOCK_WAIT).then_some(file)
    }

    /// Removes abandoned temporary files; returns the bytes of the others.
    fn clean_temps(&self) -> u64 {
        let mut total = 0;
        let Ok(entries) = fs::read_dir(self.objects.join("tmp")) else {
            return 0;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta.modified().map_or(true, |t| {
                t.elapsed().unwrap_or_default() > ABANDONED_TEMP_AGE
            });
            let abandoned = old && meta.is_file() && unlocked(&entry.path());
            if (abandoned || !meta.is_file()) && fs::remove_file(entry.path()).is_ok() {
                continue;
            }
            total += allocated(&meta);
        }
        total
    }
}

/// Whether no process holds a lock on the file at `path`.
fn unlocked(path: &Path) -> bool {
    match super::files::open_regular(path) {
        Ok((file, _)) => try_flock(&file, libc::LOCK_EX, Duration::ZERO),
        Err(_) => false,
    }
}

fn allocated(meta: &fs::Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

fn is_hex(name: &str, len: usize) -> bool {
    name.len() == len
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Adds the honest files of a fan-out directory (`ab/<hex key>`) to
/// `out`; removes the junk and returns how many junk files it removed.
fn scan(dir: &Path, key_len: usize, max_len: u64, out: &mut Vec<Found>) -> u64 {
    let mut junk = 0;
    let Ok(fans) = fs::read_dir(dir) else {
        return 0;
    };
    for fan in fans.flatten() {
        let fan_name = fan.file_name();
        let fan_name = fan_name.to_string_lossy();
        let is_fan = fan.file_type().is_ok_and(|t| t.is_dir()) && is_hex(&fan_name, 2);
        if !is_fan {
            // Not something a daemon makes; a directory is left alone.
            if fan.file_type().is_ok_and(|t| !t.is_dir()) && fs::remove_file(fan.path()).is_ok() {
                junk += 1;
            }
            continue;
        }
        let Ok(entries) = fs::read_dir(fan.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let honest = meta.is_file()
                && is_hex(&name, key_len * 2)
                && name.starts_with(&*fan_name)
                && meta.len() <= max_len;
            if honest {
                out.push(Found {
                    path: entry.path(),
                    allocated: allocated(&meta),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            } else if !meta.is_dir() && fs::remove_file(entry.path()).is_ok() {
                tracing::warn!(path = %entry.path().display(), len = meta.len(), "removed a file no daemon writes from the disk cache");
                junk += 1;
            }
        }
    }
    junk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::objects::SharedObjects;
    use crate::store::B3Digest;

    fn objects(max: u64) -> (tempfile::TempDir, SharedObjects) {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let eviction = Arc::new(Eviction::new(dir.path(), None, max, stats.clone()));
        let o = SharedObjects::open(dir.path(), eviction, stats).unwrap();
        (dir, o)
    }

    fn on_disk(dir: &Path) -> u64 {
        let mut files = Vec::new();
        for kind in ObjectKind::ALL {
            scan(&dir.join(kind.dir()), 32, u64::MAX, &mut files);
        }
        files.iter().map(|f| f.allocated).sum()
    }

    #[test]
    fn evicts_least_recently_used_to_stay_under_the_bound() {
        let max = 4 << 20;
        let (dir, o) = objects(max);
        let mut keys = Vec::new();
        for i in 0..40u8 {
            let data = vec![i; 256 << 10];
            let key = B3Digest::of(&data);
            o.put(ObjectKind::Chunk, &key, &data);
            keys.push(key);
            let total = on_disk(dir.path());
            assert!(
                total <= o.eviction().max_bytes_with_slack(),
                "{total} bytes on disk"
            );
        }
        let last = keys.last().unwrap();
        assert!(o.get(ObjectKind::Chunk, last, Some(256 << 10)).is_some());
        assert!(o
            .get(ObjectKind::Chunk, &keys[0], Some(256 << 10))
            .is_none());
    }

    #[test]
    fn junk_goes_and_honest_entries_stay() {
        let (dir, o) = objects(64 << 20);
        let data = vec![7u8; 100_000];
        let key = B3Digest::of(&data);
        o.put(ObjectKind::Chunk, &key, &data);
        let chunks = dir.path().join("chunks");
        // A sparse terabyte at another chunk's name, a FIFO, an unknown name.
        let big = super::super::layout::fan_out(&chunks, B3Digest::of(b"x").as_bytes());
        fs::create_dir_all(big.parent().unwrap()).unwrap();
        File::create(&big).unwrap().set_len(1 << 40).unwrap();
        let fifo = chunks.join("ab").join("ab".repeat(32));
        fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        fs::write(chunks.join("ab").join("notes.txt"), b"x").unwrap();
        let outcome = o.eviction().run();
        assert!(
            matches!(
                outcome,
                Outcome::Done {
                    evicted: 0,
                    junk: 3,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(!big.exists() && !fifo.exists());
        assert_eq!(o.get(ObjectKind::Chunk, &key, Some(100_000)).unwrap(), data);
    }

    #[test]
    fn a_held_lock_is_waited_for_only_so_long() {
        let (dir, o) = objects(64 << 20);
        let holder = File::create(dir.path().join("lock")).unwrap();
        assert!(try_flock(&holder, libc::LOCK_EX, Duration::ZERO));
        let started = std::time::Instant::now();
        assert_eq!(o.eviction().run(), Outcome::LockBusy);
        assert!(started.elapsed() < LOCK_WAIT * 3, "{:?}", started.elapsed());
        drop(holder);
        assert!(matches!(o.eviction().run(), Outcome::Done { .. }));
    }

    #[test]
    fn a_live_writer_keeps_its_temporary_file() {
        let (dir, o) = objects(64 << 20);
        let live = o.temp_file().unwrap();
        let dead = dir.path().join("tmp").join("dead");
        fs::write(&dead, b"half").unwrap();
        let old = SystemTime::now() - ABANDONED_TEMP_AGE * 2;
        for path in [live.path(), dead.as_path()] {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        o.eviction().run();
        assert!(live.path().exists(), "a live writer's file was removed");
        assert!(!dead.exists(), "an abandoned file was kept");
    }
}
