//! Private mappings: store path -> root node, blob -> chunk list. Nothing
//! in them can be checked against their name, so they are never shared:
//! each instance keeps its own in `instances/<NAME>/`, which the sandbox
//! and the service's mount view keep every other daemon out of. A BLAKE3
//! checksum in front of each payload catches torn or decayed files (it
//! proves nothing against a writer, which is why no other writer may
//! reach them). Without an instance name they stay in memory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::eviction::Eviction;
use super::files::{locked_temp_file, open_regular};
use super::layout::{create_dirs, fan_out, DiskCacheError, MappingKind};
use super::stats::Stats;
use super::trace::{self, TracedFile};
use crate::proto::castore;
use crate::store::directory::validate_node;
use crate::store::{B3Digest, Chunk, DirEntry};

/// One instance's mappings on disk.
pub struct PrivateMappings {
    root: PathBuf,
    eviction: Arc<Eviction>,
    stats: Arc<Stats>,
}

impl PrivateMappings {
    pub fn open(
        root: &Path,
        eviction: Arc<Eviction>,
        stats: Arc<Stats>,
    ) -> Result<Self, DiskCacheError> {
        create_dirs(
            root,
            MappingKind::ALL.iter().map(|k| k.dir()).chain(["tmp"]),
        )?;
        Ok(Self {
            root: root.to_path_buf(),
            eviction,
            stats,
        })
    }

    fn path(&self, kind: MappingKind, key: &[u8]) -> PathBuf {
        fan_out(&self.root.join(kind.dir()), key)
    }

    /// A payload whose checksum holds, or `None` (a bad file is removed).
    fn get(&self, kind: MappingKind, key: &[u8]) -> Option<Bytes> {
        let path = self.path(kind, key);
        let (file, len) = match open_regular(&path) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.stats.disk_misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(_) => {
                self.reject(kind, key);
                return None;
            }
        };
        if len > kind.max_bytes() || len < B3Digest::LEN as u64 {
            self.reject(kind, key);
            return None;
        }
        let mut data = Vec::with_capacity(len as usize);
        use std::io::Read;
        if (&file).take(len).read_to_end(&mut data).is_err() {
            return None;
        }
        let (checksum, payload) = data.split_at(B3Digest::LEN);
        if B3Digest::of(payload).as_bytes()[..] != checksum[..] {
            self.reject(kind, key);
            return None;
        }
        self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        Some(Bytes::from(data).slice(B3Digest::LEN..))
    }

    fn reject(&self, kind: MappingKind, key: &[u8]) {
        let path = self.path(kind, key);
        tracing::error!(path = %path.display(), "private mapping failed its checksum; removed, will ask the store again");
        self.stats.rejected.from_disk(kind.label());
        self.stats
            .verification_failures
            .fetch_add(1, Ordering::Relaxed);
        self.stats.disk_misses.fetch_add(1, Ordering::Relaxed);
        let _ = fs::remove_file(&path);
    }

    fn put(&self, kind: MappingKind, key: &[u8], payload: &[u8]) {
        let path = self.path(kind, key);
        let len = (payload.len() + B3Digest::LEN) as u64;
        self.stats
            .disk_bytes_written
            .fetch_add(len, Ordering::Relaxed);
        let _room = self.eviction.admit(len);
        let result = locked_temp_file(&self.root.join("tmp")).and_then(|mut temp| {
            temp.write_all(B3Digest::of(payload).as_bytes())?;
            temp.write_all(payload)?;
            fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
            temp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(kind = ?kind, error = %e, "writing a private mapping failed");
        }
    }

    /// The root node of the store path whose hash is `hash`, if kept and
    /// named `name`.
    pub fn path_info(&self, hash: &[u8; 20], name: &[u8]) -> Option<DirEntry> {
        let payload = self.get(MappingKind::PathInfo, hash)?;
        let entry = castore::Node::decode(payload)
            .ok()
            .and_then(|n| validate_node(&n).ok());
        match entry {
            Some(e) if e.name == name => Some(e),
            Some(_) => None,
            None => {
                self.reject(MappingKind::PathInfo, hash);
                None
            }
        }
    }

    pub fn put_path_info(&self, hash: &[u8; 20], entry: &DirEntry) {
        self.put(
            MappingKind::PathInfo,
            hash,
            &node_encoding(entry).encode_to_vec(),
        );
    }

    /// The chunks of the blob `digest` of `size` bytes, if kept.
    pub fn chunk_list(&self, digest: &B3Digest, size: u64) -> Option<Vec<Chunk>> {
        let payload = self.get(MappingKind::ChunkList, digest.as_bytes())?;
        let list = decode_chunk_list(&payload, size);
        if list.is_none() {
            self.reject(MappingKind::ChunkList, digest.as_bytes());
        }
        list
    }

    pub fn put_chunk_list(&self, digest: &B3Digest, chunks: &[Chunk]) {
        self.put(
            MappingKind::ChunkList,
            digest.as_bytes(),
            &encode_chunk_list(chunks),
        );
    }
}

