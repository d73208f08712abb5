//! The cache and fetch layer between the filesystem and the store client:
//! validated path infos, Directories and chunk lists, and verified blob
//! chunks, kept in bounded memory and in a persistent disk cache shared by
//! every daemon on the host. Concurrent requests for the same chunk share
//! one fetch; sequential readers get the next chunks fetched ahead. With the
//! store down, everything cached keeps being served.

pub mod disk;
mod outboard;
mod readahead;
pub mod stats;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use prost::Message;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::proto::castore;
use crate::store::directory::{validate_directory, validate_node};
use crate::store::{B3Digest, Chunk, DirEntry, Directory, StoreClient, StoreError};
use disk::{DiskCache, DiskCacheError, Kind};
use readahead::DiskReadahead;
pub use stats::{Stats, StatsReporter};

/// How much to keep where.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Bytes of memory for chunks, Directories, chunk lists and path infos.
    pub memory_bytes: u64,
    /// Directory of the persistent disk cache; `None`: memory only.
    pub disk_dir: Option<PathBuf>,
    /// Bound of the disk cache directory as a whole.
    pub disk_bytes: u64,
    /// How long "no such store path" is remembered.
    pub negative_ttl: Duration,
    /// Chunks fetched ahead of a sequential reader (0: no readahead).
    pub readahead_chunks: usize,
    /// Where large unchunked blobs are spooled without a disk cache.
    pub spool_dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            disk_dir: None,
            disk_bytes: 10 << 30,
            negative_ttl: Duration::from_secs(1),
            readahead_chunks: 32,
            spool_dir: None,
        }
    }
}

/// quick_cache weighs entries by their approximate heap size in bytes.
#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<B3Digest, Bytes> for Weight {
    fn weight(&self, _: &B3Digest, v: &Bytes) -> u64 {
        v.len() as u64
    }
}

impl quick_cache::Weighter<B3Digest, Arc<Directory>> for Weight {
    fn weight(&self, _: &B3Digest, v: &Arc<Directory>) -> u64 {
        v.approximate_size_in_bytes() as u64
    }
}

impl quick_cache::Weighter<B3Digest, Arc<Vec<Chunk>>> for Weight {
    fn weight(&self, _: &B3Digest, v: &Arc<Vec<Chunk>>) -> u64 {
        (64 + v.len() * std::mem::size_of::<Chunk>()) as u64
    }
}

impl quick_cache::Weighter<[u8; 20], PathInfoEntry> for Weight {
    fn weight(&self, _: &[u8; 20], v: &PathInfoEntry) -> u64 {
        match v {
            PathInfoEntry::Found(e) => (128 + e.name.len()) as u64,
            PathInfoEntry::Missing { .. } => 64,
        }
    }
}

type MemoryCache<K, V> = quick_cache::sync::Cache<K, V, Weight>;

/// Directories taken from one recursive Get: a store path's tree usually
/// arrives in one round trip instead of one per directory.
const DIRECTORY_PREFETCH: usize = 1024;

/// A remembered PathInfo answer.
#[derive(Clone)]
enum PathInfoEntry {
    Found(DirEntry),
    /// Not in the store as of `at`; only trusted for the negative TTL.
    Missing {
        name: Bytes,
        at: Instant,
    },
}

type ChunkResult = Result<Bytes, Arc<StoreError>>;
type ChunkFuture = Shared<BoxFuture<'static, ChunkResult>>;
/// Where a disk read hands its result (`None`: not on disk) to waiters.
type DiskReadDone = tokio::sync::oneshot::Sender<Option<ChunkResult>>;

/// Why [`CachedStore::chunk_part`] did not serve a part of a chunk.
#[derive(Debug, PartialEq)]
pub enum PartMiss {
    /// No disk cache, a small chunk, or the chunk is (about to be) in
    /// memory or not on disk.
    NotApplicable,
    /// The chunk is on disk but its outboard is missing or was wrong.
    NoOutboard,
}

/// The outcome of [`CachedStore::claim_disk_read`].
enum DiskClaim {
    /// Ours to read; the future is what waiters get (it fetches from the
    /// store if the read finds nothing).
    Mine(DiskReadDone, ChunkFuture),
    /// Being read or fetched already, or in memory: wait for this.
    Taken(ChunkFuture),
    /// There is no disk cache.
    NoDisk,
}

