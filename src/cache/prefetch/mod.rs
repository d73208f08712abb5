//! The prefetch: fetching what the guest is likely to read next, before it
//! asks, without ever making it wait for that.
//!
//! - **Demand first.** All prefetch work runs on one thread of its own
//!   (the lane) with at most [`PARALLEL`] fetches in flight, and starts
//!   each fetch only when the guest waits for nothing else: no store work
//!   for a reader under way and no request in service that is not itself
//!   waiting for the store ([`crate::demand`]). Its writes to the disk
//!   cache queue behind a reader's. So a guest's request waits at most for
//!   the few prefetch fetches already on the wire.
//! - **What the guest opened, from a trace.** Every open records, per
//!   store path, the file and how far it was read ([`trace`]); the trace
//!   is kept in this instance's mappings. When this instance looks up a
//!   store path cold (its path info from the store) and has a trace of
//!   it, the lane fetches exactly those files and ranges, in that order.
//! - **Without a trace, a guess** (`--prefetch-guess`): `directory` (the
//!   default) fetches the small files of a directory once the guest opens
//!   a file in it; `tree` walks the whole store path when it is looked up
//!   (every small file, breadth first); `none` waits for the trace.
//!
//! Everything fetched goes through the same verified fetch as a guest's
//! read; a guest read of a chunk being prefetched joins that fetch.
//! `--prefetch-bytes` bounds what one store path's prefetch covers (cached
//! files included, so a warm cache means no store calls at all).

mod lane;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use tokio::runtime::Handle;

use super::config::{CacheConfig, PrefetchGuess};
use super::disk::Disk;
use super::fetch::ChunkFetcher;
use super::lanes::Lane;
use super::layout::MAX_IN_MEMORY_BLOB;
use super::layout::SMALL_BLOB;
use super::metadata::MetadataCache;
use super::source::FileOrigin;
use super::stats::Stats;
use super::trace::{self, TracedFile};
use crate::store::{B3Digest, Chunk, Node};
pub use lane::PARALLEL;
use lane::{Job, PrefetchLane};

/// Directories visited per store path walk at most (a bound on the walk
/// itself; the byte budget bounds the fetches).
const MAX_DIRECTORIES: usize = 100_000;
/// Roots and directories remembered as queued (then forgotten all at
/// once: a second walk only finds what it fetched cached).
const REMEMBERED: usize = 16_384;

/// The prefetch: the access traces, the guesses, the budgets and the lane.
/// It reads through the metadata cache and fetches through the chunk
/// fetcher, as a guest's read does.
pub(super) struct Prefetcher {
    /// Bytes fetched ahead per store path at most (0: off).
    budget: u64,
    guess: PrefetchGuess,
    metadata: Arc<MetadataCache>,
    fetcher: Arc<ChunkFetcher>,
    disk: Arc<Disk>,
    stats: Arc<Stats>,
    runtime: Handle,
    /// Started with the first job; `None` if the thread could not start.
    lane: OnceLock<Option<PrefetchLane>>,
    recorder: trace::Recorder,
    /// Store paths whose trace is replayed in this run: no guesses there.
    replayed: Mutex<HashSet<[u8; 20]>>,
    /// Roots and directories queued for a guess already.
    queued: Mutex<HashSet<B3Digest>>,
    /// Bytes left to cover per store path.
    budgets: Mutex<HashMap<[u8; 20], u64>>,
    /// Itself, for the lane's thread (which ends once this is dropped).
    this: Weak<Prefetcher>,
}

