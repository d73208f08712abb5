//! The interface between the filesystem and what serves it: metadata and
//! file bytes, all verified before they are handed out. [`CachedStore`]
//! implements it over the store and the caches; the filesystem can run on
//! any other implementation (an in-memory one for tests and fuzzing).
//!
//! [`CachedStore`]: super::CachedStore

use std::any::Any;
use std::io;
use std::sync::Arc;

use crate::store::{B3Digest, DirEntry, Directory, StoreError, StorePathInfo};

/// What the filesystem asks for. Every answer is verified against the
/// digests of the metadata that led to it.
pub trait ContentSource: Send + Sync {
    /// The root node and NAR facts of the store path `name` (whose hash
    /// decodes to `hash`), or `None` if there is no such path.
    fn path_info(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<StorePathInfo>, StoreError>;

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
    /// A handle that another implementation opened (a bug of the caller).
    #[error("the handle was not opened by this content source")]
    ForeignHandle,
}

/// An open file as the filesystem holds it: which blob, how long, and the
/// implementation's own read state, which the filesystem never looks
/// into (read-ahead, streams and the access trace are the source's
/// business).
pub struct OpenBlob {
    digest: B3Digest,
    size: u64,
    state: Box<dyn Any + Send + Sync>,
}

impl OpenBlob {
    /// A handle on the blob `digest` of `size` bytes, with the
    /// implementation's `state` for its reads.
    pub fn new(digest: B3Digest, size: u64, state: impl Any + Send + Sync) -> Self {
        Self {
            digest,
            size,
            state: Box::new(state),
        }
    }

    pub fn digest(&self) -> &B3Digest {
        &self.digest
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The read state, if this handle's is a `T` (it is, when the handle
    /// came from the same implementation).
    pub fn state<T: Any>(&self) -> Option<&T> {
        self.state.downcast_ref()
    }
}
