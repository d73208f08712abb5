//! Reading file contents: a ranged read fetches only the chunks it touches,
//! each verified on its own (through the cache layer); a blob without finer
//! chunking is fetched whole, verified, and served from memory when small or
//! from a file when large. Sequential readers get the next chunks fetched
//! ahead. Nothing reaches the guest before its digest matched.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use fuse_backend_rs::api::filesystem::ZeroCopyWriter;
use parking_lot::Mutex;

use crate::cache::{CachedStore, PartMiss};
use crate::store::{B3Digest, Chunk, StoreError};

/// Blobs (or chunks) up to this size are fetched into memory; larger blobs
/// without finer chunking go to a file instead.
pub const MAX_IN_MEMORY_BLOB: u64 = 4 << 20;
/// Blobs up to this size are read whole without asking for their chunks
/// (one chunk of a content-defined chunker is about this large anyway).
const SMALL_BLOB: u64 = 256 << 10;
/// How many chunks past a sequential read are read ahead from the disk
/// cache: enough to keep the read-ahead thread busy while the guest works.
const DISK_READAHEAD: usize = 8;

/// How the bytes of one blob are obtained once it has been opened.
enum BlobSource {
    /// Pieces fetched on demand through the cache (the blob itself is the
    /// single piece when it is small and unchunked).
    Chunks(Arc<Vec<Chunk>>),
    /// The whole blob, verified, in a file.
    File(File),
}

/// Shared by every open handle of the same blob, so concurrent readers of a
/// large unchunked file fetch it once.
#[derive(Default)]
struct BlobSlot {
    source: Mutex<Option<Arc<BlobSource>>>,
}

/// An open file: which blob, how long, its shared source, where the last
/// read ended, how many reads in a row were sequential (to size the
/// read-ahead) and how far read-ahead got.
pub struct OpenBlob {
    digest: B3Digest,
    size: u64,
    slot: Arc<BlobSlot>,
    next_offset: AtomicU64,
    sequential_reads: AtomicU32,
    /// Index of the first chunk not yet handed to read-ahead.
    readahead_end: AtomicUsize,
}

impl OpenBlob {
    pub fn digest(&self) -> &B3Digest {
        &self.digest
    }
}

/// Serves file contents for the filesystem.
pub struct BlobReader {
    store: Arc<CachedStore>,
    readahead_chunks: usize,
    slots: Mutex<HashMap<B3Digest, Weak<BlobSlot>>>,
}

impl BlobReader {
    pub fn new(store: Arc<CachedStore>, readahead_chunks: usize) -> Self {
        Self {
            store,
            readahead_chunks,
            slots: Mutex::new(HashMap::new()),
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
        OpenBlob {
            digest,
            size,
            slot,
            next_offset: AtomicU64::new(0),
            sequential_reads: AtomicU32::new(0),
            readahead_end: AtomicUsize::new(0),
        }
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
                return Err(ReadError::Store(Arc::new(StoreError::BlobSizeMismatch {
                    digest: blob.digest,
                    expected: 0,
                    actual: 1,
                })));
            }
            return Ok(0);
        }
        if offset >= blob.size {
            return Ok(0);
        }
        let end = blob.size.min(offset.saturating_add(u64::from(count)));
        let sequential = blob.next_offset.swap(end, Ordering::Relaxed) == offset;
        let run = if sequential {
            blob.sequential_reads
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            blob.sequential_reads.store(0, Ordering::Relaxed);
            0
        };
        match &*self.source(blob)? {
            BlobSource::Chunks(chunks) => {
                let first = chunks.partition_point(|c| c.offset + c.size <= offset);
                let mut written = 0;
                let mut last = first;
                for (i, chunk) in chunks
                    .iter()
                    .enumerate()
                    .skip(first)
                    .take_while(|(_, c)| c.offset < end)
                {
                    let from = offset.max(chunk.offset) - chunk.offset;
                    let to = end.min(chunk.offset + chunk.size) - chunk.offset;
                    // A random read of part of a chunk on disk: only the
                    // groups it touches are read and verified.
                    let part = if run == 0 && to - from < chunk.size {
                        self.store.chunk_part(chunk, from, to)
                    } else {
                        Err(PartMiss::NotApplicable)
                    };
                    match part {
                        Ok(part) => w.write_all(&part).map_err(ReadError::Guest)?,
                        Err(miss) => {
                            let data = self.store.chunk(chunk).map_err(ReadError::Store)?;
                            if miss == PartMiss::NoOutboard {
                                self.store.write_outboard(chunk, &data);
                            }
                            w.write_all(&data[from as usize..to as usize])
                                .map_err(ReadError::Guest)?;
                        }
                    }
                    written += (to - from) as usize;
                    last = i;
                }
                if run == 0 {
                    blob.readahead_end.store(0, Ordering::Relaxed);
                } else if self.readahead_chunks > 0 {
                    // Like the kernel's: the window doubles with every
                    // sequential read (2, 4, 8, ...) up to the bound, so a
                    // reader that only peeks at the start costs little.
                    // Chunks already handed over are not looked at again.
                    let window = self.readahead_chunks.min(1 << run.min(16));
                    let end = chunks.len().min(last + 1 + window);
                    let start = (last + 1).max(blob.readahead_end.load(Ordering::Relaxed));
                    if start < end {
                        let from_disk = (last + 1 + DISK_READAHEAD).saturating_sub(start);
                        let queued = self.store.prefetch(&chunks[start..end], from_disk);
                        blob.readahead_end.store(start + queued, Ordering::Relaxed);
                    }
                }
                Ok(written)
            }
            BlobSource::File(file) => {
                // The copy uses pread at an explicit offset, so readers can
                // share the descriptor; this handle borrows it without
                // duplicating it (no syscall) and never closes it.
                // SAFETY: the fd stays open while `file` (kept alive by the
                // source Arc held here) lives; ManuallyDrop never closes it.
                let mut shared =
                    std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(file.as_raw_fd()) });
                let len = (end - offset) as usize;
                w.write_all_from(&mut *shared, len, offset)
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
        let store_error = |e| ReadError::Store(Arc::new(e));
        let whole = || {
            BlobSource::Chunks(Arc::new(vec![Chunk {
                digest: blob.digest,
                offset: 0,
                size: blob.size,
            }]))
        };
        if blob.size <= SMALL_BLOB {
            // Read whole at once: asking for its chunk list first would cost
            // a round trip to save none.
            let new = Arc::new(whole());
            *source = Some(new.clone());
            return Ok(new);
        }
        let chunks = self
            .store
            .chunk_list(&blob.digest, blob.size)
            .map_err(store_error)?;
        let new = if !chunks.is_empty() && chunks.iter().all(|c| c.size <= MAX_IN_MEMORY_BLOB) {
            BlobSource::Chunks(chunks)
        } else if blob.size <= MAX_IN_MEMORY_BLOB {
            whole()
        } else {
            BlobSource::File(
                self.store
                    .blob_file(&blob.digest, blob.size)
                    .map_err(store_error)?,
            )
        };
        let new = Arc::new(new);
        *source = Some(new.clone());
        Ok(new)
    }
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
