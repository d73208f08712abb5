//! The castore tree as the filesystem sees it, built only from store answers
//! that passed validation. Nothing in here is trusted until `validate_*`
//! accepted it.

use bytes::Bytes;
use prost::Message;

use super::digest::{B3Digest, InvalidDigestLength};
use crate::proto::castore;

/// One node of the tree: what a name in a Directory (or a store path) is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Directory {
        digest: B3Digest,
        size: u64,
    },
    File {
        digest: B3Digest,
        size: u64,
        executable: bool,
    },
    Symlink {
        target: Bytes,
    },
}

/// A named node inside a Directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Bytes,
    pub node: Node,
}

/// A validated Directory. `entries` holds all three lists merged and sorted
/// by name, so that lookups can binary-search and readdir offsets are stable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    pub digest: B3Digest,
    /// The recursive size as defined by castore (see [`directory_size`]),
    /// computed from the entries, never taken from a parent's node.
    pub size: u64,
    pub entries: Vec<DirEntry>,
}

impl Directory {
    pub fn entry(&self, name: &[u8]) -> Option<&DirEntry> {
        self.entries
            .binary_search_by(|e| e.name.as_ref().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Number of child directories; gives a directory its link count.
    pub fn subdirectory_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.node, Node::Directory { .. }))
            .count()
    }

    /// Rough heap footprint, used to bound the directory cache in bytes.
    pub fn approximate_size_in_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .entries
                .iter()
                .map(|e| {
                    std::mem::size_of::<DirEntry>()
                        + e.name.len()
                        + match &e.node {
                            Node::Symlink { target } => target.len(),
                            _ => 0,
                        }
                })
                .sum::<usize>()
    }
}

/// Why a Directory or node from the store was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid name {0:?}")]
    InvalidName(Bytes),
    #[error("names not sorted: {0:?} after {1:?}")]
    NotSorted(Bytes, Bytes),
    #[error("duplicate name {0:?}")]
    DuplicateName(Bytes),
    #[error("{name:?}: {source}")]
    InvalidDigest {
        name: Bytes,
        source: InvalidDigestLength,
    },
    #[error("symlink {0:?} has an empty target, one containing NUL, or one over 4095 bytes")]
    InvalidSymlinkTarget(Bytes),
    #[error("directory size overflows")]
    SizeOverflow,
    #[error("content hashes to {actual}, not to the requested digest")]
    DigestMismatch { actual: B3Digest },
    #[error("size is {actual}, but the parent's node announces only {announced}")]
    Undersized { announced: u64, actual: u64 },
    #[error("node is empty (none of directory, file, symlink)")]
    EmptyNode,
}

/// castore's name rules: non-empty, not `.` or `..`, no `/` and no NUL.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

fn digest_of(name: &Bytes, digest: &[u8]) -> Result<B3Digest, ValidationError> {
    B3Digest::try_from(digest).map_err(|source| ValidationError::InvalidDigest {
        name: name.clone(),
        source,
    })
}

/// Longest symlink target accepted: what a Linux path can hold (PATH_MAX
/// with its NUL). Real stores refuse longer ones at import, and no guest
/// could resolve one.
pub const MAX_SYMLINK_TARGET: usize = 4095;

fn symlink_target(name: &Bytes, target: &Bytes) -> Result<Bytes, ValidationError> {
    if target.is_empty() || target.contains(&0) || target.len() > MAX_SYMLINK_TARGET {
        return Err(ValidationError::InvalidSymlinkTarget(name.clone()));
    }
    Ok(target.clone())
}

