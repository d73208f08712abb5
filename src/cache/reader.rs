//! The read policy: how the bytes of an open file are obtained, verified
//! and handed out.
//!
//! - A chunked blob is read chunk by chunk through the fetch path; a
//!   random read of part of a chunk on disk reads and verifies only the
//!   16 KiB groups it touches, through the chunk's outboard (rewritten
//!   from the whole chunk when missing or wrong).
//! - A small unchunked blob is one chunk.
//! - A large unchunked blob lives in a file (the shared object, or a
//!   private spool file) with its outboard verified against the digest
//!   once, in memory; every read then checks each group it serves against
//!   that outboard, so a file rewritten in place after it was opened is
//!   caught on the next read, also through handles already open, and
//!   fetched again (`whole_blob.rs`).
//! - Sequential readers get the next chunks read ahead, in a window that
//!   doubles with every sequential read; one that starts at the beginning
//!   of a cold blob of many chunks gets them from one stream of the whole
//!   blob instead (`blob_stream.rs`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::blob_stream;
use super::config::CacheConfig;
use super::disk::Disk;
use super::fetch::ChunkFetcher;
use super::lanes::Lane;
use super::layout::{ObjectKind, MAX_IN_MEMORY_BLOB, SMALL_BLOB};
use super::metadata::MetadataCache;
use super::outboard::{self, GROUP};
use super::remote::Remote;
use super::source::{OpenBlob, ReadError};
use super::stats::Stats;
use super::whole_blob::{WholeBlob, WholeBlobs};
use crate::store::{B3Digest, Chunk, StoreError};

/// How many chunks past a sequential read are read ahead from the disk
/// cache: enough to keep the read-ahead thread busy while the guest works.
const DISK_READAHEAD: usize = 8;

/// The read policy over the metadata cache, the chunk fetcher and the
/// disk: it owns the state of open blobs (per handle and per blob).
pub(super) struct ReadPolicy {
    metadata: Arc<MetadataCache>,
    fetcher: Arc<ChunkFetcher>,
    disk: Arc<Disk>,
    stats: Arc<Stats>,
    whole_blobs: WholeBlobs,
    /// Chunks read ahead of a sequential reader at most (0: none).
    readahead_chunks: usize,
    /// Open blobs by digest and size, so concurrent readers of a large
    /// unchunked file fetch it once.
    blob_slots: Mutex<HashMap<(B3Digest, u64), Weak<BlobSlot>>>,
}

/// What the read policy keeps per open handle, behind the filesystem's
/// opaque [`OpenBlob`]: where the last read ended, how many reads in a row
/// were sequential (to size the read-ahead), how far read-ahead got, and
/// the blob's slot, shared by its handles.
pub(super) struct ReadState {
    digest: B3Digest,
    size: u64,
    slot: Arc<BlobSlot>,
    next_offset: AtomicU64,
    sequential_reads: AtomicU32,
    /// Index of the first chunk not yet handed to read-ahead.
    readahead_end: AtomicUsize,
    /// Where the access trace keeps how far into the blob the guest read
    /// (`None`: not traced).
    traced_extent: Option<Arc<AtomicU64>>,
}

/// What the read policy keeps per blob, shared by its open handles, so
/// that concurrent readers of a large unchunked file fetch it once.
#[derive(Default)]
pub(super) struct BlobSlot {
    source: Mutex<Option<Arc<BlobSource>>>,
    /// The one stream of the whole blob for its sequential readers (see
    /// `blob_stream.rs`), once tried; it ends when the last handle closes.
    stream: Mutex<StreamState>,
}

/// Whether an open blob's chunks come from one stream of the blob.
#[derive(Default)]
enum StreamState {
    /// Not tried yet.
    #[default]
    Untried,
    Running(blob_stream::BlobStream),
    /// Tried, or not worth it: read ahead chunk by chunk.
    Off,
}

/// How the bytes of one blob are obtained once it has been opened.
pub(super) enum BlobSource {
    /// Pieces fetched on demand through the cache (the blob itself is the
    /// single piece when it is small and unchunked).
    Chunks(Arc<Vec<Chunk>>),
    /// The whole blob in a file, checked on every read.
    Whole(WholeBlob),
}

/// Why [`ReadPolicy::chunk_part`] did not serve a part of a chunk.
#[derive(Debug, PartialEq)]
enum PartMiss {
    /// No disk cache, a small chunk, or the chunk is (about to be) in
    /// memory or not on disk.
    NotApplicable,
    /// The chunk is on disk but its outboard is missing or was wrong.
    NoOutboard,
}

