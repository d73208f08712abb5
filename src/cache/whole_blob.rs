//! Large unchunked blobs, read from a file: the shared object, or a
//! private spool file without a disk cache. The file's outboard is
//! verified against the digest once, in memory, when the blob is opened;
//! every read then checks each group it serves against it, so a file
//! rewritten in place after it was opened is caught on the next read.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use blake3::hazmat::ChainingValue;

use super::disk::Disk;
use super::lanes::Lane;
use super::layout::ObjectKind;
use super::outboard::{self, OutboardBuilder, GROUP};
use super::remote::Remote;
use super::source::ReadError;
use super::stats::Stats;
use crate::store::{B3Digest, StoreError};

/// Bytes of a whole blob read and verified at once (bounds the buffer).
const WHOLE_BLOB_PIECE: u64 = 64 * GROUP;

/// Opens large unchunked blobs: from the disk cache, or fetched from the
/// store into a file.
pub(super) struct WholeBlobs {
    pub(super) disk: Arc<Disk>,
    pub(super) remote: Arc<Remote>,
    pub(super) stats: Arc<Stats>,
    /// Where a blob goes without a disk cache (`None`: the system's
    /// temporary directory).
    pub(super) spool_dir: Option<PathBuf>,
}

/// One opened large blob.
pub(super) struct WholeBlob {
    file: File,
    /// The chaining value of every group, verified against the digest.
    leaves: Vec<ChainingValue>,
    /// Whether `file` is the shared object (removed if it turns out bad).
    shared: bool,
}

/// A cached copy that no longer matches its digest.
fn changed_under_us(digest: &B3Digest, offset: u64) -> StoreError {
    StoreError::Sink {
        digest: *digest,
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the cached copy does not match the blob's outboard at offset {offset}"),
        ),
    }
}

impl WholeBlobs {
    /// A large unchunked blob: the shared object with a verified outboard,
    /// or fetched from the store into a file (then published).
    pub(super) fn open(&self, digest: &B3Digest, size: u64) -> Result<WholeBlob, StoreError> {
        if let Some(objects) = self.disk.objects() {
            if let Some(file) = objects.open_blob(digest, size) {
                let groups = outboard::groups(size) as u64 * 32;
                let leaves = objects
                    .get(ObjectKind::Outboard, digest, Some(groups))
                    .and_then(|o| outboard::verified_leaves(digest, size, &o));
                let leaves = match leaves {
                    Some(leaves) => Some(leaves),
                    // No outboard, or a wrong one: rebuild it from the file,
                    // which checks every byte of it once more.
                    None => self.rebuild_outboard(&file, digest, size),
                };
                match leaves {
                    Some(leaves) => {
                        return Ok(WholeBlob {
                            file,
                            leaves,
                            shared: true,
                        })
                    }
                    None => objects.reject(ObjectKind::Blob, digest),
                }
            }
        }
        self.fetch(digest, size)
    }

    fn rebuild_outboard(
        &self,
        file: &File,
        digest: &B3Digest,
        size: u64,
    ) -> Option<Vec<ChainingValue>> {
        let mut builder = OutboardBuilder::default();
        let mut buf = vec![0; WHOLE_BLOB_PIECE as usize];
        let mut reader = file.take(size);
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => builder.update(&buf[..n]),
                Err(_) => return None,
            }
        }
        let outboard = builder.finish();
        let leaves = outboard::verified_leaves(digest, size, &outboard)?;
        if let Some(objects) = self.disk.objects().cloned() {
            let digest = *digest;
            self.disk
                .write_behind(Lane::Demand, outboard.len(), move || {
                    objects.put(ObjectKind::Outboard, &digest, &outboard)
                });
        }
        Some(leaves)
    }

    fn fetch(&self, digest: &B3Digest, size: u64) -> Result<WholeBlob, StoreError> {
        let sink_error = |source| StoreError::Sink {
            digest: *digest,
            source,
        };
        let temp = match self.disk.objects() {
            Some(objects) => objects.temp_file(),
            None => match &self.spool_dir {
                Some(dir) => tempfile::NamedTempFile::new_in(dir),
                None => tempfile::NamedTempFile::new(),
            },
        };
        let mut temp = temp.map_err(sink_error)?;
        let mut builder = OutboardBuilder::default();
        // One hashing pass: the outboard's root is compared with the digest.
        self.remote.call(
            self.remote
                .store()
                .stream_blob_unverified(digest, size, |piece| {
                    builder.update(piece);
                    temp.write_all(piece)
                }),
        )?;
        self.stats
            .store_bytes_fetched
            .fetch_add(size, Ordering::Relaxed);
        let outboard = builder.finish();
        let Some(leaves) = outboard::verified_leaves(digest, size, &outboard) else {
            let e = match outboard::root(size, &outboard) {
                Some(actual) => StoreError::BlobDigestMismatch {
                    digest: *digest,
                    actual,
                },
                None => changed_under_us(digest, 0),
            };
            self.stats.store_failed(&e);
            return Err(e);
        };
        // The same open file (read-write, so pread works): no second open.
        let file = temp.as_file().try_clone().map_err(sink_error)?;
        match self.disk.objects().cloned() {
            Some(objects) => {
                let digest = *digest;
                self.disk.write_behind(Lane::Demand, outboard.len(), move || {
                    objects.put(ObjectKind::Outboard, &digest, &outboard);
                    if let Err(e) = objects.publish_file(ObjectKind::Blob, &digest, temp) {
                        tracing::warn!(blob = %digest, error = %e, "keeping a fetched blob in the disk cache failed");
                    }
                });
                Ok(WholeBlob {
                    file,
                    leaves,
                    shared: true,
                })
            }
            // Without a disk cache the file is unlinked once closed.
            None => Ok(WholeBlob {
                file,
                leaves,
                shared: false,
            }),
        }
    }
}

