//! The cache and fetch layer between the filesystem and the store client.
//! The filesystem asks for metadata and bytes through [`ContentSource`] and
//! gets only verified answers. The rooms:
//!
//! - `objects`: shared, content-addressed objects on disk (chunks, whole
//!   blobs, outboards, Directories), checked against their digest on every
//!   read, whoever wrote them;
//! - `mappings`: this instance's private store path and chunk-list
//!   mappings, which no other daemon can reach;
//! - `eviction`: the disk bound, with a bounded wait for the shared lock;
//! - `metadata`: path infos, Directories and chunk lists (memory, then
//!   disk, then the store);
//! - `fetch`: one chunk's bytes from memory, disk or the store, with
//!   concurrent requests sharing one fetch;
//! - `reader`: the read policy (partial reads through outboards, repair of
//!   missing outboards, whole blobs checked group by group on every read,
//!   read-ahead distances);
//! - `readahead`: the thread that reads ahead from disk;
//! - `prefetch`: fetching ahead what the guest is likely to read (its
//!   access trace, or a guess), on a lane of its own that yields to the
//!   guest's demand;
//! - `write_behind`: the thread that writes to disk, with a bounded queue.
//!
//! With the store down, everything cached keeps being served.

mod blob_stream;
mod buffers;
mod eviction;
mod fetch;
mod files;
mod layout;
pub(crate) mod mappings;
mod metadata;
pub(crate) mod objects;
mod outboard;
pub mod prefetch;
mod readahead;
mod reader;
mod source;
pub mod stats;
#[cfg(test)]
mod test_store;
mod write_behind;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::store::{B3Digest, Chunk, DirEntry, Directory, Node, Store, StoreError};
pub use eviction::{Outcome as EvictionOutcome, LOCK_WAIT as EVICTION_LOCK_WAIT};
use fetch::ChunkFuture;
pub use layout::DiskCacheError;
pub use layout::{CacheLayout, InstanceName, LAYOUT};
use mappings::PrivateMappings;
pub use mappings::{decode_chunk_list, encode_chunk_list};
pub use objects::SharedObjects;
pub use prefetch::PrefetchGuess;
use prefetch::Prefetcher;
use readahead::DiskReadahead;
pub use reader::MAX_IN_MEMORY_BLOB;
pub use source::{ContentSource, FileOrigin, OpenBlob, ReadError};
pub use stats::{Stats, StatsReporter};
use write_behind::WriteBehind;

/// How much to keep where.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Bytes of memory for chunks, Directories, chunk lists and path infos.
    pub memory_bytes: u64,
    /// Directory of the persistent disk cache; `None`: memory only.
    pub disk_dir: Option<PathBuf>,
    /// This daemon's name: where its private mappings live on disk.
    pub instance: Option<InstanceName>,
    /// Bound of the disk cache directory as a whole.
    pub disk_bytes: u64,
    /// How long "no such store path" is remembered.
    pub negative_ttl: Duration,
    /// Chunks fetched ahead of a sequential reader (0: no readahead).
    pub readahead_chunks: usize,
    /// Where large unchunked blobs are spooled without a disk cache.
    pub spool_dir: Option<PathBuf>,
    /// Bytes fetched ahead per store path at most (0: no prefetch and no
    /// access trace).
    pub prefetch_bytes: u64,
    /// What to fetch ahead for a store path without an access trace.
    pub prefetch_guess: PrefetchGuess,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            disk_dir: None,
            instance: None,
            disk_bytes: 10 << 30,
            negative_ttl: Duration::from_secs(1),
            readahead_chunks: 32,
            spool_dir: None,
            prefetch_bytes: 0,
            prefetch_guess: PrefetchGuess::default(),
        }
    }
}

/// Whose work a fetch or a disk write is: a reader's, or the prefetch's
/// (which yields to a reader's everywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Demand,
    Prefetch,
}

impl Lane {
    /// The lane of work done on the calling thread.
    fn of_this_thread() -> Self {
        if prefetch::on_prefetch_lane() {
            Lane::Prefetch
        } else {
            Lane::Demand
        }
    }
}