impl Prefetcher {
    pub(super) fn new(
        config: &CacheConfig,
        metadata: Arc<MetadataCache>,
        fetcher: Arc<ChunkFetcher>,
        disk: Arc<Disk>,
        stats: Arc<Stats>,
        runtime: Handle,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            budget: config.prefetch_bytes,
            guess: config.prefetch_guess,
            metadata,
            fetcher,
            disk,
            stats,
            runtime,
            lane: OnceLock::new(),
            recorder: trace::Recorder::default(),
            replayed: Mutex::default(),
            queued: Mutex::default(),
            budgets: Mutex::default(),
            this: this.clone(),
        })
    }

    fn on(&self) -> bool {
        self.budget > 0
    }

    /// Called when this instance got the root `node` of the store path
    /// `hash` from the store (not from its mappings): replays its trace if
    /// there is one, else walks it if the guess is `tree`.
    pub(super) fn store_path_found(&self, hash: [u8; 20], node: &Node) {
        if !self.on() {
            return;
        }
        if let Some(files) = self.disk.mappings().and_then(|m| m.trace(&hash)) {
            if !files.is_empty() {
                self.replayed.lock().insert(hash);
                tracing::debug!(
                    files = files.len(),
                    "prefetch: replaying the access trace of a store path"
                );
                self.queue(Job::Trace {
                    store_path: hash,
                    files,
                });
                return;
            }
        }
        if let (PrefetchGuess::Tree, Node::Directory { digest, size }) = (self.guess, node) {
            if self.first_queued(digest) {
                self.queue(Job::Tree {
                    store_path: hash,
                    digest: *digest,
                    size: *size,
                });
            }
        }
    }

    /// Called when the guest opens the blob `digest` of `size` bytes found
    /// at `origin`: traces it, and guesses at its directory. Returns where
    /// the reads of this open record how far they got.
    pub(super) fn file_opened(
        &self,
        origin: &FileOrigin,
        digest: B3Digest,
        size: u64,
    ) -> Option<Arc<AtomicU64>> {
        if !self.on() {
            return None;
        }
        let recorded = self.recorder.record(origin.store_path, digest, size);
        if recorded.as_ref().is_some_and(|r| r.worth_saving) {
            self.save_trace(origin.store_path);
        }
        if let (PrefetchGuess::Directory, Some((dir, dir_size))) = (self.guess, origin.directory) {
            if !self.replayed.lock().contains(&origin.store_path) && self.first_queued(&dir) {
                self.queue(Job::Directory {
                    store_path: origin.store_path,
                    digest: dir,
                    size: dir_size,
                });
            }
        }
        recorded.map(|r| r.extent)
    }

    /// Writes every trace that changed since it was last written (on the
    /// way out).
    pub(super) fn save_traces(&self) {
        for store_path in self.recorder.unsaved() {
            self.save_trace(store_path);
        }
    }

    fn save_trace(&self, store_path: [u8; 20]) {
        let Some(mappings) = self.disk.mappings().cloned() else {
            return;
        };
        let Some(encoded) = self.recorder.take(&store_path) else {
            return;
        };
        if encoded.len() <= 1 {
            return;
        }
        let stats = self.stats.clone();
        self.disk
            .write_behind(Lane::Prefetch, encoded.len(), move || {
                mappings.put_trace(&store_path, &encoded);
                stats.traces_written.fetch_add(1, Ordering::Relaxed);
            });
    }

    /// Whether `digest` (a root or directory) is queued for the first time.
    fn first_queued(&self, digest: &B3Digest) -> bool {
        let mut queued = self.queued.lock();
        if queued.len() >= REMEMBERED {
            queued.clear();
        }
        queued.insert(*digest)
    }

    fn queue(&self, job: Job) {
        let lane = self.lane.get_or_init(|| {
            PrefetchLane::start(self.this.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "no prefetch thread"))
                .ok()
        });
        if !lane.as_ref().is_some_and(|l| l.queue(job)) {
            tracing::debug!("prefetch: queue full, a store path or directory is not prefetched");
        }
    }

    /// Takes `bytes` from the budget of `store_path`; false if spent.
    fn take_budget(&self, store_path: &[u8; 20], bytes: u64) -> bool {
        let mut budgets = self.budgets.lock();
        if budgets.len() >= REMEMBERED && !budgets.contains_key(store_path) {
            budgets.clear();
        }
        let left = budgets.entry(*store_path).or_insert(self.budget);
        if bytes > *left {
            return false;
        }
        *left -= bytes;
        true
    }

    /// The chunks that cover what the guest read of a traced file: the
    /// file itself when small, else its chunks up to the read's end (none
    /// for a large file without chunks, which is read whole into a file).
    fn traced_chunks(&self, file: &TracedFile) -> Vec<Chunk> {
        let whole = Chunk {
            digest: file.digest,
            offset: 0,
            size: file.size,
        };
        if file.size <= SMALL_BLOB {
            return vec![whole];
        }
        match self.metadata.chunk_list(&file.digest, file.size) {
            Ok(list) if list.is_empty() => {
                if file.size <= MAX_IN_MEMORY_BLOB {
                    vec![whole]
                } else {
                    Vec::new()
                }
            }
            Ok(list) => list
                .iter()
                .take_while(|c| c.offset < file.extent)
                .copied()
                .collect(),
            Err(e) => {
                tracing::debug!(blob = %file.digest, error = %e, "prefetch: no chunk list for a traced file");
                Vec::new()
            }
        }
    }

    /// The small files below `root`, breadth first, as the lane wants
    /// them (`tree` guess).
    fn tree_files(&self, root: B3Digest, root_size: u64, mut each: impl FnMut(Chunk) -> bool) {
        let mut seen = HashSet::from([root]);
        let mut pending = VecDeque::from([(root, root_size)]);
        while let Some((digest, size)) = pending.pop_front() {
            let directory = match self.metadata.directory(&digest, size) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(root = %root, directory = %digest, error = %e, "prefetch: directory skipped");
                    continue;
                }
            };
            for entry in &directory.entries {
                match entry.node {
                    Node::Directory { digest, size }
                        if seen.len() < MAX_DIRECTORIES && seen.insert(digest) =>
                    {
                        pending.push_back((digest, size));
                    }
                    Node::File { digest, size, .. }
                        if size > 0
                            && size <= SMALL_BLOB
                            && !each(Chunk {
                                digest,
                                offset: 0,
                                size,
                            }) =>
                    {
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};

    use super::super::config::{CacheConfig, PrefetchGuess};
    use super::super::test_store::{quiet, Rig, CHUNK, TREE, TREE_NAME};
    use super::super::ContentSource;
    use super::trace;

    fn prefetching(guess: PrefetchGuess, bytes: u64) -> CacheConfig {
        CacheConfig {
            prefetch_bytes: bytes,
            prefetch_guess: guess,
            ..quiet()
        }
    }

    /// Waits (10 s at most) until `done` holds.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_directory_guess_fetches_the_small_files_of_an_opened_files_directory() {
        let rig = Rig::new(prefetching(PrefetchGuess::Directory, 64 << 20));
        let small = rig.open(b"small");
        let stats = rig.cache.stats();
        wait_for("the small file's prefetch", || {
            stats.prefetched_files.load(Relaxed) == 1
                && rig.store.calls.blob_reads.load(Relaxed) == 1
        });
        assert_eq!(rig.read(&small, 0, 8192).unwrap(), rig.small);
        assert_eq!(
            rig.store.calls.blob_reads.load(Relaxed),
            1,
            "the read is served by the prefetch's fetch"
        );
        // The big file of the same directory is not small: not fetched,
        // not even its chunk list asked for.
        assert_eq!(rig.store.calls.chunk_lists.load(Relaxed), 0);
    }

    #[test]
    fn the_tree_guess_stops_where_the_store_paths_budget_ends() {
        // Enough for `small` (5,000 bytes), not for `sub/inner` after it.
        let rig = Rig::new(prefetching(PrefetchGuess::Tree, 5_000));
        assert!(rig.cache.path_info(TREE, TREE_NAME).unwrap().is_some());
        let stats = rig.cache.stats();
        wait_for("the tree's first file", || {
            stats.prefetched_files.load(Relaxed) == 1
        });
        // The walk goes on to `sub` at once; give it time to (wrongly)
        // fetch `inner`.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(rig.store.calls.blob_reads.load(Relaxed), 1);
        assert_eq!(stats.prefetched_files.load(Relaxed), 1);
    }

    #[test]
    fn a_trace_is_replayed_on_the_next_cold_start_exactly_as_far_as_it_was_read() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let config = |dir: &tempfile::TempDir, instance: &str| CacheConfig {
            disk_dir: Some(dir.path().to_owned()),
            instance: Some(instance.parse().unwrap()),
            ..prefetching(PrefetchGuess::None, 64 << 20)
        };
        let first = Rig::new(config(&dirs[0], "vm1"));
        assert!(first.cache.path_info(TREE, TREE_NAME).unwrap().is_some());
        let big = first.open(b"big");
        first.read(&big, 0, 150_000).unwrap();
        let small = first.open(b"small");
        first.read(&small, 0, 8192).unwrap();
        first.cache.finish_writes();
        assert_eq!(first.cache.stats().prefetched_files.load(Relaxed), 0);
        let traced = first.cache.disk.mappings().unwrap().trace(&TREE).unwrap();
        assert_eq!(traced.len(), 2, "{traced:?}");

        // Another instance with that trace, over a store that counts anew.
        let second = Rig::new(config(&dirs[1], "vm2"));
        let mappings = second.cache.disk.mappings().unwrap();
        mappings.put_trace(&TREE, &trace::encode(traced.into_iter()));
        assert!(second.cache.path_info(TREE, TREE_NAME).unwrap().is_some());
        let stats = second.cache.stats();
        // One stream for the big file's two chunks read, one for the small.
        wait_for("the trace's files", || {
            stats.prefetch_trace_files.load(Relaxed) == 2
                && second.store.calls.blob_reads.load(Relaxed) == 2
        });
        // The stream stopped after the chunks traced (the store sends it
        // in pieces of 64 KiB): the third chunk was not asked for.
        let fetched = stats.store_bytes_fetched.load(Relaxed);
        assert!(
            fetched >= 2 * CHUNK as u64 + 5_000 && fetched < 3 * CHUNK as u64,
            "{fetched} bytes fetched"
        );
        let reads = 2;
        let big = second.open(b"big");
        assert_eq!(
            second.read(&big, 0, 150_000).unwrap(),
            second.big[..150_000]
        );
        let small = second.open(b"small");
        assert_eq!(second.read(&small, 0, 8192).unwrap(), second.small);
        assert_eq!(second.store.calls.blob_reads.load(Relaxed), reads);
    }
}