impl WholeBlob {
    /// Whether the file is the shared object (to be removed if it turns
    /// out bad) rather than a private copy.
    pub(super) fn is_shared(&self) -> bool {
        self.shared
    }

    /// Bytes `offset..end` of the blob `digest` of `size` bytes, each
    /// group checked against the verified outboard.
    pub(super) fn read(
        &self,
        digest: &B3Digest,
        size: u64,
        offset: u64,
        end: u64,
        out: &mut dyn Write,
    ) -> Result<(), ReadError> {
        let mut at = offset / GROUP * GROUP;
        let mut buf = Vec::new();
        while at < end {
            let stop = (at + WHOLE_BLOB_PIECE).min(size);
            buf.resize((stop - at) as usize, 0);
            let read = self.file.read_exact_at(&mut buf, at);
            for (i, group) in buf.chunks(GROUP as usize).enumerate() {
                let group_at = at + i as u64 * GROUP;
                if group_at >= end {
                    break;
                }
                if read.is_err() || !outboard::group_matches(&self.leaves, group_at, group) {
                    return Err(ReadError::Store(Arc::new(changed_under_us(
                        digest, group_at,
                    ))));
                }
                let from = offset.max(group_at) - group_at;
                let to = end.min(group_at + group.len() as u64) - group_at;
                out.write_all(&group[from as usize..to as usize])
                    .map_err(ReadError::Guest)?;
            }
            at = stop;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::config::CacheConfig;
    use super::super::test_store::content;
    use super::*;
    use crate::store::memory::MemoryStore;

    /// Whole blobs over a disk cache in `dir`, in front of `store`.
    fn whole_blobs(
        store: &Arc<MemoryStore>,
        dir: &std::path::Path,
        runtime: &tokio::runtime::Runtime,
    ) -> WholeBlobs {
        let config = CacheConfig {
            disk_dir: Some(dir.to_owned()),
            ..CacheConfig::default()
        };
        let stats = Arc::new(Stats::default());
        let disk = Arc::new(Disk::open(&config, &stats, runtime.handle().clone()).unwrap());
        WholeBlobs {
            remote: Arc::new(Remote::new(
                store.clone(),
                runtime.handle().clone(),
                stats.clone(),
            )),
            disk,
            stats,
            spool_dir: None,
        }
    }

    fn read(
        blob: &WholeBlob,
        digest: &B3Digest,
        size: u64,
        offset: u64,
        end: u64,
    ) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        blob.read(digest, size, offset, end, &mut out)?;
        Ok(out)
    }

    #[test]
    fn a_blob_fetched_once_is_read_from_disk_and_a_rewrite_in_place_is_caught() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::default());
        let data = content(9, 5 * GROUP as usize + 123);
        let (digest, size) = store.add_blob(&data, None);

        let first = whole_blobs(&store, dir.path(), &runtime);
        let blob = first.open(&digest, size).unwrap();
        assert!(blob.is_shared());
        assert_eq!(read(&blob, &digest, size, 0, size).unwrap(), data);
        first.disk.flush();
        assert_eq!(store.calls.blob_reads.load(Relaxed), 1);

        // Another daemon on the same disk: no store call.
        let second = whole_blobs(&store, dir.path(), &runtime);
        let blob = second.open(&digest, size).unwrap();
        let (at, end) = (GROUP + 10, 3 * GROUP + 5);
        assert_eq!(
            read(&blob, &digest, size, at, end).unwrap(),
            data[at as usize..end as usize]
        );
        assert_eq!(store.calls.blob_reads.load(Relaxed), 1);

        // One byte of the shared file changed after it was opened: the
        // group that holds it is refused, the others still served.
        let path = second
            .disk
            .objects()
            .unwrap()
            .path(ObjectKind::Blob, &digest);
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(&[data[(2 * GROUP) as usize] ^ 1], 2 * GROUP)
            .unwrap();
        let e = read(&blob, &digest, size, at, end).unwrap_err();
        assert!(
            matches!(&e, ReadError::Store(e) if e.to_string().contains(&digest.to_string())),
            "{e:?}"
        );
        assert_eq!(
            read(&blob, &digest, size, 0, GROUP).unwrap(),
            data[..GROUP as usize]
        );
    }

    #[test]
    fn a_blob_the_store_sends_wrong_is_refused_with_its_digest() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::default());
        let (digest, size) = store.add_blob(&content(4, 3 * GROUP as usize), None);
        store.corrupt_blob(&digest);
        let blobs = whole_blobs(&store, dir.path(), &runtime);
        let Err(e) = blobs.open(&digest, size) else {
            panic!("a wrong blob was served");
        };
        assert!(
            matches!(e, StoreError::BlobDigestMismatch { digest: d, .. } if d == digest),
            "{e}"
        );
        blobs.disk.flush();
        assert!(!blobs
            .disk
            .objects()
            .unwrap()
            .contains(ObjectKind::Blob, &digest));
    }
}
