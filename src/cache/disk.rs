//! The persistent disk cache: verified blob chunks, Directories, chunk lists
//! and path infos under one directory, shared by every daemon on the host.
//!
//! - Content-addressed entries (chunks, whole blobs, Directories) are named
//!   by their BLAKE3 digest and checked against it again when read back.
//!   Entries that are not content-addressed (chunk lists, path infos) carry
//!   a BLAKE3 checksum of their payload in front. A file that fails its
//!   check is removed and reported as a miss, so it is fetched again.
//! - Writes go to a temporary file that is renamed into place: readers never
//!   see a partial file, and two daemons inserting the same entry at once
//!   just replace one identical file with another.
//! - The size bound holds for the directory as a whole: a daemon that has
//!   written more than a slack of bytes since its last scan takes the shared
//!   lock, sums the directory and deletes the least recently used files
//!   (modification time, refreshed on hits) until it is under the bound
//!   minus the slack. An open file that another daemon evicts stays readable
//!   through its descriptor (unlink semantics).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::stats::Stats;
use crate::store::B3Digest;

/// On-disk layout version; a new layout gets a new directory.
const LAYOUT: &str = "v1";
/// Hits refresh a file's modification time at most this often.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// A temporary file untouched this long belongs to a writer that died.
const ABANDONED_TEMP_AGE: Duration = Duration::from_secs(3600);

/// What kind of entry, which decides its directory and how it is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A blob chunk or a small whole blob, named by its digest.
    Chunk,
    /// A large blob without finer chunking, named by its digest.
    Blob,
    /// A Directory's canonical encoding, named by its digest.
    Directory,
    /// A blob's chunk list, checksummed, named by the blob's digest.
    ChunkList,
    /// A store path's root node, checksummed, named by its output hash.
    PathInfo,
    /// A chunk's group chaining values (see `outboard.rs`), checked on use
    /// against the chunk's digest, so stored without a checksum.
    Outboard,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Chunk,
        Kind::Blob,
        Kind::Directory,
        Kind::ChunkList,
        Kind::PathInfo,
        Kind::Outboard,
    ];

    fn dir(self) -> &'static str {
        match self {
            Kind::Chunk => "chunks",
            Kind::Blob => "blobs",
            Kind::Directory => "directories",
            Kind::ChunkList => "chunklists",
            Kind::PathInfo => "pathinfos",
            Kind::Outboard => "outboards",
        }
    }

    /// Entries whose name is not the digest of their content.
    fn checksummed(self) -> bool {
        matches!(self, Kind::ChunkList | Kind::PathInfo)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    #[error("cache directory {path}: {source}")]
    Setup { path: PathBuf, source: io::Error },
}

/// The disk cache of one daemon, over a directory other daemons may share.
pub struct DiskCache {
    root: PathBuf,
    max_bytes: u64,
    /// Bytes this daemon may write between two scans.
    slack: u64,
    /// Bytes this daemon put in place since its last scan. Its lock is also
    /// held while an entry is written and renamed into place, so that no
    /// entry of this daemon lands between the check and the eviction.
    written_since_scan: parking_lot::Mutex<u64>,
    stats: std::sync::Arc<Stats>,
}

