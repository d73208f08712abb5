//! The store as the cache's parts reach it: a call made from a filesystem
//! thread blocks on the store client's runtime (the filesystem's threads
//! are never the runtime's), is counted, and is demand the prefetch
//! yields to, unless the prefetch makes it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::runtime::Handle;

use super::lanes::on_prefetch_lane;
use super::stats::Stats;
use crate::store::{Store, StoreError};

pub(super) struct Remote {
    store: Arc<dyn Store>,
    runtime: Handle,
    stats: Arc<Stats>,
}

impl Remote {
    pub(super) fn new(store: Arc<dyn Store>, runtime: Handle, stats: Arc<Stats>) -> Self {
        Self {
            store,
            runtime,
            stats,
        }
    }

    /// The store itself, for calls made on the runtime.
    pub(super) fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The runtime the store's calls run on.
    pub(super) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Runs a store call from a filesystem thread, counting it.
    pub(super) fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.stats.store_requests.fetch_add(1, Ordering::Relaxed);
        // A request thread waiting for the store: demand the prefetch
        // yields to (the prefetch's own calls are not).
        let _demand = (!on_prefetch_lane()).then(|| {
            (
                crate::demand::DEMAND.store_work(),
                crate::demand::DEMAND.blocked(),
            )
        });
        let result = self.runtime.block_on(fut);
        if let Err(e) = &result {
            self.stats.store_failed(e);
        }
        result
    }
}
