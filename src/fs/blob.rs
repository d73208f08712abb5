//! File contents for the filesystem: it opens a blob and asks for bytes;
//! how they are fetched, verified and read ahead is the [`ContentSource`]'s
//! business (see `cache/reader.rs`). Nothing reaches the guest before its
//! digest matched.

use std::sync::Arc;

use fuse_backend_rs::api::filesystem::ZeroCopyWriter;

pub use crate::cache::MAX_IN_MEMORY_BLOB;
use crate::cache::{ContentSource, FileOrigin, OpenBlob, ReadError};
use crate::store::B3Digest;

/// Serves file contents for the filesystem.
pub struct BlobReader {
    source: Arc<dyn ContentSource>,
}

impl BlobReader {
    pub fn new(source: Arc<dyn ContentSource>) -> Self {
        Self { source }
    }

    /// Opens the blob `digest` of `size` bytes, found at `origin`.
    /// Nothing is fetched yet.
    pub fn open(&self, digest: B3Digest, size: u64, origin: Option<&FileOrigin>) -> OpenBlob {
        self.source.open_blob(digest, size, origin)
    }

    /// Copies up to `count` bytes at `offset` of `blob` into `w`.
    pub fn read(
        &self,
        blob: &OpenBlob,
        w: &mut dyn ZeroCopyWriter,
        count: u32,
        offset: u64,
    ) -> Result<usize, ReadError> {
        self.source.read(blob, offset, count, w)
    }
}
