//! Read-ahead of a chunked blob in one store call. A reader that starts at
//! offset 0 and reads on gets the blob's chunks from one
//! BlobService.Read of the whole blob, split at the chunk boundaries of
//! its chunk list, instead of one Read per chunk: the store then does the
//! work of one call, not of thousands.
//!
//! Each chunk is still verified by its own digest before anyone gets it,
//! and what the stream is about to deliver is claimed in `in_flight`, so a
//! reader that gets there first waits for the stream rather than fetching
//! it again. What it delivers waits there, outside the memory cache's
//! bound, until the reader takes it, so a small memory cache does not drop
//! a chunk before it is read. The stream stays at most the read-ahead
//! window ahead of its reader (it stops taking messages, and flow control
//! holds the store back), ends when the file is released or the reader
//! wanders off, and on any failure lets go of its claims: their waiters
//! then fetch those chunks one by one, as without it, and so does the
//! reader from then on.
//!
//! The prefetch streams the traced part of a chunked blob the same way,
//! with no reader: the stream is its own reader, claims a window ahead of
//! itself, and moves each chunk into the memory cache as it is verified.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::fetch::{ChunkAssembler, ChunkFetcher, ChunkFuture, StreamDelivery};
use super::lanes::Lane;
use crate::store::{B3Digest, BlobPieces, Chunk, StoreError};

/// A stream whose reader has not moved on for this long ends: the file is
/// open but nobody reads it.
const IDLE: Duration = Duration::from_secs(30);

/// Blobs of fewer chunks are read ahead chunk by chunk: the calls saved do
/// not pay for a stream.
pub(super) const MIN_CHUNKS: usize = 4;

/// What the reader and the stream know of each other.
#[derive(Default)]
struct Progress {
    /// Index of the last chunk the reader has read.
    reader_at: AtomicUsize,
    /// Set when the file is released: the stream ends.
    released: AtomicBool,
    /// Set by the stream when it ended early: the reader reads ahead
    /// chunk by chunk from then on.
    failed: AtomicBool,
    /// Woken when the reader moves on or lets go.
    moved: Notify,
    /// Chunks delivered (index, digest, claim) that the reader may not
    /// have taken yet: they wait in `in_flight` for it, and are let go
    /// when it lets go of the file.
    delivered: Mutex<VecDeque<(usize, B3Digest, ChunkFuture)>>,
    /// No reader (the prefetch's): the stream moves `reader_at` itself and
    /// lets go of each chunk as soon as it is delivered.
    unattended: bool,
}

impl Progress {
    /// Whose work the stream is: a reader's, or the prefetch's.
    fn lane(&self) -> Lane {
        if self.unattended {
            Lane::Prefetch
        } else {
            Lane::Demand
        }
    }

    /// Lets go of the chunks delivered that the reader did not take.
    fn release_delivered(&self, store: &ChunkFetcher) {
        for (_, digest, wait) in self.delivered.lock().drain(..) {
            store.release_streamed(&digest, &wait);
        }
    }
}

/// The reader's handle on its stream; dropping it ends the stream.
pub(super) struct BlobStream {
    progress: Arc<Progress>,
    store: Weak<ChunkFetcher>,
}

impl BlobStream {
    /// Tells the stream that the reader is about to read up to chunk
    /// `index` (so it has taken those before it, read earlier).
    pub(super) fn reader_at(&self, index: usize) {
        self.progress.reader_at.fetch_max(index, Ordering::Relaxed);
        self.progress.moved.notify_one();
        let mut delivered = self.progress.delivered.lock();
        while delivered.front().is_some_and(|(i, _, _)| *i < index) {
            delivered.pop_front();
        }
    }

    /// Whether the stream ended before the end of the blob.
    pub(super) fn failed(&self) -> bool {
        self.progress.failed.load(Ordering::Relaxed)
    }
}

impl Drop for BlobStream {
    fn drop(&mut self) {
        self.progress.released.store(true, Ordering::Relaxed);
        self.progress.moved.notify_one();
        if let Some(store) = self.store.upgrade() {
            self.progress.release_delivered(&store);
        }
    }
}

