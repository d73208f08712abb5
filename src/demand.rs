//! What the guest is waiting for right now, so that speculative work (the
//! prefetch) runs only when it is not: the servers count the requests in
//! service, the cache counts the store work started for them (a request
//! thread's own fetch or call, the read-ahead and streams of a reader) and
//! the requests blocked on any store fetch.
//!
//! One process-wide signal: every request thread, every server and the
//! cache share it, and it costs a few relaxed atomics per request.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The process-wide demand signal.
pub static DEMAND: Demand = Demand::new();

pub struct Demand {
    /// FUSE requests being answered.
    requests: AtomicUsize,
    /// Requests blocked on a store fetch (theirs or one they joined).
    blocked: AtomicUsize,
    /// Store work started on behalf of a reader: a request's own fetch or
    /// call, a read-ahead fetch, a stream of a whole blob.
    store_work: AtomicUsize,
}

impl Default for Demand {
    fn default() -> Self {
        Self::new()
    }
}

impl Demand {
    pub const fn new() -> Self {
        Self {
            requests: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            store_work: AtomicUsize::new(0),
        }
    }

    /// Marks one request in service until the guard is dropped.
    pub fn request(&self) -> Busy<'_> {
        Busy::on(&self.requests)
    }

    /// Marks one request blocked on the store until the guard is dropped
    /// (it is in service but costs no CPU meanwhile).
    pub fn blocked(&self) -> Busy<'_> {
        Busy::on(&self.blocked)
    }

    /// Marks store work done for a reader until the guard is dropped.
    pub fn store_work(&self) -> Busy<'_> {
        Busy::on(&self.store_work)
    }

    /// Whether speculation may start something now: no store work for a
    /// reader is under way and every request in service is only waiting
    /// for the store (for a fetch speculation started, say).
    pub fn idle(&self) -> bool {
        // Read blocked first: a request counted there is in `requests`
        // too, so a race only ever makes this answer "busy".
        let blocked = self.blocked.load(Ordering::Relaxed);
        self.store_work.load(Ordering::Relaxed) == 0
            && self.requests.load(Ordering::Relaxed) <= blocked
    }
}

/// One unit of a [`Demand`] counter, given back when dropped.
pub struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn on(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_without_reader_work_or_busy_requests() {
        let demand = Demand::new();
        assert!(demand.idle());
        let request = demand.request();
        assert!(!demand.idle(), "a request in service");
        let blocked = demand.blocked();
        assert!(demand.idle(), "its only request waits for the store");
        let work = demand.store_work();
        assert!(!demand.idle(), "store work for a reader");
        drop(work);
        drop(blocked);
        assert!(!demand.idle());
        drop(request);
        assert!(demand.idle());
    }
}
