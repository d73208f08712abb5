//! A [`ContentSource`] held in memory: store paths, Directories and blobs
//! (whole or as chunks) given as the store would send them. Path infos and
//! Directories go through the daemon's own validation on every answer, as
//! with `CachedStore`; a blob's digest is that of its content by
//! construction, and its size is checked against the announced one.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tvix_virtiofsd::cache::{ContentSource, FileOrigin, OpenBlob, ReadError};
use tvix_virtiofsd::proto::{castore, store};
use tvix_virtiofsd::store::answers::validate_path_info;
use tvix_virtiofsd::store::directory::{directory_digest, validate_directory, validate_node};
use tvix_virtiofsd::store::{B3Digest, DirEntry, Directory, StoreError, StorePathInfo};

/// Store paths, Directories and blobs, in memory.
#[derive(Default)]
pub struct MemorySource {
    path_infos: HashMap<[u8; 20], castore::Node>,
    /// Output hashes whose lookup fails as with the store down.
    unreachable: Vec<[u8; 20]>,
    directories: HashMap<B3Digest, castore::Directory>,
    /// Each blob as its chunks, in order (one chunk if not chunked).
    blobs: HashMap<B3Digest, Vec<Bytes>>,
}

impl MemorySource {
    /// Adds the store path with output hash `hash` and root `node`.
    pub fn add_path_info(&mut self, hash: [u8; 20], node: castore::node::Node) {
        let node = castore::Node { node: Some(node) };
        self.path_infos.insert(hash, node);
    }

    /// Makes lookups of `hash` fail as if the store did not answer.
    pub fn add_unreachable(&mut self, hash: [u8; 20]) {
        self.unreachable.push(hash);
    }

    /// Adds `dir` and returns its digest.
    pub fn add_directory(&mut self, dir: castore::Directory) -> B3Digest {
        let digest = directory_digest(&dir);
        self.directories.insert(digest, dir);
        digest
    }

    /// Adds a blob as `chunks` and returns its digest (that of the chunks
    /// joined).
    pub fn add_blob(&mut self, chunks: Vec<Bytes>) -> B3Digest {
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let digest = B3Digest::of(&whole);
        self.blobs.insert(digest, chunks);
        digest
    }

    /// The chunks of `digest` (whose digest is that of their content, by
    /// construction), checked against the `size` the directory announced.
    fn verified_chunks(&self, digest: &B3Digest, size: u64) -> Result<&[Bytes], StoreError> {
        let chunks = self
            .blobs
            .get(digest)
            .ok_or(StoreError::BlobNotFound { digest: *digest })?;
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if total != size {
            return Err(StoreError::InvalidChunkList {
                digest: *digest,
                reason: format!("chunks add up to {total} bytes, the file has {size}"),
            });
        }
        Ok(chunks)
    }
}

impl ContentSource for MemorySource {
    fn path_info(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<StorePathInfo>, StoreError> {
        if self.unreachable.contains(&hash) {
            return Err(StoreError::Timeout {
                call: "PathInfoService.Get",
                subject: String::from_utf8_lossy(name).into_owned(),
                timeout: Duration::ZERO,
            });
        }
        let Some(node) = self.path_infos.get(&hash) else {
            return Ok(None);
        };
        // NAR facts as a real store sends them (made up, never checked).
        let info = store::PathInfo {
            node: Some(node.clone()),
            narinfo: Some(store::NarInfo {
                nar_size: 4096,
                nar_sha256: Bytes::copy_from_slice(&[hash[0]; 32]),
                ..Default::default()
            }),
            ..Default::default()
        };
        validate_path_info(&info, name)
    }

    fn list_path_infos(&self, limit: usize) -> Result<Vec<DirEntry>, StoreError> {
        self.path_infos
            .values()
            .take(limit)
            .map(|node| {
                validate_node(node).map_err(|e| StoreError::InvalidPathInfo {
                    name: "listed".into(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    fn directory(&self, digest: &B3Digest, size: u64) -> Result<Arc<Directory>, StoreError> {
        let dir = self
            .directories
            .get(digest)
            .ok_or(StoreError::DirectoryNotFound { digest: *digest })?;
        validate_directory(dir, digest, Some(size))
            .map(Arc::new)
            .map_err(|source| StoreError::InvalidDirectory {
                digest: *digest,
                source,
            })
    }

    fn open_blob(&self, digest: B3Digest, size: u64, _origin: Option<&FileOrigin>) -> OpenBlob {
        OpenBlob::new(digest, size, ())
    }

    fn read(
        &self,
        blob: &OpenBlob,
        offset: u64,
        count: u32,
        out: &mut dyn io::Write,
    ) -> Result<usize, ReadError> {
        let chunks = self
            .verified_chunks(blob.digest(), blob.size())
            .map_err(|e| ReadError::Store(Arc::new(e)))?;
        let end = offset.saturating_add(count.into()).min(blob.size());
        let mut written = 0;
        let mut start = 0u64;
        for chunk in chunks {
            let chunk_end = start + chunk.len() as u64;
            if chunk_end > offset && start < end {
                let from = offset.saturating_sub(start) as usize;
                let to = (end.min(chunk_end) - start) as usize;
                out.write_all(&chunk[from..to]).map_err(ReadError::Guest)?;
                written += to - from;
            }
            start = chunk_end;
        }
        Ok(written)
    }
}
