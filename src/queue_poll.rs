//! How long a queue thread keeps watching its ring for the guest's next
//! request before it goes to sleep on the kick eventfd.
//!
//! A guest that sends requests back to back (a boot, a build, `find`) waits
//! for each reply before it sends the next. Sleeping between them costs
//! two wake-ups per request: the guest's kick wakes this thread, and this
//! thread's interrupt wakes the guest's vCPU. In a VM host that is itself
//! virtual, each cross-CPU wake-up is a trip through the hypervisor. While
//! the thread watches the ring, the guest needs no kick (notifications stay
//! off), so one of the two wake-ups goes away.
//!
//! The window adapts as QEMU's adaptive polling does: it doubles, up to the
//! configured bound, while the guest's next request comes within the bound
//! of the thread going to sleep, and halves (down to nothing) when it comes
//! later. An idle or slow guest therefore costs no polling at all, and a
//! busy one at most the bound per request.

use std::time::{Duration, Instant};

/// The first window once polling pays: short, so a mistaken guess is cheap.
const FIRST_WINDOW: Duration = Duration::from_micros(2);

/// The poll window of one queue.
#[derive(Debug)]
pub struct PollWindow {
    max: Duration,
    window: Duration,
    /// When the thread last went to sleep, until its next wake-up.
    asleep_since: Option<Instant>,
}

impl PollWindow {
    /// A window of at most `max` (zero: never poll).
    pub fn new(max: Duration) -> Self {
        Self {
            max,
            window: Duration::ZERO,
            asleep_since: None,
        }
    }

    /// How long to watch the ring now.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The thread was woken (by a kick) at `now`: the time it slept says
    /// whether a longer window would have caught the request.
    pub fn woken(&mut self, now: Instant) {
        let Some(since) = self.asleep_since.take() else {
            return;
        };
        if self.max.is_zero() {
            return;
        }
        if now.saturating_duration_since(since) <= self.max {
            self.window = (self.window * 2).clamp(FIRST_WINDOW, self.max);
        } else {
            self.window /= 2;
            if self.window < FIRST_WINDOW {
                self.window = Duration::ZERO;
            }
        }
    }

    /// The thread goes to sleep at `now`.
    pub fn sleeping(&mut self, now: Instant) {
        self.asleep_since = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(32);

    fn sleep_for(w: &mut PollWindow, at: &mut Instant, gap: Duration) {
        w.sleeping(*at);
        *at += gap;
        w.woken(*at);
    }

    #[test]
    fn back_to_back_requests_grow_the_window_to_its_bound() {
        let mut w = PollWindow::new(MAX);
        let mut at = Instant::now();
        assert_eq!(w.window(), Duration::ZERO);
        sleep_for(&mut w, &mut at, Duration::from_micros(10));
        assert_eq!(w.window(), FIRST_WINDOW);
        for _ in 0..10 {
            sleep_for(&mut w, &mut at, Duration::from_micros(10));
        }
        assert_eq!(w.window(), MAX);
    }

    #[test]
    fn a_slow_guest_shrinks_the_window_to_nothing() {
        let mut w = PollWindow::new(MAX);
        let mut at = Instant::now();
        for _ in 0..10 {
            sleep_for(&mut w, &mut at, Duration::from_micros(1));
        }
        assert_eq!(w.window(), MAX);
        sleep_for(&mut w, &mut at, Duration::from_millis(5));
        assert_eq!(w.window(), MAX / 2);
        for _ in 0..10 {
            sleep_for(&mut w, &mut at, Duration::from_millis(5));
        }
        assert_eq!(w.window(), Duration::ZERO);
    }

    #[test]
    fn a_zero_bound_never_polls_and_a_wake_up_without_sleep_changes_nothing() {
        let mut w = PollWindow::new(Duration::ZERO);
        let mut at = Instant::now();
        for _ in 0..10 {
            sleep_for(&mut w, &mut at, Duration::from_nanos(1));
        }
        assert_eq!(w.window(), Duration::ZERO);

        let mut w = PollWindow::new(MAX);
        w.woken(Instant::now());
        assert_eq!(w.window(), Duration::ZERO);
    }
}
