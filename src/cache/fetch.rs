//! The fetch path of one chunk: memory, then the shared objects on disk,
//! then the store, with every request for the same chunk sharing one disk
//! read or store fetch (single-flight). Whatever the source, bytes whose
//! length is not the chunk's are refused, never sliced: a memory hit or a
//! shared fetch may have been made for another node naming the same
//! digest with another size.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::disk::Disk;
use super::lanes::Lane;
use super::layout::ObjectKind;
use super::memory_cache::{memory_cache, MemoryCache};
use super::readahead::{DiskReadahead, ReadsAhead};
use super::remote::Remote;
use super::stats::Stats;
use super::{buffers, outboard};
use crate::store::{B3Digest, Chunk, StoreError};

pub type ChunkResult = Result<Bytes, Arc<StoreError>>;
pub type ChunkFuture = Shared<BoxFuture<'static, ChunkResult>>;
/// Where a disk read hands its result (`None`: not on disk) to waiters.
type DiskReadDone = tokio::sync::oneshot::Sender<Option<ChunkResult>>;

/// The outcome of [`ChunkFetcher::claim_disk_read`].
enum DiskClaim {
    /// Ours to read; the future is what waiters get (it fetches from the
    /// store if the read finds nothing).
    Mine(DiskReadDone, ChunkFuture),
    /// Being read or fetched already, or in memory: wait for this.
    Taken(ChunkFuture),
    /// There is no disk cache.
    NoDisk,
}

/// `data` if it is as long as `chunk` says, else the mismatch.
fn of_its_size(chunk: &Chunk, data: Bytes) -> ChunkResult {
    if data.len() as u64 == chunk.size {
        Ok(data)
    } else {
        Err(Arc::new(StoreError::BlobSizeMismatch {
            digest: chunk.digest,
            expected: chunk.size,
            actual: data.len() as u64,
        }))
    }
}

/// The chunk fetcher: the chunks in memory, the fetches and disk reads
/// under way (one per chunk, whoever asks: single-flight), the read-ahead
/// of sequential readers, and streams of whole blobs (`blob_stream.rs`).
pub(super) struct ChunkFetcher {
    chunks: MemoryCache<B3Digest, Bytes>,
    in_flight: Mutex<HashMap<B3Digest, ChunkFuture>>,
    /// Bounds the read-ahead fetches from the store in flight.
    readahead: Arc<Semaphore>,
    /// Started on first use; `None` without a disk cache or if the thread
    /// could not be started.
    disk_readahead: OnceLock<Option<DiskReadahead>>,
    /// Chunks the prefetch lane is fetching now: a reader that waits for
    /// one is not store work of its own.
    prefetching: Mutex<HashSet<B3Digest>>,
    pub(super) remote: Arc<Remote>,
    disk: Arc<Disk>,
    pub(super) stats: Arc<Stats>,
}

