//! The inode table: which inode number stands for which store node, and how
//! many times the kernel has looked it up. An inode lives while the kernel
//! references it and is freed when FORGET brings its count to zero, so the
//! table follows the guest's dentry cache instead of growing forever. It
//! holds at most a fixed number of inodes, and an inode freed takes the
//! inodes found below it along: a guest that forgets a directory and looks
//! it up again gets a new inode, and the old one's children are gone.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::store::{NarInfo, Node, StorePathInfo};

/// Inode number of the mount root (FUSE's ROOT_ID).
pub const ROOT_INODE: u64 = 1;

/// What an inode stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeKind {
    /// The flat directory of store paths.
    Root,
    Node(Node),
}

struct InodeEntry {
    kind: InodeKind,
    lookups: u64,
    /// (parent inode, name) under which it was found; removed with it.
    key: (u64, Bytes),
    /// What the store said of the NAR, for a store path's root (boxed:
    /// most inodes are not one).
    nar: Option<Box<NarInfo>>,
}

#[derive(Default)]
struct Tables {
    next: u64,
    inodes: HashMap<u64, InodeEntry>,
    by_name: HashMap<(u64, Bytes), u64>,
    /// Live inodes found in each directory inode.
    children: HashMap<u64, HashSet<u64>>,
}

impl Tables {
    /// Removes `inode` and every inode found below it.
    fn remove_with_descendants(&mut self, inode: u64) {
        let mut doomed = vec![inode];
        while let Some(ino) = doomed.pop() {
            if let Some(e) = self.inodes.remove(&ino) {
                self.by_name.remove(&e.key);
                if let Some(siblings) = self.children.get_mut(&e.key.0) {
                    siblings.remove(&ino);
                    if siblings.is_empty() {
                        self.children.remove(&e.key.0);
                    }
                }
            }
            if let Some(kids) = self.children.remove(&ino) {
                doomed.extend(kids);
            }
        }
    }
}

/// Why no inode was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The guest holds as many inodes as it may.
    Full,
    /// The parent was forgotten meanwhile: its child would never be freed.
    StaleParent,
}