impl DiskCache {
    /// Opens (creating if needed) the cache under `dir`, bounded to
    /// `max_bytes`, and brings it under the bound.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        stats: std::sync::Arc<Stats>,
    ) -> Result<Self, DiskCacheError> {
        let root = dir.join(LAYOUT);
        let setup = |path: &Path, source| DiskCacheError::Setup {
            path: path.to_path_buf(),
            source,
        };
        for sub in Kind::ALL.iter().map(|k| k.dir()).chain(["tmp"]) {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(|e| setup(&path, e))?;
        }
        let cache = Self {
            slack: (max_bytes / 16).max(1 << 20),
            root,
            max_bytes,
            written_since_scan: parking_lot::Mutex::new(0),
            stats,
        };
        cache.evict();
        Ok(cache)
    }

    /// The directory this cache lives in (for the sandbox).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bound plus the slack one daemon may overshoot it by.
    pub fn max_bytes_with_slack(&self) -> u64 {
        self.max_bytes + self.slack
    }

    fn name(key: &[u8]) -> String {
        data_encoding::HEXLOWER.encode(key)
    }

    fn path(&self, kind: Kind, key: &[u8]) -> PathBuf {
        let name = Self::name(key);
        self.root.join(kind.dir()).join(&name[..2]).join(name)
    }

    /// Reads and checks an entry. Content-addressed entries must hash to
    /// `key`; checksummed ones to their stored checksum. A failed check
    /// removes the file.
    pub fn get(&self, kind: Kind, key: &[u8]) -> Option<Bytes> {
        let path = self.path(kind, key);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(_) => {
                self.stats.disk_misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let len = file.metadata().map_or(0, |m| m.len() as usize);
        let mut data = Vec::with_capacity(len);
        populate(&mut data);
        if let Err(e) = file.read_to_end(&mut data) {
            tracing::warn!(path = %path.display(), error = %e, "reading a cache file failed; treated as a miss");
            self.stats.disk_misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let payload = if kind.checksummed() {
            if data.len() < B3Digest::LEN
                || B3Digest::of(&data[B3Digest::LEN..]).as_bytes()[..] != data[..B3Digest::LEN]
            {
                None
            } else {
                Some(Bytes::from(data).slice(B3Digest::LEN..))
            }
        } else if matches!(kind, Kind::Directory | Kind::Outboard)
            || B3Digest::of(&data).as_bytes()[..] == key[..]
        {
            // Directories and outboards are checked by the caller, which
            // verifies them against a digest anyway.
            Some(Bytes::from(data))
        } else {
            None
        };
        match payload {
            Some(p) => {
                self.touch(&file);
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                Some(p)
            }
            None => {
                self.reject(kind, key);
                None
            }
        }
    }

    /// `len` bytes at `offset` of an entry, unchecked (the caller verifies
    /// them), or `None` if the entry is missing or shorter.
    pub fn get_range(&self, kind: Kind, key: &[u8], offset: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = File::open(self.path(kind, key)).ok()?;
        let mut data = vec![0; len];
        file.read_exact_at(&mut data, offset).ok()?;
        self.touch(&file);
        self.stats.disk_range_reads.fetch_add(1, Ordering::Relaxed);
        Some(data)
    }

    /// Removes an entry that failed verification.
    pub fn reject(&self, kind: Kind, key: &[u8]) {
        let path = self.path(kind, key);
        tracing::error!(path = %path.display(), "cache file failed verification; removed, will fetch again");
        crate::metrics::disk_rejected(kind);
        self.stats
            .verification_failures
            .fetch_add(1, Ordering::Relaxed);
        self.stats.disk_misses.fetch_add(1, Ordering::Relaxed);
        let _ = fs::remove_file(&path);
    }

    /// Whether an entry exists, without reading or checking it (one stat).
    pub fn contains(&self, kind: Kind, key: &[u8]) -> bool {
        self.path(kind, key).exists()
    }

    /// Opens a whole-blob file for reading, or `None`. The caller verifies
    /// its content (it is too large to read here) and calls
    /// [`DiskCache::reject`] if it fails.
    pub fn open_blob(&self, digest: &B3Digest) -> Option<File> {
        match File::open(self.path(Kind::Blob, digest.as_bytes())) {
            Ok(f) => {
                self.touch(&f);
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                Some(f)
            }
            Err(_) => {
                self.stats.disk_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Refreshes the recency of a hit, at most once a minute per file.
    fn touch(&self, file: &File) {
        let stale = file
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() > TOUCH_INTERVAL)
            .unwrap_or(false);
        if stale {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Stores a verified entry.
    pub fn put(&self, kind: Kind, key: &[u8], payload: &[u8]) {
        let checksum = kind.checksummed().then(|| B3Digest::of(payload));
        let len = payload.len() as u64 + checksum.map_or(0, |_| B3Digest::LEN as u64);
        let result = self.write_entry(kind, key, len, |file| {
            if let Some(c) = &checksum {
                file.write_all(c.as_bytes())?;
            }
            file.write_all(payload)
        });
        if let Err(e) = result {
            tracing::warn!(kind = ?kind, key = %Self::name(key), error = %e, "writing to the disk cache failed");
        }
    }

    /// A temporary file in the cache directory, to be filled and then
    /// published with [`DiskCache::publish_blob`] once verified.
    pub fn temp_file(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(self.root.join("tmp"))
    }

    /// Moves a verified whole blob into place and returns it for reading.
    pub fn publish_blob(
        &self,
        digest: &B3Digest,
        file: tempfile::NamedTempFile,
    ) -> io::Result<File> {
        let len = file.as_file().metadata()?.len();
        let path = self.path(Kind::Blob, digest.as_bytes());
        let _room = self.make_room(len);
        fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        file.persist(&path).map_err(|e| e.error)
    }

    fn write_entry(
        &self,
        kind: Kind,
        key: &[u8],
        len: u64,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        let path = self.path(kind, key);
        if path.exists() {
            return Ok(());
        }
        let _room = self.make_room(len);
        let mut temp = self.temp_file()?;
        fill(temp.as_file_mut())?;
        fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        temp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Counts `len` more bytes about to be put in place; when that would
    /// take this daemon past the slack since its last scan, scans and
    /// evicts first. The returned guard is held until the entry is in place.
    fn make_room(&self, len: u64) -> parking_lot::MutexGuard<'_, u64> {
        self.stats
            .disk_bytes_written
            .fetch_add(len, Ordering::Relaxed);
        let mut written = self.written_since_scan.lock();
        if *written + len > self.slack {
            self.evict();
            *written = 0;
        }
        *written += len;
        written
    }

    /// Under the shared lock: sums the cache and deletes the least recently
    /// used files until it is at most the bound minus the slack.
    pub fn evict(&self) {
        let lock_path = self.root.join("lock");
        let lock = match File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "opening the cache lock failed; eviction skipped");
                return;
            }
        };
        // SAFETY: flock on a descriptor we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "locking the cache failed; eviction skipped");
            return;
        }
        let mut files = Vec::new();
        let mut total = 0u64;
        for kind in Kind::ALL {
            collect_files(&self.root.join(kind.dir()), &mut files, &mut total);
        }
        // Files being written count too; abandoned ones (a writer crashed)
        // are removed once they are old, live ones are left alone.
        let mut temps = Vec::new();
        collect_files(&self.root.join("tmp"), &mut temps, &mut total);
        for (path, len, modified) in temps {
            if modified.elapsed().unwrap_or_default() > ABANDONED_TEMP_AGE
                && fs::remove_file(&path).is_ok()
            {
                total = total.saturating_sub(len);
            }
        }
        self.stats.disk_bytes.store(total, Ordering::Relaxed);
        let target = self.max_bytes.saturating_sub(self.slack);
        if total <= target {
            return;
        }
        files.sort_by_key(|(_, _, modified)| *modified);
        let mut evicted = 0u64;
        for (path, len, _) in files {
            if total <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
                evicted += 1;
            }
        }
        self.stats
            .disk_evictions
            .fetch_add(evicted, Ordering::Relaxed);
        self.stats.disk_bytes.store(total, Ordering::Relaxed);
        tracing::debug!(evicted, total, "disk cache eviction");
    }
}