/// quick_cache weighs entries by all the heap memory they hold, in bytes.
#[derive(Clone)]
struct Weight;

/// What an entry costs besides its payload (key, map slot, Arc/Bytes).
const ENTRY_OVERHEAD: u64 = 64;

impl quick_cache::Weighter<B3Digest, Bytes> for Weight {
    fn weight(&self, _: &B3Digest, v: &Bytes) -> u64 {
        ENTRY_OVERHEAD + v.len() as u64
    }
}

impl quick_cache::Weighter<B3Digest, Arc<Directory>> for Weight {
    fn weight(&self, _: &B3Digest, v: &Arc<Directory>) -> u64 {
        ENTRY_OVERHEAD + v.approximate_size_in_bytes() as u64
    }
}

impl quick_cache::Weighter<B3Digest, Arc<Vec<Chunk>>> for Weight {
    fn weight(&self, _: &B3Digest, v: &Arc<Vec<Chunk>>) -> u64 {
        ENTRY_OVERHEAD + (v.capacity() * std::mem::size_of::<Chunk>()) as u64
    }
}

impl quick_cache::Weighter<[u8; 20], PathInfoEntry> for Weight {
    fn weight(&self, _: &[u8; 20], v: &PathInfoEntry) -> u64 {
        ENTRY_OVERHEAD
            + std::mem::size_of::<PathInfoEntry>() as u64
            + match v {
                PathInfoEntry::Found(e) => {
                    let target = match &e.node {
                        Node::Symlink { target } => target.len(),
                        _ => 0,
                    };
                    (e.name.len() + target) as u64
                }
                PathInfoEntry::Missing { name, .. } => name.len() as u64,
            }
    }
}

type MemoryCache<K, V> = quick_cache::sync::Cache<
    K,
    V,
    Weight,
    quick_cache::DefaultHashBuilder,
    stats::CountEvictions<K, V>,
>;

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

/// The store as the filesystem sees it: cached, verified, shared fetches.
pub struct CachedStore {
    /// The store, behind the trait (the gRPC client, or the in-memory
    /// store of the tests).
    store: Arc<dyn Store>,
    runtime: Handle,
    config: CacheConfig,
    stats: Arc<Stats>,
    objects: Option<Arc<SharedObjects>>,
    mappings: Option<Arc<PrivateMappings>>,
    chunks: MemoryCache<B3Digest, Bytes>,
    directories: MemoryCache<B3Digest, Arc<Directory>>,
    chunk_lists: MemoryCache<B3Digest, Arc<Vec<Chunk>>>,
    path_infos: MemoryCache<[u8; 20], PathInfoEntry>,
    in_flight: Mutex<HashMap<B3Digest, ChunkFuture>>,
    readahead: Arc<Semaphore>,
    /// Started on first use; `None` without a disk cache or if the thread
    /// could not be started.
    disk_readahead: OnceLock<Option<DiskReadahead>>,
    /// The disk writer; `None` without a disk cache or if its thread could
    /// not be started (writes then go through the runtime's blocking pool).
    writer: Option<WriteBehind>,
    /// The prefetch: access traces, guesses, and its lane.
    prefetcher: Prefetcher,
    /// Open blobs by digest and size, so concurrent readers of a large
    /// unchunked file fetch it once.
    blob_slots: Mutex<HashMap<(B3Digest, u64), std::sync::Weak<reader::BlobSlot>>>,
    /// Itself, for the fetches it hands to the runtime.
    this: std::sync::Weak<CachedStore>,
}

fn memory_cache<K: Eq + std::hash::Hash, V: Clone>(
    bytes: u64,
    typical_item: u64,
    stats: &Arc<Stats>,
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
    quick_cache::sync::Cache::with_options(
        options,
        Weight,
        Default::default(),
        stats::CountEvictions::new(stats.clone()),
    )
}