impl ChunkFetcher {
    /// A fetcher keeping about `memory_bytes` of chunks in memory, with
    /// up to `2 * readahead_chunks` read-ahead fetches at once.
    pub(super) fn new(
        memory_bytes: u64,
        readahead_chunks: usize,
        remote: Arc<Remote>,
        disk: Arc<Disk>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            chunks: memory_cache(memory_bytes, 256 << 10, &stats),
            in_flight: Mutex::new(HashMap::new()),
            readahead: Arc::new(Semaphore::new(readahead_chunks.max(1) * 2)),
            disk_readahead: OnceLock::new(),
            prefetching: Mutex::new(HashSet::new()),
            remote,
            disk,
            stats,
        }
    }

    /// Bytes of chunks in memory now.
    pub(super) fn memory_bytes(&self) -> u64 {
        self.chunks.weight()
    }

    /// One chunk's verified bytes, exactly `chunk.size` of them: from
    /// memory, disk, a fetch already under way, or the store. A wait for
    /// a chunk the prefetch is fetching ([`Self::mark_prefetching`]) is
    /// not store work of the guest's own: more prefetching would not
    /// speed it up.
    ///
    /// A disk hit is read and verified right here on the calling (request)
    /// thread: a hand-off to the runtime and back costs more than the read.
    pub(super) fn chunk(self: &Arc<Self>, chunk: &Chunk) -> ChunkResult {
        if let Some(data) = self.chunks.get(&chunk.digest) {
            self.stats.memory_hit(true);
            return of_its_size(chunk, data);
        }
        self.stats.memory_hit(false);
        let wait = match self.claim_disk_read(chunk) {
            DiskClaim::Mine(done, wait) => match self.read_claimed(chunk, done, true) {
                Some(read) => {
                    self.in_flight.lock().remove(&chunk.digest);
                    return read.and_then(|data| of_its_size(chunk, data));
                }
                // Not on disk: `wait` fetches it from the store.
                None => wait,
            },
            DiskClaim::Taken(wait) => wait,
            DiskClaim::NoDisk => self.chunk_fetch(chunk, Lane::Demand),
        };
        // Blocked on the store; store work of its own unless the fetch is
        // the prefetch's.
        let prefetching = self.prefetching.lock().contains(&chunk.digest);
        let result = {
            let _blocked = crate::demand::DEMAND.blocked();
            let _demand = (!prefetching).then(|| crate::demand::DEMAND.store_work());
            self.remote.runtime().block_on(wait)
        };
        // A chunk read ahead waits in `in_flight` for its reader, outside
        // the memory cache: taken now, and kept as any chunk read.
        if let Ok(data) = &result {
            if self.chunks.peek(&chunk.digest).is_none() && data.len() as u64 == chunk.size {
                self.chunks.insert(chunk.digest, data.clone());
            }
        }
        self.release_if_done(&chunk.digest);
        result.and_then(|data| of_its_size(chunk, data))
    }

    /// Counts `chunks` as the prefetch lane's until
    /// [`Self::unmark_prefetching`].
    pub(super) fn mark_prefetching(&self, chunks: impl IntoIterator<Item = B3Digest>) {
        self.prefetching.lock().extend(chunks);
    }

    pub(super) fn unmark_prefetching<'a>(&self, chunks: impl IntoIterator<Item = &'a B3Digest>) {
        let mut prefetching = self.prefetching.lock();
        for chunk in chunks {
            prefetching.remove(chunk);
        }
    }

    /// Whether `chunk` is neither in memory, nor on its way, nor on disk:
    /// worth a fetch ahead of its reader.
    pub(super) fn worth_fetching_ahead(&self, chunk: &Chunk) -> bool {
        !self.in_memory_or_flight(chunk) && !self.on_disk(chunk)
    }

    /// Whether `chunk` is in memory or on its way there.
    pub(super) fn in_memory_or_flight(&self, chunk: &Chunk) -> bool {
        self.chunks.peek(&chunk.digest).is_some()
            || self.in_flight.lock().contains_key(&chunk.digest)
    }

    /// Whether `chunk` is in the disk cache (one stat).
    pub(super) fn on_disk(&self, chunk: &Chunk) -> bool {
        self.disk
            .objects()
            .is_some_and(|o| o.contains(ObjectKind::Chunk, &chunk.digest))
    }

    /// Starts getting the chunks a sequential reader will want next, in the
    /// background: those in the disk cache through the one disk read-ahead
    /// thread, the others from the store, up to the readahead bound.
    /// Only the first `from_disk` of `chunks` may be read ahead from disk:
    /// a short distance keeps the thread ahead of the reader, a long one
    /// would push chunks out of a small memory cache before they are read.
    /// Returns how many of `chunks` are taken care of; the rest could not
    /// be queued now.
    pub(super) fn read_ahead(self: &Arc<Self>, chunks: &[Chunk], from_disk: usize) -> usize {
        for (queued, chunk) in chunks.iter().enumerate() {
            if self.in_memory_or_flight(chunk) {
                continue;
            }
            if let Some(objects) = self.disk.objects() {
                if objects.contains(ObjectKind::Chunk, &chunk.digest) {
                    if queued >= from_disk
                        || !self.disk_readahead().is_some_and(|r| r.request(*chunk))
                    {
                        return queued;
                    }
                    self.stats.readahead_chunks.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            let Ok(permit) = self.readahead.clone().try_acquire_owned() else {
                return queued;
            };
            self.stats.readahead_chunks.fetch_add(1, Ordering::Relaxed);
            let fetch = self.chunk_fetch(chunk, Lane::Demand);
            let demand = crate::demand::DEMAND.store_work();
            self.remote.runtime().spawn(async move {
                let _ = fetch.await;
                drop((permit, demand));
            });
        }
        chunks.len()
    }

    fn disk_readahead(self: &Arc<Self>) -> Option<&DiskReadahead> {
        self.disk_readahead
            .get_or_init(|| {
                let fetcher: Arc<dyn ReadsAhead> = self.clone();
                DiskReadahead::start(Arc::downgrade(&fetcher))
                    .inspect_err(|e| tracing::warn!(error = %e, "no disk read-ahead thread"))
                    .ok()
            })
            .as_ref()
    }

    /// Run by the disk read-ahead thread: reads one chunk from the disk
    /// cache unless it is in memory or on its way already, and returns
    /// whether it did. The result stays in `in_flight`, not in the memory
    /// cache, until its reader takes it or [`Self::release_if_done`] lets
    /// it go: a small memory cache could drop it before the reader gets
    /// there, and chunks read ahead would push out the ones being read.
    fn read_ahead_from_disk(self: &Arc<Self>, chunk: &Chunk) -> bool {
        match self.claim_disk_read(chunk) {
            DiskClaim::Mine(done, _) => {
                if self.read_claimed(chunk, done, false).is_none() {
                    // Gone from disk: a reader that joined meanwhile
                    // fetches it; a later one starts its own fetch.
                    self.in_flight.lock().remove(&chunk.digest);
                }
                true
            }
            DiskClaim::Taken(_) | DiskClaim::NoDisk => false,
        }
    }

    /// Claims the disk read of `chunk` in `in_flight`, so that the reader
    /// and the read-ahead thread never both read it: whoever comes second
    /// waits for the first.
    fn claim_disk_read(self: &Arc<Self>, chunk: &Chunk) -> DiskClaim {
        if self.disk.objects().is_none() {
            return DiskClaim::NoDisk;
        }
        let mut in_flight = self.in_flight.lock();
        if let Some(running) = in_flight.get(&chunk.digest) {
            self.stats
                .singleflight_joins
                .fetch_add(1, Ordering::Relaxed);
            return DiskClaim::Taken(running.clone());
        }
        // Chunks reach memory before they leave `in_flight`, so one that
        // arrived since the caller looked is seen here.
        if let Some(data) = self.chunks.peek(&chunk.digest) {
            return DiskClaim::Taken(futures::future::ready(Ok(data)).boxed().shared());
        }
        let (done, read) = tokio::sync::oneshot::channel::<Option<ChunkResult>>();
        let this = self.clone();
        let chunk = *chunk;
        let wait = async move {
            match read.await {
                Ok(Some(read)) => read,
                // Not on disk (or the claimer is gone): the first waiter
                // fetches it from the store for all.
                _ => {
                    let fetched = this.fetch_from_store(&chunk, Lane::Demand).await;
                    if let Ok(data) = &fetched {
                        this.chunks.insert(chunk.digest, data.clone());
                    }
                    fetched.map_err(Arc::new)
                }
            }
        }
        .boxed()
        .shared();
        in_flight.insert(chunk.digest, wait.clone());
        DiskClaim::Mine(done, wait)
    }

    /// Reads a claimed chunk from disk (into memory if `keep`) and hands
    /// the result to those waiting for it; `None` if it is not on disk.
    fn read_claimed(&self, chunk: &Chunk, done: DiskReadDone, keep: bool) -> Option<ChunkResult> {
        let read = self.chunk_from_disk(chunk).map(|data| {
            if keep {
                self.chunks.insert(chunk.digest, data.clone());
            }
            Ok(data)
        });
        let _ = done.send(read.clone());
        read
    }

    /// Removes the `in_flight` entry of `digest` if it has its result (a
    /// chunk read ahead that its reader took, or that none came for).
    pub(super) fn release_if_done(&self, digest: &B3Digest) {
        let mut in_flight = self.in_flight.lock();
        if in_flight.get(digest).is_some_and(|f| f.peek().is_some()) {
            in_flight.remove(digest);
        }
    }

    /// The one store fetch of `chunk`: joined if already running, else
    /// started. Callers with a disk cache have looked there first
    /// ([`Self::claim_disk_read`], or the read-ahead's and the prefetch's
    /// checks).
    pub(super) fn chunk_fetch(self: &Arc<Self>, chunk: &Chunk, lane: Lane) -> ChunkFuture {
        let mut in_flight = self.in_flight.lock();
        if let Some(running) = in_flight.get(&chunk.digest) {
            self.stats
                .singleflight_joins
                .fetch_add(1, Ordering::Relaxed);
            return running.clone();
        }
        // A fetch puts its result in memory before it leaves `in_flight`,
        // so one that finished since the caller looked is seen here.
        if let Some(data) = self.chunks.peek(&chunk.digest) {
            return futures::future::ready(Ok(data)).boxed().shared();
        }
        let this = self.clone();
        let chunk = *chunk;
        let fetch = async move { this.fetch_into_memory(&chunk, lane).await }
            .boxed()
            .shared();
        in_flight.insert(chunk.digest, fetch.clone());
        fetch
    }

    /// A chunk from the shared objects, of its length and digest, or
    /// `None` if it is not there (or failed and was removed).
    fn chunk_from_disk(&self, chunk: &Chunk) -> Option<Bytes> {
        self.disk
            .objects()?
            .get(ObjectKind::Chunk, &chunk.digest, Some(chunk.size))
    }

    /// The body of a fetch in `in_flight`: the chunk from the store into
    /// memory first, then out of `in_flight`, so a reader finds it in one
    /// or the other.
    async fn fetch_into_memory(&self, chunk: &Chunk, lane: Lane) -> ChunkResult {
        let result = self.fetch_from_store(chunk, lane).await;
        if let Ok(data) = &result {
            self.chunks.insert(chunk.digest, data.clone());
        }
        self.in_flight.lock().remove(&chunk.digest);
        result.map_err(Arc::new)
    }

    /// Fetches a chunk from the store, verified, and writes it to disk
    /// behind the reader's back.
    async fn fetch_from_store(&self, chunk: &Chunk, lane: Lane) -> Result<Bytes, StoreError> {
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        self.stats.fetches_in_flight.fetch_add(1, Ordering::Relaxed);
        let result = self.receive_chunk(chunk).await;
        self.stats.fetches_in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(data) => {
                self.stats
                    .store_bytes_fetched
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.write_fetched(chunk, &data, lane);
                Ok(data)
            }
            Err(e) => {
                self.stats.store_failed(&e);
                Err(e)
            }
        }
    }

    /// Writes a chunk verified from the store to disk. Its outboard is not
    /// written: only a random read of part of the chunk from disk needs
    /// one, and that read writes it the first time (one file per fetch
    /// instead of two, for the many chunks that are only ever read whole).
    fn write_fetched(&self, chunk: &Chunk, data: &Bytes, lane: Lane) {
        if let Some(objects) = self.disk.objects().cloned() {
            let (digest, written) = (chunk.digest, data.clone());
            self.disk.write_behind(lane, written.len(), move || {
                objects.put(ObjectKind::Chunk, &digest, &written)
            });
        }
    }

    /// A chunk from the store into (recycled) memory, verified.
    async fn receive_chunk(&self, chunk: &Chunk) -> Result<Bytes, StoreError> {
        let mut assembled = ChunkAssembler::new(chunk);
        self.remote
            .store()
            .stream_blob_unverified(&chunk.digest, chunk.size, |piece| {
                assembled.push(piece);
                Ok(())
            })
            .await?;
        assembled.finish()
    }

    /// Claims `chunk` for a stream of its blob ([`super::blob_stream`]):
    /// those who ask for it meanwhile wait for what the stream delivers
    /// through the returned sender, or, if the stream gives it up (drops
    /// the sender), fetch it on their own. `None` if it is in memory, on
    /// its way, or on disk already: the stream then only passes over it.
    pub(super) fn claim_for_stream(
        self: &Arc<Self>,
        chunk: &Chunk,
    ) -> Option<(StreamDelivery, ChunkFuture)> {
        let mut in_flight = self.in_flight.lock();
        if in_flight.contains_key(&chunk.digest)
            || self.chunks.peek(&chunk.digest).is_some()
            || self.on_disk(chunk)
        {
            return None;
        }
        let (done, delivered) = tokio::sync::oneshot::channel::<ChunkResult>();
        let this = self.clone();
        let chunk = *chunk;
        let wait = async move {
            match delivered.await {
                Ok(delivered) => delivered,
                Err(_) => this.fetch_into_memory(&chunk, Lane::Demand).await,
            }
        }
        .boxed()
        .shared();
        in_flight.insert(chunk.digest, wait.clone());
        Some((done, wait))
    }

    /// Hands a chunk that a stream verified to its waiters. It stays in
    /// `in_flight`, outside the memory cache's bound, until its reader
    /// takes it ([`Self::chunk`] moves it into memory) or the stream's
    /// reader lets go ([`Self::release_streamed`]): in memory, a small
    /// cache could drop it before the reader got there, and without a disk
    /// cache it would be fetched again. The stream stays within its window
    /// of the reader, which bounds what waits here.
    pub(super) fn deliver_streamed(
        &self,
        chunk: &Chunk,
        data: Bytes,
        done: StreamDelivery,
        lane: Lane,
    ) {
        self.write_fetched(chunk, &data, lane);
        let _ = done.send(Ok(data));
    }

    /// Lets go of a chunk a stream delivered (`wait`, its claim) that its
    /// reader did not take: from `in_flight` into the memory cache, as a
    /// chunk read is kept (a reader that opens the file again finds it
    /// there; the cache's bound now holds it), unless a fetch of its own
    /// replaced the claim. It is on disk too, if there is a disk cache.
    pub(super) fn release_streamed(&self, chunk: &B3Digest, wait: &ChunkFuture) {
        // Delivered, so ready: polled once here so that it holds its result.
        let _ = wait.clone().now_or_never();
        let mut in_flight = self.in_flight.lock();
        let Some(entry) = in_flight.get(chunk).filter(|f| f.ptr_eq(wait)) else {
            return;
        };
        let Some(result) = entry.peek().cloned() else {
            return;
        };
        // Into memory before it leaves `in_flight`, as a fetch does, so
        // that one who looks in between finds it in one place or the other.
        if let Ok(data) = result {
            if self.chunks.peek(chunk).is_none() {
                self.chunks.insert(*chunk, data);
            }
        }
        in_flight.remove(chunk);
    }

    /// Lets go of a claim the stream could not fill: its entry leaves
    /// `in_flight` unless a waiter holds it, who then fetches the chunk
    /// itself (the sender is dropped).
    pub(super) fn abandon_claim(&self, chunk: &Chunk, claim: (StreamDelivery, ChunkFuture)) {
        let (done, wait) = claim;
        let mut in_flight = self.in_flight.lock();
        if in_flight
            .get(&chunk.digest)
            .is_some_and(|f| f.ptr_eq(&wait))
            && wait.strong_count() == Some(2)
        {
            in_flight.remove(&chunk.digest);
        }
        drop(done);
    }
}

