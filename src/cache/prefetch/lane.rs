//! The prefetch's lane: one thread that takes jobs in order and turns them
//! into fetches, each started only when the guest waits for nothing else,
//! with at most [`PARALLEL`] of them in flight.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::cache::lanes::enter_prefetch_lane;
use crate::cache::lanes::Lane;
use crate::cache::layout::SMALL_BLOB;
use crate::cache::trace::TracedFile;
use crate::demand::DEMAND;
use crate::store::{B3Digest, Chunk, Node};

use super::Prefetcher;

/// Prefetch fetches in flight at once: enough to keep a store a few
/// milliseconds away busy in the guest's idle moments, few enough that a
/// guest request arriving meanwhile waits behind little.
pub const PARALLEL: usize = 4;
/// Jobs waiting for the thread; more are dropped.
const QUEUE: usize = 64;
/// A traced file of this many chunks or more is fetched in one stream of
/// its blob (one store call) rather than chunk by chunk.
const STREAM_FROM: usize = 2;
/// Chunks a prefetch stream claims ahead of itself: a guest read of a
/// chunk further on fetches it on its own instead of waiting.
const STREAM_WINDOW: usize = 4;
/// How often a paused lane looks whether the guest is idle again.
const PAUSE_POLL: Duration = Duration::from_millis(1);

/// One piece of prefetch work, for one store path.
pub(super) enum Job {
    /// The files of an access trace, in its order.
    Trace {
        store_path: [u8; 20],
        files: Vec<TracedFile>,
    },
    /// The small files of one directory.
    Directory {
        store_path: [u8; 20],
        digest: B3Digest,
        size: u64,
    },
    /// The small files of a whole store path.
    Tree {
        store_path: [u8; 20],
        digest: B3Digest,
        size: u64,
    },
}

pub(super) struct PrefetchLane {
    jobs: SyncSender<Job>,
}

impl PrefetchLane {
    /// Starts the thread; it ends once the prefetcher is dropped.
    pub fn start(prefetcher: Weak<Prefetcher>) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel(QUEUE);
        thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || run(&prefetcher, &queue))?;
        Ok(Self { jobs })
    }

    /// Queues `job`; false if the queue is full.
    pub fn queue(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }
}

fn run(prefetcher: &Weak<Prefetcher>, jobs: &Receiver<Job>) {
    enter_prefetch_lane();
    let permits = Arc::new(Semaphore::new(PARALLEL));
    while let Ok(job) = jobs.recv() {
        let Some(prefetcher) = prefetcher.upgrade() else {
            return;
        };
        let mut fetcher = Fetcher {
            prefetcher: &prefetcher,
            permits: &permits,
            files: 0,
            bytes: 0,
        };
        let what = fetcher.run(job);
        tracing::debug!(
            what,
            files = fetcher.files,
            bytes = fetcher.bytes,
            "prefetch: job done"
        );
    }
}

/// Starts the fetches of one job.
struct Fetcher<'a> {
    prefetcher: &'a Arc<Prefetcher>,
    permits: &'a Arc<Semaphore>,
    files: u64,
    bytes: u64,
}