impl CachedStore {
    /// Opens the cache; never waits for another daemon (the disk cache is
    /// brought under its bound by the first write, with a bounded wait).
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Handle,
        config: CacheConfig,
    ) -> Result<Arc<Self>, DiskCacheError> {
        let stats = Arc::new(Stats::default());
        let (objects, mappings) = match &config.disk_dir {
            Some(dir) => {
                let layout = CacheLayout::new(dir, config.instance.as_ref());
                let eviction = Arc::new(eviction::Eviction::new(
                    &layout.objects,
                    layout.instance.as_deref(),
                    config.disk_bytes,
                    stats.clone(),
                ));
                let objects =
                    SharedObjects::open(&layout.objects, eviction.clone(), stats.clone())?;
                let mappings = match &layout.instance {
                    Some(dir) => Some(Arc::new(PrivateMappings::open(
                        dir,
                        eviction,
                        stats.clone(),
                    )?)),
                    None => None,
                };
                (Some(Arc::new(objects)), mappings)
            }
            None => (None, None),
        };
        let writer = objects.as_ref().and_then(|_| {
            WriteBehind::start(stats.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "no disk writer thread"))
                .ok()
        });
        let m = config.memory_bytes;
        // Chunks take the bulk; metadata is small and hot.
        let (dirs, lists, infos) = (m / 8, m / 16, m / 16);
        Ok(Arc::new_cyclic(|this| Self {
            this: this.clone(),
            chunks: memory_cache(m - dirs - lists - infos, 256 << 10, &stats),
            directories: memory_cache(dirs, 4096, &stats),
            chunk_lists: memory_cache(lists, 1024, &stats),
            path_infos: memory_cache(infos, 256, &stats),
            readahead: Arc::new(Semaphore::new(config.readahead_chunks.max(1) * 2)),
            in_flight: Mutex::new(HashMap::new()),
            disk_readahead: OnceLock::new(),
            writer,
            prefetcher: Prefetcher::default(),
            blob_slots: Mutex::new(HashMap::new()),
            store,
            runtime,
            config,
            stats,
            objects,
            mappings,
        }))
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The shared objects on disk, if there is a disk cache.
    pub fn disk(&self) -> Option<&SharedObjects> {
        self.objects.as_deref()
    }

    /// Bytes held by the memory caches now (their weights), for metrics.
    pub fn memory_bytes(&self) -> u64 {
        self.chunks.weight()
            + self.directories.weight()
            + self.chunk_lists.weight()
            + self.path_infos.weight()
    }

    /// Runs a store call from a filesystem thread, counting it.
    fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        // A request thread waiting for the store: demand the prefetch
        // yields to (the prefetch's own calls are not).
        let _demand = (!prefetch::on_prefetch_lane()).then(|| {
            (
                crate::demand::DEMAND.store_work(),
                crate::demand::DEMAND.blocked(),
            )
        });
        let result = self.runtime.block_on(fut);
        if let Err(e) = &result {
            self.count_failure(e);
        }
        result
    }

    fn count_failure(&self, e: &StoreError) {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = e.rejected_kind() {
            self.stats.rejected.from_store(kind);
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

    /// Writes to the disk cache behind the reader's back (see
    /// [`write_behind`]). Without the writer thread, handed to the
    /// blocking pool from a runtime thread: the pool starts its threads
    /// from the caller's, and one started from a serving thread would
    /// inherit that thread's narrower seccomp filter.
    /// `held` is the bytes of data `write` keeps alive until it is done.
    fn write_behind(&self, lane: Lane, held: usize, write: impl FnOnce() + Send + 'static) {
        match &self.writer {
            Some(writer) => writer.submit(lane, held, write),
            None => drop(self.runtime.spawn(async move {
                drop(tokio::task::spawn_blocking(write));
            })),
        }
    }

    /// Waits until the writes queued so far are on disk: called on the way
    /// out, so that what this run fetched is there for the next.
    pub fn finish_writes(&self) {
        self.save_traces();
        if let Some(writer) = &self.writer {
            writer.flush();
        }
    }
}