impl ReadsAhead for ChunkFetcher {
    fn read_ahead_from_disk(self: Arc<Self>, chunk: &Chunk) -> bool {
        ChunkFetcher::read_ahead_from_disk(&self, chunk)
    }

    fn release_if_done(&self, digest: &B3Digest) {
        ChunkFetcher::release_if_done(self, digest)
    }
}

/// Where a stream of a whole blob hands one claimed chunk to its waiters.
pub(super) type StreamDelivery = tokio::sync::oneshot::Sender<ChunkResult>;

/// One chunk's bytes gathered from the pieces the store sends, each 16 KiB
/// group hashed as it arrives (while still in the CPU's cache), and the
/// root of their tree compared with the digest at the end.
pub(super) struct ChunkAssembler {
    chunk: Chunk,
    buf: Vec<u8>,
    groups: outboard::GroupHasher,
    by_group: bool,
}

impl ChunkAssembler {
    pub(super) fn new(chunk: &Chunk) -> Self {
        Self {
            chunk: *chunk,
            buf: buffers::take(usize::try_from(chunk.size).unwrap_or(0)),
            groups: outboard::GroupHasher::default(),
            by_group: chunk.size > outboard::GROUP,
        }
    }

    pub(super) fn push(&mut self, piece: &[u8]) {
        self.buf.extend_from_slice(piece);
        if self.by_group {
            self.groups.advance(&self.buf);
        }
    }

