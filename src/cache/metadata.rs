//! Metadata: path infos, Directories and chunk lists, from memory, then
//! disk (path infos and chunk lists from this instance's private
//! mappings, Directories from the shared objects, checked against their
//! digest), then the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;

use super::layout::ObjectKind;
use super::{CachedStore, Lane, PathInfoEntry};
use crate::proto::castore;
use crate::store::directory::{check_announced_size, validate_directory};
use crate::store::{B3Digest, Chunk, DirEntry, Directory, StoreError};

/// Directories taken from one recursive Get: a store path's tree usually
/// arrives in one round trip instead of one per directory.
const DIRECTORY_PREFETCH: usize = 1024;

impl CachedStore {
    /// The root node of the store path `name` (whose hash decodes to
    /// `hash`), or `None` if the store does not have it.
    pub fn path_info(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<DirEntry>, StoreError> {
        if let Some(entry) = self.path_infos.get(&hash) {
            match entry {
                PathInfoEntry::Found(e) if e.name == name => {
                    self.hit(true);
                    return Ok(Some(e));
                }
                PathInfoEntry::Found(_) => {
                    self.hit(true);
                    return Ok(None);
                }
                PathInfoEntry::Missing { name: n, at }
                    if n == name && at.elapsed() < self.config.negative_ttl =>
                {
                    self.hit(true);
                    return Ok(None);
                }
                PathInfoEntry::Missing { .. } => {}
            }
        }
        self.hit(false);
        if let Some(found) = self
            .mappings
            .as_ref()
            .and_then(|m| m.path_info(&hash, name))
        {
            // Looked up by this instance before: its trace was replayed
            // then, and what it fetched is on disk.
            self.path_infos
                .insert(hash, PathInfoEntry::Found(found.clone()));
            return Ok(Some(found));
        }
        self.stats
            .store_path_info_calls
            .fetch_add(1, Ordering::Relaxed);
        match self.call(self.store.path_info(hash, name))? {
            Some(found) => {
                if let Some(mappings) = self.mappings.clone() {
                    let entry = found.clone();
                    self.write_behind(Lane::of_this_thread(), 0, move || {
                        mappings.put_path_info(&hash, &entry)
                    });
                }
                self.path_infos
                    .insert(hash, PathInfoEntry::Found(found.clone()));
                self.prefetch_store_path(hash, &found.node);
                Ok(Some(found))
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
    pub fn list_path_infos(&self, limit: usize) -> Result<Vec<DirEntry>, StoreError> {
        self.call(self.store.list_path_infos(limit))
    }

    /// A validated Directory whose parent node announces `size` (a lower
    /// bound of its real size, see `check_announced_size`).
    pub fn directory(&self, digest: &B3Digest, size: u64) -> Result<Arc<Directory>, StoreError> {
        let directory = match self.directories.get(digest) {
            Some(d) => {
                self.hit(true);
                d
            }
            None => {
                self.hit(false);
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
        let fetched = self.call(
            self.store
                .directories(digest, Some(size), DIRECTORY_PREFETCH),
        )?;
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
        if let Some(objects) = self.objects.clone() {
            let held = encodings.iter().map(|(_, e)| e.len()).sum();
            self.write_behind(Lane::of_this_thread(), held, move || {
                for (digest, encoding) in encodings {
                    objects.put(ObjectKind::Directory, &digest, &encoding);
                }
            });
        }
        root.ok_or(StoreError::DirectoryNotFound { digest: *digest })
    }

    fn directory_from_disk(&self, digest: &B3Digest, size: u64) -> Option<Directory> {
        let objects = self.objects.as_ref()?;
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
    pub fn chunk_list(&self, digest: &B3Digest, size: u64) -> Result<Arc<Vec<Chunk>>, StoreError> {
        if let Some(list) = self.chunk_lists.get(digest) {
            self.hit(true);
            if list.iter().map(|c| c.size).sum::<u64>() == size || list.is_empty() {
                return Ok(list);
            }
        }
        self.hit(false);
        let list = match self
            .mappings
            .as_ref()
            .and_then(|m| m.chunk_list(digest, size))
        {
            Some(list) => list,
            None => {
                self.stats
                    .store_chunk_list_calls
                    .fetch_add(1, Ordering::Relaxed);
                let list = self.call(self.store.blob_chunks(digest, size))?;
                if let Some(mappings) = self.mappings.clone() {
                    let (digest, list) = (*digest, list.clone());
                    self.write_behind(Lane::of_this_thread(), 0, move || {
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
    use crate::store::directory::ValidationError;
    use crate::store::StoreError;

    #[test]
    fn path_infos_directories_and_chunk_lists_come_from_the_store_once() {
        let rig = Rig::new(quiet());
        let calls = &rig.store.calls;
        for _ in 0..3 {
            assert!(rig.cache.path_info(TREE, TREE_NAME).unwrap().is_some());
        }
        assert_eq!(calls.path_info.load(Relaxed), 1);
        // The root comes with the Directories below it, in one call.
        for _ in 0..2 {
            rig.cache.directory(&rig.root.0, rig.root.1).unwrap();
            let sub = rig.cache.directory(&rig.sub.0, rig.sub.1).unwrap();
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
}