impl ChunkFetcher {
    /// Starts streaming the blob `digest` of `size` bytes, split into
    /// `chunks`, at most `window` chunks ahead of its reader, who is about
    /// to read up to chunk `reader_at`. The chunks up to the window are
    /// claimed before this returns, so the reader waits for the stream for
    /// those rather than fetching them on its own.
    pub(super) fn start_blob_stream(
        self: &Arc<Self>,
        digest: B3Digest,
        size: u64,
        chunks: Arc<Vec<Chunk>>,
        window: usize,
        reader_at: usize,
    ) -> BlobStream {
        let progress = Arc::new(Progress {
            reader_at: AtomicUsize::new(reader_at),
            ..Progress::default()
        });
        drop(self.spawn_stream(digest, size, chunks, window, progress.clone()));
        BlobStream {
            progress,
            store: Arc::downgrade(self),
        }
    }

    /// Streams `chunks`, the first chunks of the blob `digest` of `size`
    /// bytes, for the prefetch, claiming at most `window` of them ahead:
    /// one store call for what would be one call per chunk. The chunks
    /// claimed when this returns are the first ones; the task ends once
    /// the last chunk is in memory (and queued for the disk), or the
    /// stream failed (its claims then go back, as a reader's do).
    pub(super) fn prefetch_blob_stream(
        self: &Arc<Self>,
        digest: B3Digest,
        size: u64,
        chunks: Arc<Vec<Chunk>>,
        window: usize,
    ) -> tokio::task::JoinHandle<()> {
        let progress = Arc::new(Progress {
            unattended: true,
            ..Progress::default()
        });
        self.spawn_stream(digest, size, chunks, window, progress)
    }

    /// Claims the chunks within the window of `progress` and spawns the
    /// stream; a demand stream counts as the guest's store work.
    fn spawn_stream(
        self: &Arc<Self>,
        digest: B3Digest,
        size: u64,
        chunks: Arc<Vec<Chunk>>,
        window: usize,
        progress: Arc<Progress>,
    ) -> tokio::task::JoinHandle<()> {
        let window = window.max(1);
        let reader_at = progress.reader_at.load(Ordering::Relaxed);
        let mut claims = VecDeque::new();
        for index in 0..chunks.len().min(reader_at + window + 1) {
            claims.push_back((index, self.claim_for_stream(&chunks[index])));
        }
        let this = self.clone();
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        self.remote.runtime().spawn(async move {
            let _demand =
                (progress.lane() == Lane::Demand).then(|| crate::demand::DEMAND.store_work());
            this.stats.fetches_in_flight.fetch_add(1, Ordering::Relaxed);
            let result = this
                .stream_chunks(&digest, size, &chunks, window, &progress, &mut claims)
                .await;
            this.stats.fetches_in_flight.fetch_sub(1, Ordering::Relaxed);
            // Delivered after the reader let go: nobody takes those.
            if progress.released.load(Ordering::Relaxed) {
                progress.release_delivered(&this);
            }
            // Claims not delivered go back: their waiters fetch them.
            for (index, claim) in claims {
                if let Some(claim) = claim {
                    this.abandon_claim(&chunks[index], claim);
                }
            }
            match result {
                Ok(Finished::AtTheEnd) => {}
                Ok(Finished::Left) => progress.failed.store(true, Ordering::Relaxed),
                Err(e) => {
                    progress.failed.store(true, Ordering::Relaxed);
                    this.stats.store_failed(&e);
                    tracing::warn!(blob = %digest, error = %e, "streaming a blob failed; its chunks are fetched one by one");
                }
            }
        })
    }

