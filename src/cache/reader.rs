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
//!   fetched again.
//! - Sequential readers get the next chunks read ahead, in a window that
//!   doubles with every sequential read; one that starts at the beginning
//!   of a cold blob of many chunks gets them from one stream of the whole
//!   blob instead (`blob_stream.rs`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use blake3::hazmat::ChainingValue;
use parking_lot::Mutex;

use super::blob_stream;
use super::lanes::Lane;
use super::layout::{ObjectKind, MAX_IN_MEMORY_BLOB, SMALL_BLOB};
use super::outboard::{self, OutboardBuilder, GROUP};
use super::source::FileOrigin;
use super::source::{ContentSource, OpenBlob, ReadError};
use super::CachedStore;
use crate::store::{B3Digest, Chunk, DirEntry, Directory, StoreError};

/// How many chunks past a sequential read are read ahead from the disk
/// cache: enough to keep the read-ahead thread busy while the guest works.
const DISK_READAHEAD: usize = 8;
/// Bytes of a whole blob read and verified at once (bounds the buffer).
const WHOLE_BLOB_PIECE: u64 = 64 * GROUP;

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

impl CachedStore {
    fn this(&self) -> Arc<Self> {
        self.this
            .upgrade()
            .expect("a CachedStore is only used through its Arc")
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
            let chunks = self.chunk_list(&blob.digest, blob.size)?;
            if !chunks.is_empty() && chunks.iter().all(|c| c.size <= MAX_IN_MEMORY_BLOB) {
                BlobSource::Chunks(chunks)
            } else if blob.size <= MAX_IN_MEMORY_BLOB {
                whole()
            } else {
                BlobSource::Whole(self.whole_blob(&blob.digest, blob.size)?)
            }
        };
        let new = Arc::new(new);
        *source = Some(new.clone());
        Ok(new)
    }

    /// A large unchunked blob: the shared object with a verified outboard,
    /// or fetched from the store into a file (then published).
    fn whole_blob(&self, digest: &B3Digest, size: u64) -> Result<WholeBlob, StoreError> {
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
        self.fetch_whole_blob(digest, size)
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

    fn fetch_whole_blob(&self, digest: &B3Digest, size: u64) -> Result<WholeBlob, StoreError> {
        let sink_error = |source| StoreError::Sink {
            digest: *digest,
            source,
        };
        let temp = match self.disk.objects() {
            Some(objects) => objects.temp_file(),
            None => match &self.config.spool_dir {
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

    /// Bytes `offset..end` of a whole blob, each group checked.
    fn read_whole(
        &self,
        blob: &ReadState,
        whole: &WholeBlob,
        offset: u64,
        end: u64,
        out: &mut dyn Write,
    ) -> Result<(), ReadError> {
        let mut at = offset / GROUP * GROUP;
        let mut buf = Vec::new();
        while at < end {
            let stop = (at + WHOLE_BLOB_PIECE).min(blob.size);
            buf.resize((stop - at) as usize, 0);
            let read = whole.file.read_exact_at(&mut buf, at);
            for (i, group) in buf.chunks(GROUP as usize).enumerate() {
                let group_at = at + i as u64 * GROUP;
                if group_at >= end {
                    break;
                }
                if read.is_err() || !outboard::group_matches(&whole.leaves, group_at, group) {
                    return Err(ReadError::Store(Arc::new(changed_under_us(
                        &blob.digest,
                        group_at,
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
        let this = self.this();
        let first = chunks.partition_point(|c| c.offset + c.size <= offset);
        // Before this read's own chunks are fetched, so that a stream
        // started now delivers them too.
        let streaming = run != 0 && self.config.readahead_chunks > 0 && {
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
                    let data = this.chunk(chunk).map_err(ReadError::Store)?;
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
        } else if self.config.readahead_chunks > 0 {
            if streaming {
                return Ok(written);
            }
            // Like the kernel's: the window doubles with every sequential
            // read (2, 4, 8, ...) up to the bound, so a reader that only
            // peeks at the start costs little. Chunks already handed over
            // are not looked at again.
            let window = self.config.readahead_chunks.min(1 << run.min(16));
            let end = chunks.len().min(last + 1 + window);
            let start = (last + 1).max(blob.readahead_end.load(Ordering::Relaxed));
            if start < end {
                let from_disk = (last + 1 + DISK_READAHEAD).saturating_sub(start);
                let queued = this.fetcher.read_ahead(&chunks[start..end], from_disk);
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
                .all(|c| !self.fetcher.in_memory_or_flight(c) && !self.fetcher.on_disk(c));
        if worth_it {
            let stream = self.fetcher.start_blob_stream(
                blob.digest,
                blob.size,
                chunks.clone(),
                self.config.readahead_chunks,
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

/// Why [`CachedStore::chunk_part`] did not serve a part of a chunk.
#[derive(Debug, PartialEq)]
enum PartMiss {
    /// No disk cache, a small chunk, or the chunk is (about to be) in
    /// memory or not on disk.
    NotApplicable,
    /// The chunk is on disk but its outboard is missing or was wrong.
    NoOutboard,
}

impl ContentSource for CachedStore {
    fn path_info(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<DirEntry>, StoreError> {
        CachedStore::path_info(self, hash, name)
    }

    fn list_path_infos(&self, limit: usize) -> Result<Vec<DirEntry>, StoreError> {
        CachedStore::list_path_infos(self, limit)
    }

    fn directory(&self, digest: &B3Digest, size: u64) -> Result<Arc<Directory>, StoreError> {
        CachedStore::directory(self, digest, size)
    }

    fn open_blob(&self, digest: B3Digest, size: u64, origin: Option<&FileOrigin>) -> OpenBlob {
        let traced_extent = origin.and_then(|o| self.prefetch_file_opened(o, digest, size));
        let mut slots = self.blob_slots.lock();
        let key = (digest, size);
        let slot = match slots.get(&key).and_then(std::sync::Weak::upgrade) {
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
    fn read(
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
                BlobSource::Whole(whole) => self.read_whole(blob, whole, offset, end, out),
            };
            match result {
                Ok(()) => return Ok((end - offset) as usize),
                Err(ReadError::Store(e)) if attempt == 0 => {
                    tracing::error!(error = %e, "a cached blob changed after it was verified; fetching it again");
                    self.stats
                        .verification_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if let (BlobSource::Whole(w), Some(objects)) = (&*source, self.disk.objects()) {
                        if w.shared {
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
            rig.cache.read(&foreign, 0, 1, &mut out),
            Err(ReadError::ForeignHandle)
        ));
    }
}
