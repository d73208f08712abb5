//! The inode table: which inode number stands for which store node, and how
//! many times the kernel has looked it up. An inode lives while the kernel
//! references it and is freed when FORGET brings its count to zero, so the
//! table follows the guest's dentry cache instead of growing forever.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::store::Node;

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
}

#[derive(Default)]
struct Tables {
    next: u64,
    inodes: HashMap<u64, InodeEntry>,
    by_name: HashMap<(u64, Bytes), u64>,
}

/// Inode numbers are keyed by (parent inode, name): the same name in the same
/// directory keeps its number for as long as the kernel references it.
pub struct InodeTable {
    tables: Mutex<Tables>,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self {
            tables: Mutex::new(Tables {
                next: ROOT_INODE + 1,
                ..Default::default()
            }),
        }
    }
}

impl InodeTable {
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
    /// that was replaced) gets the new node.
    pub fn lookup(&self, parent: u64, name: &Bytes, node: &Node) -> u64 {
        let mut t = self.tables.lock();
        let key = (parent, name.clone());
        if let Some(&ino) = t.by_name.get(&key) {
            if let Some(e) = t.inodes.get_mut(&ino) {
                e.lookups += 1;
                if !matches!(&e.kind, InodeKind::Node(n) if n == node) {
                    e.kind = InodeKind::Node(node.clone());
                }
                return ino;
            }
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
            },
        );
        ino
    }

    /// Drops `count` lookups of `inode`; frees it when none are left.
    pub fn forget(&self, inode: u64, count: u64) {
        let mut t = self.tables.lock();
        let Some(e) = t.inodes.get_mut(&inode) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(count);
        if e.lookups == 0 {
            if let Some(e) = t.inodes.remove(&inode) {
                t.by_name.remove(&e.key);
            }
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
        let a = t.lookup(ROOT_INODE, &Bytes::from_static(b"a"), &file(1));
        assert_eq!(t.lookup(ROOT_INODE, &Bytes::from_static(b"a"), &file(1)), a);
        let b = t.lookup(a, &Bytes::from_static(b"a"), &file(1));
        assert_ne!(a, b, "same name under another parent is another inode");
        assert_eq!(t.get(a), Some(InodeKind::Node(file(1))));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn forget_frees_only_after_every_lookup_is_forgotten() {
        let t = InodeTable::default();
        let name = Bytes::from_static(b"x");
        let a = t.lookup(ROOT_INODE, &name, &file(1));
        t.lookup(ROOT_INODE, &name, &file(1));
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
            .map(|i| t.lookup(ROOT_INODE, &Bytes::from(i.to_string()), &file(1)))
            .collect();
        assert_eq!(t.len(), 10_000);
        for ino in inodes {
            t.forget(ino, 1);
        }
        assert_eq!(t.len(), 0);
    }
}