    /// The stream's work: claims the chunks within the window, takes the
    /// blob's messages, and hands each claimed chunk over once verified.
    async fn stream_chunks(
        self: &Arc<Self>,
        digest: &B3Digest,
        size: u64,
        chunks: &[Chunk],
        window: usize,
        progress: &Progress,
        claims: &mut VecDeque<(usize, Option<(StreamDelivery, ChunkFuture)>)>,
    ) -> Result<Finished, StoreError> {
        let mut messages = self.remote.store().blob_pieces(digest, size).await?;
        let mut piece = Bytes::new();
        let mut claimed = claims.len();
        for (index, chunk) in chunks.iter().enumerate() {
            if progress.unattended {
                progress.reader_at.store(index, Ordering::Relaxed);
            }
            // Wait while the reader is a window behind.
            let mut paused = false;
            while index > progress.reader_at.load(Ordering::Relaxed) + window {
                if progress.released.load(Ordering::Relaxed) {
                    return Ok(Finished::Left);
                }
                paused = true;
                if tokio::time::timeout(IDLE, progress.moved.notified())
                    .await
                    .is_err()
                {
                    return Ok(Finished::Left);
                }
            }
            if progress.released.load(Ordering::Relaxed) {
                return Ok(Finished::Left);
            }
            if paused {
                messages.resume();
            }
            let reach = chunks
                .len()
                .min(progress.reader_at.load(Ordering::Relaxed) + window + 1);
            while claimed < reach {
                claims.push_back((claimed, self.claim_for_stream(&chunks[claimed])));
                claimed += 1;
            }
            let Some((claimed_index, claim)) = claims.pop_front() else {
                return Ok(Finished::Left);
            };
            debug_assert_eq!(claimed_index, index, "chunks are claimed in order");
            let received = &self.stats.store_bytes_fetched;
            match receive(
                messages.as_mut(),
                &mut piece,
                received,
                chunk,
                claim.is_some(),
            )
            .await
            {
                Ok(Some(data)) => {
                    if let Some((done, wait)) = claim {
                        if index > progress.reader_at.load(Ordering::Relaxed) {
                            self.stats.readahead_chunks.fetch_add(1, Ordering::Relaxed);
                        }
                        self.deliver_streamed(chunk, data, done, progress.lane());
                        if progress.unattended {
                            self.release_streamed(&chunk.digest, &wait);
                        } else {
                            progress
                                .delivered
                                .lock()
                                .push_back((index, chunk.digest, wait));
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    claims.push_front((claimed_index, claim));
                    return Err(e);
                }
            }
        }
        Ok(Finished::AtTheEnd)
    }
}

/// Takes `chunk`'s bytes from the stream (`piece` holds what is left of
/// the last message): verified if `keep`, passed over if not.
async fn receive(
    messages: &mut dyn BlobPieces,
    piece: &mut Bytes,
    received: &AtomicU64,
    chunk: &Chunk,
    keep: bool,
) -> Result<Option<Bytes>, StoreError> {
    let mut assembled = keep.then(|| ChunkAssembler::new(chunk));
    let mut missing = chunk.size;
    while missing > 0 {
        if piece.is_empty() {
            // The blob ended early: its length was checked by `next`.
            let Some(next) = messages.next().await? else {
                return Err(messages.size_mismatch());
            };
            received.fetch_add(next.len() as u64, Ordering::Relaxed);
            *piece = next;
            continue;
        }
        let take = piece
            .len()
            .min(usize::try_from(missing).unwrap_or(usize::MAX));
        let part = piece.split_to(take);
        if let Some(assembled) = assembled.as_mut() {
            assembled.push(&part);
        }
        missing -= take as u64;
    }
    // A bad chunk ends the stream: the store's other bytes are not
    // trusted more than this one.
    assembled.map(ChunkAssembler::finish).transpose()
}

/// How a stream ended without an error.
enum Finished {
    /// Every chunk passed.
    AtTheEnd,
    /// The reader let go or stopped reading.
    Left,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::test_store::{quiet, Rig, CHUNK};
    use super::*;

    /// Streams the big file's blob for the prefetch and waits for the end.
    fn stream_big(rig: &Rig) -> Vec<Chunk> {
        let chunks = rig.big_chunks();
        let digest = B3Digest::of(&rig.big);
        let task = rig.cache.fetcher.prefetch_blob_stream(
            digest,
            rig.big.len() as u64,
            Arc::new(chunks.clone()),
            2,
        );
        futures::executor::block_on(task).unwrap();
        chunks
    }

    #[test]
    fn one_read_of_a_blob_delivers_each_chunk_verified() {
        let rig = Rig::new(quiet());
        let chunks = stream_big(&rig);
        for (i, chunk) in chunks.iter().enumerate() {
            let data = rig.cache.fetcher.chunk(chunk).unwrap();
            assert!(data == rig.big[i * CHUNK..(i + 1) * CHUNK], "chunk {i}");
        }
        assert_eq!(rig.store.calls.blob_reads.load(Relaxed), 1);
    }

    #[test]
    fn a_stream_of_wrong_bytes_delivers_nothing_and_readers_fetch_each_chunk() {
        let rig = Rig::new(quiet());
        rig.store.corrupt_blob(&B3Digest::of(&rig.big));
        let chunks = stream_big(&rig);
        assert_eq!(rig.cache.stats().verification_failures.load(Relaxed), 1);
        for (i, chunk) in chunks.iter().enumerate() {
            let data = rig.cache.fetcher.chunk(chunk).unwrap();
            assert!(data == rig.big[i * CHUNK..(i + 1) * CHUNK], "chunk {i}");
        }
        // The stream, then each chunk on its own.
        assert_eq!(
            rig.store.calls.blob_reads.load(Relaxed),
            1 + chunks.len() as u64
        );
    }
}
