//! The interface between the filesystem and what serves it: metadata and
//! file bytes, all verified before they are handed out. [`CachedStore`]
//! implements it over the store and the caches; the filesystem can run on
//! any other implementation (an in-memory one for tests and fuzzing).
//!
//! [`CachedStore`]: super::CachedStore

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::store::{B3Digest, DirEntry, Directory, StoreError};

/// What the filesystem asks for. Every answer is verified against the
/// digests of the metadata that led to it.
pub trait ContentSource: Send + Sync {
    /// The root node of the store path `name` (whose hash decodes to
    /// `hash`), or `None` if there is no such path.
    fn path_info(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<DirEntry>, StoreError>;

    /// Up to `limit` store paths (`--list-root`).
    fn list_path_infos(&self, limit: usize) -> Result<Vec<DirEntry>, StoreError>;

    /// The Directory `digest`, announced by its parent as `size`.
    fn directory(&self, digest: &B3Digest, size: u64) -> Result<Arc<Directory>, StoreError>;

    /// Opens the file content `digest` of `size` bytes, found by the guest
    /// at `origin` (if known: for the access trace and the prefetch);
    /// nothing is fetched yet.
    fn open_blob(&self, digest: B3Digest, size: u64, origin: Option<&FileOrigin>) -> OpenBlob;

    /// Writes up to `count` verified bytes at `offset` of `blob` to `out`
    /// and returns how many (0 at or past the end).
    fn read(
        &self,
        blob: &OpenBlob,
        offset: u64,
        count: u32,
        out: &mut dyn io::Write,
    ) -> Result<usize, ReadError>;
}

/// Where the guest found a file it opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOrigin {
    /// The hash part of its store path's name.
    pub store_path: [u8; 20],
    /// The Directory holding it (digest, announced size); `None` for a
    /// store path that is a file.
    pub directory: Option<(B3Digest, u64)>,
}

/// Why a read failed: the store or cache (EIO, logged with the digest) or
/// the guest's buffer (its own errno).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("copying to the guest: {0}")]
    Guest(io::Error),
}

/// What an implementation keeps per blob, shared by its open handles.
#[derive(Default)]
pub struct BlobSlot {
    pub(super) source: Mutex<Option<Arc<super::reader::BlobSource>>>,
    /// The one stream of the whole blob for its sequential readers (see
    /// `blob_stream.rs`), once tried; it ends when the last handle closes.
    pub(super) stream: Mutex<StreamState>,
}

/// An open file: which blob, how long, its shared slot, and where the last
/// read ended, how many reads in a row were sequential (to size the
/// read-ahead) and how far read-ahead got.
pub struct OpenBlob {
    pub(super) digest: B3Digest,
    pub(super) size: u64,
    pub(super) slot: Arc<BlobSlot>,
    pub(super) next_offset: AtomicU64,
    pub(super) sequential_reads: AtomicU32,
    /// Index of the first chunk not yet handed to read-ahead.
    pub(super) readahead_end: AtomicUsize,
    /// Where the access trace keeps how far into the blob the guest read
    /// (`None`: not traced).
    pub(super) traced_extent: Option<Arc<AtomicU64>>,
}

/// Whether an open blob's chunks come from one stream of the blob.
#[derive(Default)]
pub(super) enum StreamState {
    /// Not tried yet.
    #[default]
    Untried,
    Running(super::blob_stream::BlobStream),
    /// Tried, or not worth it: read ahead chunk by chunk.
    Off,
}

impl OpenBlob {
    /// A handle on `slot` (an implementation's own per-blob state).
    pub fn new(digest: B3Digest, size: u64, slot: Arc<BlobSlot>) -> Self {
        Self {
            digest,
            size,
            slot,
            next_offset: AtomicU64::new(0),
            sequential_reads: AtomicU32::new(0),
            readahead_end: AtomicUsize::new(0),
            traced_extent: None,
        }
    }

    pub fn digest(&self) -> &B3Digest {
        &self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}