/// The store as the filesystem sees it: cached, verified, shared fetches.
pub struct CachedStore {
    client: StoreClient,
    runtime: Handle,
    config: CacheConfig,
    stats: Arc<Stats>,
    disk: Option<Arc<DiskCache>>,
    chunks: MemoryCache<B3Digest, Bytes>,
    directories: MemoryCache<B3Digest, Arc<Directory>>,
    chunk_lists: MemoryCache<B3Digest, Arc<Vec<Chunk>>>,
    path_infos: MemoryCache<[u8; 20], PathInfoEntry>,
    in_flight: Mutex<HashMap<B3Digest, ChunkFuture>>,
    readahead: Arc<Semaphore>,
    /// Started on first use, after the sandbox is in place; `None` without
    /// a disk cache or if the thread could not be started.
    disk_readahead: OnceLock<Option<DiskReadahead>>,
    /// Whole blobs on disk already verified by this process.
    verified_blobs: Mutex<HashSet<B3Digest>>,
}

fn memory_cache<K: Eq + std::hash::Hash, V: Clone>(
    bytes: u64,
    typical_item: u64,
) -> MemoryCache<K, V>
where
    Weight: quick_cache::Weighter<K, V>,
{
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity((bytes / typical_item).clamp(16, 1 << 20) as usize)
        .weight_capacity(bytes)
        // New entries wait in the cold tenth (S3-FIFO's usual split, where
        // quick_cache's default is 3%) until used: long enough for chunks
        // read ahead to still be there when the reader gets to them.
        .hot_allocation(0.9)
        .build()
        .expect("cache options are complete");
    quick_cache::sync::Cache::with_options(options, Weight, Default::default(), Default::default())
}

/// Chunk lists on disk: 32 bytes of digest and 8 of size (LE) per chunk.
pub fn encode_chunk_list(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * 40);
    for c in chunks {
        out.extend_from_slice(c.digest.as_bytes());
        out.extend_from_slice(&c.size.to_le_bytes());
    }
    out
}

pub fn decode_chunk_list(data: &[u8], size: u64) -> Option<Vec<Chunk>> {
    if data.len() % 40 != 0 {
        return None;
    }
    let mut offset = 0u64;
    let mut chunks = Vec::with_capacity(data.len() / 40);
    for record in data.chunks_exact(40) {
        let digest = B3Digest::try_from(&record[..32]).ok()?;
        let chunk_size = u64::from_le_bytes(record[32..].try_into().ok()?);
        if chunk_size == 0 {
            return None;
        }
        chunks.push(Chunk {
            digest,
            offset,
            size: chunk_size,
        });
        offset = offset.checked_add(chunk_size)?;
    }
    (chunks.is_empty() || offset == size).then_some(chunks)
}

impl CachedStore {
    pub fn new(
        client: StoreClient,
        runtime: Handle,
        config: CacheConfig,
    ) -> Result<Arc<Self>, DiskCacheError> {
        let stats = Arc::new(Stats::default());
        let disk = match &config.disk_dir {
            Some(dir) => Some(Arc::new(DiskCache::open(
                dir,
                config.disk_bytes,
                stats.clone(),
            )?)),
            None => None,
        };
        let m = config.memory_bytes;
        // Chunks take the bulk; metadata is small and hot.
        let (dirs, lists, infos) = (m / 8, m / 16, m / 16);
        Ok(Arc::new(Self {
            chunks: memory_cache(m - dirs - lists - infos, 256 << 10),
            directories: memory_cache(dirs, 4096),
            chunk_lists: memory_cache(lists, 1024),
            path_infos: memory_cache(infos, 256),
            readahead: Arc::new(Semaphore::new(config.readahead_chunks.max(1) * 2)),
            in_flight: Mutex::new(HashMap::new()),
            disk_readahead: OnceLock::new(),
            verified_blobs: Mutex::new(HashSet::new()),
            client,
            runtime,
            config,
            stats,
            disk,
        }))
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_deref()
    }

