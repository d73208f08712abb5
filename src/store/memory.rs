//! A store held in memory, for tests of the cache with no process and no
//! socket: it answers as the gRPC client does (the same validation of
//! Directories, chunk lists and path infos), counts every call, and can be
//! told to fail (store down) or to send wrong bytes for a blob, which a
//! real store cannot be made to do.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;

use super::answers::{validate_path_info, StorePathInfo};
use super::backend::{BlobPieces, Pieces, Store, StoreFuture};
use super::chunk_list::{validate_chunk_list, Chunk};
use super::digest::B3Digest;
use super::directory::{directory_digest, directory_size, validate_directory, validate_node};
use super::directory::{DirEntry, Directory, Node};
use super::error::{Result, StoreError};
use crate::proto::castore;
use crate::proto::castore::stat_blob_response::ChunkMeta;
use crate::proto::store::PathInfo;

/// Bytes per piece of a blob read, as a store sends them in messages.
const PIECE: usize = 64 << 10;

/// The calls a [`MemoryStore`] answered, by kind.
#[derive(Debug, Default)]
pub struct Calls {
    pub path_info: AtomicU64,
    pub list: AtomicU64,
    pub directories: AtomicU64,
    pub chunk_lists: AtomicU64,
    pub blob_reads: AtomicU64,
}

