//! Shared objects: chunks, whole blobs, their outboards and Directories,
//! each named by the BLAKE3 digest of its content in a directory every
//! daemon on the host may write. Nothing read from here is trusted: the
//! length must be the one the verified metadata expects (checked before
//! anything is allocated), and the bytes are checked against the name
//! before they are served (chunks here, Directories and outboards by the
//! caller, blob ranges through their outboard on every read). A file that
//! fails is removed and the object fetched again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::eviction::Eviction;
use super::files::{locked_temp_file, open_regular};
use super::layout::{create_dirs, fan_out, DiskCacheError, ObjectKind, MAX_DIRECTORY_BYTES};
use super::stats::Stats;
use crate::store::B3Digest;

/// Hits refresh a file's modification time at most this often.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// The shared objects as one daemon sees them.
pub struct SharedObjects {
    root: PathBuf,
    stats: Arc<Stats>,
    eviction: Arc<Eviction>,
}

impl SharedObjects {
    /// Opens (creating if needed) the objects under `root`, kept under
    /// their bound by `eviction`. Never waits for another daemon: the
    /// first eviction runs with the first write.
    pub fn open(
        root: &Path,
        eviction: Arc<Eviction>,
        stats: Arc<Stats>,
    ) -> Result<Self, DiskCacheError> {
        create_dirs(root, ObjectKind::ALL.iter().map(|k| k.dir()).chain(["tmp"]))?;
        Ok(Self {
            eviction,
            root: root.to_path_buf(),
            stats,
        })
    }

