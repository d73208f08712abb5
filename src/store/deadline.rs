//! Whole-call deadlines for store RPCs. A per-message timeout alone lets a
//! store that sends one byte just inside each timeout hold a reader (and
//! every reader sharing its fetch) for days; here a call must also keep up
//! a minimum rate overall: it ends by
//! `start + timeout + bytes received / min_rate`, so a call expecting `n`
//! bytes is over within `timeout + n / min_rate` whatever the store does.

use std::time::Duration;

use tokio::time::Instant;

/// Messages taken at once between two reads of the clock.
const CLOCK_EVERY: u32 = 64;

/// The bound of one call, moved on by every byte that arrives.
#[derive(Debug)]
pub struct CallDeadline {
    start: Instant,
    timeout: Duration,
    /// Bytes per second the store must at least deliver.
    min_rate: u64,
    received: u64,
    /// Messages taken without a timer since the clock was last read.
    unclocked: u32,
}

impl CallDeadline {
    pub fn start(timeout: Duration, min_rate: u64) -> Self {
        Self {
            start: Instant::now(),
            timeout,
            min_rate: min_rate.max(1),
            received: 0,
            unclocked: 0,
        }
    }

    /// Counts `bytes` received, which earns the call more time.
    pub fn credit(&mut self, bytes: u64) {
        self.received = self.received.saturating_add(bytes);
    }

    /// When the call must be over, with what has been received so far.
    pub fn at(&self) -> Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        self.start + self.timeout.saturating_add(earned)
    }

    /// Whether the call is past its bound, for a message that was ready at
    /// once. The clock is read for every 64th such message only: reading
    /// it costs more than taking a buffered message.
    pub fn overdue(&mut self) -> bool {
        self.unclocked += 1;
        if self.unclocked < CLOCK_EVERY {
            return false;
        }
        self.unclocked = 0;
        Instant::now() >= self.at()
    }

    /// The longest a call expecting `bytes` bytes can last.
    pub fn bound_for(timeout: Duration, min_rate: u64, bytes: u64) -> Duration {
        timeout.saturating_add(Duration::from_secs_f64(
            bytes as f64 / min_rate.max(1) as f64,
        ))
    }

    /// How long the call has run.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_earn_time_at_the_minimum_rate() {
        let mut d = CallDeadline::start(Duration::from_secs(2), 1000);
        let first = d.at();
        d.credit(500);
        assert_eq!(d.at() - first, Duration::from_millis(500));
        assert_eq!(
            CallDeadline::bound_for(Duration::from_secs(2), 1000, 3000),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn messages_taken_at_once_still_run_out_of_time() {
        let mut d = CallDeadline::start(Duration::from_secs(100), 1000);
        for _ in 0..10 * CLOCK_EVERY {
            assert!(!d.overdue());
        }
        // Over at once: found out within CLOCK_EVERY messages, by one
        // read of the clock.
        let mut d = CallDeadline::start(Duration::ZERO, u64::MAX);
        let overdue: Vec<u32> = (1..=2 * CLOCK_EVERY).filter(|_| d.overdue()).collect();
        assert_eq!(overdue, [CLOCK_EVERY, 2 * CLOCK_EVERY]);
    }
}
