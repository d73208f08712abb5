//! `--adversarial`: extra store paths whose content a hostile or broken
//! store would send, for tests of what the daemon refuses and survives.
//! Each is named `<hash>-adv-<case>`:
//!
//! - `two-sizes`: a directory with files `a`, `b`, `c` of one digest and
//!   three sizes (only `a`'s is right);
//! - `drip`: a 20-byte file whose Read sends one byte per drip interval;
//! - `endless`: a 1000-byte file whose Read never ends;
//! - `empty-flood`: a 1000-byte file whose Read sends empty messages, as
//!   fast as it can, for ever;
//! - `huge-symlink`: a symlink with a 1 MiB target;
//! - `bad-chunks`: a file whose chunk list does not add up to its size;
//! - `many-chunks`: a 1 MiB file listed as 262,144 chunks of 4 bytes;
//! - `self-dir`: a directory whose child `self` is served as the directory
//!   itself (a digest that resolves to its own parent).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tvix_virtiofsd::store::nixbase32;

use crate::import::{directory_digest, directory_size, Blob, BlobSource, Digest, Imported};
use crate::proto::castore::{
    node, stat_blob_response::ChunkMeta, Directory, DirectoryNode, FileNode, Node, SymlinkNode,
};
use crate::proto::store::PathInfo;

/// How the adversarial store paths misbehave when served.
#[derive(Debug, Default)]
pub struct Adversarial {
    /// Blobs whose Read sends one byte per `drip_interval`.
    pub drip: HashSet<Digest>,
    pub drip_interval: Duration,
    /// Blobs whose Read never ends.
    pub endless: HashSet<Digest>,
    /// Blobs whose Read sends nothing but empty messages, for ever.
    pub empty_flood: HashSet<Digest>,
    /// Directories answered with another Directory than their own.
    pub directory_aliases: HashMap<Digest, Directory>,
}

fn blob_of(imported: &mut Imported, data: Vec<u8>, chunks: Vec<ChunkMeta>) -> Digest {
    let digest: Digest = blake3::hash(&data).into();
    imported.blobs.insert(
        digest,
        Blob {
            source: BlobSource::Memory(Bytes::from(data)),
            chunks,
        },
    );
    digest
}

fn file(name: &str, digest: &Digest, size: u64) -> FileNode {
    FileNode {
        name: Bytes::from(name.to_owned()),
        digest: Bytes::copy_from_slice(digest),
        size,
        executable: false,
    }
}

/// Adds the store path `adv-<case>` with `node` as its root.
fn add_path(imported: &mut Imported, case: &str, node: impl FnOnce(Bytes) -> node::Node) {
    let label = format!("adv-{case}");
    let hash: [u8; 20] = blake3::hash(label.as_bytes()).as_bytes()[..20]
        .try_into()
        .expect("20 bytes");
    let name = Bytes::from(format!("{}-{label}", nixbase32::encode(&hash)));
    imported.path_infos.insert(
        hash,
        PathInfo {
            node: Some(Node {
                node: Some(node(name)),
            }),
            references: Vec::new(),
            narinfo: None,
        },
    );
}

fn directory_node(
    imported: &mut Imported,
    directory: Directory,
) -> impl FnOnce(Bytes) -> node::Node {
    let digest = directory_digest(&directory);
    let size = directory_size(&directory);
    imported.directories.insert(digest, directory);
    move |name| {
        node::Node::Directory(DirectoryNode {
            name,
            digest: Bytes::copy_from_slice(&digest),
            size,
        })
    }
}

/// Adds every adversarial store path to `imported`.
pub fn add(imported: &mut Imported, drip_interval: Duration) -> Adversarial {
    let mut out = Adversarial {
        drip_interval,
        ..Default::default()
    };

    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let len = content.len() as u64;
    let shared = blob_of(imported, content, Vec::new());
    let two_sizes = Directory {
        files: vec![
            file("a", &shared, len),
            file("b", &shared, len * 2),
            file("c", &shared, len / 2),
        ],
        ..Default::default()
    };
    let node = directory_node(imported, two_sizes);
    add_path(imported, "two-sizes", node);

    let drip = blob_of(imported, b"twenty bytes, slowly".to_vec(), Vec::new());
    out.drip.insert(drip);
    add_path(imported, "drip", |name| {
        node::Node::File(FileNode {
            name,
            ..file("", &drip, 20)
        })
    });

    let endless = blob_of(imported, vec![7; 1000], Vec::new());
    out.endless.insert(endless);
    add_path(imported, "endless", |name| {
        node::Node::File(FileNode {
            name,
            ..file("", &endless, 1000)
        })
    });

    let flood = blob_of(imported, vec![9; 1000], Vec::new());
    out.empty_flood.insert(flood);
    add_path(imported, "empty-flood", |name| {
        node::Node::File(FileNode {
            name,
            ..file("", &flood, 1000)
        })
    });

    add_path(imported, "huge-symlink", |name| {
        node::Node::Symlink(SymlinkNode {
            name,
            target: Bytes::from(vec![b'a'; 1 << 20]),
        })
    });

    let bad: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
    let half = |d: &[u8]| ChunkMeta {
        digest: Bytes::copy_from_slice(blake3::hash(d).as_bytes()),
        size: d.len() as u64,
    };
    let bad_chunks = vec![
        half(&bad[..150_000]),
        half(&bad[..150_000]),
        half(&bad[..1]),
    ];
    let bad_digest = blob_of(imported, bad, bad_chunks);
    add_path(imported, "bad-chunks", |name| {
        node::Node::File(FileNode {
            name,
            ..file("", &bad_digest, 300_000)
        })
    });

    let many: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 7) as u8).collect();
    let many_chunks: Vec<ChunkMeta> = many.chunks(4).map(half).collect();
    let many_digest = blob_of(imported, many, many_chunks);
    add_path(imported, "many-chunks", |name| {
        node::Node::File(FileNode {
            name,
            ..file("", &many_digest, 1 << 20)
        })
    });

    let alias: Digest = blake3::hash(b"adv-self-dir child").into();
    let self_dir = Directory {
        directories: vec![DirectoryNode {
            name: Bytes::from_static(b"self"),
            digest: Bytes::copy_from_slice(&alias),
            size: 1,
        }],
        ..Default::default()
    };
    out.directory_aliases.insert(alias, self_dir.clone());
    let node = directory_node(imported, self_dir);
    add_path(imported, "self-dir", node);
    out
}
