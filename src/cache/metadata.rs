//! The metadata cache: path infos, Directories and chunk lists, from
//! memory, then disk (path infos and chunk lists from this instance's
//! private mappings, Directories from the shared objects, checked against
//! their digest), then the store. It owns their memory caches; what it
//! fetches goes to disk through the writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::disk::Disk;
use super::lanes::Lane;
use super::layout::ObjectKind;
use super::memory_cache::{memory_cache, MemoryCache, Weight, ENTRY_OVERHEAD};
use super::remote::Remote;
use super::stats::Stats;
use crate::proto::castore;
use crate::store::directory::{check_announced_size, validate_directory};
use crate::store::{B3Digest, Chunk, DirEntry, Directory, Node, StoreError, StorePathInfo};

/// Directories taken from one recursive Get: a store path's tree usually
/// arrives in one round trip instead of one per directory.
const DIRECTORY_PREFETCH: usize = 1024;

impl quick_cache::Weighter<[u8; 20], PathInfoEntry> for Weight {
    fn weight(&self, _: &[u8; 20], v: &PathInfoEntry) -> u64 {
        ENTRY_OVERHEAD
            + std::mem::size_of::<PathInfoEntry>() as u64
            + match v {
                PathInfoEntry::Found(info) => {
                    let e = &info.entry;
                    let target = match &e.node {
                        Node::Symlink { target } => target.len(),
                        _ => 0,
                    };
                    (e.name.len() + target) as u64
                }
                PathInfoEntry::Missing { name, .. } => name.len() as u64,
            }
    }
}

/// A remembered PathInfo answer.
#[derive(Clone)]
pub(super) enum PathInfoEntry {
    Found(StorePathInfo),
    /// Not in the store as of `at`; only trusted for the negative TTL.
    Missing {
        name: Bytes,
        at: Instant,
    },
}

/// Where a found path info came from: the store's answer is news (the
/// prefetch starts on it), a cached one is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answered {
    FromCache,
    FromStore,
}

/// How many bytes of memory each kind of metadata may hold.
pub(super) struct MetadataBudget {
    pub directories: u64,
    pub chunk_lists: u64,
    pub path_infos: u64,
}

pub(super) struct MetadataCache {
    directories: MemoryCache<B3Digest, Arc<Directory>>,
    chunk_lists: MemoryCache<B3Digest, Arc<Vec<Chunk>>>,
    path_infos: MemoryCache<[u8; 20], PathInfoEntry>,
    /// How long "no such store path" is remembered.
    negative_ttl: Duration,
    remote: Arc<Remote>,
    disk: Arc<Disk>,
    stats: Arc<Stats>,
}

