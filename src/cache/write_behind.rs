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
//! Two lanes: what a reader fetched is written before anything the
//! prefetch fetched, and prefetch writes may fill only half of either
//! bound, so they never crowd a reader's data out of the disk cache.
//!
//! The thread is started by [`WriteBehind::start`] on the thread that opens
//! the cache, after the sandbox is entered and before any serving thread
//! exists: a thread started from a serving thread would inherit its
//! narrower seccomp filter, which has no file creation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use parking_lot::{Condvar, Mutex};

use super::lanes::Lane;
use super::stats::Stats;

/// Bytes the writes waiting for the thread may hold (their data).
pub const QUEUE_BYTES: u64 = 64 << 20;
/// Writes that may wait for the thread (each costs a little besides its
/// data).
pub const QUEUE_WRITES: u64 = 16384;

type Job = Box<dyn FnOnce() + Send>;

/// The writes waiting, per lane, and whether the thread is in one.
#[derive(Default)]
struct Queues {
    demand: VecDeque<Job>,
    prefetch: VecDeque<Job>,
    running: bool,
    /// The handle was dropped: the thread ends once the queues are empty.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    /// Signalled when a write is queued or the handle is dropped.
    work: Condvar,
    /// Signalled when the thread finds both queues empty.
    drained: Condvar,
}

pub struct WriteBehind {
    shared: Arc<Shared>,
    /// What the queued writes hold: bytes, and how many there are.
    queued_bytes: Arc<AtomicU64>,
    queued_writes: Arc<AtomicU64>,
    stats: Arc<Stats>,
}

impl WriteBehind {
    /// Starts the writer thread; it ends when this is dropped and the
    /// queues are empty.
    pub fn start(stats: Arc<Stats>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || run(&thread_shared))?;
        Ok(Self {
            shared,
            queued_bytes: Arc::default(),
            queued_writes: Arc::default(),
            stats,
        })
    }

    /// Queues `write` in `lane`, which holds `bytes` of data until it is
    /// done, or drops it (counted in `disk_writes_dropped`) if the queue is
    /// full for that lane.
    pub fn submit(&self, lane: Lane, bytes: usize, write: impl FnOnce() + Send + 'static) {
        let bytes = bytes as u64;
        let (max_bytes, max_writes) = match lane {
            Lane::Demand => (QUEUE_BYTES, QUEUE_WRITES),
            Lane::Prefetch => (QUEUE_BYTES / 2, QUEUE_WRITES / 2),
        };
        let taken_bytes = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let taken_writes = self.queued_writes.fetch_add(1, Ordering::Relaxed);
        let (queued_bytes, queued_writes) = (self.queued_bytes.clone(), self.queued_writes.clone());
        let release = move || {
            queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            queued_writes.fetch_sub(1, Ordering::Relaxed);
        };
        if taken_bytes + bytes > max_bytes || taken_writes >= max_writes {
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
                    ?lane,
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
                    panic = crate::panics::panic_message(payload.as_ref()),
                    "a write to the disk cache panicked; the writer goes on"
                );
            }
        };
        let mut queues = self.shared.queues.lock();
        match lane {
            Lane::Demand => queues.demand.push_back(Box::new(job)),
            Lane::Prefetch => queues.prefetch.push_back(Box::new(job)),
        }
        drop(queues);
        self.shared.work.notify_one();
    }

    /// Waits until every write queued so far is done (on the way out, so
    /// that a cache filled by this run is complete on disk).
    pub fn flush(&self) {
        let mut queues = self.shared.queues.lock();
        while queues.running || !queues.demand.is_empty() || !queues.prefetch.is_empty() {
            self.shared.drained.wait(&mut queues);
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.shared.queues.lock().closed = true;
        self.shared.work.notify_one();
    }
}

fn run(shared: &Shared) {
    let mut queues = shared.queues.lock();
    loop {
        let next = match queues.demand.pop_front() {
            Some(job) => Some(job),
            None => queues.prefetch.pop_front(),
        };
        match next {
            Some(job) => {
                queues.running = true;
                drop(queues);
                job();
                queues = shared.queues.lock();
                queues.running = false;
            }
            None => {
                shared.drained.notify_all();
                if queues.closed {
                    return;
                }
                shared.work.wait(&mut queues);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::{sync_channel, SyncSender};
    use std::sync::Mutex;

    #[test]
    fn writes_run_in_order_and_flush_waits_for_them() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        let done = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50 {
            let done = done.clone();
            writer.submit(Lane::Demand, 1000, move || done.lock().unwrap().push(i));
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
        writer.submit(Lane::Demand, 0, move || {
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
            writer.submit(Lane::Demand, bytes, move || {
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
        writer.submit(Lane::Demand, 100, || panic!("a broken write"));
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

    #[test]
    fn a_readers_writes_go_before_the_prefetchs() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        let release = hold(&writer);
        let order = Arc::new(Mutex::new(Vec::new()));
        for (lane, name) in [
            (Lane::Prefetch, "p1"),
            (Lane::Demand, "d1"),
            (Lane::Prefetch, "p2"),
            (Lane::Demand, "d2"),
        ] {
            let order = order.clone();
            writer.submit(lane, 10, move || order.lock().unwrap().push(name));
        }
        release.send(()).unwrap();
        writer.flush();
        assert_eq!(*order.lock().unwrap(), ["d1", "d2", "p1", "p2"]);
    }

    #[test]
    fn prefetch_writes_fill_half_the_queue_at_most() {
        let stats = Arc::new(Stats::default());
        let writer = WriteBehind::start(stats.clone()).unwrap();
        let release = hold(&writer);
        let mib = 1 << 20;
        let half = QUEUE_BYTES / 2 / mib as u64;
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..half + 5 {
            let ran = ran.clone();
            writer.submit(Lane::Prefetch, mib, move || {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(stats.disk_writes_dropped.load(Ordering::Relaxed), 5);
        // A reader's writes still find room.
        let demand = submit_counted(&writer, half, mib);
        assert_eq!(stats.disk_writes_dropped.load(Ordering::Relaxed), 5);
        release.send(()).unwrap();
        writer.flush();
        assert_eq!(ran.load(Ordering::Relaxed) as u64, half);
        assert_eq!(demand.load(Ordering::Relaxed) as u64, half);
    }
}
