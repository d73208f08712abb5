//! Reading file contents: a ranged read fetches only the chunks it touches,
//! each verified on its own; a blob without finer chunking is fetched whole,
//! verified, and served from memory when small or from an unlinked
//! temporary file when large. Nothing reaches the guest before its digest
//! matched.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use fuse_backend_rs::api::filesystem::ZeroCopyWriter;
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::store::{B3Digest, Chunk, StoreClient, StoreError};

/// Blobs (or chunks) up to this size are fetched into memory; larger blobs
/// without finer chunking are spooled to a temporary file instead.
pub const MAX_IN_MEMORY_BLOB: u64 = 4 << 20;

#[derive(Clone)]
struct ByteWeighter;

impl quick_cache::Weighter<B3Digest, Bytes> for ByteWeighter {
    fn weight(&self, _: &B3Digest, value: &Bytes) -> u64 {
        value.len() as u64
    }
}

/// How the bytes of one blob are obtained once it has been opened.
enum BlobSource {
    /// Pieces fetched on demand through the chunk cache (the blob itself is
    /// the single piece when it is small and unchunked).
    Chunks(Vec<Chunk>),
    /// The whole blob, verified, in an unlinked temporary file.
    Spooled(File),
}

/// Shared by every open handle of the same blob, so concurrent readers of a
/// large unchunked file spool it once.
#[derive(Default)]
struct BlobSlot {
    source: Mutex<Option<Arc<BlobSource>>>,
}

/// An open file: which blob, how long, and its shared source.
pub struct OpenBlob {
    digest: B3Digest,
    size: u64,
    slot: Arc<BlobSlot>,
}

impl OpenBlob {
    pub fn digest(&self) -> &B3Digest {
        &self.digest
    }
}

/// Fetches, verifies and caches blob contents for the filesystem.
pub struct BlobReader {
    client: StoreClient,
    runtime: Handle,
    chunks: quick_cache::sync::Cache<B3Digest, Bytes, ByteWeighter>,
    slots: Mutex<HashMap<B3Digest, Weak<BlobSlot>>>,
    spool_dir: Option<PathBuf>,
}

impl BlobReader {
    pub fn new(
        client: StoreClient,
        runtime: Handle,
        chunk_cache_bytes: u64,
        spool_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            client,
            runtime,
            chunks: quick_cache::sync::Cache::with_weighter(
                (chunk_cache_bytes / (256 << 10)).max(16) as usize,
                chunk_cache_bytes,
                ByteWeighter,
            ),
            slots: Mutex::new(HashMap::new()),
            spool_dir,
        }
    }

    /// Opens the blob `digest` of `size` bytes. Nothing is fetched yet.
    pub fn open(&self, digest: B3Digest, size: u64) -> OpenBlob {
        let mut slots = self.slots.lock();
        let slot = match slots.get(&digest).and_then(Weak::upgrade) {
            Some(slot) => slot,
            None => {
                slots.retain(|_, w| w.strong_count() > 0);
                let slot = Arc::new(BlobSlot::default());
                slots.insert(digest, Arc::downgrade(&slot));
                slot
            }
        };
        OpenBlob { digest, size, slot }
    }

    /// Copies up to `count` bytes at `offset` of `blob` into `w`.
    pub fn read(
        &self,
        blob: &OpenBlob,
        w: &mut dyn ZeroCopyWriter,
        count: u32,
        offset: u64,
    ) -> Result<usize, ReadError> {
        if blob.size == 0 {
            if blob.digest != B3Digest::of(b"") {
                return Err(ReadError::Store(StoreError::BlobSizeMismatch {
                    digest: blob.digest,
                    expected: 0,
                    actual: 1,
                }));
            }
            return Ok(0);
        }
        if offset >= blob.size {
            return Ok(0);
        }
        let end = blob.size.min(offset.saturating_add(u64::from(count)));
        match &*self.source(blob)? {
            BlobSource::Chunks(chunks) => {
                let first = chunks.partition_point(|c| c.offset + c.size <= offset);
                let mut written = 0;
                for chunk in chunks[first..].iter().take_while(|c| c.offset < end) {
                    let data = self.chunk(chunk)?;
                    let from = (offset.max(chunk.offset) - chunk.offset) as usize;
                    let to = (end.min(chunk.offset + chunk.size) - chunk.offset) as usize;
                    w.write_all(&data[from..to]).map_err(ReadError::Guest)?;
                    written += to - from;
                }
                Ok(written)
            }
            BlobSource::Spooled(file) => {
                let mut file = file.try_clone().map_err(ReadError::Local)?;
                let len = (end - offset) as usize;
                w.write_all_from(&mut file, len, offset)
                    .map_err(ReadError::Guest)?;
                Ok(len)
            }
        }
    }

    /// The source of an open blob, set up on first read and shared after.
    fn source(&self, blob: &OpenBlob) -> Result<Arc<BlobSource>, ReadError> {
        let mut source = blob.slot.source.lock();
        if let Some(s) = source.as_ref() {
            return Ok(s.clone());
        }
        let chunks = self
            .runtime
            .block_on(self.client.blob_chunks(&blob.digest, blob.size))?;
        let whole = [Chunk {
            digest: blob.digest,
            offset: 0,
            size: blob.size,
        }];
        let new = if chunks.iter().all(|c| c.size <= MAX_IN_MEMORY_BLOB) && !chunks.is_empty() {
            BlobSource::Chunks(chunks)
        } else if blob.size <= MAX_IN_MEMORY_BLOB {
            BlobSource::Chunks(whole.to_vec())
        } else {
            BlobSource::Spooled(self.spool(&blob.digest, blob.size)?)
        };
        let new = Arc::new(new);
        *source = Some(new.clone());
        Ok(new)
    }

    /// One chunk's verified bytes; concurrent readers share one fetch.
    fn chunk(&self, chunk: &Chunk) -> Result<Bytes, ReadError> {
        self.chunks.get_or_insert_with(&chunk.digest, || {
            self.runtime
                .block_on(self.client.read_blob_to_memory(&chunk.digest, chunk.size))
                .map_err(ReadError::Store)
        })
    }

    /// Fetches a whole blob into an unlinked temporary file.
    fn spool(&self, digest: &B3Digest, size: u64) -> Result<File, ReadError> {
        let mut file = match &self.spool_dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        }
        .map_err(ReadError::Local)?;
        self.runtime.block_on(
            self.client
                .read_blob(digest, size, |piece| file.write_all(piece)),
        )?;
        Ok(file)
    }
}

/// Why a read failed: the store (EIO, logged with the digest), this host
/// (EIO) or the guest's buffer (its own errno).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("temporary file for a blob: {0}")]
    Local(io::Error),
    #[error("copying to the guest: {0}")]
    Guest(io::Error),
}
