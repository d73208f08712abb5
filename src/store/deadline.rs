//! Whole-call deadlines for store RPCs. A per-message timeout alone lets a
//! store that sends one byte just inside each timeout hold a reader (and
//! every reader sharing its fetch) for days; here a call must also keep up
//! a minimum rate overall: it ends by
//! `start + timeout + bytes received / min_rate`, so a call expecting `n`
//! bytes is over within `timeout + n / min_rate` whatever the store does.

use std::time::Duration;

use tokio::time::Instant;

/// The bound of one call, moved on by every byte that arrives.
#[derive(Debug)]
pub struct CallDeadline {
    start: Instant,
    timeout: Duration,
    /// Bytes per second the store must at least deliver.
    min_rate: u64,
    received: u64,
}

impl CallDeadline {
    pub fn start(timeout: Duration, min_rate: u64) -> Self {
        Self {
            start: Instant::now(),
            timeout,
            min_rate: min_rate.max(1),
            received: 0,
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
}
