//! What the cache needs of a store, as a trait: the gRPC client
//! ([`super::StoreClient`]) implements it for the daemon, and the
//! in-memory store ([`super::memory::MemoryStore`]) for tests of the cache
//! without a process or a socket. Whatever implements it answers only
//! validated metadata (Directories against their digest, chunk lists
//! against the blob's size, path infos against the name asked for); blob
//! bytes come unverified, and the cache checks them against their digest.

use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::Bytes;

use super::answers::StorePathInfo;
use super::chunk_list::Chunk;
use super::digest::B3Digest;
use super::directory::{DirEntry, Directory};
use super::error::{Result, StoreError};

/// A store call in progress. Boxed, so that `dyn Store` can be shared
/// between the cache's threads without a type parameter on the cache.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A blob read in progress.
pub type Pieces<'a> = Box<dyn BlobPieces + 'a>;

/// The calls the cache makes.
pub trait Store: Send + Sync + 'static {
    /// The root node (and NAR facts) of the store path whose output hash
    /// is `hash`, if its name is `name`; `None` when the store does not
    /// have it (or has it under another name).
    fn path_info<'a>(
        &'a self,
        hash: [u8; 20],
        name: &'a [u8],
    ) -> StoreFuture<'a, Option<StorePathInfo>>;

    /// Every store path, up to `limit`, sorted by name.
    fn list_path_infos(&self, limit: usize) -> StoreFuture<'_, Vec<DirEntry>>;

    /// The Directory `digest` (checked against `expected_size` when given),
    /// then up to `limit - 1` of the Directories below it, each with its
    /// canonical encoding.
    fn directories<'a>(
        &'a self,
        digest: &'a B3Digest,
        expected_size: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(Directory, Bytes)>>;

    /// The chunks of a blob of `size` bytes, or an empty list if the store
    /// has no finer chunking; the chunk sizes add up to `size`.
    fn blob_chunks<'a>(&'a self, digest: &'a B3Digest, size: u64) -> StoreFuture<'a, Vec<Chunk>>;

    /// Opens a read of the blob `digest` of `size` bytes, to be taken
    /// piece by piece, unverified.
    fn blob_pieces<'a>(&'a self, digest: &'a B3Digest, size: u64) -> StoreFuture<'a, Pieces<'a>>;
}

/// The pieces of one blob as the store sends them: exactly its size in
/// all (more is cut off at once, fewer is an error), not yet checked
/// against its digest.
pub trait BlobPieces: Send {
    /// The next piece; `None` once exactly the blob's size came.
    fn next(&mut self) -> StoreFuture<'_, Option<Bytes>>;

    /// The error for a blob whose bytes so far disagree with its size.
    fn size_mismatch(&self) -> StoreError;

    /// Starts the call's time bound afresh: time the reader spent not
    /// reading is not the store's.
    fn resume(&mut self);
}

impl dyn Store {
    /// Streams exactly `size` bytes of the blob `digest` into `sink`
    /// WITHOUT checking them against the digest: the caller hashes what
    /// arrives its own way and compares before using any of it.
    pub async fn stream_blob_unverified(
        &self,
        digest: &B3Digest,
        size: u64,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<()> {
        let mut pieces = self.blob_pieces(digest, size).await?;
        while let Some(piece) = pieces.next().await? {
            sink(&piece).map_err(|source| StoreError::Sink {
                digest: *digest,
                source,
            })?;
        }
        Ok(())
    }
}

/// The daemon's store: the gRPC client, which validates every answer.
impl Store for super::StoreClient {
    fn path_info<'a>(
        &'a self,
        hash: [u8; 20],
        name: &'a [u8],
    ) -> StoreFuture<'a, Option<StorePathInfo>> {
        Box::pin(super::StoreClient::path_info(self, hash, name))
    }

    fn list_path_infos(&self, limit: usize) -> StoreFuture<'_, Vec<DirEntry>> {
        Box::pin(super::StoreClient::list_path_infos(self, limit))
    }

    fn directories<'a>(
        &'a self,
        digest: &'a B3Digest,
        expected_size: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(Directory, Bytes)>> {
        Box::pin(super::StoreClient::directories(
            self,
            digest,
            expected_size,
            limit,
        ))
    }

    fn blob_chunks<'a>(&'a self, digest: &'a B3Digest, size: u64) -> StoreFuture<'a, Vec<Chunk>> {
        Box::pin(super::StoreClient::blob_chunks(self, digest, size))
    }

    fn blob_pieces<'a>(&'a self, digest: &'a B3Digest, size: u64) -> StoreFuture<'a, Pieces<'a>> {
        Box::pin(async move {
            let messages = self.blob_messages(digest, size).await?;
            Ok(Box::new(messages) as Pieces<'a>)
        })
    }
}

impl BlobPieces for super::BlobMessages<'_> {
    fn next(&mut self) -> StoreFuture<'_, Option<Bytes>> {
        Box::pin(super::BlobMessages::next(self))
    }

    fn size_mismatch(&self) -> StoreError {
        super::BlobMessages::size_mismatch(self)
    }

    fn resume(&mut self) {
        super::BlobMessages::resume(self)
    }
}
