//! What the cache is told to keep where, from the command line.

use std::path::PathBuf;
use std::time::Duration;

use super::layout::InstanceName;

/// How much to keep where.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Bytes of memory for chunks, Directories, chunk lists and path infos.
    pub memory_bytes: u64,
    /// Directory of the persistent disk cache; `None`: memory only.
    pub disk_dir: Option<PathBuf>,
    /// This daemon's name: where its private mappings live on disk.
    pub instance: Option<InstanceName>,
    /// Bound of the disk cache directory as a whole.
    pub disk_bytes: u64,
    /// How long "no such store path" is remembered.
    pub negative_ttl: Duration,
    /// Chunks fetched ahead of a sequential reader (0: no readahead).
    pub readahead_chunks: usize,
    /// Where large unchunked blobs are spooled without a disk cache.
    pub spool_dir: Option<PathBuf>,
    /// Bytes fetched ahead per store path at most (0: no prefetch and no
    /// access trace).
    pub prefetch_bytes: u64,
    /// What to fetch ahead for a store path without an access trace.
    pub prefetch_guess: PrefetchGuess,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            disk_dir: None,
            instance: None,
            disk_bytes: 10 << 30,
            negative_ttl: Duration::from_secs(1),
            readahead_chunks: 32,
            spool_dir: None,
            prefetch_bytes: 0,
            prefetch_guess: PrefetchGuess::default(),
        }
    }
}

/// What to prefetch for a store path that has no trace yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PrefetchGuess {
    /// Nothing: only traces are replayed.
    None,
    /// The small files of a directory, once the guest opens a file in it.
    #[default]
    Directory,
    /// Every small file of a store path, breadth first, when it is first
    /// looked up.
    Tree,
}