impl Calls {
    /// Every call so far.
    pub fn total(&self) -> u64 {
        [
            &self.path_info,
            &self.list,
            &self.directories,
            &self.chunk_lists,
            &self.blob_reads,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

#[derive(Default)]
struct Contents {
    blobs: HashMap<B3Digest, Bytes>,
    chunks: HashMap<B3Digest, Vec<ChunkMeta>>,
    directories: HashMap<B3Digest, castore::Directory>,
    /// Store paths by output hash; the root node carries the basename.
    paths: HashMap<[u8; 20], PathInfo>,
    /// Blobs whose reads come back with one byte flipped.
    corrupt: HashSet<B3Digest>,
}

/// An in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    contents: Mutex<Contents>,
    /// Every call fails as with the store down.
    down: AtomicBool,
    /// How long every call waits before it answers, as a distant store.
    latency: Mutex<Duration>,
    pub calls: Calls,
}

fn digest_bytes(digest: &B3Digest) -> Bytes {
    Bytes::copy_from_slice(digest.as_bytes())
}

fn store_down(call: &'static str) -> StoreError {
    StoreError::Rpc {
        call,
        subject: "(memory store)".into(),
        status: tonic::Status::unavailable("the memory store is down"),
    }
}

impl MemoryStore {
    /// Adds a blob, cut into chunks of `chunk_size` bytes if given (each
    /// chunk a blob of its own, as a chunking store keeps them); returns
    /// its digest and size.
    pub fn add_blob(&self, data: &[u8], chunk_size: Option<usize>) -> (B3Digest, u64) {
        let digest = B3Digest::of(data);
        let mut contents = self.contents.lock();
        if let Some(chunk_size) = chunk_size {
            let metas = data
                .chunks(chunk_size.max(1))
                .map(|chunk| {
                    let chunk_digest = B3Digest::of(chunk);
                    contents
                        .blobs
                        .insert(chunk_digest, Bytes::copy_from_slice(chunk));
                    ChunkMeta {
                        digest: digest_bytes(&chunk_digest),
                        size: chunk.len() as u64,
                    }
                })
                .collect();
            contents.chunks.insert(digest, metas);
        }
        contents.blobs.insert(digest, Bytes::copy_from_slice(data));
        (digest, data.len() as u64)
    }

    /// Adds a Directory as it is (valid or not); returns the digest and
    /// size its parent's node names it by.
    pub fn add_directory(&self, directory: castore::Directory) -> (B3Digest, u64) {
        let digest = directory_digest(&directory);
        let size = directory_size(&directory).unwrap_or(u64::MAX);
        self.contents.lock().directories.insert(digest, directory);
        (digest, size)
    }

    /// Adds a store path whose root is `node` (named by the basename),
    /// without NAR facts.
    pub fn add_path(&self, hash: [u8; 20], node: castore::Node) {
        let info = PathInfo {
            node: Some(node),
            ..Default::default()
        };
        self.add_path_info(hash, info);
    }

    /// Adds a store path's PathInfo as it is (valid or not).
    pub fn add_path_info(&self, hash: [u8; 20], info: PathInfo) {
        self.contents.lock().paths.insert(hash, info);
    }

    /// From now on, reads of the blob `digest` send one byte flipped.
    pub fn corrupt_blob(&self, digest: &B3Digest) {
        self.contents.lock().corrupt.insert(*digest);
    }

    /// Reads of the blob `digest` send its right bytes again.
    pub fn repair_blob(&self, digest: &B3Digest) {
        self.contents.lock().corrupt.remove(digest);
    }

    /// Every call from now on waits `latency` before it answers.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock() = latency;
    }

    /// Waits the latency, as a distant store's answer does.
    async fn delay(&self) {
        let latency = *self.latency.lock();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Takes the store down (every call fails) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Counts a call, or fails it if the store is down.
    fn answer(&self, counter: &AtomicU64, call: &'static str) -> Result<()> {
        counter.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Err(store_down(call));
        }
        Ok(())
    }

    fn path_info_now(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<StorePathInfo>> {
        self.answer(&self.calls.path_info, "PathInfoService.Get")?;
        let info = self.contents.lock().paths.get(&hash).cloned();
        match info {
            None => Ok(None),
            Some(info) => validate_path_info(&info, name),
        }
    }

    fn list_now(&self, limit: usize) -> Result<Vec<DirEntry>> {
        self.answer(&self.calls.list, "PathInfoService.List")?;
        let contents = self.contents.lock();
        let mut entries: Vec<DirEntry> = contents
            .paths
            .values()
            .filter_map(|info| validate_node(info.node.as_ref()?).ok())
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.truncate(limit);
        Ok(entries)
    }

    /// The root, then the Directories below it breadth first, each checked
    /// against the digest and size its parent gave, as the client does.
    fn directories_now(
        &self,
        digest: &B3Digest,
        expected_size: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(Directory, Bytes)>> {
        self.answer(&self.calls.directories, "DirectoryService.Get")?;
        let contents = self.contents.lock();
        let mut out = Vec::new();
        let mut queue = VecDeque::from([(*digest, expected_size)]);
        let mut seen = HashSet::new();
        while let Some((next, size)) = queue.pop_front() {
            if out.len() >= limit.max(1) {
                break;
            }
            if !seen.insert(next) {
                continue;
            }
            let Some(proto) = contents.directories.get(&next) else {
                if out.is_empty() {
                    return Err(StoreError::DirectoryNotFound { digest: next });
                }
                break;
            };
            let directory = match validate_directory(proto, &next, size) {
                Ok(d) => d,
                Err(source) if out.is_empty() => {
                    return Err(StoreError::InvalidDirectory {
                        digest: next,
                        source,
                    })
                }
                Err(_) => break,
            };
            for entry in &directory.entries {
                if let Node::Directory { digest, size } = entry.node {
                    queue.push_back((digest, Some(size)));
                }
            }
            out.push((directory, Bytes::from(proto.encode_to_vec())));
        }
        Ok(out)
    }

    fn chunks_now(&self, digest: &B3Digest, size: u64) -> Result<Vec<Chunk>> {
        self.answer(&self.calls.chunk_lists, "BlobService.Stat")?;
        let contents = self.contents.lock();
        if !contents.blobs.contains_key(digest) && !contents.chunks.contains_key(digest) {
            return Err(StoreError::BlobNotFound { digest: *digest });
        }
        let metas = contents
            .chunks
            .get(digest)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        validate_chunk_list(metas, size).map_err(|reason| StoreError::InvalidChunkList {
            digest: *digest,
            reason,
        })
    }

    fn pieces_now(&self, digest: &B3Digest, size: u64) -> Result<MemoryPieces> {
        self.answer(&self.calls.blob_reads, "BlobService.Read")?;
        let contents = self.contents.lock();
        let mut data = contents
            .blobs
            .get(digest)
            .cloned()
            .ok_or(StoreError::BlobNotFound { digest: *digest })?;
        if contents.corrupt.contains(digest) && !data.is_empty() {
            let mut flipped = data.to_vec();
            flipped[0] ^= 0xff;
            data = Bytes::from(flipped);
        }
        Ok(MemoryPieces {
            digest: *digest,
            size,
            data,
            sent: 0,
        })
    }
}

impl Store for MemoryStore {
    fn path_info<'a>(
        &'a self,
        hash: [u8; 20],
        name: &'a [u8],
    ) -> StoreFuture<'a, Option<StorePathInfo>> {
        Box::pin(async move {
            self.delay().await;
            self.path_info_now(hash, name)
        })
    }

    fn list_path_infos(&self, limit: usize) -> StoreFuture<'_, Vec<DirEntry>> {
        Box::pin(async move {
            self.delay().await;
            self.list_now(limit)
        })
    }

    fn directories<'a>(
        &'a self,
        digest: &'a B3Digest,
        expected_size: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(Directory, Bytes)>> {
        Box::pin(async move {
            self.delay().await;
            self.directories_now(digest, expected_size, limit)
        })
    }

    fn blob_chunks<'a>(&'a self, digest: &'a B3Digest, size: u64) -> StoreFuture<'a, Vec<Chunk>> {
        Box::pin(async move {
            self.delay().await;
            self.chunks_now(digest, size)
        })
    }

    fn blob_pieces<'a>(&'a self, digest: &'a B3Digest, size: u64) -> StoreFuture<'a, Pieces<'a>> {
        Box::pin(async move {
            self.delay().await;
            let pieces = self.pieces_now(digest, size)?;
            Ok(Box::new(pieces) as Pieces<'a>)
        })
    }
}

