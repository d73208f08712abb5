//! The store the FUSE target serves: a small tree (directories, small,
//! chunked and large files, symlinks) in a [`MemorySource`], so that every
//! input runs against the same content with no disk or network. One store
//! path fails as with the store down.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tvix_virtiofsd::proto::castore;
use tvix_virtiofsd::store::{nixbase32, B3Digest};

use crate::memory_source::MemorySource;

/// A store path whose root is a directory tree (see [`tree`]).
pub const TREE: [u8; 20] = [1; 20];
/// A store path whose root is a small file.
pub const FILE: [u8; 20] = [2; 20];
/// A store path whose root is a symlink.
pub const LINK: [u8; 20] = [3; 20];
/// A store path whose lookup fails as with the store down.
pub const MISSING: [u8; 20] = [4; 20];

/// The basename of the store path with output hash `hash`.
pub fn store_path_name(hash: &[u8; 20], name: &str) -> String {
    format!("{}-{name}", nixbase32::encode(hash))
}

/// Names of the fixture's store paths, in the order of the constants above.
pub fn store_path_names() -> [String; 4] {
    [
        store_path_name(&TREE, "tree"),
        store_path_name(&FILE, "file"),
        store_path_name(&LINK, "link"),
        store_path_name(&MISSING, "missing"),
    ]
}

/// Names inside the tree, for seeds that walk it.
pub const TREE_ENTRIES: &[&str] = &["abs", "chunked", "empty", "exec", "large", "small", "sub"];
/// Names inside `sub`.
pub const SUB_ENTRIES: &[&str] = &["f", "up"];

/// Bytes of a blob of `len` bytes, distinct per `seed`.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn digest_bytes(d: &B3Digest) -> Bytes {
    Bytes::copy_from_slice(d.as_bytes())
}

fn file_node(name: &str, data: &[u8], executable: bool) -> castore::FileNode {
    castore::FileNode {
        name: Bytes::from(name.to_owned()),
        digest: digest_bytes(&B3Digest::of(data)),
        size: data.len() as u64,
        executable,
    }
}

fn symlink_node(name: &str, target: &str) -> castore::SymlinkNode {
    castore::SymlinkNode {
        name: Bytes::from(name.to_owned()),
        target: Bytes::from(target.to_owned()),
    }
}

/// Adds `dir` and returns the node that refers to it, with the doubled size
/// real importers announce.
fn put_directory(
    source: &mut MemorySource,
    name: &str,
    dir: castore::Directory,
) -> castore::DirectoryNode {
    let own = tvix_virtiofsd::store::directory::directory_size(&dir).expect("small tree");
    let digest = source.add_directory(dir);
    castore::DirectoryNode {
        name: Bytes::from(name.to_owned()),
        digest: digest_bytes(&digest),
        size: own * 2,
    }
}

/// Adds a blob split into chunks of `chunk_len` bytes.
fn put_blob(source: &mut MemorySource, data: &[u8], chunk_len: usize) {
    let chunks = data.chunks(chunk_len).map(Bytes::copy_from_slice).collect();
    source.add_blob(chunks);
}

/// The whole fixture.
fn populate() -> MemorySource {
    let mut source = MemorySource::default();
    let [tree, file, link, _missing] = store_path_names();

    let small = content(1, 100);
    let exec = content(2, 10);
    // Past the size read whole without a chunk list (256 KiB).
    let chunked = content(3, 300 << 10);
    // Past the size kept in memory (4 MiB) by the cache; one chunk here.
    let large = content(4, (4 << 20) + 1);
    let f = content(5, 7);
    for blob in [&small, &exec, &f, &large] {
        put_blob(&mut source, blob, blob.len().max(1));
    }
    put_blob(&mut source, b"", 1);
    put_blob(&mut source, &chunked, 128 << 10);

    let sub = castore::Directory {
        files: vec![file_node("f", &f, false)],
        symlinks: vec![symlink_node("up", "../small")],
        ..Default::default()
    };
    let root = castore::Directory {
        directories: vec![put_directory(&mut source, "sub", sub)],
        files: vec![
            file_node("chunked", &chunked, false),
            file_node("empty", b"", false),
            file_node("exec", &exec, true),
            file_node("large", &large, false),
            file_node("small", &small, false),
        ],
        symlinks: vec![symlink_node("abs", "/nix/store/elsewhere")],
    };
    use castore::node::Node as N;
    let root = put_directory(&mut source, &tree, root);
    source.add_path_info(TREE, N::Directory(root));
    source.add_path_info(FILE, N::File(file_node(&file, &small, false)));
    source.add_path_info(LINK, N::Symlink(symlink_node(&link, &tree)));
    source.add_unreachable(MISSING);
    source
}

/// The runtime the targets that need one (store clients) run on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// The store over the fixture, made once per process.
pub fn store() -> Arc<MemorySource> {
    static STORE: OnceLock<Arc<MemorySource>> = OnceLock::new();
    STORE.get_or_init(|| Arc::new(populate())).clone()
}