impl MetadataCache {
    pub(super) fn new(
        budget: MetadataBudget,
        negative_ttl: Duration,
        remote: Arc<Remote>,
        disk: Arc<Disk>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            directories: memory_cache(budget.directories, 4096, &stats),
            chunk_lists: memory_cache(budget.chunk_lists, 1024, &stats),
            path_infos: memory_cache(budget.path_infos, 256, &stats),
            negative_ttl,
            remote,
            disk,
            stats,
        }
    }

    /// Bytes its memory caches hold now.
    pub(super) fn memory_bytes(&self) -> u64 {
        self.directories.weight() + self.chunk_lists.weight() + self.path_infos.weight()
    }

    /// The root node and NAR facts of the store path `name` (whose hash
    /// decodes to `hash`) and where the answer came from, or `None` if the store does
    /// not have it.
    pub(super) fn path_info(
        &self,
        hash: [u8; 20],
        name: &[u8],
    ) -> Result<Option<(StorePathInfo, Answered)>, StoreError> {
        if let Some(entry) = self.path_infos.get(&hash) {
            match entry {
                PathInfoEntry::Found(info) if info.entry.name == name => {
                    self.stats.memory_hit(true);
                    return Ok(Some((info, Answered::FromCache)));
                }
                PathInfoEntry::Found(_) => {
                    self.stats.memory_hit(true);
                    return Ok(None);
                }
                PathInfoEntry::Missing { name: n, at }
                    if n == name && at.elapsed() < self.negative_ttl =>
                {
                    self.stats.memory_hit(true);
                    return Ok(None);
                }
                PathInfoEntry::Missing { .. } => {}
            }
        }
        self.stats.memory_hit(false);
        if let Some(found) = self.disk.mappings().and_then(|m| m.path_info(&hash, name)) {
            // Looked up by this instance before: its trace was replayed
            // then, and what it fetched is on disk.
            self.path_infos
                .insert(hash, PathInfoEntry::Found(found.clone()));
            return Ok(Some((found, Answered::FromCache)));
        }
        self.stats
            .store_path_info_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self
            .remote
            .call(self.remote.store().path_info(hash, name))?
        {
            Some(found) => {
                if let Some(mappings) = self.disk.mappings().cloned() {
                    let entry = found.clone();
                    self.disk.write_behind(Lane::of_this_thread(), 0, move || {
                        mappings.put_path_info(&hash, &entry)
                    });
                }
                self.path_infos
                    .insert(hash, PathInfoEntry::Found(found.clone()));
                Ok(Some((found, Answered::FromStore)))
            }
            None => {
                let missing = PathInfoEntry::Missing {
                    name: Bytes::copy_from_slice(name),
                    at: Instant::now(),
                };
                self.path_infos.insert(hash, missing);
                Ok(None)
            }
        }
    }

    /// All store paths (`--list-root`); not cached, the list changes.
    pub(super) fn list_path_infos(&self, limit: usize) -> Result<Vec<DirEntry>, StoreError> {
        self.remote.call(self.remote.store().list_path_infos(limit))
    }

    /// A validated Directory whose parent node announces `size` (a lower
    /// bound of its real size, see `check_announced_size`).
    pub(super) fn directory(
        &self,
        digest: &B3Digest,
        size: u64,
    ) -> Result<Arc<Directory>, StoreError> {
        let directory = match self.directories.get(digest) {
            Some(d) => {
                self.stats.memory_hit(true);
                d
            }
            None => {
                self.stats.memory_hit(false);
                let d = match self.directory_from_disk(digest, size) {
                    Some(d) => d,
                    None => self.fetch_directories(digest, size)?,
                };
                let d = Arc::new(d);
                self.directories.insert(*digest, d.clone());
                d
            }
        };
        // The same Directory may be reached through several parents; each
        // one's node must announce at least its size, or that parent is
        // corrupt.
        check_announced_size(size, directory.size).map_err(|source| {
            StoreError::InvalidDirectory {
                digest: *digest,
                source,
            }
        })?;
        Ok(directory)
    }

    /// Fetches `digest` and, in the same call, the Directories below it;
    /// caches them all and returns the first.
    fn fetch_directories(&self, digest: &B3Digest, size: u64) -> Result<Directory, StoreError> {
        let fetched = self.remote.call(self.remote.store().directories(
            digest,
            Some(size),
            DIRECTORY_PREFETCH,
        ))?;
        let mut root = None;
        let mut encodings = Vec::new();
        for (directory, encoding) in fetched {
            encodings.push((directory.digest, encoding));
            if root.is_none() {
                root = Some(directory);
            } else {
                self.directories
                    .insert(directory.digest, Arc::new(directory));
            }
        }
        if let Some(objects) = self.disk.objects().cloned() {
            let held = encodings.iter().map(|(_, e)| e.len()).sum();
            self.disk
                .write_behind(Lane::of_this_thread(), held, move || {
                    for (digest, encoding) in encodings {
                        objects.put(ObjectKind::Directory, &digest, &encoding);
                    }
                });
        }
        root.ok_or(StoreError::DirectoryNotFound { digest: *digest })
    }

    fn directory_from_disk(&self, digest: &B3Digest, size: u64) -> Option<Directory> {
        let objects = self.disk.objects()?;
        let encoding = objects.get(ObjectKind::Directory, digest, None)?;
        let valid = castore::Directory::decode(encoding)
            .ok()
            .and_then(|d| validate_directory(&d, digest, Some(size)).ok());
        if valid.is_none() {
            objects.reject(ObjectKind::Directory, digest);
        }
        valid
    }

    /// The chunks of a blob, or an empty list if it has no finer chunking.
    pub(super) fn chunk_list(
        &self,
        digest: &B3Digest,
        size: u64,
    ) -> Result<Arc<Vec<Chunk>>, StoreError> {
        if let Some(list) = self.chunk_lists.get(digest) {
            self.stats.memory_hit(true);
            if list.iter().map(|c| c.size).sum::<u64>() == size || list.is_empty() {
                return Ok(list);
            }
        }
        self.stats.memory_hit(false);
        let list = match self
            .disk
            .mappings()
            .and_then(|m| m.chunk_list(digest, size))
        {
            Some(list) => list,
            None => {
                self.stats
                    .store_chunk_list_calls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let list = self
                    .remote
                    .call(self.remote.store().blob_chunks(digest, size))?;
                if let Some(mappings) = self.disk.mappings().cloned() {
                    let (digest, list) = (*digest, list.clone());
                    self.disk.write_behind(Lane::of_this_thread(), 0, move || {
                        mappings.put_chunk_list(&digest, &list)
                    });
                }
                list
            }
        };
        let list = Arc::new(list);
        self.chunk_lists.insert(*digest, list.clone());
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::super::test_store::{quiet, Rig, TREE, TREE_NAME};
    use super::super::ContentSource;
    use super::{Answered, MetadataCache};
    use crate::store::directory::ValidationError;
    use crate::store::StoreError;

    #[test]
    fn path_infos_directories_and_chunk_lists_come_from_the_store_once() {
        let rig = Rig::new(quiet());
        let (metadata, calls) = (&rig.cache.metadata, &rig.store.calls);
        let answered = |m: &MetadataCache| m.path_info(TREE, TREE_NAME).unwrap().unwrap().1;
        assert_eq!(answered(metadata), Answered::FromStore);
        assert_eq!(answered(metadata), Answered::FromCache);
        assert_eq!(answered(metadata), Answered::FromCache);
        assert_eq!(calls.path_info.load(Relaxed), 1);
        // The root comes with the Directories below it, in one call.
        for _ in 0..2 {
            metadata.directory(&rig.root.0, rig.root.1).unwrap();
            let sub = metadata.directory(&rig.sub.0, rig.sub.1).unwrap();
            assert!(sub.entry(b"inner").is_some());
        }
        assert_eq!(calls.directories.load(Relaxed), 1);
        assert_eq!(rig.big_chunks().len(), 3);
        assert_eq!(rig.big_chunks().len(), 3);
        assert_eq!(calls.chunk_lists.load(Relaxed), 1);
        assert_eq!(calls.total(), 3);
    }

    #[test]
    fn a_missing_store_path_is_remembered_for_the_negative_ttl_only() {
        let mut config = quiet();
        config.negative_ttl = std::time::Duration::from_millis(200);
        let rig = Rig::new(config);
        let name = b"11111111111111111111111111111111-gone";
        for _ in 0..3 {
            assert!(rig.cache.path_info([6; 20], name).unwrap().is_none());
        }
        assert_eq!(rig.store.calls.path_info.load(Relaxed), 1);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(rig.cache.path_info([6; 20], name).unwrap().is_none());
        assert_eq!(rig.store.calls.path_info.load(Relaxed), 2);
    }

    #[test]
    fn a_parent_that_understates_a_cached_directory_is_refused() {
        let rig = Rig::new(quiet());
        rig.cache.directory(&rig.sub.0, rig.sub.1).unwrap();
        let err = rig.cache.directory(&rig.sub.0, rig.sub.1 - 1).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidDirectory { digest, source: ValidationError::Undersized { .. } } if digest == rig.sub.0),
            "{err}"
        );
        assert_eq!(rig.store.calls.directories.load(Relaxed), 1);
    }

    #[test]
    fn with_the_store_down_cached_metadata_is_served_and_the_rest_fails() {
        let rig = Rig::new(quiet());
        rig.cache.directory(&rig.root.0, rig.root.1).unwrap();
        rig.store.set_down(true);
        rig.cache.directory(&rig.sub.0, rig.sub.1).unwrap();
        let err = rig.cache.path_info(TREE, TREE_NAME).unwrap_err();
        assert!(matches!(err, StoreError::Rpc { .. }), "{err}");
        assert_eq!(rig.cache.stats().store_errors.load(Relaxed), 1);
        // Back up: served again, nothing failed was remembered.
        rig.store.set_down(false);
        assert!(rig.cache.path_info(TREE, TREE_NAME).unwrap().is_some());
    }

    #[test]
    fn the_next_daemon_of_an_instance_finds_its_metadata_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let config = super::super::config::CacheConfig {
            disk_dir: Some(dir.path().to_owned()),
            instance: Some("vm1".parse().unwrap()),
            ..quiet()
        };
        let first = Rig::new(config.clone());
        assert!(first.cache.path_info(TREE, TREE_NAME).unwrap().is_some());
        first.cache.directory(&first.root.0, first.root.1).unwrap();
        assert_eq!(first.big_chunks().len(), 3);
        first.cache.finish_writes();
        assert_eq!(first.store.calls.total(), 3);
        // The same tree in another store, so that its calls count anew.
        let second = Rig::new(config);
        let (found, answered) = second
            .cache
            .metadata
            .path_info(TREE, TREE_NAME)
            .unwrap()
            .unwrap();
        assert_eq!(answered, Answered::FromCache, "from the mappings");
        assert_eq!(found.entry.name.as_ref(), TREE_NAME);
        second
            .cache
            .directory(&second.root.0, second.root.1)
            .unwrap();
        second.cache.directory(&second.sub.0, second.sub.1).unwrap();
        assert_eq!(second.big_chunks().len(), 3);
        assert_eq!(second.store.calls.total(), 0, "{:?}", second.store.calls);
        assert!(second.cache.stats().disk_hits.load(Relaxed) >= 2);
    }
}