/// One read of a blob from a [`MemoryStore`], in pieces of [`PIECE`].
struct MemoryPieces {
    digest: B3Digest,
    size: u64,
    data: Bytes,
    sent: usize,
}

impl BlobPieces for MemoryPieces {
    fn next(&mut self) -> StoreFuture<'_, Option<Bytes>> {
        Box::pin(async move {
            if self.sent == self.data.len() {
                if self.sent as u64 != self.size {
                    return Err(self.size_mismatch());
                }
                return Ok(None);
            }
            let end = (self.sent + PIECE).min(self.data.len());
            let piece = self.data.slice(self.sent..end);
            self.sent = end;
            if self.sent as u64 > self.size {
                return Err(self.size_mismatch());
            }
            Ok(Some(piece))
        })
    }

    fn size_mismatch(&self) -> StoreError {
        StoreError::BlobSizeMismatch {
            digest: self.digest,
            expected: self.size,
            actual: self.sent as u64,
        }
    }

    fn resume(&mut self) {}
}

/// Building the nodes and Directories of a test tree.
pub mod build {
    use super::*;

    /// A file node named `name` for a blob added to the store.
    pub fn file(name: &str, (digest, size): (B3Digest, u64), executable: bool) -> castore::Node {
        castore::Node {
            node: Some(castore::node::Node::File(castore::FileNode {
                name: Bytes::from(name.to_owned()),
                digest: digest_bytes(&digest),
                size,
                executable,
            })),
        }
    }

    /// A directory node named `name` for a Directory added to the store.
    pub fn directory(name: &str, (digest, size): (B3Digest, u64)) -> castore::Node {
        castore::Node {
            node: Some(castore::node::Node::Directory(castore::DirectoryNode {
                name: Bytes::from(name.to_owned()),
                digest: digest_bytes(&digest),
                size,
            })),
        }
    }

    /// A Directory of the given nodes, sorted into its three lists.
    pub fn directory_of(nodes: Vec<castore::Node>) -> castore::Directory {
        let mut directory = castore::Directory::default();
        for node in nodes {
            match node.node {
                Some(castore::node::Node::File(f)) => directory.files.push(f),
                Some(castore::node::Node::Directory(d)) => directory.directories.push(d),
                Some(castore::node::Node::Symlink(s)) => directory.symlinks.push(s),
                None => {}
            }
        }
        directory.files.sort_by(|a, b| a.name.cmp(&b.name));
        directory.directories.sort_by(|a, b| a.name.cmp(&b.name));
        directory.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
        directory
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn block_on<T>(f: StoreFuture<'_, T>) -> Result<T> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn answers_as_the_client_does() {
        let store = MemoryStore::default();
        let data = vec![7u8; 300_000];
        let blob = store.add_blob(&data, Some(100_000));
        let sub = store.add_directory(directory_of(vec![file("f", blob, false)]));
        let root = store.add_directory(directory_of(vec![directory("sub", sub)]));
        let hash = [9; 20];
        store.add_path(hash, directory("x-root", root));

        let found = block_on(store.path_info(hash, b"x-root")).unwrap().unwrap();
        assert_eq!(
            found.entry.node,
            Node::Directory {
                digest: root.0,
                size: root.1
            }
        );
        assert!(block_on(store.path_info(hash, b"x-other"))
            .unwrap()
            .is_none());
        let tree = block_on(store.directories(&root.0, Some(root.1), 10)).unwrap();
        assert_eq!(tree.len(), 2, "the root and the one below it");
        assert_eq!(
            block_on(store.blob_chunks(&blob.0, blob.1)).unwrap().len(),
            3
        );

        let dyn_store: &dyn Store = &store;
        let mut got = Vec::new();
        block_on(Box::pin(dyn_store.stream_blob_unverified(
            &blob.0,
            blob.1,
            |p| {
                got.extend_from_slice(p);
                Ok(())
            },
        )))
        .unwrap();
        assert_eq!(got, data);
        assert_eq!(
            store.calls.total(),
            5,
            "two path infos, a Get, a Stat, a Read"
        );
    }

    #[test]
    fn faults_are_what_was_asked_for() {
        let store = MemoryStore::default();
        let blob = store.add_blob(b"hello", None);
        store.corrupt_blob(&blob.0);
        let mut pieces = block_on(store.blob_pieces(&blob.0, blob.1)).unwrap();
        let piece = block_on(pieces.next()).unwrap().unwrap();
        assert_ne!(&piece[..], b"hello");
        // A size that disagrees with the bytes is an error, not a short read.
        let mut pieces = block_on(store.blob_pieces(&blob.0, 9)).unwrap();
        block_on(pieces.next()).unwrap();
        assert!(matches!(
            block_on(pieces.next()),
            Err(StoreError::BlobSizeMismatch { .. })
        ));
        store.set_down(true);
        assert!(block_on(store.path_info([1; 20], b"x")).is_err());
    }
}
