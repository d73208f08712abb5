//! The disk side of the cache as its other parts use it: the shared
//! objects, this instance's private mappings, and the writer that puts
//! things there behind the reader's back. Every write goes through
//! [`Disk::write_behind`], so the writer's bounds hold for all of them.

use std::sync::Arc;

use tokio::runtime::Handle;

use super::config::CacheConfig;
use super::eviction::Eviction;
use super::lanes::Lane;
use super::layout::{CacheLayout, DiskCacheError};
use super::mappings::PrivateMappings;
use super::objects::SharedObjects;
use super::stats::Stats;
use super::write_behind::WriteBehind;

pub(super) struct Disk {
    objects: Option<Arc<SharedObjects>>,
    mappings: Option<Arc<PrivateMappings>>,
    /// `None` without a disk cache or if its thread could not be started
    /// (writes then go through the runtime's blocking pool).
    writer: Option<WriteBehind>,
    runtime: Handle,
}

impl Disk {
    /// Opens the disk cache of `config`, if it names one; never waits for
    /// another daemon (the bound is enforced by the first write).
    pub(super) fn open(
        config: &CacheConfig,
        stats: &Arc<Stats>,
        runtime: Handle,
    ) -> Result<Self, DiskCacheError> {
        let (objects, mappings) = match &config.disk_dir {
            Some(dir) => {
                let layout = CacheLayout::new(dir, config.instance.as_ref());
                let eviction = Arc::new(Eviction::new(
                    &layout.objects,
                    layout.instance.as_deref(),
                    config.disk_bytes,
                    stats.clone(),
                ));
                let objects =
                    SharedObjects::open(&layout.objects, eviction.clone(), stats.clone())?;
                let mappings = match &layout.instance {
                    Some(dir) => Some(Arc::new(PrivateMappings::open(
                        dir,
                        eviction,
                        stats.clone(),
                    )?)),
                    None => None,
                };
                (Some(Arc::new(objects)), mappings)
            }
            None => (None, None),
        };
        let writer = objects.as_ref().and_then(|_| {
            WriteBehind::start(stats.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "no disk writer thread"))
                .ok()
        });
        Ok(Self {
            objects,
            mappings,
            writer,
            runtime,
        })
    }

    /// The shared objects, if there is a disk cache.
    pub(super) fn objects(&self) -> Option<&Arc<SharedObjects>> {
        self.objects.as_ref()
    }

    /// This instance's mappings, if it has a name and a disk cache.
    pub(super) fn mappings(&self) -> Option<&Arc<PrivateMappings>> {
        self.mappings.as_ref()
    }

    /// Writes to the disk cache behind the reader's back (see
    /// [`super::write_behind`]). Without the writer thread, handed to the
    /// blocking pool from a runtime thread: the pool starts its threads
    /// from the caller's, and one started from a serving thread would
    /// inherit that thread's narrower seccomp filter.
    /// `held` is the bytes of data `write` keeps alive until it is done.
    pub(super) fn write_behind(
        &self,
        lane: Lane,
        held: usize,
        write: impl FnOnce() + Send + 'static,
    ) {
        match &self.writer {
            Some(writer) => writer.submit(lane, held, write),
            None => drop(self.runtime.spawn(async move {
                drop(tokio::task::spawn_blocking(write));
            })),
        }
    }

    /// Waits until the writes queued so far are on disk.
    pub(super) fn flush(&self) {
        if let Some(writer) = &self.writer {
            writer.flush();
        }
    }
}
