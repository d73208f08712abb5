//! Bounds on what a guest can make the daemon hold: open file and
//! directory handles, inodes, and the size of one READ. Each bound is
//! answered with the errno a filesystem gives when it runs out (ENFILE,
//! ENOMEM), counted, and logged now and then, so that a guest that opens
//! without releasing or looks up without forgetting hits a wall instead of
//! the host's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuse_backend_rs::api::server::MAX_REQ_PAGES;

/// The largest READ answered: what FUSE INIT negotiates (max_pages pages,
/// the same as max_write). A bigger request, which only a guest that
/// ignores the negotiation sends, gets a short read.
pub const MAX_READ_SIZE: u32 = MAX_REQ_PAGES as u32 * 4096;

/// The bounds, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct GuestLimits {
    /// Open file plus directory handles at once.
    pub max_open_handles: usize,
    /// Live inodes at once (besides the root).
    pub max_inodes: usize,
    /// How long one root listing (`--list-root`) is shared by every
    /// OPENDIR of the root before the store is asked again.
    pub root_listing_ttl: Duration,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            max_open_handles: 65_536,
            // About 280 bytes each (tests/robust_limits.rs measures it
            // from /proc), so 280 MiB at most; a guest's kernel spends
            // about 1 KiB on each (fuse_inode and dentry), so an honest
            // guest reaches this only with over 1 GiB of dentry cache.
            max_inodes: 1 << 20,
            root_listing_ttl: Duration::from_secs(2),
        }
    }
}

/// How often each bound was hit.
#[derive(Debug, Default)]
pub struct LimitCounters {
    pub handles_refused: AtomicU64,
    pub inodes_refused: AtomicU64,
    pub reads_capped: AtomicU64,
}

impl LimitCounters {
    /// Counts one refusal and logs the first and then every 1024th.
    pub fn hit(counter: &AtomicU64, what: &'static str, bound: usize) {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n % 1024 == 0 {
            tracing::warn!(
                bound,
                total = n,
                "{what}: the guest reached the bound; refused"
            );
        }
    }

    /// `name value` lines, like the stats file's.
    pub fn render(&self) -> String {
        format!(
            "handles_refused {}\ninodes_refused {}\nreads_capped {}\n",
            self.handles_refused.load(Ordering::Relaxed),
            self.inodes_refused.load(Ordering::Relaxed),
            self.reads_capped.load(Ordering::Relaxed),
        )
    }
}
