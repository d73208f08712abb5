//! Private mappings: store path -> root node and NAR facts, blob -> chunk
//! list. Nothing in them can be checked against their name, so they are
//! never shared:
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
use crate::proto::store::PathInfo;
use crate::store::answers::validate_path_info;
use crate::store::directory::validate_node;
use crate::store::{B3Digest, Chunk, StorePathInfo};

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
        // Root nodes without NAR facts, as older daemons kept them: never
        // read, so not left to take room.
        let _ = fs::remove_dir_all(root.join(MappingKind::RETIRED_PATH_INFO_DIR));
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

    /// The root node and NAR facts of the store path whose hash is
    /// `hash`, if kept and named `name`.
    pub fn path_info(&self, hash: &[u8; 20], name: &[u8]) -> Option<StorePathInfo> {
        let payload = self.get(MappingKind::PathInfo, hash)?;
        let kept = PathInfo::decode(payload).ok().and_then(|info| {
            // Checked as the store's answer is, under the name it holds.
            let kept_name = validate_node(info.node.as_ref()?).ok()?.name;
            validate_path_info(&info, &kept_name).ok().flatten()
        });
        match kept {
            Some(info) if info.entry.name == name => Some(info),
            Some(_) => None,
            None => {
                self.reject(MappingKind::PathInfo, hash);
                None
            }
        }
    }

    pub fn put_path_info(&self, hash: &[u8; 20], info: &StorePathInfo) {
        self.put(
            MappingKind::PathInfo,
            hash,
            &info.encoding().encode_to_vec(),
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
    fn path_infos_round_trip_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let objects = dir.path().join("objects");
        let root = dir.path().join("instance");
        let eviction = Arc::new(Eviction::new(&objects, Some(&root), 1 << 30, stats.clone()));
        let mappings = PrivateMappings::open(&root, eviction, stats).unwrap();
        let name = b"00bgd045z0d4icpbc2yyz4gx48ak44la-x";
        let info = StorePathInfo {
            entry: crate::store::DirEntry {
                name: Bytes::from_static(name),
                node: crate::store::Node::File {
                    digest: B3Digest::of(b"x"),
                    size: 1,
                    executable: true,
                },
            },
            nar: Some(crate::store::NarInfo {
                size: 120,
                sha256: [3; 32],
            }),
        };
        mappings.put_path_info(&[5; 20], &info);
        assert_eq!(mappings.path_info(&[5; 20], name), Some(info));
        assert_eq!(
            mappings.path_info(&[5; 20], b"00bgd045z0d4icpbc2yyz4gx48ak44la-y"),
            None
        );
        assert_eq!(mappings.path_info(&[6; 20], name), None);
    }
}
