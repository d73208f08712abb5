//! Read-ahead from the disk cache: one thread reads, verifies and keeps in
//! memory the chunks a sequential reader will want next, in order. It
//! overlaps that work with the guest's handling of the current chunks on
//! another core, with one queue push per chunk and one wake-up of a reader
//! that catches up with it, where the async runtime would cost several
//! hand-offs. One thread, because parallel disk reads only compete with
//! the guest for the same cores.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Weak};
use std::thread;

use crate::store::{B3Digest, Chunk};

/// Chunks waiting for the thread; more requests than this are dropped (the
/// reader then reads those chunks itself).
const QUEUE: usize = 64;
/// Chunks read ahead are held for their reader (outside the memory cache's
/// bound); after this many newer ones, an unclaimed chunk is let go.
const KEEP: usize = 32;

/// What the thread reads for: the chunk fetcher, which holds what is read
/// ahead for its reader.
pub(super) trait ReadsAhead: Send + Sync + 'static {
    /// Reads `chunk` from disk unless it is in memory or on its way
    /// already; whether it did.
    fn read_ahead_from_disk(self: Arc<Self>, chunk: &Chunk) -> bool;
    /// Lets go of a chunk read ahead that no reader took.
    fn release_if_done(&self, digest: &B3Digest);
}

pub(super) struct DiskReadahead {
    queue: SyncSender<Chunk>,
}

impl DiskReadahead {
    /// Starts the thread. It exits once `store` is dropped.
    pub fn start(store: Weak<dyn ReadsAhead>) -> std::io::Result<Self> {
        let (queue, requests) = sync_channel(QUEUE);
        thread::Builder::new()
            .name("disk-readahead".into())
            .spawn(move || run(&store, &requests))?;
        Ok(Self { queue })
    }

    /// Queues `chunk`; false if the queue is full.
    pub fn request(&self, chunk: Chunk) -> bool {
        self.queue.try_send(chunk).is_ok()
    }
}

fn run(store: &Weak<dyn ReadsAhead>, requests: &Receiver<Chunk>) {
    let mut unclaimed = VecDeque::with_capacity(KEEP + 1);
    while let Ok(chunk) = requests.recv() {
        let Some(store) = store.upgrade() else {
            return;
        };
        if store.clone().read_ahead_from_disk(&chunk) {
            unclaimed.push_back(chunk.digest);
            if unclaimed.len() > KEEP {
                if let Some(oldest) = unclaimed.pop_front() {
                    store.release_if_done(&oldest);
                }
            }
        }
    }
}
