//! The memory caches: quick_cache's S3-FIFO, bounded by the bytes their
//! entries hold, with evictions counted in the stats.

use std::sync::Arc;

use bytes::Bytes;

use super::stats::{self, Stats};
use crate::store::{B3Digest, Chunk, Directory};

/// quick_cache weighs entries by all the heap memory they hold, in bytes.
#[derive(Clone)]
pub(super) struct Weight;

/// What an entry costs besides its payload (key, map slot, Arc/Bytes).
pub(super) const ENTRY_OVERHEAD: u64 = 64;

impl quick_cache::Weighter<B3Digest, Bytes> for Weight {
    fn weight(&self, _: &B3Digest, v: &Bytes) -> u64 {
        ENTRY_OVERHEAD + v.len() as u64
    }
}

impl quick_cache::Weighter<B3Digest, Arc<Directory>> for Weight {
    fn weight(&self, _: &B3Digest, v: &Arc<Directory>) -> u64 {
        ENTRY_OVERHEAD + v.approximate_size_in_bytes() as u64
    }
}

impl quick_cache::Weighter<B3Digest, Arc<Vec<Chunk>>> for Weight {
    fn weight(&self, _: &B3Digest, v: &Arc<Vec<Chunk>>) -> u64 {
        ENTRY_OVERHEAD + (v.capacity() * std::mem::size_of::<Chunk>()) as u64
    }
}

pub(super) type MemoryCache<K, V> = quick_cache::sync::Cache<
    K,
    V,
    Weight,
    quick_cache::DefaultHashBuilder,
    stats::CountEvictions<K, V>,
>;

/// A memory cache of about `bytes`, sized for entries of `typical_item`.
pub(super) fn memory_cache<K: Eq + std::hash::Hash, V: Clone>(
    bytes: u64,
    typical_item: u64,
    stats: &Arc<Stats>,
) -> MemoryCache<K, V>
where
    Weight: quick_cache::Weighter<K, V>,
{
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity((bytes / typical_item).clamp(16, 1 << 20) as usize)
        .weight_capacity(bytes)
        // New entries wait in the cold tenth (S3-FIFO's usual split, where
        // quick_cache's default is 3%) until used: long enough for chunks
        // read ahead to still be there when the reader gets to them.
        .hot_allocation(0.9)
        .build()
        .expect("cache options are complete");
    quick_cache::sync::Cache::with_options(
        options,
        Weight,
        Default::default(),
        stats::CountEvictions::new(stats.clone()),
    )
}
