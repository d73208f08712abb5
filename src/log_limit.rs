//! Quiet logs under failure: while the store is down every guest request
//! fails the same way, and one log line per request would bury everything
//! else. A repeated error (same operation, same digest or store path, same
//! error) is logged the first time, then at most once per window, saying
//! how many like it were left out in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::StoreError;

/// Default for `--log-repeat-window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Distinct errors remembered; past it, new ones share one key (so memory
/// stays bounded whatever the guest asks for).
const MAX_KEYS: usize = 1024;
/// New distinct errors logged per window; past it, they share one key (a
/// guest asking for many different missing paths does not flood the log).
const MAX_NEW_PER_WINDOW: u32 = 64;
/// The key errors share once [`MAX_KEYS`] are remembered or
/// [`MAX_NEW_PER_WINDOW`] were new in this window.
const OVERFLOW_KEY: &str = "(more distinct errors than remembered)";

struct Seen {
    last_logged: Instant,
    suppressed: u64,
}

/// Decides which repetitions of an error are logged.
pub struct RepeatLimiter {
    window_ms: AtomicU64,
    seen: Mutex<HashMap<String, Seen>>,
    /// Since when, and how many new keys were admitted since.
    fresh: Mutex<(Instant, u32)>,
}

impl RepeatLimiter {
    pub fn new(window: Duration) -> Self {
        Self {
            window_ms: AtomicU64::new(window.as_millis() as u64),
            seen: Mutex::new(HashMap::new()),
            fresh: Mutex::new((Instant::now(), 0)),
        }
    }

    pub fn set_window(&self, window: Duration) {
        self.window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.load(Ordering::Relaxed))
    }

    /// `Some(k)` if the error `key` is to be logged now, `k` being how many
    /// times it was left out since it was last logged; `None` to leave it out.
    pub fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        let window = self.window();
        let mut seen = self.seen.lock();
        if !seen.contains_key(key) && seen.len() >= MAX_KEYS {
            seen.retain(|_, s| now.duration_since(s.last_logged) < window || s.suppressed > 0);
        }
        let key = if seen.contains_key(key) || (seen.len() < MAX_KEYS && self.fresh_key(now)) {
            key
        } else {
            OVERFLOW_KEY
        };
        match seen.get_mut(key) {
            None => {
                seen.insert(
                    key.to_owned(),
                    Seen {
                        last_logged: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
            Some(s) if now.duration_since(s.last_logged) >= window => {
                s.last_logged = now;
                Some(std::mem::take(&mut s.suppressed))
            }
            Some(s) => {
                s.suppressed += 1;
                None
            }
        }
    }
}

impl RepeatLimiter {
    /// Whether one more new key may be admitted in this window.
    fn fresh_key(&self, now: Instant) -> bool {
        let mut fresh = self.fresh.lock();
        if now.duration_since(fresh.0) >= self.window() {
            *fresh = (now, 0);
        }
        fresh.1 += 1;
        fresh.1 <= MAX_NEW_PER_WINDOW
    }
}

/// The limiter for errors the guest's requests meet.
static GUEST_ERRORS: LazyLock<RepeatLimiter> = LazyLock::new(|| RepeatLimiter::new(DEFAULT_WINDOW));

/// Sets the window of the guest error limiter (`--log-repeat-window`).
pub fn set_window(window: Duration) {
    GUEST_ERRORS.set_window(window);
}

/// Logs that a store call made for `context` (what the guest asked, with
/// the store path) failed with `error`, unless the same failure was logged
/// within the window.
pub fn store_failure(context: &str, error: &StoreError) {
    let corrupt = error.is_corruption();
    let what = if corrupt {
        "store sent bad data; refusing it"
    } else {
        "store request failed"
    };
    let Some(suppressed) = GUEST_ERRORS.admit(&format!("{context}\0{error}")) else {
        return;
    };
    let repeated = match suppressed {
        0 => String::new(),
        k => format!(" (suppressed {k} similar)"),
    };
    tracing::error!(error = %error, "{context}: {what}{repeated}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_once_per_window_with_the_count() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at("a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(limiter.admit_at("a", t0 + Duration::from_secs(i)), None);
        }
        // Another key is not held back by the first.
        assert_eq!(limiter.admit_at("b", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(limiter.admit_at("a", t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(limiter.admit_at("a", t0 + Duration::from_secs(11)), None);
        assert_eq!(limiter.admit_at("a", t0 + Duration::from_secs(30)), Some(1));
    }

    #[test]
    fn logs_a_bounded_number_of_new_errors_per_window() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let logged = (0..1000)
            .filter(|i| limiter.admit_at(&format!("k{i}"), t0).is_some())
            .count();
        assert_eq!(logged, MAX_NEW_PER_WINDOW as usize + 1);
        // The next window admits new ones again.
        assert_eq!(
            limiter.admit_at("later", t0 + Duration::from_secs(10)),
            Some(0)
        );
    }

    #[test]
    fn remembers_a_bounded_number_of_keys() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        // Errors that keep repeating (each key once a second, so none
        // expires), new ones arriving at the most the budget allows.
        for second in 0..400u64 {
            let now = t0 + Duration::from_secs(second);
            for i in 0..MAX_NEW_PER_WINDOW as u64 {
                limiter.admit_at(&format!("k{second}-{i}"), now);
                limiter.admit_at(&format!("k{}-{i}", second.saturating_sub(1)), now);
            }
            assert!(limiter.seen.lock().len() <= MAX_KEYS + 1);
        }
    }
}