/// Faults in the spare capacity of `buf` with one call instead of a page
/// fault per 4 KiB page during the read: new memory for a filling cache
/// costs more in page faults than the read itself. Best effort (needs
/// Linux 5.14).
fn populate(buf: &mut Vec<u8>) {
    const PAGE: usize = 4096;
    let spare = buf.spare_capacity_mut();
    let start = spare.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(PAGE);
    let end = (start + spare.len()) & !(PAGE - 1);
    if end > aligned {
        // SAFETY: the range lies within this Vec's own allocation, which
        // holds no values yet; populating only faults its pages in.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
}

/// Adds every file below `dir` (two levels: fan-out directories) with its
/// size and modification time.
fn collect_files(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>, total: &mut u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            collect_files(&path, out, total);
        } else {
            *total += meta.len();
            out.push((
                path,
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cache(max: u64) -> (tempfile::TempDir, DiskCache) {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), max, Arc::new(Stats::default())).unwrap();
        (dir, c)
    }

    #[test]
    fn round_trips_content_addressed_entries() {
        let (_d, c) = cache(64 << 20);
        let data = b"chunk data";
        let key = B3Digest::of(data);
        assert_eq!(c.get(Kind::Chunk, key.as_bytes()), None);
        c.put(Kind::Chunk, key.as_bytes(), data);
        assert_eq!(c.get(Kind::Chunk, key.as_bytes()).unwrap(), &data[..]);
    }

    #[test]
    fn detects_and_removes_a_flipped_byte() {
        let (_d, c) = cache(64 << 20);
        let data = b"chunk data";
        let key = B3Digest::of(data);
        c.put(Kind::Chunk, key.as_bytes(), data);
        let path = c.path(Kind::Chunk, key.as_bytes());
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(c.get(Kind::Chunk, key.as_bytes()), None);
        assert!(!path.exists(), "corrupt file left in place");
        assert_eq!(c.stats.verification_failures.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn checksums_entries_that_are_not_content_addressed() {
        let (_d, c) = cache(64 << 20);
        let key = [7u8; 20];
        c.put(Kind::PathInfo, &key, b"node");
        assert_eq!(c.get(Kind::PathInfo, &key).unwrap(), &b"node"[..]);
        let path = c.path(Kind::PathInfo, &key);
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x80;
        fs::write(&path, bytes).unwrap();
        assert_eq!(c.get(Kind::PathInfo, &key), None);
        assert!(!path.exists());
    }

    #[test]
    fn evicts_least_recently_used_to_stay_under_the_bound() {
        let max = 4 << 20;
        let (_d, c) = cache(max);
        let mut keys = Vec::new();
        for i in 0..40u8 {
            let data = vec![i; 256 << 10];
            let key = B3Digest::of(&data);
            c.put(Kind::Chunk, key.as_bytes(), &data);
            keys.push(key);
            let mut files = Vec::new();
            let mut total = 0;
            collect_files(&c.root, &mut files, &mut total);
            assert!(total <= c.max_bytes_with_slack(), "{total} bytes on disk");
        }
        // The newest entry survived, the oldest did not.
        assert!(c
            .get(Kind::Chunk, keys.last().unwrap().as_bytes())
            .is_some());
        assert!(c.get(Kind::Chunk, keys[0].as_bytes()).is_none());
        assert!(c.stats.disk_evictions.load(Ordering::Relaxed) > 0);
    }
}
