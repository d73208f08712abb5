//! Where the disk cache keeps what, under `--cache-dir DIR`:
//!
//! ```text
//! DIR/v2/objects/            shared by every daemon on the host
//!     chunks/ab/<digest>     chunks and small whole blobs
//!     blobs/ab/<digest>      large whole blobs
//!     outboards/ab/<digest>  group chaining values of a chunk or blob
//!     directories/ab/<digest>
//!     tmp/                   files being written (then renamed into place)
//!     lock                   taken (with a bounded wait) to evict
//! DIR/v2/instances/<NAME>/   private to the daemon run with --instance NAME
//!     path_infos/ab/<hash>   store path -> root node and NAR facts
//!     chunklists/ab/<digest> blob -> chunks
//!     traces/ab/<hash>       store path -> the files its guest opened
//! ```
//!
//! The kinds of file ([`ObjectKind`], [`MappingKind`]) and their bounds
//! live here, with the directory helpers, so that the objects, the
//! mappings and the eviction that scans both all read one description.
//!
//! Objects are named by the BLAKE3 digest of their content, so a reader
//! can check every byte against its name: anyone may write them. Mappings
//! cannot be checked from their name, so only their own daemon reads or
//! writes them; the sandbox and the service's mount view keep the others
//! out. Without `--instance` mappings stay in memory only. Layout `v1`
//! (mappings shared with every daemon) is never read.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::store::B3Digest;

/// The on-disk layout version: a new layout gets a new directory.
pub const LAYOUT: &str = "v2";

/// Chunks (and small whole blobs) are never longer than this.
pub const MAX_CHUNK_BYTES: u64 = 4 << 20;
/// Blobs (or chunks) up to this size are fetched into memory; larger blobs
/// without finer chunking go to a file instead.
pub const MAX_IN_MEMORY_BLOB: u64 = MAX_CHUNK_BYTES;
/// Blobs up to this size are read whole without asking for their chunks
/// (one chunk of a content-defined chunker is about this large anyway).
pub(super) const SMALL_BLOB: u64 = 256 << 10;
/// The largest Directory encoding the store client accepts.
pub const MAX_DIRECTORY_BYTES: u64 = 16 << 20;

/// What kind of object, which decides its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A blob chunk or a small whole blob.
    Chunk,
    /// A large blob without finer chunking.
    Blob,
    /// A Directory's canonical encoding.
    Directory,
    /// The group chaining values of a chunk or blob (see `outboard.rs`).
    Outboard,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 4] = [
        ObjectKind::Chunk,
        ObjectKind::Blob,
        ObjectKind::Directory,
        ObjectKind::Outboard,
    ];

    /// The `kind` label of a verification failure in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Chunk => "chunk",
            ObjectKind::Blob => "blob",
            ObjectKind::Directory => "directory",
            ObjectKind::Outboard => "outboard",
        }
    }

    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Chunk => "chunks",
            ObjectKind::Blob => "blobs",
            ObjectKind::Directory => "directories",
            ObjectKind::Outboard => "outboards",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    #[error("cache directory {path}: {source}")]
    Setup { path: PathBuf, source: io::Error },
}

/// Creates `dir` and its `subdirs`.
pub(super) fn create_dirs<'a>(
    dir: &Path,
    subdirs: impl IntoIterator<Item = &'a str>,
) -> Result<(), DiskCacheError> {
    for sub in subdirs {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(|source| DiskCacheError::Setup { path, source })?;
    }
    Ok(())
}

/// `<dir>/<first two hex digits>/<hex key>`.
pub(super) fn fan_out(dir: &Path, key: &[u8]) -> PathBuf {
    let name = data_encoding::HEXLOWER.encode(key);
    dir.join(&name[..2]).join(name)
}

/// Which mapping, which decides its directory and its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingKind {
    /// A store path's root node, named by the store path's hash.
    PathInfo,
    /// A blob's chunks, named by the blob's digest.
    ChunkList,
    /// The access trace of a store path, named by the store path's hash.
    Trace,
}

impl MappingKind {
    /// Where daemons before NAR facts kept bare root nodes.
    pub const RETIRED_PATH_INFO_DIR: &'static str = "pathinfos";

    pub const ALL: [MappingKind; 3] = [
        MappingKind::PathInfo,
        MappingKind::ChunkList,
        MappingKind::Trace,
    ];

    /// The `kind` label of a verification failure in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            MappingKind::ChunkList => "chunk_list",
            MappingKind::PathInfo => "path_info",
            MappingKind::Trace => "trace",
        }
    }

    pub fn dir(self) -> &'static str {
        match self {
            MappingKind::PathInfo => "path_infos",
            MappingKind::ChunkList => "chunklists",
            MappingKind::Trace => "traces",
        }
    }

    /// Bytes of the key the file is named by.
    pub fn key_len(self) -> usize {
        match self {
            MappingKind::PathInfo | MappingKind::Trace => 20,
            MappingKind::ChunkList => 32,
        }
    }

    /// The longest file of this kind (checksum included).
    pub fn max_bytes(self) -> u64 {
        match self {
            // A node (name, digest, size, or a symlink target < 4 KiB) and
            // the NAR size and hash.
            MappingKind::PathInfo => 16 << 10,
            // 40 bytes per chunk.
            MappingKind::ChunkList => 16 << 20,
            MappingKind::Trace => super::trace::MAX_BYTES + B3Digest::LEN as u64,
        }
    }
}

/// The longest instance name (systemd's escaped `%i` of a VM name).
const MAX_INSTANCE_NAME: usize = 200;

/// The two directories a daemon uses below `--cache-dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheLayout {
    /// Shared, content-addressed objects.
    pub objects: PathBuf,
    /// This instance's private mappings, if it has a name.
    pub instance: Option<PathBuf>,
}

impl CacheLayout {
    pub fn new(cache_dir: &Path, instance: Option<&InstanceName>) -> Self {
        let root = cache_dir.join(LAYOUT);
        Self {
            objects: root.join("objects"),
            instance: instance.map(|name| root.join("instances").join(&name.0)),
        }
    }
}

/// An instance name that is safe as one path component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceName(String);

impl InstanceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for InstanceName {
    type Err = String;

    /// ASCII letters, digits and `_ - . : @ \` (what systemd's escaped
    /// instance names consist of), not starting with a dot, at most 200
    /// bytes.
    fn from_str(s: &str) -> Result<Self, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:@\\".contains(c);
        if s.is_empty()
            || s.len() > MAX_INSTANCE_NAME
            || s.starts_with('.')
            || !s.chars().all(allowed)
        {
            return Err(format!(
                "invalid instance name {s:?}: use 1 to {MAX_INSTANCE_NAME} of A-Z a-z 0-9 _ - . : @ \\, \
                 not starting with a dot"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_one_safe_path_component() {
        for good in ["vm1", "my-vm_2", "a.b", "x\\x2dy", "vm@host:1"] {
            assert!(good.parse::<InstanceName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(201),
        ] {
            assert!(bad.parse::<InstanceName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mappings_live_apart_from_objects() {
        let name: InstanceName = "vm1".parse().unwrap();
        let l = CacheLayout::new(Path::new("/c"), Some(&name));
        assert_eq!(l.objects, Path::new("/c/v2/objects"));
        assert_eq!(
            l.instance.as_deref(),
            Some(Path::new("/c/v2/instances/vm1"))
        );
        assert_eq!(CacheLayout::new(Path::new("/c"), None).instance, None);
    }
}