/// The castore Node of `entry`: what [`validate_node`] turns back into it.
pub fn node_encoding(entry: &DirEntry) -> castore::Node {
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

/// Validates a castore `Node` (from a PathInfo) and returns its name and node.
pub fn validate_node(node: &castore::Node) -> Result<DirEntry, ValidationError> {
    use castore::node::Node as N;
    let (name, node) = match node.node.as_ref().ok_or(ValidationError::EmptyNode)? {
        N::Directory(d) => (
            &d.name,
            Node::Directory {
                digest: digest_of(&d.name, &d.digest)?,
                size: d.size,
            },
        ),
        N::File(f) => (
            &f.name,
            Node::File {
                digest: digest_of(&f.name, &f.digest)?,
                size: f.size,
                executable: f.executable,
            },
        ),
        N::Symlink(s) => (
            &s.name,
            Node::Symlink {
                target: symlink_target(&s.name, &s.target)?,
            },
        ),
    };
    if !is_valid_name(name) {
        return Err(ValidationError::InvalidName(name.clone()));
    }
    Ok(DirEntry {
        name: name.clone(),
        node,
    })
}

/// castore's size of a Directory: its entries plus the sizes of its child
/// directories. `None` on overflow.
pub fn directory_size(dir: &castore::Directory) -> Option<u64> {
    let own = (dir.directories.len() + dir.files.len() + dir.symlinks.len()) as u64;
    dir.directories
        .iter()
        .try_fold(own, |acc, d| acc.checked_add(d.size))
}

/// BLAKE3 of the canonical protobuf encoding (prost writes fields in number
/// order and leaves defaults out, which is the canonical form).
pub fn directory_digest(dir: &castore::Directory) -> B3Digest {
    B3Digest::of(&dir.encode_to_vec())
}

/// The size rule for a DirectoryNode that announces `announced` for a
/// Directory whose own size is `actual`. The proto allows an excessive size
/// and forbids only an undersized one; real importers (tvix and snix) count
/// every entry twice, so their announced sizes are always larger than the
/// proto's definition. The announced size is only ever this lower bound:
/// nothing else (inode numbers, link counts, allocations) may trust it.
pub fn check_announced_size(announced: u64, actual: u64) -> Result<(), ValidationError> {
    if announced < actual {
        return Err(ValidationError::Undersized { announced, actual });
    }
    Ok(())
}

/// Checks every rule of the protocol for a Directory asked for by `expected`
/// digest, whose parent node announced `announced_size`, and converts it.
pub fn validate_directory(
    dir: &castore::Directory,
    expected: &B3Digest,
    announced_size: Option<u64>,
) -> Result<Directory, ValidationError> {
    let actual = directory_digest(dir);
    if actual != *expected {
        return Err(ValidationError::DigestMismatch { actual });
    }
    let size = directory_size(dir).ok_or(ValidationError::SizeOverflow)?;
    if let Some(announced) = announced_size {
        check_announced_size(announced, size)?;
    }

    let mut entries =
        Vec::with_capacity(dir.directories.len() + dir.files.len() + dir.symlinks.len());
    check_sorted(dir.directories.iter().map(|d| &d.name))?;
    for d in &dir.directories {
        entries.push(DirEntry {
            name: d.name.clone(),
            node: Node::Directory {
                digest: digest_of(&d.name, &d.digest)?,
                size: d.size,
            },
        });
    }
    check_sorted(dir.files.iter().map(|f| &f.name))?;
    for f in &dir.files {
        entries.push(DirEntry {
            name: f.name.clone(),
            node: Node::File {
                digest: digest_of(&f.name, &f.digest)?,
                size: f.size,
                executable: f.executable,
            },
        });
    }
    check_sorted(dir.symlinks.iter().map(|s| &s.name))?;
    for s in &dir.symlinks {
        entries.push(DirEntry {
            name: s.name.clone(),
            node: Node::Symlink {
                target: symlink_target(&s.name, &s.target)?,
            },
        });
    }

    // Names must be unique across the three lists.
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = entries.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(ValidationError::DuplicateName(w[0].name.clone()));
    }
    Ok(Directory {
        digest: *expected,
        size,
        entries,
    })
}

