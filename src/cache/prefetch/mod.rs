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
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::config::PrefetchGuess;
use super::lanes::Lane;
use super::layout::MAX_IN_MEMORY_BLOB;
use super::layout::SMALL_BLOB;
use super::source::FileOrigin;
use super::trace::{self, TracedFile};
use super::CachedStore;
use crate::store::{B3Digest, Chunk, Node};
pub use lane::PARALLEL;
use lane::{Job, PrefetchLane};

/// Directories visited per store path walk at most (a bound on the walk
/// itself; the byte budget bounds the fetches).
const MAX_DIRECTORIES: usize = 100_000;
/// Roots and directories remembered as queued (then forgotten all at
/// once: a second walk only finds what it fetched cached).
const REMEMBERED: usize = 16_384;

/// The prefetch's own state, owned by the [`CachedStore`].
#[derive(Default)]
pub(super) struct Prefetcher {
    /// Started with the first job; `None` if the thread could not start.
    lane: OnceLock<Option<PrefetchLane>>,
    recorder: trace::Recorder,
    /// Store paths whose trace is replayed in this run: no guesses there.
    replayed: Mutex<HashSet<[u8; 20]>>,
    /// Roots and directories queued for a guess already.
    queued: Mutex<HashSet<B3Digest>>,
    /// Bytes left to cover per store path.
    budgets: Mutex<HashMap<[u8; 20], u64>>,
    /// Chunks the lane is fetching now: a guest that waits for one is not
    /// store work of its own.
    fetching: Mutex<HashSet<B3Digest>>,
}

impl CachedStore {
    fn prefetch_on(&self) -> bool {
        self.config.prefetch_bytes > 0
    }

    /// Called when this instance got the root `node` of the store path
    /// `hash` from the store (not from its mappings): replays its trace if
    /// there is one, else walks it if the guess is `tree`.
    pub(super) fn prefetch_store_path(&self, hash: [u8; 20], node: &Node) {
        if !self.prefetch_on() {
            return;
        }
        if let Some(files) = self.disk.mappings().and_then(|m| m.trace(&hash)) {
            if !files.is_empty() {
                self.prefetcher.replayed.lock().insert(hash);
                tracing::debug!(
                    files = files.len(),
                    "prefetch: replaying the access trace of a store path"
                );
                self.queue_prefetch(Job::Trace {
                    store_path: hash,
                    files,
                });
                return;
            }
        }
        if let (PrefetchGuess::Tree, Node::Directory { digest, size }) =
            (self.config.prefetch_guess, node)
        {
            if self.first_queued(digest) {
                self.queue_prefetch(Job::Tree {
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
    pub(super) fn prefetch_file_opened(
        &self,
        origin: &FileOrigin,
        digest: B3Digest,
        size: u64,
    ) -> Option<Arc<AtomicU64>> {
        if !self.prefetch_on() {
            return None;
        }
        let recorded = self
            .prefetcher
            .recorder
            .record(origin.store_path, digest, size);
        if recorded.as_ref().is_some_and(|r| r.worth_saving) {
            self.save_trace(origin.store_path);
        }
        if let (PrefetchGuess::Directory, Some((dir, dir_size))) =
            (self.config.prefetch_guess, origin.directory)
        {
            if !self.prefetcher.replayed.lock().contains(&origin.store_path)
                && self.first_queued(&dir)
            {
                self.queue_prefetch(Job::Directory {
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
        for store_path in self.prefetcher.recorder.unsaved() {
            self.save_trace(store_path);
        }
    }

    fn save_trace(&self, store_path: [u8; 20]) {
        let Some(mappings) = self.disk.mappings().cloned() else {
            return;
        };
        let Some(encoded) = self.prefetcher.recorder.take(&store_path) else {
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
        let mut queued = self.prefetcher.queued.lock();
        if queued.len() >= REMEMBERED {
            queued.clear();
        }
        queued.insert(*digest)
    }

    fn queue_prefetch(&self, job: Job) {
        let lane = self.prefetcher.lane.get_or_init(|| {
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
        let mut budgets = self.prefetcher.budgets.lock();
        if budgets.len() >= REMEMBERED && !budgets.contains_key(store_path) {
            budgets.clear();
        }
        let left = budgets
            .entry(*store_path)
            .or_insert(self.config.prefetch_bytes);
        if bytes > *left {
            return false;
        }
        *left -= bytes;
        true
    }

    /// Whether the lane is fetching `chunk` now.
    pub(super) fn being_prefetched(&self, chunk: &B3Digest) -> bool {
        self.prefetcher.fetching.lock().contains(chunk)
    }

    /// Whether `chunk` is neither in memory, nor being fetched, nor on disk.
    fn worth_prefetching(&self, chunk: &Chunk) -> bool {
        !self.fetcher.in_memory_or_flight(chunk) && !self.fetcher.on_disk(chunk)
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
        match self.chunk_list(&file.digest, file.size) {
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
            let directory = match self.directory(&digest, size) {
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
