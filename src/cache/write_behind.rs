//! Writes to the disk cache behind the reader's back, on one thread of
//! their own: a write may have to evict, and no read waits for that.
//!
//! One thread, fed by a bounded queue: one wake-up per write when it is
//! idle and none while it is busy, where handing each write to the async
//! runtime and from there to its blocking pool cost two. Writes were one
//! at a time anyway (each holds the eviction lock). The bound keeps memory
//! bounded when the disk is slower than the store: a write that finds the
//! queue full is dropped and counted, and its data is only not cached on
//! disk (it is served from memory and, later, from the store again).
//!
//! The thread is started by [`WriteBehind::start`] on the thread that opens
//! the cache, after the sandbox is entered and before any serving thread
//! exists: a thread started from a serving thread would inherit its
//! narrower seccomp filter, which has no file creation.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;

use super::stats::Stats;

/// Writes waiting for the thread. Each holds at most one chunk, a chunk
/// list or a path info, so this bounds their memory at that many chunks.
pub const QUEUE: usize = 128;

type Job = Box<dyn FnOnce() + Send>;

enum Message {
    Write(Job),
    /// Sent back once every write queued before it is done.
    Flush(SyncSender<()>),
}

pub struct WriteBehind {
    queue: SyncSender<Message>,
    stats: Arc<Stats>,
}

impl WriteBehind {
    /// Starts the writer thread; it ends when this is dropped and the
    /// queue is empty.
    pub fn start(stats: Arc<Stats>) -> std::io::Result<Self> {
        let (queue, jobs) = sync_channel(QUEUE);
        thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || run(&jobs))?;
        Ok(Self { queue, stats })
    }

    /// Queues `write`, or drops it (counted in `disk_writes_dropped`) if
    /// the queue is full or the thread is gone.
    pub fn submit(&self, write: impl FnOnce() + Send + 'static) {
        match self.queue.try_send(Message::Write(Box::new(write))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self
                    .stats
                    .disk_writes_dropped
                    .fetch_add(1, Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = dropped + 1,
                        queue = QUEUE,
                        "the disk cache's writer is behind; writes dropped (the data stays in \
                         memory and the store)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats
                    .disk_writes_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until every write queued so far is done (on the way out, so
    /// that a cache filled by this run is complete on disk).
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

fn run(jobs: &Receiver<Message>) {
    while let Ok(message) = jobs.recv() {
        match message {
            Message::Write(write) => write(),
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn writes_run_in_order_and_flush_waits_for_them() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        let done = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50 {
            let done = done.clone();
            writer.submit(move || done.lock().unwrap().push(i));
        }
        writer.flush();
        assert_eq!(*done.lock().unwrap(), (0..50).collect::<Vec<_>>());
        assert_eq!(stats.disk_writes_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_growing() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        // Hold the thread in the first write until the queue has overflowed.
        let (release, held) = sync_channel::<()>(0);
        let (started, wait_started) = sync_channel::<()>(0);
        writer.submit(move || {
            started.send(()).unwrap();
            held.recv().unwrap();
        });
        wait_started.recv().unwrap();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..QUEUE + 10 {
            let ran = ran.clone();
            writer.submit(move || {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(stats.disk_writes_dropped.load(Ordering::Relaxed), 10);
        release.send(()).unwrap();
        writer.flush();
        assert_eq!(ran.load(Ordering::Relaxed), QUEUE);
    }
}
