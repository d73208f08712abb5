//! A [`CachedStore`] over a [`MemoryStore`], for the unit tests of the
//! cache's parts: no process, no socket, faults on demand.

use std::sync::Arc;

use tokio::runtime::Runtime;

use super::config::CacheConfig;
use super::source::{ContentSource, FileOrigin, OpenBlob, ReadError};
use super::CachedStore;
use crate::store::memory::build::{directory, directory_of, file};
use crate::store::memory::MemoryStore;
use crate::store::{B3Digest, Chunk, Node};

/// Bytes of a test blob of `len` bytes, distinct per `seed`.
pub fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// The store path of the test tree: a directory holding `small` (one
/// blob) and `big` (three chunks of [`CHUNK`]) and a subdirectory `sub`
/// with `inner`.
pub const TREE: [u8; 20] = [5; 20];
pub const TREE_NAME: &[u8] = b"00000000000000000000000000000000-tree";
pub const CHUNK: usize = 100_000;

/// A cache in front of an in-memory store holding the test tree.
pub struct Rig {
    pub store: Arc<MemoryStore>,
    pub cache: Arc<CachedStore>,
    pub small: Vec<u8>,
    pub big: Vec<u8>,
    /// The root Directory's digest and size.
    pub root: (B3Digest, u64),
    pub sub: (B3Digest, u64),
    /// Kept so that the cache's handle on it stays valid.
    _runtime: Runtime,
}

impl Rig {
    /// With the defaults of `config` (memory only unless it names a disk).
    pub fn new(config: CacheConfig) -> Self {
        let store = Arc::new(MemoryStore::default());
        let (small, big) = (content(1, 5_000), content(2, 3 * CHUNK));
        let small_blob = store.add_blob(&small, None);
        let big_blob = store.add_blob(&big, Some(CHUNK));
        let inner_blob = store.add_blob(&content(3, 700), None);
        let sub = store.add_directory(directory_of(vec![file("inner", inner_blob, false)]));
        let root = store.add_directory(directory_of(vec![
            file("big", big_blob, false),
            file("small", small_blob, true),
            directory("sub", sub),
        ]));
        let name = std::str::from_utf8(TREE_NAME).unwrap();
        store.add_path(TREE, directory(name, root));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cache = CachedStore::new(store.clone(), runtime.handle().clone(), config).unwrap();
        Self {
            store,
            cache,
            small,
            big,
            root,
            sub,
            _runtime: runtime,
        }
    }

    /// Opens the file `name` of the root Directory.
    pub fn open(&self, name: &[u8]) -> OpenBlob {
        let root = self.cache.directory(&self.root.0, self.root.1).unwrap();
        let Node::File { digest, size, .. } = root.entry(name).unwrap().node else {
            panic!("not a file");
        };
        let origin = FileOrigin {
            store_path: TREE,
            directory: Some(self.root),
        };
        self.cache.open_blob(digest, size, Some(&origin))
    }

    /// Reads `count` bytes at `offset` of `blob`.
    pub fn read(&self, blob: &OpenBlob, offset: u64, count: u32) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        let n = self.cache.read(blob, offset, count, &mut out)?;
        assert_eq!(n, out.len(), "the count returned is what was written");
        Ok(out)
    }

    /// The chunks of the big file, as the store lists them.
    pub fn big_chunks(&self) -> Vec<Chunk> {
        let digest = B3Digest::of(&self.big);
        self.cache
            .chunk_list(&digest, self.big.len() as u64)
            .unwrap()
            .to_vec()
    }
}

/// A memory-only cache that reads nothing ahead and prefetches nothing,
/// so that every store call a test counts is one it caused.
pub fn quiet() -> CacheConfig {
    CacheConfig {
        readahead_chunks: 0,
        prefetch_bytes: 0,
        ..CacheConfig::default()
    }
}