impl Fetcher<'_> {
    fn run(&mut self, job: Job) -> &'static str {
        match job {
            Job::Trace { store_path, files } => {
                for file in &files {
                    let chunks = self.prefetcher.traced_chunks(file);
                    let fetched = if chunks.len() >= STREAM_FROM {
                        self.fetch_streamed(&store_path, file, chunks)
                    } else {
                        self.fetch_each(&store_path, chunks)
                    };
                    let Some(fetched) = fetched else {
                        return "trace (budget spent)";
                    };
                    if fetched {
                        self.prefetcher
                            .stats
                            .prefetch_trace_files
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                "trace"
            }
            Job::Directory {
                store_path,
                digest,
                size,
            } => {
                let Ok(directory) = self.prefetcher.metadata.directory(&digest, size) else {
                    return "directory (not found)";
                };
                for entry in &directory.entries {
                    if let Node::File { digest, size, .. } = entry.node {
                        if size > 0 && size <= SMALL_BLOB {
                            let chunk = Chunk {
                                digest,
                                offset: 0,
                                size,
                            };
                            if self.fetch(&store_path, chunk).is_none() {
                                return "directory (budget spent)";
                            }
                        }
                    }
                }
                "directory"
            }
            Job::Tree {
                store_path,
                digest,
                size,
            } => {
                let prefetcher = self.prefetcher.clone();
                prefetcher.tree_files(digest, size, |chunk| {
                    self.fetch(&store_path, chunk).is_some()
                });
                "tree"
            }
        }
    }

    /// Starts fetching each of `chunks`: as [`Self::fetch`], `Some(true)`
    /// if it started any.
    fn fetch_each(&mut self, store_path: &[u8; 20], chunks: Vec<Chunk>) -> Option<bool> {
        let mut fetched = false;
        for chunk in chunks {
            fetched |= self.fetch(store_path, chunk)?;
        }
        Some(fetched)
    }

    /// Starts streaming `chunks`, the traced first chunks of `file`, unless
    /// fewer than [`STREAM_FROM`] of them are worth fetching (those are
    /// fetched one by one): as [`Self::fetch`].
    fn fetch_streamed(
        &mut self,
        store_path: &[u8; 20],
        file: &TracedFile,
        chunks: Vec<Chunk>,
    ) -> Option<bool> {
        let prefetcher = self.prefetcher;
        let fetcher = &prefetcher.fetcher;
        let bytes = chunks.iter().map(|c| c.size).sum();
        if !prefetcher.take_budget(store_path, bytes) {
            return None;
        }
        let missing = || {
            chunks
                .iter()
                .filter(|c| fetcher.worth_fetching_ahead(c))
                .count()
        };
        if missing() < STREAM_FROM {
            let mut fetched = false;
            for chunk in chunks.iter().filter(|c| fetcher.worth_fetching_ahead(c)) {
                fetched |= self.start(*chunk)?;
            }
            return Some(fetched);
        }
        let permit = self.permit_when_idle()?;
        if missing() == 0 {
            return Some(false);
        }
        self.files += 1;
        self.bytes += bytes;
        prefetcher
            .stats
            .prefetched_files
            .fetch_add(1, Ordering::Relaxed);
        fetcher.mark_prefetching(chunks.iter().map(|c| c.digest));
        let chunks = Arc::new(chunks);
        // All of them count as the lane's until the stream ends, also
        // those further on that the guest may fetch itself meanwhile (the
        // lane then keeps at most its few fetches in flight, as ever).
        let stream =
            fetcher.prefetch_blob_stream(file.digest, file.size, chunks.clone(), STREAM_WINDOW);
        let done = fetcher.clone();
        prefetcher.runtime.spawn(async move {
            let _ = stream.await;
            done.unmark_prefetching(chunks.iter().map(|c| &c.digest));
            drop(permit);
        });
        Some(true)
    }

    /// Starts fetching `chunk` for `store_path` unless it is cached or on
    /// its way: `Some(true)` if it did, `Some(false)` if there was nothing
    /// to do, `None` once the store path's budget is spent.
    fn fetch(&mut self, store_path: &[u8; 20], chunk: Chunk) -> Option<bool> {
        if !self.prefetcher.take_budget(store_path, chunk.size) {
            return None;
        }
        if !self.prefetcher.fetcher.worth_fetching_ahead(&chunk) {
            return Some(false);
        }
        self.start(chunk)
    }

    /// A permit of the lane, taken once the guest waits for nothing else;
    /// `None` if the lane is closing.
    fn permit_when_idle(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self
            .prefetcher
            .runtime
            .block_on(self.permits.clone().acquire_owned())
            .ok()?;
        // Demand first: wait until the guest waits for nothing else.
        if !DEMAND.idle() {
            let stats = &self.prefetcher.stats;
            stats.prefetch_pauses.fetch_add(1, Ordering::Relaxed);
            while !DEMAND.idle() {
                thread::sleep(PAUSE_POLL);
            }
        }
        Some(permit)
    }

    /// Starts the fetch of `chunk` once the guest is idle, unless the
    /// guest asked for it meanwhile: `Some(true)` if it did.
    fn start(&mut self, chunk: Chunk) -> Option<bool> {
        let prefetcher = self.prefetcher;
        let fetcher = &prefetcher.fetcher;
        let permit = self.permit_when_idle()?;
        // The guest may have asked for it meanwhile.
        if !fetcher.worth_fetching_ahead(&chunk) {
            return Some(false);
        }
        self.files += 1;
        self.bytes += chunk.size;
        prefetcher
            .stats
            .prefetched_files
            .fetch_add(1, Ordering::Relaxed);
        fetcher.mark_prefetching([chunk.digest]);
        let fetch = fetcher.chunk_fetch(&chunk, Lane::Prefetch);
        let done = fetcher.clone();
        prefetcher.runtime.spawn(async move {
            let _ = fetch.await;
            done.unmark_prefetching([&chunk.digest]);
            drop(permit);
        });
        Some(true)
    }
}
