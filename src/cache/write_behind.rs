//! Writes to the disk cache behind the reader's back, on one thread of
//! their own: a write may have to evict, and no read waits for that.
//!
//! One thread, fed by a bounded queue: one wake-up per write when it is
//! idle and none while it is busy, where handing each write to the async
//! runtime and from there to its blocking pool cost two. Writes were one
//! at a time anyway (each holds the eviction lock). The bound, on the
//! bytes the waiting writes hold and on their number, keeps memory bounded
//! when the disk is slower than the store: a write that finds the queue
//! full is dropped and counted, and its data is only not cached on disk
//! (it is served from memory and, later, from the store again). Bursts of
//! many small writes (a store path's small files prefetched) fit.
//!
//! The thread is started by [`WriteBehind::start`] on the thread that opens
//! the cache, after the sandbox is entered and before any serving thread
//! exists: a thread started from a serving thread would inherit its
//! narrower seccomp filter, which has no file creation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread;

use super::stats::Stats;

/// Bytes the writes waiting for the thread may hold (their data).
pub const QUEUE_BYTES: u64 = 64 << 20;
/// Writes that may wait for the thread (each costs a little besides its
/// data).
pub const QUEUE_WRITES: u64 = 16384;

type Job = Box<dyn FnOnce() + Send>;

enum Message {
    Write(Job),
    /// Sent back once every write queued before it is done.
    Flush(SyncSender<()>),
}

pub struct WriteBehind {
    queue: Sender<Message>,
    /// What the queued writes hold: bytes, and how many there are.
    queued_bytes: Arc<AtomicU64>,
    queued_writes: Arc<AtomicU64>,
    stats: Arc<Stats>,
}

impl WriteBehind {
    /// Starts the writer thread; it ends when this is dropped and the
    /// queue is empty.
    pub fn start(stats: Arc<Stats>) -> std::io::Result<Self> {
        let (queue, jobs) = channel();
        thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || run(&jobs))?;
        Ok(Self {
            queue,
            queued_bytes: Arc::default(),
            queued_writes: Arc::default(),
            stats,
        })
    }

    /// Queues `write`, which holds `bytes` of data until it is done, or
    /// drops it (counted in `disk_writes_dropped`) if the queue is full or
    /// the thread is gone.
    pub fn submit(&self, bytes: usize, write: impl FnOnce() + Send + 'static) {
        let bytes = bytes as u64;
        let taken_bytes = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let taken_writes = self.queued_writes.fetch_add(1, Ordering::Relaxed);
        let (queued_bytes, queued_writes) = (self.queued_bytes.clone(), self.queued_writes.clone());
        let release = move || {
            queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            queued_writes.fetch_sub(1, Ordering::Relaxed);
        };
        if taken_bytes + bytes > QUEUE_BYTES || taken_writes >= QUEUE_WRITES {
            release();
            let dropped = self
                .stats
                .disk_writes_dropped
                .fetch_add(1, Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = dropped + 1,
                    queued_bytes = taken_bytes,
                    queued_writes = taken_writes,
                    "the disk cache's writer is behind; writes dropped (the data stays in memory \
                     and the store)"
                );
            }
            return;
        }
        // A write that panics (a bug) costs that write only: the thread
        // goes on with the next, as the blocking pool it replaced did.
        let job = move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(write));
            release();
            if let Err(payload) = outcome {
                tracing::error!(
                    panic = crate::request_guard::panic_message(payload.as_ref()),
                    "a write to the disk cache panicked; the writer goes on"
                );
            }
        };
        if self.queue.send(Message::Write(Box::new(job))).is_err() {
            self.stats
                .disk_writes_dropped
                .fetch_add(1, Ordering::Relaxed);
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
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    #[test]
    fn writes_run_in_order_and_flush_waits_for_them() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        let done = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50 {
            let done = done.clone();
            writer.submit(1000, move || done.lock().unwrap().push(i));
        }
        writer.flush();
        assert_eq!(*done.lock().unwrap(), (0..50).collect::<Vec<_>>());
        assert_eq!(stats.disk_writes_dropped.load(Ordering::Relaxed), 0);
        assert_eq!(writer.queued_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(writer.queued_writes.load(Ordering::Relaxed), 0);
    }

    /// Holds the writer thread in a write until the returned sender is
    /// used; the held write counts as one queued write of no bytes.
    fn hold(writer: &WriteBehind) -> SyncSender<()> {
        let (release, held) = sync_channel::<()>(0);
        let (started, wait_started) = sync_channel::<()>(0);
        writer.submit(0, move || {
            started.send(()).unwrap();
            held.recv().unwrap();
        });
        wait_started.recv().unwrap();
        release
    }

    /// Submits `n` writes of `bytes` each; returns how many of them ran
    /// (counted once the writer is released and flushed) and the counter.
    fn submit_counted(writer: &WriteBehind, n: u64, bytes: usize) -> Arc<AtomicUsize> {
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..n {
            let ran = ran.clone();
            writer.submit(bytes, move || {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        }
        ran
    }

    #[test]
    fn the_bytes_held_by_waiting_writes_are_bounded() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        let release = hold(&writer);
        let mib = 1 << 20;
        let ran = submit_counted(&writer, QUEUE_BYTES / mib as u64 + 10, mib);
        assert_eq!(stats.disk_writes_dropped.load(Ordering::Relaxed), 10);
        release.send(()).unwrap();
        writer.flush();
        assert_eq!(ran.load(Ordering::Relaxed) as u64, QUEUE_BYTES / mib as u64);
        // Done writes give their room back.
        let again = submit_counted(&writer, 3, mib);
        writer.flush();
        assert_eq!(again.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_write_that_panics_costs_only_itself() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        writer.submit(100, || panic!("a broken write"));
        let ran = submit_counted(&writer, 3, 100);
        writer.flush();
        assert_eq!(ran.load(Ordering::Relaxed), 3);
        assert_eq!(writer.queued_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(writer.queued_writes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_number_of_waiting_writes_is_bounded() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        let release = hold(&writer);
        let ran = submit_counted(&writer, QUEUE_WRITES + 10, 0);
        assert_eq!(stats.disk_writes_dropped.load(Ordering::Relaxed), 11);
        release.send(()).unwrap();
        writer.flush();
        assert_eq!(ran.load(Ordering::Relaxed) as u64, QUEUE_WRITES - 1);
    }
}