    /// The directory the objects live in (for the log).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn eviction(&self) -> &Eviction {
        &self.eviction
    }

    pub fn path(&self, kind: ObjectKind, digest: &B3Digest) -> PathBuf {
        fan_out(&self.root.join(kind.dir()), digest.as_bytes())
    }

    fn miss(&self) {
        self.stats.disk_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Opens an object that must be `len` bytes long (`None` for "at most
    /// [`MAX_DIRECTORY_BYTES`]"). Missing: `None`. Anything else wrong
    /// (not a regular file, a symlink, the wrong length): removed, `None`.
    fn open_checked(
        &self,
        kind: ObjectKind,
        digest: &B3Digest,
        len: Option<u64>,
    ) -> Option<(File, u64)> {
        let path = self.path(kind, digest);
        match open_regular(&path) {
            Ok((file, actual)) => {
                let fits = match len {
                    Some(len) => actual == len,
                    None => actual <= MAX_DIRECTORY_BYTES,
                };
                if fits {
                    return Some((file, actual));
                }
                tracing::error!(path = %path.display(), expected = ?len, actual, "cache object of the wrong length");
                self.reject(kind, digest);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.miss(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cache object is not a regular file");
                self.reject(kind, digest);
            }
        }
        None
    }

    /// An object of exactly `len` bytes (`None`: a Directory, bounded),
    /// read whole. Chunks are checked against their digest here;
    /// Directories and outboards must be checked by the caller.
    pub fn get(&self, kind: ObjectKind, digest: &B3Digest, len: Option<u64>) -> Option<Bytes> {
        let (mut file, actual) = self.open_checked(kind, digest, len)?;
        let mut data = super::buffers::take(actual as usize);
        if let Err(e) = (&mut file).take(actual).read_to_end(&mut data) {
            tracing::warn!(digest = %digest, error = %e, "reading a cache object failed; treated as a miss");
            self.miss();
            return None;
        }
        if data.len() as u64 != actual
            || (kind == ObjectKind::Chunk && B3Digest::of(&data) != *digest)
        {
            self.reject(kind, digest);
            return None;
        }
        self.touch(&file);
        self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        Some(super::buffers::freeze(data))
    }

    /// `len` bytes at `offset` of an object that must be `size` bytes
    /// long, unchecked (the caller verifies them through an outboard).
    pub fn get_range(
        &self,
        kind: ObjectKind,
        digest: &B3Digest,
        size: u64,
        offset: u64,
        len: usize,
    ) -> Option<Vec<u8>> {
        let (file, _) = self.open_checked(kind, digest, Some(size))?;
        let mut data = vec![0; len];
        file.read_exact_at(&mut data, offset).ok()?;
        self.touch(&file);
        self.stats.disk_range_reads.fetch_add(1, Ordering::Relaxed);
        Some(data)
    }

    /// Opens a whole blob of `size` bytes for ranged, verified reads.
    pub fn open_blob(&self, digest: &B3Digest, size: u64) -> Option<File> {
        let (file, _) = self.open_checked(ObjectKind::Blob, digest, Some(size))?;
        self.touch(&file);
        self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        Some(file)
    }

    /// Whether an object exists, without reading or checking it (one stat).
    pub fn contains(&self, kind: ObjectKind, digest: &B3Digest) -> bool {
        fs::symlink_metadata(self.path(kind, digest)).is_ok_and(|m| m.is_file())
    }

    /// Removes an object that failed its check.
    pub fn reject(&self, kind: ObjectKind, digest: &B3Digest) {
        let path = self.path(kind, digest);
        tracing::error!(path = %path.display(), "cache object failed verification; removed, will fetch again");
        self.stats.rejected.from_disk(kind.label());
        self.stats
            .verification_failures
            .fetch_add(1, Ordering::Relaxed);
        self.miss();
        let _ = fs::remove_file(&path);
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

    /// Stores a verified object (off the read path: may evict).
    pub fn put(&self, kind: ObjectKind, digest: &B3Digest, payload: &[u8]) {
        let path = self.path(kind, digest);
        if self.contains(kind, digest) {
            return;
        }
        let _room = self.admit(payload.len() as u64);
        let result = self.temp_file().and_then(|mut temp| {
            temp.write_all(payload)?;
            self.place(&path, temp)
        });
        if let Err(e) = result {
            tracing::warn!(kind = ?kind, digest = %digest, error = %e, "writing to the disk cache failed");
        }
    }

    /// A locked temporary file among the objects, to be filled and then
    /// published with [`Self::publish_file`] once verified.
    pub fn temp_file(&self) -> io::Result<tempfile::NamedTempFile> {
        locked_temp_file(&self.root.join("tmp"))
    }

    /// Moves a verified object into place (off the read path: may evict).
    pub fn publish_file(
        &self,
        kind: ObjectKind,
        digest: &B3Digest,
        temp: tempfile::NamedTempFile,
    ) -> io::Result<()> {
        let len = temp.as_file().metadata()?.len();
        let _room = self.admit(len);
        self.place(&self.path(kind, digest), temp)
    }

    /// Room for `len` more bytes (see [`Eviction::admit`]), taken before a
    /// temporary file is filled: files waiting for their turn would count
    /// against the bound too.
    pub(super) fn admit(&self, len: u64) -> parking_lot::MutexGuard<'_, ()> {
        self.stats
            .disk_bytes_written
            .fetch_add(len, Ordering::Relaxed);
        self.eviction.admit(len)
    }

    /// Renames `temp` to `path`, creating its fan-out directory only when
    /// the rename finds it missing (one system call per object, not two).
    fn place(&self, path: &Path, temp: tempfile::NamedTempFile) -> io::Result<()> {
        match temp.persist(path) {
            Ok(_) => Ok(()),
            Err(e) if e.error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
                e.file.persist(path).map_err(|e| e.error)?;
                Ok(())
            }
            Err(e) => Err(e.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> (tempfile::TempDir, SharedObjects) {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let eviction = Arc::new(Eviction::new(dir.path(), None, 64 << 20, stats.clone()));
        let o = SharedObjects::open(dir.path(), eviction, stats).unwrap();
        (dir, o)
    }

    #[test]
    fn a_flipped_byte_a_wrong_length_or_a_symlink_is_a_miss_and_removed() {
        let (dir, o) = objects();
        let data = b"chunk data".to_vec();
        let key = B3Digest::of(&data);
        o.put(ObjectKind::Chunk, &key, &data);
        assert_eq!(o.get(ObjectKind::Chunk, &key, Some(10)).unwrap(), &data[..]);
        // Another node naming the same digest with another size.
        assert_eq!(o.get(ObjectKind::Chunk, &key, Some(11)), None);
        let path = o.path(ObjectKind::Chunk, &key);
        assert!(!path.exists(), "a chunk of the wrong length was left");

        o.put(ObjectKind::Chunk, &key, &data);
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(o.get(ObjectKind::Chunk, &key, Some(10)), None);
        assert!(!path.exists(), "corrupt file left in place");

        let honest = dir.path().join("honest");
        fs::write(&honest, &data).unwrap();
        std::os::unix::fs::symlink(&honest, &path).unwrap();
        assert_eq!(o.get(ObjectKind::Chunk, &key, Some(10)), None);
        assert!(
            fs::symlink_metadata(&path).is_err(),
            "symlink left in place"
        );
        assert_eq!(o.stats.verification_failures.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_object_another_daemon_wrote_is_found_and_checked_like_its_own() {
        let (dir, mine) = objects();
        let stats = Arc::new(Stats::default());
        let eviction = Arc::new(Eviction::new(dir.path(), None, 64 << 20, stats.clone()));
        let theirs = SharedObjects::open(dir.path(), eviction, stats).unwrap();
        let data = vec![7u8; 40_000];
        let key = B3Digest::of(&data);
        assert!(!mine.contains(ObjectKind::Chunk, &key));
        theirs.put(ObjectKind::Chunk, &key, &data);
        assert!(mine.contains(ObjectKind::Chunk, &key));
        assert_eq!(
            mine.get(ObjectKind::Chunk, &key, Some(40_000)).unwrap(),
            data
        );
        // A range is read as it is: its caller checks it (an outboard).
        assert_eq!(
            mine.get_range(ObjectKind::Chunk, &key, 40_000, 100, 10)
                .unwrap(),
            data[100..110]
        );
        // Of another length: refused, and removed for both.
        assert!(mine
            .get_range(ObjectKind::Chunk, &key, 40_001, 0, 10)
            .is_none());
        assert!(!theirs.contains(ObjectKind::Chunk, &key));
    }

    #[test]
    fn a_published_whole_blob_opens_only_at_its_own_size() {
        let (_dir, o) = objects();
        let data = vec![3u8; 70_000];
        let key = B3Digest::of(&data);
        let mut temp = o.temp_file().unwrap();
        temp.write_all(&data).unwrap();
        o.publish_file(ObjectKind::Blob, &key, temp).unwrap();
        let file = o.open_blob(&key, 70_000).unwrap();
        let mut back = vec![0; 70_000];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, data);
        assert!(o.open_blob(&key, 69_999).is_none());
        assert!(
            !o.contains(ObjectKind::Blob, &key),
            "a blob of the wrong size was left"
        );
        assert_eq!(o.stats.disk_bytes_written.load(Ordering::Relaxed), 70_000);
    }
}