    /// Runs a store call from a filesystem thread, counting it.
    fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        let result = self.runtime.block_on(fut);
        if let Err(e) = &result {
            self.count_failure(e);
        }
        result
    }

    fn count_failure(&self, e: &StoreError) {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        if e.is_corruption() {
            self.stats
                .verification_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn hit(&self, hit: bool) {
        let counter = if hit {
            &self.stats.memory_hits
        } else {
            &self.stats.memory_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The root node of the store path `name` (whose hash decodes to
    /// `hash`), or `None` if the store does not have it.
    pub fn path_info(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<DirEntry>, StoreError> {
        if let Some(entry) = self.path_infos.get(&hash) {
            match entry {
                PathInfoEntry::Found(e) if e.name == name => {
                    self.hit(true);
                    return Ok(Some(e));
                }
                PathInfoEntry::Found(_) => {
                    self.hit(true);
                    return Ok(None);
                }
                PathInfoEntry::Missing { name: n, at }
                    if n == name && at.elapsed() < self.config.negative_ttl =>
                {
                    self.hit(true);
                    return Ok(None);
                }
                PathInfoEntry::Missing { .. } => {}
            }
        }
        self.hit(false);
        if let Some(found) = self.path_info_from_disk(&hash, name) {
            self.path_infos
                .insert(hash, PathInfoEntry::Found(found.clone()));
            return Ok(Some(found));
        }
        match self.call(self.client.path_info(hash, name))? {
            Some(found) => {
                if let Some(disk) = &self.disk {
                    disk.put(
                        Kind::PathInfo,
                        &hash,
                        &node_encoding(&found).encode_to_vec(),
                    );
                }
                self.path_infos
                    .insert(hash, PathInfoEntry::Found(found.clone()));
                Ok(Some(found))
            }
            None => {
                self.path_infos.insert(
                    hash,
                    PathInfoEntry::Missing {
                        name: Bytes::copy_from_slice(name),
                        at: Instant::now(),
                    },
                );
                Ok(None)
            }
        }
    }

    fn path_info_from_disk(&self, hash: &[u8; 20], name: &[u8]) -> Option<DirEntry> {
        let payload = self.disk.as_ref()?.get(Kind::PathInfo, hash)?;
        let entry = castore::Node::decode(payload)
            .ok()
            .and_then(|node| validate_node(&node).ok());
        match entry {
            Some(e) if e.name == name => Some(e),
            Some(_) => None,
            None => {
                // The checksum matched but the node is invalid: it was
                // written that way, which a verified write never does.
                self.disk.as_ref()?.reject(Kind::PathInfo, hash);
                None
            }
        }
    }

    /// All store paths (`--list-root`); not cached, the list changes.
    pub fn list_path_infos(&self, limit: usize) -> Result<Vec<DirEntry>, StoreError> {
        self.call(self.client.list_path_infos(limit))
    }

    /// A validated Directory whose parent node announces `size` (a lower
    /// bound of its real size, see `check_announced_size`).
    pub fn directory(&self, digest: &B3Digest, size: u64) -> Result<Arc<Directory>, StoreError> {
        let directory = match self.directories.get(digest) {
            Some(d) => {
                self.hit(true);
                d
            }
            None => {
                self.hit(false);
                let d = match self.directory_from_disk(digest, size) {
                    Some(d) => d,
                    None => self.fetch_directories(digest, size)?,
                };
                let d = Arc::new(d);
                self.directories.insert(*digest, d.clone());
                d
            }
        };
        // The same Directory may be reached through several parents; each
        // one's node must announce at least its size, or that parent is
        // corrupt.
        crate::store::directory::check_announced_size(size, directory.size).map_err(|source| {
            StoreError::InvalidDirectory {
                digest: *digest,
                source,
            }
        })?;
        Ok(directory)
    }

    /// Fetches `digest` and, in the same call, the Directories below it;
    /// caches them all and returns the first.
    fn fetch_directories(&self, digest: &B3Digest, size: u64) -> Result<Directory, StoreError> {
        let fetched = self.call(
            self.client
                .directories(digest, Some(size), DIRECTORY_PREFETCH),
        )?;
        let mut root = None;
        for (directory, encoding) in fetched {
            if let Some(disk) = &self.disk {
                disk.put(Kind::Directory, directory.digest.as_bytes(), &encoding);
            }
            if root.is_none() {
                root = Some(directory);
            } else {
                self.directories
                    .insert(directory.digest, Arc::new(directory));
            }
        }
        root.ok_or(StoreError::DirectoryNotFound { digest: *digest })
    }

    fn directory_from_disk(&self, digest: &B3Digest, size: u64) -> Option<Directory> {
        let disk = self.disk.as_ref()?;
        let encoding = disk.get(Kind::Directory, digest.as_bytes())?;
        let valid = castore::Directory::decode(encoding)
            .ok()
            .and_then(|d| validate_directory(&d, digest, Some(size)).ok());
        if valid.is_none() {
            disk.reject(Kind::Directory, digest.as_bytes());
        }
        valid
    }

    /// The chunks of a blob, or an empty list if it has no finer chunking.
    pub fn chunk_list(&self, digest: &B3Digest, size: u64) -> Result<Arc<Vec<Chunk>>, StoreError> {
        if let Some(list) = self.chunk_lists.get(digest) {
            self.hit(true);
            return Ok(list);
        }
        self.hit(false);
        let from_disk = self.disk.as_ref().and_then(|disk| {
            let payload = disk.get(Kind::ChunkList, digest.as_bytes())?;
            let list = decode_chunk_list(&payload, size);
            if list.is_none() {
                disk.reject(Kind::ChunkList, digest.as_bytes());
            }
            list
        });
        let list = match from_disk {
            Some(list) => list,
            None => {
                let list = self.call(self.client.blob_chunks(digest, size))?;
                if let Some(disk) = &self.disk {
                    disk.put(
                        Kind::ChunkList,
                        digest.as_bytes(),
                        &encode_chunk_list(&list),
                    );
                }
                list
            }
        };
        let list = Arc::new(list);
        self.chunk_lists.insert(*digest, list.clone());
        Ok(list)
    }

    /// One chunk's verified bytes: from memory, disk, a fetch already under
    /// way, or the store.
    ///
    /// A disk hit is read and verified right here on the calling (request)
    /// thread: a hand-off to the runtime and back costs more than the read.
    pub fn chunk(self: &Arc<Self>, chunk: &Chunk) -> ChunkResult {
        if let Some(data) = self.chunks.get(&chunk.digest) {
            self.hit(true);
            return Ok(data);
        }
        self.hit(false);
        let wait = match self.claim_disk_read(chunk) {
            DiskClaim::Mine(done, wait) => match self.read_claimed(chunk, done, true) {
                Some(read) => {
                    self.in_flight.lock().remove(&chunk.digest);
                    return read;
                }
                // Not on disk: `wait` fetches it from the store.
                None => wait,
            },
            DiskClaim::Taken(wait) => wait,
            DiskClaim::NoDisk => self.chunk_fetch(chunk),
        };
        let result = self.runtime.block_on(wait);
        // A chunk read ahead waits in `in_flight` for its reader, outside
        // the memory cache: taken now, and kept as any chunk read.
        if let Ok(data) = &result {
            if self.chunks.peek(&chunk.digest).is_none() {
                self.chunks.insert(chunk.digest, data.clone());
            }
        }
        self.release_if_done(&chunk.digest);
        result
    }

    /// Bytes `from..to` of `chunk` (offsets within it) when the chunk is
    /// not in memory or on its way, read from the disk cache without the
    /// rest of the chunk and verified through its outboard. `None` when
    /// that does not apply or fails; the caller then takes the whole chunk
    /// through [`Self::chunk`], which also finds out what was wrong, and
    /// on [`PartMiss::NoOutboard`] hands it to [`Self::write_outboard`].
    pub fn chunk_part(&self, chunk: &Chunk, from: u64, to: u64) -> Result<Bytes, PartMiss> {
        let Some(disk) = self.disk.as_ref() else {
            return Err(PartMiss::NotApplicable);
        };
        if chunk.size <= outboard::GROUP
            || from >= to
            || to > chunk.size
            || self.chunks.peek(&chunk.digest).is_some()
            || self.in_flight.lock().contains_key(&chunk.digest)
        {
            return Err(PartMiss::NotApplicable);
        }
        let key = chunk.digest.as_bytes();
        let outboard = disk.get(Kind::Outboard, key).ok_or(PartMiss::NoOutboard)?;
        let (start, end) = outboard::aligned(from, to, chunk.size);
        let data = disk
            .get_range(Kind::Chunk, key, start, (end - start) as usize)
            .ok_or(PartMiss::NotApplicable)?;
        if !outboard::verify_range(&chunk.digest, chunk.size, &outboard, start, &data) {
            // Either file may be wrong: the whole-chunk read that follows
            // checks the chunk file, and the outboard is written again.
            tracing::warn!(digest = %chunk.digest, start, end, "part of a cached chunk failed verification through its outboard");
            disk.reject(Kind::Outboard, key);
            return Err(PartMiss::NoOutboard);
        }
        self.hit(false);
        Ok(Bytes::from(data).slice((from - start) as usize..(to - start) as usize))
    }

    /// Writes the outboard of a verified chunk to the disk cache (chunks
    /// cached before outboards were, or whose outboard went missing).
    pub fn write_outboard(&self, chunk: &Chunk, data: &[u8]) {
        if let (Some(disk), Some(outboard)) = (&self.disk, outboard::compute(data)) {
            disk.put(Kind::Outboard, chunk.digest.as_bytes(), &outboard);
        }
    }

    /// Starts getting the chunks a sequential reader will want next, in the
    /// background: those in the disk cache through the one disk read-ahead
    /// thread, the others from the store, up to the readahead bound.
    /// Only the first `from_disk` of `chunks` may be read ahead from disk:
    /// a short distance keeps the thread ahead of the reader, a long one
    /// would push chunks out of a small memory cache before they are read.
    /// Returns how many of `chunks` are taken care of; the rest could not
    /// be queued now.
    pub fn prefetch(self: &Arc<Self>, chunks: &[Chunk], from_disk: usize) -> usize {
        for (queued, chunk) in chunks.iter().enumerate() {
            if self.chunks.peek(&chunk.digest).is_some()
                || self.in_flight.lock().contains_key(&chunk.digest)
            {
                continue;
            }
            if let Some(disk) = &self.disk {
                if disk.contains(Kind::Chunk, chunk.digest.as_bytes()) {
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
            let fetch = self.chunk_fetch(chunk);
            self.runtime.spawn(async move {
                let _ = fetch.await;
                drop(permit);
            });
        }
        chunks.len()
    }

    fn disk_readahead(self: &Arc<Self>) -> Option<&DiskReadahead> {
        self.disk_readahead
            .get_or_init(|| {
                DiskReadahead::start(Arc::downgrade(self))
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
        if self.disk.is_none() {
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
                    let fetched = this.fetch_from_store(&chunk).await;
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
        let read = match self.chunk_from_disk(chunk) {
            Ok(Some(data)) => {
                if keep {
                    self.chunks.insert(chunk.digest, data.clone());
                }
                Some(Ok(data))
            }
            Ok(None) => None,
            Err(e) => Some(Err(Arc::new(e))),
        };
        let _ = done.send(read.clone());
        read
    }

    /// Removes the `in_flight` entry of `digest` if it has its result (a
    /// chunk read ahead that its reader took, or that none came for).
    fn release_if_done(&self, digest: &B3Digest) {
        let mut in_flight = self.in_flight.lock();
        if in_flight.get(digest).is_some_and(|f| f.peek().is_some()) {
            in_flight.remove(digest);
        }
    }

    /// The one store fetch of `chunk`: joined if already running, else
    /// started. Callers with a disk cache have looked there first
    /// ([`Self::claim_disk_read`], or [`Self::prefetch`]'s check).
    fn chunk_fetch(self: &Arc<Self>, chunk: &Chunk) -> ChunkFuture {
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
        let fetch = async move {
            let result = this.fetch_from_store(&chunk).await;
            if let Ok(data) = &result {
                this.chunks.insert(chunk.digest, data.clone());
            }
            this.in_flight.lock().remove(&chunk.digest);
            result.map_err(Arc::new)
        }
        .boxed()
        .shared();
        in_flight.insert(chunk.digest, fetch.clone());
        fetch
    }

    /// A chunk from the disk cache, verified, or `None` if it is not there
    /// (or failed its check and was removed).
    fn chunk_from_disk(&self, chunk: &Chunk) -> Result<Option<Bytes>, StoreError> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        match disk.get(Kind::Chunk, chunk.digest.as_bytes()) {
            Some(data) if data.len() as u64 == chunk.size => Ok(Some(data)),
            Some(data) => Err(StoreError::BlobSizeMismatch {
                digest: chunk.digest,
                expected: chunk.size,
                actual: data.len() as u64,
            }),
            None => Ok(None),
        }
    }

    /// Fetches a chunk from the store, verified, and writes it to disk.
    async fn fetch_from_store(&self, chunk: &Chunk) -> Result<Bytes, StoreError> {
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        self.stats.fetches_in_flight.fetch_add(1, Ordering::Relaxed);
        let result = self
            .client
            .read_blob_to_memory(&chunk.digest, chunk.size)
            .await;
        self.stats.fetches_in_flight.fetch_sub(1, Ordering::Relaxed);
        match &result {
            Ok(data) => {
                self.stats
                    .store_bytes_fetched
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(disk) = self.disk.clone() {
                    let (digest, data) = (chunk.digest, data.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        disk.put(Kind::Chunk, digest.as_bytes(), &data);
                        if let Some(outboard) = outboard::compute(&data) {
                            disk.put(Kind::Outboard, digest.as_bytes(), &outboard);
                        }
                    })
                    .await;
                }
            }
            Err(e) => self.count_failure(e),
        }
        result
    }

    /// A whole blob (too large for memory, not chunked by the store) in a
    /// file: from the disk cache, verified once per process, or fetched,
    /// verified and then published to the disk cache.
    pub fn blob_file(&self, digest: &B3Digest, size: u64) -> Result<File, StoreError> {
        if let Some(disk) = &self.disk {
            if let Some(file) = disk.open_blob(digest) {
                if self.verified_blobs.lock().contains(digest) || verify_file(&file, digest, size) {
                    self.verified_blobs.lock().insert(*digest);
                    return Ok(file);
                }
                self.verified_blobs.lock().remove(digest);
                disk.reject(Kind::Blob, digest.as_bytes());
            }
        }
        let sink_error = |source| StoreError::Sink {
            digest: *digest,
            source,
        };
        let file = match &self.disk {
            Some(disk) => {
                let mut temp = disk.temp_file().map_err(sink_error)?;
                self.call(
                    self.client
                        .read_blob(digest, size, |piece| temp.write_all(piece)),
                )?;
                self.verified_blobs.lock().insert(*digest);
                let keep = temp.reopen().map_err(sink_error)?;
                if let Err(e) = disk.publish_blob(digest, temp) {
                    tracing::warn!(blob = %digest, error = %e, "keeping a fetched blob in the disk cache failed");
                }
                keep
            }
            None => {
                let mut file = match &self.config.spool_dir {
                    Some(dir) => tempfile::tempfile_in(dir),
                    None => tempfile::tempfile(),
                }
                .map_err(sink_error)?;
                self.call(
                    self.client
                        .read_blob(digest, size, |piece| file.write_all(piece)),
                )?;
                file
            }
        };
        self.stats
            .store_bytes_fetched
            .fetch_add(size, Ordering::Relaxed);
        Ok(file)
    }
}

/// The castore Node a store path's root is kept as on disk.
fn node_encoding(entry: &DirEntry) -> castore::Node {
    use crate::store::Node;
    use castore::node::Node as N;
    let name = entry.name.clone();
    let node = match &entry.node {
        Node::Directory { digest, size } => N::Directory(castore::DirectoryNode {
            name,
            digest: Bytes::copy_from_slice(digest.as_bytes()),
            size: *size,
        }),
        Node::File {
            digest,
            size,
            executable,
        } => N::File(castore::FileNode {
            name,
            digest: Bytes::copy_from_slice(digest.as_bytes()),
            size: *size,
            executable: *executable,
        }),
        Node::Symlink { target } => N::Symlink(castore::SymlinkNode {
            name,
            target: target.clone(),
        }),
    };
    castore::Node { node: Some(node) }
}

/// Whether `file` holds exactly `size` bytes hashing to `digest`.
fn verify_file(file: &File, digest: &B3Digest, size: u64) -> bool {
    let mut hasher = blake3::Hasher::new();
    let mut reader = file;
    match hasher.update_reader(&mut reader) {
        Ok(_) => hasher.count() == size && B3Digest::from(hasher.finalize()) == *digest,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip_and_must_add_up() {
        let chunks = vec![
            Chunk {
                digest: B3Digest::of(b"a"),
                offset: 0,
                size: 10,
            },
            Chunk {
                digest: B3Digest::of(b"b"),
                offset: 10,
                size: 5,
            },
        ];
        let encoded = encode_chunk_list(&chunks);
        assert_eq!(decode_chunk_list(&encoded, 15).unwrap(), chunks);
        assert_eq!(decode_chunk_list(&encoded, 16), None);
        assert_eq!(decode_chunk_list(&encoded[..39], 15), None);
        assert_eq!(decode_chunk_list(&[], 15).unwrap(), vec![]);
    }

    #[test]
    fn path_info_nodes_round_trip() {
        let entry = DirEntry {
            name: Bytes::from_static(b"00bgd045z0d4icpbc2yyz4gx48ak44la-x"),
            node: crate::store::Node::File {
                digest: B3Digest::of(b"x"),
                size: 1,
                executable: true,
            },
        };
        assert_eq!(validate_node(&node_encoding(&entry)).unwrap(), entry);
    }
}