    /// The chunk, if what arrived hashes to its digest.
    pub(super) fn finish(self) -> Result<Bytes, StoreError> {
        let (actual, _outboard) = self.groups.finish(&self.buf);
        if actual != self.chunk.digest {
            return Err(StoreError::BlobDigestMismatch {
                digest: self.chunk.digest,
                actual,
            });
        }
        Ok(buffers::freeze(self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::B3Digest;

    #[test]
    fn bytes_of_another_size_are_refused_not_sliced() {
        let data = Bytes::from_static(b"0123456789");
        let digest = B3Digest::of(&data);
        let chunk = |size| Chunk {
            digest,
            offset: 0,
            size,
        };
        assert_eq!(of_its_size(&chunk(10), data.clone()).unwrap(), data);
        for size in [9, 11, 1 << 40] {
            let err = of_its_size(&chunk(size), data.clone()).unwrap_err();
            assert!(
                matches!(*err, StoreError::BlobSizeMismatch { expected, actual: 10, .. } if expected == size)
            );
        }
    }
}

#[cfg(test)]
mod with_a_store {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::super::test_store::{quiet, Rig, CHUNK};
    use crate::store::StoreError;

    #[test]
    fn concurrent_readers_of_one_chunk_share_one_fetch() {
        let rig = Rig::new(quiet());
        let chunk = rig.big_chunks()[1];
        rig.store.set_latency(Duration::from_millis(300));
        let readers = 6;
        let barrier = Arc::new(Barrier::new(readers));
        let threads: Vec<_> = (0..readers)
            .map(|_| {
                let (fetcher, barrier) = (rig.cache.fetcher.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    fetcher.chunk(&chunk).unwrap()
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), rig.big[CHUNK..2 * CHUNK]);
        }
        assert_eq!(rig.store.calls.blob_reads.load(Relaxed), 1);
        assert_eq!(
            rig.cache.stats().singleflight_joins.load(Relaxed),
            readers as u64 - 1
        );
        // And from memory afterwards.
        rig.cache.fetcher.chunk(&chunk).unwrap();
        assert_eq!(rig.store.calls.blob_reads.load(Relaxed), 1);
    }

    #[test]
    fn a_chunk_that_fails_its_digest_is_an_error_with_that_digest_and_not_kept() {
        let rig = Rig::new(quiet());
        let chunk = rig.big_chunks()[2];
        rig.store.corrupt_blob(&chunk.digest);
        let fetcher = &rig.cache.fetcher;
        let err = fetcher.chunk(&chunk).unwrap_err();
        assert!(
            matches!(*err, StoreError::BlobDigestMismatch { digest, .. } if digest == chunk.digest),
            "{err}"
        );
        let stats = rig.cache.stats();
        assert_eq!(stats.verification_failures.load(Relaxed), 1);
        assert!(stats
            .rejected
            .each()
            .any(|counted| counted == ("store", "blob_digest", 1)));
        // Repaired, the next read fetches it again and gets it right.
        rig.store.repair_blob(&chunk.digest);
        assert_eq!(fetcher.chunk(&chunk).unwrap(), rig.big[2 * CHUNK..]);
        assert_eq!(rig.store.calls.blob_reads.load(Relaxed), 2);
    }

    #[test]
    fn chunks_read_ahead_are_fetched_once_and_found_by_their_reader() {
        let rig = Rig::new(quiet());
        let chunks = rig.big_chunks();
        let fetcher = &rig.cache.fetcher;
        rig.store.set_latency(Duration::from_millis(200));
        // At most twice --readahead-chunks (at least 1) fetches at once.
        assert_eq!(fetcher.read_ahead(&chunks, 0), 2, "bounded");
        assert_eq!(fetcher.read_ahead(&chunks[2..], 0), 0, "still bounded");
        for (i, chunk) in chunks.iter().enumerate() {
            let data = fetcher.chunk(chunk).unwrap();
            assert!(data == rig.big[i * CHUNK..(i + 1) * CHUNK], "chunk {i}");
        }
        assert_eq!(
            rig.store.calls.blob_reads.load(Relaxed),
            chunks.len() as u64
        );
        assert_eq!(rig.cache.stats().readahead_chunks.load(Relaxed), 2);
        // The first reader joined its read-ahead fetch; the second found
        // its chunk in memory or joined too.
        let joins = rig.cache.stats().singleflight_joins.load(Relaxed);
        assert!(joins >= 1, "{}", rig.cache.stats().render());
        // In memory now: nothing more to read ahead, nothing fetched.
        assert_eq!(fetcher.read_ahead(&chunks, 0), chunks.len());
        assert_eq!(
            rig.store.calls.blob_reads.load(Relaxed),
            chunks.len() as u64
        );
    }
}