/// Each list must be sorted strictly increasing by name, with valid names.
fn check_sorted<'a>(names: impl Iterator<Item = &'a Bytes>) -> Result<(), ValidationError> {
    let mut previous: Option<&Bytes> = None;
    for name in names {
        if !is_valid_name(name) {
            return Err(ValidationError::InvalidName(name.clone()));
        }
        if let Some(prev) = previous {
            if name == prev {
                return Err(ValidationError::DuplicateName(name.clone()));
            }
            if name < prev {
                return Err(ValidationError::NotSorted(name.clone(), prev.clone()));
            }
        }
        previous = Some(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use castore::{DirectoryNode, FileNode, SymlinkNode};

    fn empty_blob() -> Bytes {
        Bytes::copy_from_slice(B3Digest::of(b"").as_bytes())
    }

    fn file(name: &str) -> FileNode {
        FileNode {
            name: Bytes::from(name.to_owned()),
            digest: empty_blob(),
            size: 0,
            executable: false,
        }
    }

    fn symlink(name: &str, target: &str) -> SymlinkNode {
        SymlinkNode {
            name: Bytes::from(name.to_owned()),
            target: Bytes::from(target.to_owned()),
        }
    }

    fn with_keep() -> castore::Directory {
        castore::Directory {
            files: vec![file(".keep")],
            ..Default::default()
        }
    }

    fn complicated() -> castore::Directory {
        castore::Directory {
            directories: vec![DirectoryNode {
                name: Bytes::from_static(b"keep"),
                digest: Bytes::copy_from_slice(directory_digest(&with_keep()).as_bytes()),
                size: 1,
            }],
            files: vec![file(".keep")],
            symlinks: vec![symlink("aa", "/nix/store/somewhereelse")],
        }
    }

    fn hex(d: &B3Digest) -> String {
        d.to_string()
    }

    #[test]
    fn digests_match_the_protocol_test_vectors() {
        let empty = castore::Directory::default();
        assert_eq!(
            hex(&directory_digest(&empty)),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            data_encoding::HEXLOWER.encode(&with_keep().encode_to_vec()),
            format!("12290a052e6b6565701220{}", hex(&B3Digest::of(b"")))
        );
        assert_eq!(
            hex(&directory_digest(&with_keep())),
            "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e"
        );
        assert_eq!(
            hex(&directory_digest(&complicated())),
            "3f951a15afd586fb3121ef4d13d582e811ce0e5a7f21c0497fd87490e9e2355a"
        );
        assert_eq!(directory_size(&complicated()), Some(4));
    }

    #[test]
    fn accepts_a_valid_directory_and_merges_lists_by_name() {
        let d = complicated();
        let v = validate_directory(&d, &directory_digest(&d), Some(4)).unwrap();
        let names: Vec<_> = v.entries.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, [&b".keep"[..], b"aa", b"keep"]);
        assert_eq!(v.size, 4);
        assert_eq!(v.subdirectory_count(), 1);
        assert!(matches!(
            v.entry(b"keep").unwrap().node,
            Node::Directory { size: 1, .. }
        ));
        assert!(v.entry(b"nope").is_none());
    }

    /// Validates `d` against its own digest, so only the rule under test fails.
    fn check(d: castore::Directory) -> Result<Directory, ValidationError> {
        validate_directory(&d, &directory_digest(&d), None)
    }

    #[test]
    fn rejects_a_digest_mismatch() {
        let d = with_keep();
        let wrong = directory_digest(&complicated());
        assert!(matches!(
            validate_directory(&d, &wrong, None),
            Err(ValidationError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn rejects_a_parent_node_that_undersizes_the_directory() {
        let d = complicated();
        assert_eq!(
            validate_directory(&d, &directory_digest(&d), Some(3)),
            Err(ValidationError::Undersized {
                announced: 3,
                actual: 4
            })
        );
    }

    /// What tvix-store and snix-store import write: every entry counted
    /// twice ("complicated" announced as 6, "with keep" as 2).
    #[test]
    fn accepts_the_doubled_sizes_real_importers_write() {
        let mut d = complicated();
        d.directories[0].size = 2;
        let digest = directory_digest(&d);
        let v = validate_directory(&d, &digest, Some(6)).unwrap();
        assert_eq!(v.size, 5, "own size is computed, not announced");
        assert!(validate_directory(&d, &digest, Some(u64::MAX)).is_ok());
        assert!(validate_directory(&d, &digest, Some(4)).is_err());
    }

    #[test]
    fn rejects_unsorted_lists() {
        let d = castore::Directory {
            files: vec![file("b"), file("a")],
            ..Default::default()
        };
        assert!(matches!(check(d), Err(ValidationError::NotSorted(..))));
    }

    #[test]
    fn rejects_duplicates_within_a_list() {
        let d = castore::Directory {
            files: vec![file("a"), file("a")],
            ..Default::default()
        };
        assert!(matches!(check(d), Err(ValidationError::DuplicateName(..))));
    }

    #[test]
    fn rejects_duplicates_across_lists() {
        let d = castore::Directory {
            files: vec![file("a")],
            symlinks: vec![symlink("a", "x")],
            ..Default::default()
        };
        assert!(matches!(check(d), Err(ValidationError::DuplicateName(..))));
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            let d = castore::Directory {
                files: vec![file(bad)],
                ..Default::default()
            };
            assert!(
                matches!(check(d), Err(ValidationError::InvalidName(..))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn rejects_short_digests() {
        let mut f = file("a");
        f.digest = Bytes::from_static(&[1; 31]);
        let d = castore::Directory {
            files: vec![f],
            ..Default::default()
        };
        assert!(matches!(
            check(d),
            Err(ValidationError::InvalidDigest { .. })
        ));
    }

    #[test]
    fn rejects_bad_symlink_targets() {
        let too_long = "x".repeat(MAX_SYMLINK_TARGET + 1);
        for bad in ["", "a\0b", too_long.as_str()] {
            let d = castore::Directory {
                symlinks: vec![symlink("l", bad)],
                ..Default::default()
            };
            assert!(matches!(
                check(d),
                Err(ValidationError::InvalidSymlinkTarget(..))
            ));
        }
    }

    #[test]
    fn accepts_the_longest_symlink_target_a_path_can_hold() {
        let d = castore::Directory {
            symlinks: vec![symlink("l", &"x".repeat(MAX_SYMLINK_TARGET))],
            ..Default::default()
        };
        assert!(check(d).is_ok());
    }

    #[test]
    fn rejects_size_overflow() {
        let d = castore::Directory {
            directories: vec![DirectoryNode {
                name: Bytes::from_static(b"d"),
                digest: empty_blob(),
                size: u64::MAX,
            }],
            ..Default::default()
        };
        assert_eq!(check(d), Err(ValidationError::SizeOverflow));
    }

    #[test]
    fn validates_path_info_nodes() {
        let ok = castore::Node {
            node: Some(castore::node::Node::Symlink(symlink("x", "/t"))),
        };
        assert_eq!(validate_node(&ok).unwrap().name.as_ref(), b"x");
        assert_eq!(
            validate_node(&castore::Node { node: None }),
            Err(ValidationError::EmptyNode)
        );
        let bad = castore::Node {
            node: Some(castore::node::Node::File(file(".."))),
        };
        assert!(matches!(
            validate_node(&bad),
            Err(ValidationError::InvalidName(..))
        ));
    }
}