impl ReadPolicy {
    pub(super) fn new(
        config: &CacheConfig,
        metadata: Arc<MetadataCache>,
        fetcher: Arc<ChunkFetcher>,
        disk: Arc<Disk>,
        remote: Arc<Remote>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            whole_blobs: WholeBlobs {
                disk: disk.clone(),
                remote,
                stats: stats.clone(),
                spool_dir: config.spool_dir.clone(),
            },
            metadata,
            fetcher,
            disk,
            stats,
            readahead_chunks: config.readahead_chunks,
            blob_slots: Mutex::new(HashMap::new()),
        }
    }

    /// Opens the blob `digest` of `size` bytes; its reads record how far
    /// they got in `traced_extent`, if given.
    pub(super) fn open(
        &self,
        digest: B3Digest,
        size: u64,
        traced_extent: Option<Arc<AtomicU64>>,
    ) -> OpenBlob {
        let mut slots = self.blob_slots.lock();
        let key = (digest, size);
        let slot = match slots.get(&key).and_then(Weak::upgrade) {
            Some(slot) => slot,
            None => {
                slots.retain(|_, w| w.strong_count() > 0);
                let slot = Arc::new(BlobSlot::default());
                slots.insert(key, Arc::downgrade(&slot));
                slot
            }
        };
        let state = ReadState {
            digest,
            size,
            slot,
            next_offset: AtomicU64::new(0),
            sequential_reads: AtomicU32::new(0),
            readahead_end: AtomicUsize::new(0),
            traced_extent,
        };
        OpenBlob::new(digest, size, state)
    }

    /// One read of an open blob; a whole blob found changed is dropped
    /// (and removed from disk) and read once more from a fresh copy.
    pub(super) fn read(
        &self,
        handle: &OpenBlob,
        offset: u64,
        count: u32,
        out: &mut dyn Write,
    ) -> Result<usize, ReadError> {
        let blob = handle
            .state::<ReadState>()
            .ok_or(ReadError::ForeignHandle)?;
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
        if let Some(extent) = &blob.traced_extent {
            extent.fetch_max(end, Ordering::Relaxed);
        }
        let sequential = blob.next_offset.swap(end, Ordering::Relaxed) == offset;
        let run = if sequential {
            blob.sequential_reads
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            blob.sequential_reads.store(0, Ordering::Relaxed);
            0
        };
        for attempt in 0..2 {
            let source = self
                .source(blob)
                .map_err(|e| ReadError::Store(Arc::new(e)))?;
            let result = match &*source {
                BlobSource::Chunks(chunks) => {
                    return self.read_chunks(blob, chunks, offset, end, run, out)
                }
                BlobSource::Whole(whole) => whole.read(&blob.digest, blob.size, offset, end, out),
            };
            match result {
                Ok(()) => return Ok((end - offset) as usize),
                Err(ReadError::Store(e)) if attempt == 0 => {
                    tracing::error!(error = %e, "a cached blob changed after it was verified; fetching it again");
                    self.stats
                        .verification_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if let (BlobSource::Whole(w), Some(objects)) = (&*source, self.disk.objects()) {
                        if w.is_shared() {
                            objects.reject(ObjectKind::Blob, &blob.digest);
                        }
                    }
                    let mut slot = blob.slot.source.lock();
                    if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &source)) {
                        *slot = None;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// The source of an open blob, set up on first read and shared after.
    fn source(&self, blob: &ReadState) -> Result<Arc<BlobSource>, StoreError> {
        let mut source = blob.slot.source.lock();
        if let Some(s) = source.as_ref() {
            return Ok(s.clone());
        }
        let whole = || {
            BlobSource::Chunks(Arc::new(vec![Chunk {
                digest: blob.digest,
                offset: 0,
                size: blob.size,
            }]))
        };
        let new = if blob.size <= SMALL_BLOB {
            // Read whole at once: asking for its chunk list first would cost
            // a round trip to save none.
            whole()
        } else {
            let chunks = self.metadata.chunk_list(&blob.digest, blob.size)?;
            if !chunks.is_empty() && chunks.iter().all(|c| c.size <= MAX_IN_MEMORY_BLOB) {
                BlobSource::Chunks(chunks)
            } else if blob.size <= MAX_IN_MEMORY_BLOB {
                whole()
            } else {
                BlobSource::Whole(self.whole_blobs.open(&blob.digest, blob.size)?)
            }
        };
        let new = Arc::new(new);
        *source = Some(new.clone());
        Ok(new)
    }

    /// The read of a chunked (or small) blob, with read-ahead.
    fn read_chunks(
        &self,
        blob: &ReadState,
        chunks: &Arc<Vec<Chunk>>,
        offset: u64,
        end: u64,
        run: u32,
        out: &mut dyn Write,
    ) -> Result<usize, ReadError> {
        let first = chunks.partition_point(|c| c.offset + c.size <= offset);
        // Before this read's own chunks are fetched, so that a stream
        // started now delivers them too.
        let streaming = run != 0 && self.readahead_chunks > 0 && {
            let touched = chunks.partition_point(|c| c.offset < end);
            self.read_ahead_by_stream(blob, chunks, first, touched.saturating_sub(1))
        };
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
            // A random read of part of a chunk on disk: only the groups it
            // touches are read and verified.
            let part = if run == 0 && to - from < chunk.size {
                self.chunk_part(chunk, from, to)
            } else {
                Err(PartMiss::NotApplicable)
            };
            match part {
                Ok(part) => out.write_all(&part).map_err(ReadError::Guest)?,
                Err(miss) => {
                    let data = self.fetcher.chunk(chunk).map_err(ReadError::Store)?;
                    if miss == PartMiss::NoOutboard {
                        self.write_outboard(chunk, &data);
                    }
                    out.write_all(&data[from as usize..to as usize])
                        .map_err(ReadError::Guest)?;
                }
            }
            written += (to - from) as usize;
            last = i;
        }
        if run == 0 {
            blob.readahead_end.store(0, Ordering::Relaxed);
        } else if self.readahead_chunks > 0 {
            if streaming {
                return Ok(written);
            }
            // Like the kernel's: the window doubles with every sequential
            // read (2, 4, 8, ...) up to the bound, so a reader that only
            // peeks at the start costs little. Chunks already handed over
            // are not looked at again.
            let window = self.readahead_chunks.min(1 << run.min(16));
            let end = chunks.len().min(last + 1 + window);
            let start = (last + 1).max(blob.readahead_end.load(Ordering::Relaxed));
            if start < end {
                let from_disk = (last + 1 + DISK_READAHEAD).saturating_sub(start);
                let queued = self.fetcher.read_ahead(&chunks[start..end], from_disk);
                blob.readahead_end.store(start + queued, Ordering::Relaxed);
            }
        }
        Ok(written)
    }

    /// Read-ahead through one stream of the whole blob: started for a
    /// sequential reader whose first read, of chunks `first..=last`, is at
    /// the start of a blob of many chunks that are not cached, and told
    /// where the reader is on every read after. False when the reader
    /// reads ahead chunk by chunk instead (no stream, or it ended early).
    fn read_ahead_by_stream(
        &self,
        blob: &ReadState,
        chunks: &Arc<Vec<Chunk>>,
        first: usize,
        last: usize,
    ) -> bool {
        let mut state = blob.slot.stream.lock();
        match &*state {
            StreamState::Running(stream) if !stream.failed() => {
                stream.reader_at(last);
                return true;
            }
            StreamState::Running(_) => {
                // It ended early: chunk by chunk from here.
                *state = StreamState::Off;
                blob.readahead_end.store(last + 1, Ordering::Relaxed);
                return false;
            }
            StreamState::Off => return false,
            StreamState::Untried => {}
        }
        *state = StreamState::Off;
        let worth_it = first == 0
            && chunks.len() >= blob_stream::MIN_CHUNKS
            && last + 1 < chunks.len()
            && chunks[last + 1..]
                .iter()
                .take(2)
                .all(|c| self.fetcher.worth_fetching_ahead(c));
        if worth_it {
            let stream = self.fetcher.start_blob_stream(
                blob.digest,
                blob.size,
                chunks.clone(),
                self.readahead_chunks,
                last,
            );
            *state = StreamState::Running(stream);
        }
        worth_it
    }

    /// Bytes `from..to` of `chunk` read from the disk cache without the
    /// rest of the chunk and verified through its outboard, when the chunk
    /// is not in memory or on its way.
    fn chunk_part(&self, chunk: &Chunk, from: u64, to: u64) -> Result<bytes::Bytes, PartMiss> {
        let Some(objects) = self.disk.objects() else {
            return Err(PartMiss::NotApplicable);
        };
        if chunk.size <= GROUP
            || from >= to
            || to > chunk.size
            || self.fetcher.in_memory_or_flight(chunk)
        {
            return Err(PartMiss::NotApplicable);
        }
        let groups = outboard::groups(chunk.size) as u64 * 32;
        let outboard = objects
            .get(ObjectKind::Outboard, &chunk.digest, Some(groups))
            .ok_or(PartMiss::NoOutboard)?;
        let (start, end) = outboard::aligned(from, to, chunk.size);
        let data = objects
            .get_range(
                ObjectKind::Chunk,
                &chunk.digest,
                chunk.size,
                start,
                (end - start) as usize,
            )
            .ok_or(PartMiss::NotApplicable)?;
        if !outboard::verify_range(&chunk.digest, chunk.size, &outboard, start, &data) {
            // Either file may be wrong: the whole-chunk read that follows
            // checks the chunk file, and the outboard is written again.
            tracing::warn!(digest = %chunk.digest, start, end, "part of a cached chunk failed verification through its outboard");
            objects.reject(ObjectKind::Outboard, &chunk.digest);
            return Err(PartMiss::NoOutboard);
        }
        self.stats.memory_hit(false);
        Ok(bytes::Bytes::from(data).slice((from - start) as usize..(to - start) as usize))
    }

    /// Writes the outboard of a verified chunk (one cached before
    /// outboards were, or whose outboard went missing or bad).
    fn write_outboard(&self, chunk: &Chunk, data: &[u8]) {
        if let (Some(objects), Some(outboard)) =
            (self.disk.objects().cloned(), outboard::compute(data))
        {
            let digest = chunk.digest;
            self.disk
                .write_behind(Lane::Demand, outboard.len(), move || {
                    objects.put(ObjectKind::Outboard, &digest, &outboard)
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::test_store::{quiet, Rig, CHUNK};
    use super::*;

    fn store_error(result: Result<Vec<u8>, ReadError>) -> Arc<StoreError> {
        match result {
            Err(ReadError::Store(e)) => e,
            other => panic!("expected a store error, got {other:?}"),
        }
    }

    #[test]
    fn reads_across_chunks_give_the_right_bytes_and_fetch_each_chunk_once() {
        let rig = Rig::new(quiet());
        let big = rig.open(b"big");
        let at = CHUNK as u64 - 10;
        assert_eq!(
            rig.read(&big, at, 20_000).unwrap(),
            rig.big[CHUNK - 10..CHUNK + 19_990]
        );
        let before = rig.store.calls.blob_reads.load(Relaxed);
        assert_eq!(before, 2, "the two chunks the read spans");
        // Again, and through another handle: from memory.
        assert_eq!(
            rig.read(&big, at, 20_000).unwrap(),
            rig.big[CHUNK - 10..CHUNK + 19_990]
        );
        let again = rig.open(b"big");
        assert_eq!(
            rig.read(&again, at + 5, 10).unwrap(),
            rig.big[CHUNK - 5..CHUNK + 5]
        );
        assert_eq!(rig.store.calls.blob_reads.load(Relaxed), before);
        // The end, and past it.
        let tail = rig.read(&big, rig.big.len() as u64 - 3, 4096).unwrap();
        assert_eq!(tail, rig.big[rig.big.len() - 3..]);
        assert!(rig
            .read(&big, rig.big.len() as u64, 4096)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_blob_that_fails_its_digest_never_reaches_the_reader() {
        let rig = Rig::new(quiet());
        let digest = B3Digest::of(&rig.small);
        rig.store.corrupt_blob(&digest);
        let small = rig.open(b"small");
        let e = store_error(rig.read(&small, 0, 4096));
        assert!(
            matches!(*e, StoreError::BlobDigestMismatch { digest: d, .. } if d == digest),
            "{e}"
        );
        // The daemon keeps serving: once the store sends the right bytes,
        // the same handle reads them.
        rig.store.repair_blob(&digest);
        assert!(rig.read(&small, 0, 8192).unwrap() == rig.small);
    }

    #[test]
    fn with_the_store_down_what_was_read_is_still_served() {
        let rig = Rig::new(quiet());
        let small = rig.open(b"small");
        let big = rig.open(b"big");
        assert_eq!(rig.read(&small, 0, 4096).unwrap(), rig.small[..4096]);
        rig.store.set_down(true);
        assert_eq!(rig.read(&small, 100, 50).unwrap(), rig.small[100..150]);
        let e = store_error(rig.read(&big, 0, 4096));
        assert!(matches!(*e, StoreError::Rpc { .. }), "{e}");
    }

    #[test]
    fn a_handle_of_another_source_is_refused() {
        let rig = Rig::new(quiet());
        let foreign = OpenBlob::new(B3Digest::of(b"x"), 1, ());
        let mut out = Vec::new();
        assert!(matches!(
            rig.cache.reads.read(&foreign, 0, 1, &mut out),
            Err(ReadError::ForeignHandle)
        ));
    }
}