/// Inode numbers are keyed by (parent inode, name): the same name in the same
/// directory keeps its number for as long as the kernel references it.
pub struct InodeTable {
    tables: Mutex<Tables>,
    /// Most live inodes besides the root.
    max_inodes: usize,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl InodeTable {
    /// An empty table that holds at most `max_inodes` inodes.
    pub fn with_limit(max_inodes: usize) -> Self {
        Self {
            tables: Mutex::new(Tables {
                next: ROOT_INODE + 1,
                ..Default::default()
            }),
            max_inodes,
        }
    }

    /// Forgets every inode (a new guest, or a new FUSE session). Numbers
    /// are not reused, so a stale one from before is never taken for a
    /// new one.
    pub fn clear(&self) {
        let mut t = self.tables.lock();
        t.inodes.clear();
        t.by_name.clear();
        t.children.clear();
    }

    /// What `inode` stands for, if the kernel still references it.
    pub fn get(&self, inode: u64) -> Option<InodeKind> {
        if inode == ROOT_INODE {
            return Some(InodeKind::Root);
        }
        self.tables
            .lock()
            .inodes
            .get(&inode)
            .map(|e| e.kind.clone())
    }

    /// The inode of `name` in `parent` if one is live (no lookup counted).
    pub fn peek(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.tables
            .lock()
            .by_name
            .get(&(parent, Bytes::copy_from_slice(name)))
            .copied()
    }

    /// Returns the inode for `name` in `parent`, creating it if needed, and
    /// counts one lookup. An existing inode whose node changed (a store path
    /// that was replaced) gets the new node. A new inode when the table is
    /// full is refused.
    pub fn lookup(&self, parent: u64, name: &Bytes, node: &Node) -> Result<u64, Refused> {
        self.lookup_with_nar(parent, name, node, None)
    }

    /// [`Self::lookup`] of a store path in the root, which keeps its NAR
    /// facts with it.
    pub fn lookup_store_path(&self, info: &StorePathInfo) -> Result<u64, Refused> {
        self.lookup_with_nar(ROOT_INODE, &info.entry.name, &info.entry.node, info.nar)
    }

    fn lookup_with_nar(
        &self,
        parent: u64,
        name: &Bytes,
        node: &Node,
        nar: Option<NarInfo>,
    ) -> Result<u64, Refused> {
        let mut t = self.tables.lock();
        let key = (parent, name.clone());
        if let Some(&ino) = t.by_name.get(&key) {
            if let Some(e) = t.inodes.get_mut(&ino) {
                e.lookups += 1;
                if !matches!(&e.kind, InodeKind::Node(n) if n == node) {
                    e.kind = InodeKind::Node(node.clone());
                }
                e.nar = nar.map(Box::new);
                return Ok(ino);
            }
        }
        if t.inodes.len() >= self.max_inodes {
            return Err(Refused::Full);
        }
        if parent != ROOT_INODE && !t.inodes.contains_key(&parent) {
            return Err(Refused::StaleParent);
        }
        let ino = t.next;
        t.next += 1;
        t.by_name.insert(key.clone(), ino);
        t.inodes.insert(
            ino,
            InodeEntry {
                kind: InodeKind::Node(node.clone()),
                lookups: 1,
                key,
                nar: nar.map(Box::new),
            },
        );
        t.children.entry(parent).or_default().insert(ino);
        Ok(ino)
    }

    /// The store path (its name) that `inode` was found in, and the node
    /// of the directory holding it (`None` for a store path's root).
    pub fn origin(&self, inode: u64) -> Option<(Bytes, Option<Node>)> {
        let t = self.tables.lock();
        let entry = t.inodes.get(&inode)?;
        let parent = entry.key.0;
        let directory = match t.inodes.get(&parent) {
            Some(InodeEntry {
                kind: InodeKind::Node(node),
                ..
            }) => Some(node.clone()),
            _ => None,
        };
        // Up to the child of the root; a chain longer than the inodes held
        // would be a cycle, which lookups never make.
        let mut at = entry;
        for _ in 0..=t.inodes.len() {
            if at.key.0 == ROOT_INODE {
                return Some((at.key.1.clone(), directory));
            }
            at = t.inodes.get(&at.key.0)?;
        }
        None
    }

    /// The NAR facts of `inode` if it is a store path's root and the
    /// store sent them.
    pub fn nar(&self, inode: u64) -> Option<NarInfo> {
        self.tables
            .lock()
            .inodes
            .get(&inode)?
            .nar
            .as_deref()
            .copied()
    }

    /// Drops `count` lookups of `inode`; frees it when none are left.
    pub fn forget(&self, inode: u64, count: u64) {
        let mut t = self.tables.lock();
        let Some(e) = t.inodes.get_mut(&inode) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(count);
        if e.lookups == 0 {
            t.remove_with_descendants(inode);
        }
    }

    /// Number of live inodes, not counting the root.
    pub fn len(&self) -> usize {
        self.tables.lock().inodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::B3Digest;

    fn file(n: u8) -> Node {
        Node::File {
            digest: B3Digest::of(&[n]),
            size: 1,
            executable: false,
        }
    }

    #[test]
    fn same_name_same_inode_while_referenced() {
        let t = InodeTable::default();
        let a = t
            .lookup(ROOT_INODE, &Bytes::from_static(b"a"), &file(1))
            .unwrap();
        assert_eq!(
            t.lookup(ROOT_INODE, &Bytes::from_static(b"a"), &file(1))
                .unwrap(),
            a
        );
        let b = t.lookup(a, &Bytes::from_static(b"a"), &file(1)).unwrap();
        assert_ne!(a, b, "same name under another parent is another inode");
        assert_eq!(t.get(a), Some(InodeKind::Node(file(1))));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn forget_frees_only_after_every_lookup_is_forgotten() {
        let t = InodeTable::default();
        let name = Bytes::from_static(b"x");
        let a = t.lookup(ROOT_INODE, &name, &file(1)).unwrap();
        t.lookup(ROOT_INODE, &name, &file(1)).unwrap();
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.len(), 0);
        assert_eq!(t.peek(ROOT_INODE, b"x"), None);
        // Forgetting unknown inodes or the root is harmless.
        t.forget(a, 5);
        t.forget(ROOT_INODE, 1);
        assert_eq!(t.get(ROOT_INODE), Some(InodeKind::Root));
    }

    #[test]
    fn many_lookups_and_forgets_leave_nothing_behind() {
        let t = InodeTable::default();
        let inodes: Vec<u64> = (0..10_000u32)
            .map(|i| {
                t.lookup(ROOT_INODE, &Bytes::from(i.to_string()), &file(1))
                    .unwrap()
            })
            .collect();
        assert_eq!(t.len(), 10_000);
        for ino in inodes {
            t.forget(ino, 1);
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn forgetting_a_parent_frees_what_was_found_below_it() {
        let t = InodeTable::default();
        let name = |s: &'static str| Bytes::from_static(s.as_bytes());
        let parent = t.lookup(ROOT_INODE, &name("p"), &file(1)).unwrap();
        let child = t.lookup(parent, &name("c"), &file(2)).unwrap();
        let grandchild = t.lookup(child, &name("g"), &file(3)).unwrap();
        t.forget(parent, 1);
        assert_eq!(t.len(), 0, "children of a forgotten parent stayed");
        assert!(t.get(grandchild).is_none());
        // Looked up again: a new inode, nothing left from before.
        let again = t.lookup(ROOT_INODE, &name("p"), &file(1)).unwrap();
        assert_ne!(again, parent);
        assert_eq!(
            t.lookup(parent, &name("c"), &file(2)),
            Err(Refused::StaleParent)
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_refuses_new_inodes_but_counts_known_ones() {
        let t = InodeTable::with_limit(2);
        let a = t
            .lookup(ROOT_INODE, &Bytes::from_static(b"a"), &file(1))
            .unwrap();
        t.lookup(ROOT_INODE, &Bytes::from_static(b"b"), &file(1))
            .unwrap();
        assert_eq!(
            t.lookup(ROOT_INODE, &Bytes::from_static(b"c"), &file(1)),
            Err(Refused::Full)
        );
        assert_eq!(
            t.lookup(ROOT_INODE, &Bytes::from_static(b"a"), &file(1)),
            Ok(a)
        );
        t.clear();
        assert_eq!(t.len(), 0);
        assert!(t.get(a).is_none());
    }

    #[test]
    fn origin_names_the_store_path_and_the_directory() {
        let t = InodeTable::default();
        let dir = Node::Directory {
            digest: B3Digest::of(b"d"),
            size: 1,
        };
        let root = t
            .lookup(ROOT_INODE, &Bytes::from_static(b"sp"), &dir)
            .unwrap();
        let sub = t.lookup(root, &Bytes::from_static(b"sub"), &dir).unwrap();
        let f = t.lookup(sub, &Bytes::from_static(b"f"), &file(1)).unwrap();
        assert_eq!(
            t.origin(f),
            Some((Bytes::from_static(b"sp"), Some(dir.clone())))
        );
        assert_eq!(t.origin(root), Some((Bytes::from_static(b"sp"), None)));
        assert_eq!(t.origin(12345), None);
    }

    #[test]
    fn a_store_path_keeps_its_nar_facts_while_it_lives() {
        let t = InodeTable::default();
        let nar = NarInfo {
            size: 512,
            sha256: [9; 32],
        };
        let info = StorePathInfo {
            entry: crate::store::DirEntry {
                name: Bytes::from_static(b"sp"),
                node: file(1),
            },
            nar: Some(nar),
        };
        let root = t.lookup_store_path(&info).unwrap();
        assert_eq!(t.nar(root), Some(nar));
        // A later answer without them replaces them, as the node is.
        let again = t
            .lookup_store_path(&StorePathInfo { nar: None, ..info })
            .unwrap();
        assert_eq!(again, root);
        assert_eq!(t.nar(root), None);
        t.forget(root, 2);
        assert_eq!(t.nar(root), None);
        let sub = t.lookup(ROOT_INODE, &Bytes::from_static(b"other"), &file(2));
        assert_eq!(t.nar(sub.unwrap()), None);
    }
}
