//! The cache and fetch layer between the filesystem and the store client.
//! The filesystem asks for metadata and bytes through [`ContentSource`] and
//! gets only verified answers. [`CachedStore`] owns the parts, each with
//! its own state and its own tests (against the in-memory store,
//! `test_store`):
//!
//! - `remote`: the store's calls from the filesystem's threads;
//! - `disk`: the disk side, over `objects` (shared, content-addressed
//!   objects: chunks, whole blobs, outboards, Directories, checked against
//!   their digest on every read, whoever wrote them), `mappings` (this
//!   instance's private store path and chunk-list mappings, which no other
//!   daemon can reach), `write_behind` (the thread that writes to disk,
//!   with a bounded queue) and `eviction` (the disk bound, with a bounded
//!   wait for the shared lock);
//! - `metadata`: the metadata cache: path infos, Directories and chunk
//!   lists (memory, then disk, then the store);
//! - `fetch`: the chunk fetcher: one chunk's bytes from memory, disk or
//!   the store, with concurrent requests sharing one fetch, read-ahead
//!   (`readahead`: the thread that reads ahead from disk) and streams of
//!   whole blobs (`blob_stream`);
//! - `prefetch`: fetching ahead what the guest is likely to read (its
//!   access trace, or a guess), on a lane of its own that yields to the
//!   guest's demand;
//! - `reader`: the read policy on top (partial reads through outboards,
//!   repair of missing outboards, read-ahead distances), with large
//!   unchunked blobs read from a file and checked group by group on every
//!   read (`whole_blob`).
//!
//! With the store down, everything cached keeps being served.

mod blob_stream;
mod buffers;
mod config;
mod disk;
mod eviction;
mod fetch;
mod files;
mod lanes;
mod layout;
pub(crate) mod mappings;
mod memory_cache;
mod metadata;
pub(crate) mod objects;
mod outboard;
pub mod prefetch;
mod readahead;
mod reader;
mod remote;
mod source;
pub mod stats;
#[cfg(test)]
mod test_store;
pub mod trace;
mod whole_blob;
mod write_behind;

use std::io::Write;
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::store::{B3Digest, Chunk, DirEntry, Directory, Store, StoreError, StorePathInfo};
pub use config::{CacheConfig, PrefetchGuess};
use disk::Disk;
pub use eviction::{Outcome as EvictionOutcome, LOCK_WAIT as EVICTION_LOCK_WAIT};
use fetch::ChunkFetcher;
pub use lanes::Lane;
pub use layout::DiskCacheError;
pub use layout::MAX_IN_MEMORY_BLOB;
pub use layout::{CacheLayout, InstanceName, LAYOUT};
pub use mappings::{decode_chunk_list, encode_chunk_list};
use metadata::{Answered, MetadataBudget, MetadataCache};
pub use objects::SharedObjects;
use prefetch::Prefetcher;
use reader::ReadPolicy;
use remote::Remote;
pub use source::{ContentSource, FileOrigin, OpenBlob, ReadError};
pub use stats::{Stats, StatsReporter};

/// The store as the filesystem sees it: cached, verified, shared fetches.
/// It owns the parts, each with its own state, and hands each request of
/// the filesystem to the part that answers it: the store's calls
/// ([`remote::Remote`]), the disk ([`disk::Disk`]), the metadata cache
/// ([`metadata::MetadataCache`]), the chunk fetcher
/// ([`fetch::ChunkFetcher`]), the prefetch ([`prefetch::Prefetcher`]) and
/// the read policy over them ([`reader::ReadPolicy`]).
pub struct CachedStore {
    disk: Arc<Disk>,
    metadata: Arc<MetadataCache>,
    fetcher: Arc<ChunkFetcher>,
    prefetcher: Arc<Prefetcher>,
    reads: ReadPolicy,
    stats: Arc<Stats>,
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
        let disk = Arc::new(Disk::open(&config, &stats, runtime.clone())?);
        let remote = Arc::new(Remote::new(store, runtime.clone(), stats.clone()));
        let m = config.memory_bytes;
        // Chunks take the bulk; metadata is small and hot.
        let budget = MetadataBudget {
            directories: m / 8,
            chunk_lists: m / 16,
            path_infos: m / 16,
        };
        let chunk_bytes = m - budget.directories - budget.chunk_lists - budget.path_infos;
        let metadata = Arc::new(MetadataCache::new(
            budget,
            config.negative_ttl,
            remote.clone(),
            disk.clone(),
            stats.clone(),
        ));
        let fetcher = Arc::new(ChunkFetcher::new(
            chunk_bytes,
            config.readahead_chunks,
            remote.clone(),
            disk.clone(),
            stats.clone(),
        ));
        let prefetcher = Prefetcher::new(
            &config,
            metadata.clone(),
            fetcher.clone(),
            disk.clone(),
            stats.clone(),
            runtime,
        );
        let reads = ReadPolicy::new(
            &config,
            metadata.clone(),
            fetcher.clone(),
            disk.clone(),
            remote,
            stats.clone(),
        );
        Ok(Arc::new(Self {
            disk,
            metadata,
            fetcher,
            prefetcher,
            reads,
            stats,
        }))
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The shared objects on disk, if there is a disk cache.
    pub fn disk(&self) -> Option<&SharedObjects> {
        self.disk.objects().map(|o| &**o)
    }

    /// Bytes held by the memory caches now (their weights), for metrics.
    pub fn memory_bytes(&self) -> u64 {
        self.fetcher.memory_bytes() + self.metadata.memory_bytes()
    }

    /// The chunks of a blob, or an empty list if it has no finer chunking.
    pub fn chunk_list(&self, digest: &B3Digest, size: u64) -> Result<Arc<Vec<Chunk>>, StoreError> {
        self.metadata.chunk_list(digest, size)
    }

    /// Waits until the writes queued so far are on disk: called on the way
    /// out, so that what this run fetched is there for the next.
    pub fn finish_writes(&self) {
        self.prefetcher.save_traces();
        self.disk.flush();
    }
}

impl ContentSource for CachedStore {
    /// A store path the store just told us of is where the prefetch starts.
    fn path_info(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<StorePathInfo>, StoreError> {
        Ok(self
            .metadata
            .path_info(hash, name)?
            .map(|(found, answered)| {
                if answered == Answered::FromStore {
                    self.prefetcher.store_path_found(hash, &found.entry.node);
                }
                found
            }))
    }

    fn list_path_infos(&self, limit: usize) -> Result<Vec<DirEntry>, StoreError> {
        self.metadata.list_path_infos(limit)
    }

    fn directory(&self, digest: &B3Digest, size: u64) -> Result<Arc<Directory>, StoreError> {
        self.metadata.directory(digest, size)
    }

    fn open_blob(&self, digest: B3Digest, size: u64, origin: Option<&FileOrigin>) -> OpenBlob {
        let traced_extent = origin.and_then(|o| self.prefetcher.file_opened(o, digest, size));
        self.reads.open(digest, size, traced_extent)
    }

    fn read(
        &self,
        handle: &OpenBlob,
        offset: u64,
        count: u32,
        out: &mut dyn Write,
    ) -> Result<usize, ReadError> {
        self.reads.read(handle, offset, count, out)
    }
}