impl PrivateMappings {
    /// The access trace of the store path whose hash is `hash`, if kept.
    pub fn trace(&self, hash: &[u8; 20]) -> Option<Vec<TracedFile>> {
        let payload = self.get(MappingKind::Trace, hash)?;
        let files = trace::decode(&payload);
        if files.is_none() {
            self.reject(MappingKind::Trace, hash);
        }
        files
    }

    pub fn put_trace(&self, hash: &[u8; 20], encoded: &[u8]) {
        self.put(MappingKind::Trace, hash, encoded);
    }
}

/// Chunk lists on disk: 32 bytes of digest and 8 of size (LE) per chunk.
pub fn encode_chunk_list(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * 40);
    for c in chunks {
        out.extend_from_slice(c.digest.as_bytes());
        out.extend_from_slice(&c.size.to_le_bytes());
    }
    out
}

pub fn decode_chunk_list(data: &[u8], size: u64) -> Option<Vec<Chunk>> {
    if data.len() % 40 != 0 {
        return None;
    }
    let mut offset = 0u64;
    let mut chunks = Vec::with_capacity(data.len() / 40);
    for record in data.chunks_exact(40) {
        let digest = B3Digest::try_from(&record[..32]).ok()?;
        let chunk_size = u64::from_le_bytes(record[32..].try_into().ok()?);
        if chunk_size == 0 {
            return None;
        }
        chunks.push(Chunk {
            digest,
            offset,
            size: chunk_size,
        });
        offset = offset.checked_add(chunk_size)?;
    }
    (chunks.is_empty() || offset == size).then_some(chunks)
}

/// The castore Node a store path's root is kept as on disk.
fn node_encoding(entry: &DirEntry) -> castore::Node {
    use crate::store::Node;
    use castore::node::Node as N;
    let name = entry.name.clone();
    let node = match &entry.node {
        Node::Directory { digest, size } => N::Directory(castore::DirectoryNode {
            name,
            digest: Bytes::copy_from_slice(digest.as_bytes()),
            size: *size,
        }),
        Node::File {
            digest,
            size,
            executable,
        } => N::File(castore::FileNode {
            name,
            digest: Bytes::copy_from_slice(digest.as_bytes()),
            size: *size,
            executable: *executable,
        }),
        Node::Symlink { target } => N::Symlink(castore::SymlinkNode {
            name,
            target: target.clone(),
        }),
    };
    castore::Node { node: Some(node) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip_and_must_add_up() {
        let chunks = vec![
            Chunk {
                digest: B3Digest::of(b"a"),
                offset: 0,
                size: 10,
            },
            Chunk {
                digest: B3Digest::of(b"b"),
                offset: 10,
                size: 5,
            },
        ];
        let encoded = encode_chunk_list(&chunks);
        assert_eq!(decode_chunk_list(&encoded, 15).unwrap(), chunks);
        assert_eq!(decode_chunk_list(&encoded, 16), None);
        assert_eq!(decode_chunk_list(&encoded[..39], 15), None);
        assert_eq!(decode_chunk_list(&[], 15).unwrap(), vec![]);
    }

    #[test]
    fn path_info_nodes_round_trip() {
        let entry = DirEntry {
            name: Bytes::from_static(b"00bgd045z0d4icpbc2yyz4gx48ak44la-x"),
            node: crate::store::Node::File {
                digest: B3Digest::of(b"x"),
                size: 1,
                executable: true,
            },
        };
        assert_eq!(validate_node(&node_encoding(&entry)).unwrap(), entry);
    }
}
