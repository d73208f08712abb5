//! Whose work a fetch, a store call or a disk write is: a reader's, or the
//! prefetch's, which yields to a reader's everywhere. The prefetch's
//! thread marks itself, so that every part can tell without being told.

use std::cell::Cell;

/// Whose work it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Demand,
    Prefetch,
}

thread_local! {
    static ON_PREFETCH_LANE: Cell<bool> = const { Cell::new(false) };
}

impl Lane {
    /// The lane of work done on the calling thread.
    pub(super) fn of_this_thread() -> Self {
        if on_prefetch_lane() {
            Lane::Prefetch
        } else {
            Lane::Demand
        }
    }
}

/// Whether the calling thread is the prefetch's (its store calls are not
/// the guest's demand).
pub(super) fn on_prefetch_lane() -> bool {
    ON_PREFETCH_LANE.with(Cell::get)
}

/// Marks the calling thread as the prefetch's, for as long as it lives.
pub(super) fn enter_prefetch_lane() {
    ON_PREFETCH_LANE.with(|on| on.set(true));
}
