//! Fetching ahead the small files of a store path when this instance first
//! looks it up (its path info comes from the store, not from the
//! instance's mappings on disk, which a restart finds warm).
//!
//! A guest booting from a store path opens hundreds of small files one
//! after another, and each cold one waits for a store round trip: behind a
//! remote store those waits add up to most of the boot. One background
//! thread walks the store path's Directories (breadth first, so `etc/` and
//! `bin/` before what lies deep below `share/`) and fetches every file of
//! at most `SMALL_BLOB` bytes (one chunk, one store call each) that is
//! neither in memory nor on disk, a few at a time, until the byte budget
//! (`--prefetch-bytes`, counting the files found cached too) is spent.
//!
//! What is fetched goes through the same verified fetch as a guest's read,
//! into memory and the disk cache; a guest read of a file being prefetched
//! joins that fetch. Large files are left to the sequential read-ahead.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Weak};
use std::thread;

use tokio::sync::Semaphore;

use super::objects::ObjectKind;
use super::reader::SMALL_BLOB;
use super::CachedStore;
use crate::store::{B3Digest, Chunk, Node};

/// Prefetches in flight at once: enough to hide a round trip of tens of
/// milliseconds behind the guest's own requests, few enough not to crowd
/// them out of the store.
const PARALLEL: usize = 8;
/// Store paths waiting for the thread; more are not prefetched.
const QUEUE: usize = 16;
/// Directories visited per store path at most (a bound on the walk itself
/// for a store path of millions of entries; the byte budget bounds the
/// fetches).
const MAX_DIRECTORIES: usize = 100_000;
/// Store paths remembered as prefetched (then forgotten all at once).
const REMEMBERED_ROOTS: usize = 4096;

pub(super) struct TreePrefetch {
    queue: SyncSender<(B3Digest, u64)>,
}

impl TreePrefetch {
    /// Starts the thread; it exits once the store is dropped.
    pub fn start(store: Weak<CachedStore>) -> std::io::Result<Self> {
        let (queue, roots) = sync_channel(QUEUE);
        thread::Builder::new()
            .name("tree-prefetch".into())
            .spawn(move || run(&store, &roots))?;
        Ok(Self { queue })
    }

    /// Queues the store path whose root is the Directory `digest` of
    /// `size`; false if the queue is full.
    pub fn request(&self, digest: B3Digest, size: u64) -> bool {
        self.queue.try_send((digest, size)).is_ok()
    }
}

fn run(store: &Weak<CachedStore>, roots: &Receiver<(B3Digest, u64)>) {
    while let Ok((digest, size)) = roots.recv() {
        let Some(store) = store.upgrade() else {
            return;
        };
        store.prefetch_tree(digest, size);
    }
}

impl CachedStore {
    /// Starts prefetching the small files below the root node `node` of a
    /// store path just looked up, unless prefetching is off, the node is
    /// no Directory, or this root was prefetched already.
    pub(super) fn start_tree_prefetch(&self, node: &Node) {
        let Node::Directory { digest, size } = *node else {
            return;
        };
        {
            let mut roots = self.prefetched_roots.lock();
            if self.config.prefetch_bytes == 0 || roots.contains(&digest) {
                return;
            }
            // A bound on what a guest looking up many store paths can make
            // us remember; forgetting one costs only a cheap second walk.
            if roots.len() >= REMEMBERED_ROOTS {
                roots.clear();
            }
            roots.insert(digest);
        }
        let prefetch = self.tree_prefetch.get_or_init(|| {
            TreePrefetch::start(self.this.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "no tree prefetch thread"))
                .ok()
        });
        if !prefetch.as_ref().is_some_and(|p| p.request(digest, size)) {
            self.prefetched_roots.lock().remove(&digest);
        }
    }

    /// The walk of one store path (on the prefetch thread).
    fn prefetch_tree(self: &Arc<Self>, root: B3Digest, root_size: u64) {
        let mut budget = self.config.prefetch_bytes;
        let permits = Arc::new(Semaphore::new(PARALLEL));
        let mut seen = HashSet::from([root]);
        let mut pending = VecDeque::from([(root, root_size)]);
        let (mut files, mut bytes) = (0u64, 0u64);
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
                    Node::File { digest, size, .. } if size > 0 && size <= SMALL_BLOB => {
                        // What is cached counts too: the budget covers the
                        // same first files of the walk on every start, so a
                        // warm cache means no store calls at all.
                        if size > budget {
                            continue;
                        }
                        budget -= size;
                        let chunk = Chunk {
                            digest,
                            offset: 0,
                            size,
                        };
                        if !self.worth_prefetching(&chunk) {
                            continue;
                        }
                        let Ok(permit) = self.runtime.block_on(permits.clone().acquire_owned())
                        else {
                            return;
                        };
                        files += 1;
                        bytes += size;
                        self.stats.prefetched_files.fetch_add(1, Ordering::Relaxed);
                        let fetch = self.chunk_fetch(&chunk);
                        self.runtime.spawn(async move {
                            let _ = fetch.await;
                            drop(permit);
                        });
                    }
                    _ => {}
                }
            }
        }
        tracing::debug!(root = %root, files, bytes, "prefetch: store path walked");
    }

    /// Whether `chunk` is neither in memory, nor being fetched, nor on disk.
    fn worth_prefetching(&self, chunk: &Chunk) -> bool {
        !self.in_memory_or_flight(chunk)
            && !self
                .objects
                .as_ref()
                .is_some_and(|o| o.contains(ObjectKind::Chunk, &chunk.digest))
    }
}
