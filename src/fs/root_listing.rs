//! The root directory's listing (`--list-root`), shared: one
//! PathInfoService.List serves every OPENDIR of the root for a short time,
//! and concurrent OPENDIRs wait for the one List running instead of each
//! starting its own and keeping a private copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::{DirEntry, StoreError};

pub struct RootListing {
    ttl: Duration,
    /// The last listing and when it was made. Held while a List runs.
    current: Mutex<Option<(Instant, Arc<Vec<DirEntry>>)>>,
}

impl RootListing {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            current: Mutex::new(None),
        }
    }

    /// The listing, from the last `fetch` if it is younger than the
    /// lifetime, else from a new one.
    pub fn get(
        &self,
        fetch: impl FnOnce() -> Result<Vec<DirEntry>, StoreError>,
    ) -> Result<Arc<Vec<DirEntry>>, StoreError> {
        let mut current = self.current.lock();
        if let Some((at, listing)) = current.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(listing.clone());
            }
        }
        // Dropped before the fetch, so an old listing's memory is not held
        // twice.
        *current = None;
        let listing = Arc::new(fetch()?);
        *current = Some((Instant::now(), listing.clone()));
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fetch_serves_until_the_lifetime_ends() {
        let listing = RootListing::new(Duration::from_millis(100));
        let mut fetches = 0;
        for _ in 0..10 {
            listing
                .get(|| {
                    fetches += 1;
                    Ok(Vec::new())
                })
                .unwrap();
        }
        assert_eq!(fetches, 1);
        std::thread::sleep(Duration::from_millis(150));
        listing.get(|| Ok(Vec::new())).unwrap();
        let again = listing.get(|| panic!("fetched again within the lifetime"));
        assert!(again.is_ok());
    }
}
