//! The store the FUSE target serves: a small tree written into a disk cache
//! the real `CachedStore` reads, with the store itself unreachable (a unix
//! socket path that does not exist). Every name below resolves from the
//! disk cache as it would after a daemon had fetched it; anything else
//! reaches the dead store and fails at once, as with the store down.

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tvix_virtiofsd::cache::disk::{DiskCache, Kind};
use tvix_virtiofsd::cache::{encode_chunk_list, CacheConfig, CachedStore};
use tvix_virtiofsd::proto::castore;
use tvix_virtiofsd::store::directory::directory_digest;
use tvix_virtiofsd::store::{nixbase32, B3Digest, Chunk, StoreClient, StoreConfig, StoreProtocol};

/// A store path whose root is a directory tree (see [`tree`]).
pub const TREE: [u8; 20] = [1; 20];
/// A store path whose root is a small file.
pub const FILE: [u8; 20] = [2; 20];
/// A store path whose root is a symlink.
pub const LINK: [u8; 20] = [3; 20];
/// A store path name the disk cache does not have: asked of the dead store.
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

/// Puts `dir` into the cache and returns the node that refers to it, with
/// the doubled size real importers announce.
fn put_directory(disk: &DiskCache, name: &str, dir: &castore::Directory) -> castore::DirectoryNode {
    let digest = directory_digest(dir);
    disk.put(Kind::Directory, digest.as_bytes(), &dir.encode_to_vec());
    let own = tvix_virtiofsd::store::directory::directory_size(dir).expect("small tree");
    castore::DirectoryNode {
        name: Bytes::from(name.to_owned()),
        digest: digest_bytes(&digest),
        size: own * 2,
    }
}

/// Puts a blob that is read whole (small, or one chunk of a list).
fn put_chunk(disk: &DiskCache, data: &[u8]) {
    disk.put(Kind::Chunk, B3Digest::of(data).as_bytes(), data);
}

/// Puts a blob split into chunks of `chunk_len` bytes, with its chunk list.
fn put_chunked(disk: &DiskCache, data: &[u8], chunk_len: usize) {
    let mut chunks = Vec::new();
    for (i, piece) in data.chunks(chunk_len).enumerate() {
        put_chunk(disk, piece);
        chunks.push(Chunk {
            digest: B3Digest::of(piece),
            offset: (i * chunk_len) as u64,
            size: piece.len() as u64,
        });
    }
    disk.put(
        Kind::ChunkList,
        B3Digest::of(data).as_bytes(),
        &encode_chunk_list(&chunks),
    );
}

/// Puts a large blob without finer chunking (served from a file).
fn put_whole_blob(disk: &DiskCache, data: &[u8]) {
    let digest = B3Digest::of(data);
    disk.put(Kind::ChunkList, digest.as_bytes(), &[]);
    let mut temp = disk.temp_file().expect("temporary file in the cache");
    temp.write_all(data).expect("writing the large blob");
    disk.publish_blob(&digest, temp)
        .expect("publishing the large blob");
}

fn put_path_info(disk: &DiskCache, hash: &[u8; 20], node: castore::node::Node) {
    let node = castore::Node { node: Some(node) };
    disk.put(Kind::PathInfo, hash, &node.encode_to_vec());
}

/// Writes the whole fixture into `disk`.
fn populate(disk: &DiskCache) {
    let [tree, file, link, _missing] = store_path_names();

    let small = content(1, 100);
    let exec = content(2, 10);
    // Past the size read whole without a chunk list (256 KiB).
    let chunked = content(3, 300 << 10);
    // Past the size kept in memory (4 MiB): served from a file.
    let large = content(4, (4 << 20) + 1);
    let f = content(5, 7);
    for blob in [&small, &exec, &f] {
        put_chunk(disk, blob);
    }
    put_chunked(disk, &chunked, 128 << 10);
    put_whole_blob(disk, &large);

    let sub = castore::Directory {
        files: vec![file_node("f", &f, false)],
        symlinks: vec![symlink_node("up", "../small")],
        ..Default::default()
    };
    let root = castore::Directory {
        directories: vec![put_directory(disk, "sub", &sub)],
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
    put_path_info(disk, &TREE, N::Directory(put_directory(disk, &tree, &root)));
    put_path_info(disk, &FILE, N::File(file_node(&file, &small, false)));
    put_path_info(disk, &LINK, N::Symlink(symlink_node(&link, &tree)));
}

/// The runtime the store client's (failing) calls run on.
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

/// The cached store over the fixture, made once per process. Its disk cache
/// lives in a temporary directory (under `TMPDIR`) that is left behind:
/// statics are never dropped, and a crash would leave it anyway.
pub fn store() -> Arc<CachedStore> {
    static STORE: OnceLock<(tempfile::TempDir, Arc<CachedStore>)> = OnceLock::new();
    let (_, store) = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dead = || {
            format!("grpc+unix://{}/no-store.sock", dir.path().display())
                .parse()
                .expect("a unix store address")
        };
        let config = StoreConfig {
            blob_service: dead(),
            directory_service: dead(),
            path_info_service: dead(),
            protocol: StoreProtocol::Tvix,
            timeout: Duration::from_secs(1),
            tls: Default::default(),
        };
        let rt = runtime();
        let client = {
            let _enter = rt.enter();
            StoreClient::new(&config).expect("store client")
        };
        let cache = CacheConfig {
            memory_bytes: 16 << 20,
            disk_dir: Some(dir.path().join("cache")),
            disk_bytes: 64 << 20,
            readahead_chunks: 2,
            ..Default::default()
        };
        let store = CachedStore::new(client, rt.handle().clone(), cache).expect("disk cache");
        populate(store.disk().expect("a disk cache"));
        (dir, store)
    });
    store.clone()
}
