//! What real tvix-store and snix-store daemons put on the wire, pinned down
//! as assertions: the raw gRPC answers to PathInfo, Directory and Blob calls
//! for trees imported by the stores' own `import`. Where the two stores
//! differ, the assertion says which does what.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::Channel;
use tonic::Code;

use common::nar::{nar, sha256};
use common::real_store::{RealStore, StoreKind};
use common::scratch;
use tvix_virtiofsd::proto::castore::blob_service_client::BlobServiceClient;
use tvix_virtiofsd::proto::castore::directory_service_client::DirectoryServiceClient;
use tvix_virtiofsd::proto::castore::{
    get_directory_request, node, Directory, DirectoryNode, GetDirectoryRequest, ReadBlobRequest,
    StatBlobRequest,
};
use tvix_virtiofsd::proto::store::path_info_service_client::PathInfoServiceClient;
use tvix_virtiofsd::proto::store::{
    get_path_info_request, nar_info, GetPathInfoRequest, ListPathInfoRequest, PathInfo,
};
use tvix_virtiofsd::store::protocol::PackagePrefix;
use tvix_virtiofsd::store::{
    nixbase32, B3Digest, StoreAddress, StoreClient, StoreConfig, StoreProtocol, TlsSettings,
};

type Transport = PackagePrefix<Channel>;

const BIG: usize = 3 << 20;
const SMALL: usize = 10 << 10;
/// The longest symlink target the host accepts (PATH_MAX 4096 with the NUL).
const LONG_TARGET: usize = 4095;

/// Raw generated clients, no validation in between.
struct Wire {
    blobs: BlobServiceClient<Transport>,
    dirs: DirectoryServiceClient<Transport>,
    infos: PathInfoServiceClient<Transport>,
}

fn protocol(kind: StoreKind) -> StoreProtocol {
    match kind {
        StoreKind::Tvix => StoreProtocol::Tvix,
        StoreKind::Snix => StoreProtocol::Snix,
    }
}

fn address(socket: &Path) -> StoreAddress {
    format!("grpc+unix://{}", socket.display()).parse().unwrap()
}

impl Wire {
    fn new(socket: &Path, kind: StoreKind) -> Self {
        let channel = address(socket)
            .channel(Duration::from_secs(10), &TlsSettings::default())
            .unwrap();
        let t = PackagePrefix::new(channel, protocol(kind));
        Self {
            blobs: BlobServiceClient::new(t.clone()).max_decoding_message_size(64 << 20),
            dirs: DirectoryServiceClient::new(t.clone()).max_decoding_message_size(64 << 20),
            infos: PathInfoServiceClient::new(t).max_decoding_message_size(64 << 20),
        }
    }

    async fn path_info(&mut self, hash: [u8; 20]) -> Result<PathInfo, tonic::Status> {
        let req = GetPathInfoRequest {
            by_what: Some(get_path_info_request::ByWhat::ByOutputHash(
                Bytes::copy_from_slice(&hash),
            )),
        };
        self.infos.get(req).await.map(|r| r.into_inner())
    }

    async fn list(&mut self) -> Vec<PathInfo> {
        let mut s = self
            .infos
            .list(ListPathInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(p) = s.message().await.unwrap() {
            out.push(p);
        }
        out
    }

    /// Every Directory a Get streams, or the status it failed with (at the
    /// call or mid-stream), with how many came before the failure.
    async fn directories(
        &mut self,
        digest: &[u8],
        recursive: bool,
    ) -> (Vec<Directory>, Option<tonic::Status>) {
        let req = GetDirectoryRequest {
            by_what: Some(get_directory_request::ByWhat::Digest(
                Bytes::copy_from_slice(digest),
            )),
            recursive,
        };
        let mut s = match self.dirs.get(req).await {
            Ok(r) => r.into_inner(),
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut out = Vec::new();
        loop {
            match s.message().await {
                Ok(Some(d)) => out.push(d),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    async fn stat(&mut self, digest: &[u8]) -> Result<Vec<(Bytes, u64)>, tonic::Status> {
        let req = StatBlobRequest {
            digest: Bytes::copy_from_slice(digest),
            send_chunks: true,
            send_bao: false,
        };
        let r = self.blobs.stat(req).await?.into_inner();
        Ok(r.chunks.into_iter().map(|c| (c.digest, c.size)).collect())
    }

    /// The messages of a Read (their data), or the status it failed with.
    async fn read(&mut self, digest: &[u8]) -> Result<Vec<Bytes>, tonic::Status> {
        let req = ReadBlobRequest {
            digest: Bytes::copy_from_slice(digest),
        };
        let mut s = self.blobs.read(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(c) = s.message().await? {
            out.push(c.data);
        }
        Ok(out)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- hashing

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

/// Nix's fixed-output store path hash of a NAR-hashed import without
/// references: sha256 of `source:sha256:<hex>:/nix/store:<name>`, folded
/// to 20 bytes by XOR (byte i goes to i % 20).
fn source_path_hash(nar_sha256: &[u8], name: &str) -> [u8; 20] {
    let fingerprint = format!("source:sha256:{}:/nix/store:{name}", hex(nar_sha256));
    let full = sha256(fingerprint.as_bytes());
    let mut out = [0u8; 20];
    for (i, b) in full.iter().enumerate() {
        out[i % 20] ^= b;
    }
    out
}

// ---------------------------------------------------------------- trees

/// Deterministic incompressible bytes (xorshift), so content-defined
/// chunking has something to cut.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The audit's import root: each top-level entry becomes one store path.
///  - `tree/`: `a/` and `b/` identical (the same Directory twice), each
///    holding `x/f`; `nested/d1/d2/d3/leaf`; `big` (3 MiB), `small`
///    (10 KiB), `empty`, `emptydir/`, `exe` (0755), `link` (4095-byte
///    target)
///  - `hello`: a regular file "hello\n"
///  - `lonely`: an empty directory
fn audit_tree() -> PathBuf {
    static TREE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TREE.get_or_init(build_audit_tree).clone()
}

fn build_audit_tree() -> PathBuf {
    let root = scratch("wire-tree");
    let t = root.join("tree");
    for side in ["a", "b"] {
        std::fs::create_dir_all(t.join(side).join("x")).unwrap();
        std::fs::write(t.join(side).join("x/f"), b"same\n").unwrap();
    }
    std::fs::create_dir_all(t.join("nested/d1/d2/d3")).unwrap();
    std::fs::write(t.join("nested/d1/d2/d3/leaf"), b"leaf\n").unwrap();
    std::fs::write(t.join("nested/d1/one"), b"1").unwrap();
    std::fs::write(t.join("big"), noise(BIG, 0x9e37_79b9_7f4a_7c15)).unwrap();
    std::fs::write(t.join("small"), noise(SMALL, 42)).unwrap();
    std::fs::write(t.join("empty"), b"").unwrap();
    std::fs::create_dir(t.join("emptydir")).unwrap();
    std::fs::write(t.join("exe"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(t.join("exe"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = "t".repeat(LONG_TARGET);
    std::os::unix::fs::symlink(&target, t.join("link")).unwrap();
    std::fs::write(root.join("hello"), b"hello\n").unwrap();
    std::fs::create_dir(root.join("lonely")).unwrap();
    root
}

fn dir_node<'a>(d: &'a Directory, name: &str) -> &'a DirectoryNode {
    d.directories
        .iter()
        .find(|n| n.name == name.as_bytes())
        .unwrap_or_else(|| panic!("no directory {name} in {d:?}"))
}

fn file_node<'a>(d: &'a Directory, name: &str) -> &'a tvix_virtiofsd::proto::castore::FileNode {
    d.files
        .iter()
        .find(|n| n.name == name.as_bytes())
        .unwrap_or_else(|| panic!("no file {name}"))
}

/// The proto's own size of a Directory: its entries plus the sizes its
/// DirectoryNodes announce.
fn own_size(d: &Directory) -> u64 {
    (d.directories.len() + d.files.len() + d.symlinks.len()) as u64
        + d.directories.iter().map(|n| n.size).sum::<u64>()
}

fn digest_of(d: &Directory) -> [u8; 32] {
    use prost::Message;
    *B3Digest::of(&d.encode_to_vec()).as_bytes()
}

fn path_hash(basename: &str) -> [u8; 20] {
    nixbase32::decode::<20>(&basename.as_bytes()[..32]).unwrap()
}

/// A real store holding the audit tree, with raw clients on it, or `None`
/// (after the loud skip message) without the binary.
fn audited(kind: StoreKind, test: &str) -> Option<(RealStore, PathBuf)> {
    let root = audit_tree();
    RealStore::with_trees(kind, test, &[&root]).map(|s| (s, root))
}

fn name_of(info: &PathInfo) -> Vec<u8> {
    match info.node.as_ref().and_then(|n| n.node.as_ref()) {
        Some(node::Node::Directory(n)) => n.name.to_vec(),
        Some(node::Node::File(n)) => n.name.to_vec(),
        Some(node::Node::Symlink(n)) => n.name.to_vec(),
        None => panic!("path info without a node: {info:?}"),
    }
}

/// The DirectoryNode of the imported `tree` store path.
async fn tree_root(w: &mut Wire, store: &RealStore, root: &Path) -> DirectoryNode {
    let base = store.store_path_of(&root.join("tree"));
    let info = w.path_info(path_hash(&base)).await.unwrap();
    match info.node.and_then(|n| n.node) {
        Some(node::Node::Directory(d)) => d,
        other => panic!("tree is not a directory: {other:?}"),
    }
}

// ---------------------------------------------------------------- PathInfo

/// PathInfo of an `import`: the node is named by the store path basename;
/// the NARInfo is always there, with the NAR's size and sha256 exactly as
/// Nix would serialise the host tree, no references, signatures or deriver,
/// and `ca` = NAR_SHA256 of that same hash; the store path hash is Nix's
/// fixed-output "source" path of the NAR sha256.
fn path_info_of_an_import(kind: StoreKind, test: &str) {
    let Some((store, root)) = audited(kind, test) else {
        return;
    };
    runtime().block_on(async {
        let mut w = Wire::new(&store.socket, kind);
        assert_eq!(store.store_paths().len(), 3);
        for (source, base) in store.store_paths() {
            let info = w.path_info(path_hash(base)).await.unwrap();
            assert_eq!(name_of(&info), base.as_bytes(), "node name = basename");
            assert!(info.references.is_empty(), "{base}: references");
            let narinfo = info.narinfo.as_ref().expect("import writes a NARInfo");
            let nar = nar(source);
            assert_eq!(narinfo.nar_size, nar.len() as u64, "{base}: nar_size");
            assert_eq!(narinfo.nar_sha256[..], sha256(&nar), "{base}: nar_sha256");
            assert!(narinfo.signatures.is_empty(), "{base}: signatures");
            assert!(
                narinfo.reference_names.is_empty(),
                "{base}: reference_names"
            );
            assert_eq!(narinfo.deriver, None, "{base}: deriver");
            let ca = narinfo.ca.as_ref().expect("import writes a ca");
            assert_eq!(
                ca.r#type(),
                nar_info::ca::Hash::NarSha256,
                "{base}: ca type"
            );
            assert_eq!(ca.digest, narinfo.nar_sha256, "{base}: ca digest");
            let name = source.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                base,
                &format!(
                    "{}-{name}",
                    nixbase32::encode(&source_path_hash(&narinfo.nar_sha256, name))
                ),
                "store path = fixed-output source path of the NAR sha256"
            );
        }
        // The single-file path: a NAR of "hello\n" is 120 bytes.
        let hello = store.store_path_of(&root.join("hello"));
        let info = w.path_info(path_hash(&hello)).await.unwrap();
        assert_eq!(info.narinfo.unwrap().nar_size, 120);

        // Unknown hash: NOT_FOUND.
        let err = w.path_info([0; 20]).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");

        // The library client agrees.
        let client = store_client(&store.socket, kind);
        let found = client
            .path_info(path_hash(&hello), hello.as_bytes())
            .await
            .unwrap()
            .expect("the library finds the imported path");
        assert_eq!(found.entry.name, hello.as_bytes());
        let facts = found.nar.expect("the library keeps the NAR facts");
        assert_eq!(facts.size, 120);
        assert_eq!(facts.sha256, sha256(&nar(&root.join("hello"))));
    });
}

fn store_client(socket: &Path, kind: StoreKind) -> StoreClient {
    StoreClient::new(
        &StoreConfig {
            blob_service: address(socket),
            directory_service: address(socket),
            path_info_service: address(socket),
            protocol: protocol(kind),
            timeout: Duration::from_secs(10),
            min_rate: 1 << 20,
            tls: TlsSettings::default(),
        },
        &tvix_virtiofsd::store::observed::Unobserved,
    )
    .unwrap()
}

#[test]
fn tvix_path_info_of_an_import() {
    path_info_of_an_import(StoreKind::Tvix, "tvix_path_info_of_an_import");
}

#[test]
fn snix_path_info_of_an_import() {
    path_info_of_an_import(StoreKind::Snix, "snix_path_info_of_an_import");
}

// ---------------------------------------------------------------- List

/// List streams every path info once, in the order of the raw 20-byte
/// output hash (the redb key), which is not the order of the basenames
/// (nixbase32 writes the hash's last bits first).
fn list_streams_every_path(kind: StoreKind, test: &str) {
    let Some((mut store, _)) = audited(kind, test) else {
        return;
    };
    // A dozen more paths through the running daemon, so that the order is
    // not a coincidence of three.
    let more = scratch("wire-more");
    for i in 0..12 {
        let f = more.join(format!("more-{i}"));
        std::fs::write(&f, format!("{i}\n")).unwrap();
        store.import(&f);
    }
    assert_eq!(store.store_paths().len(), 15);
    runtime().block_on(async {
        let mut w = Wire::new(&store.socket, kind);
        let listed: Vec<Vec<u8>> = w.list().await.iter().map(name_of).collect();
        let mut expected: Vec<Vec<u8>> = store
            .store_paths()
            .values()
            .map(|b| b.as_bytes().to_vec())
            .collect();
        assert_eq!(listed.len(), expected.len(), "one message per path");
        let mut by_hash = expected.clone();
        by_hash.sort_by_key(|b| path_hash(std::str::from_utf8(b).unwrap()));
        assert_eq!(listed, by_hash, "listed in raw hash order");
        expected.sort();
        assert_ne!(listed, expected, "not in basename order (for these paths)");
    });
}

#[test]
fn tvix_list_streams_every_path() {
    list_streams_every_path(StoreKind::Tvix, "tvix_list_streams_every_path");
}

#[test]
fn snix_list_streams_every_path() {
    list_streams_every_path(StoreKind::Snix, "snix_list_streams_every_path");
}

// ---------------------------------------------------------------- Directory

/// Directory Get: unknown digest is NOT_FOUND non-recursively but an empty,
/// successful stream recursively; a recursive Get streams root first, then
/// breadth-first, each Directory once (a and b are the same Directory, and
/// both hold the same x: each is sent once); DirectoryNode.size is
/// 2 × entries + the children's announced sizes.
fn directory_get(kind: StoreKind, test: &str) {
    let Some((store, root)) = audited(kind, test) else {
        return;
    };
    runtime().block_on(async {
        let mut w = Wire::new(&store.socket, kind);
        let (got, err) = w.directories(&[7; 32], false).await;
        assert!(got.is_empty());
        assert_eq!(err.map(|e| e.code()), Some(Code::NotFound));
        let (got, err) = w.directories(&[7; 32], true).await;
        assert!(got.is_empty(), "recursive Get of an unknown digest");
        assert!(err.is_none(), "recursive Get of an unknown digest: {err:?}");

        let top = tree_root(&mut w, &store, &root).await;
        let (dirs, err) = w.directories(&top.digest, true).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(digest_of(&dirs[0])[..], top.digest[..], "root first");

        // Breadth-first with duplicates left out: the order of first
        // discovery, level by level, children in name order.
        let mut expected: Vec<[u8; 32]> = vec![top.digest[..].try_into().unwrap()];
        let mut i = 0;
        while i < expected.len() {
            let d = dirs
                .iter()
                .find(|d| digest_of(d) == expected[i])
                .expect("every Directory below the root is sent");
            for n in &d.directories {
                let digest: [u8; 32] = n.digest[..].try_into().unwrap();
                if !expected.contains(&digest) {
                    expected.push(digest);
                }
            }
            i += 1;
        }
        let sent: Vec<[u8; 32]> = dirs.iter().map(digest_of).collect();
        assert_eq!(sent, expected, "BFS order, each Directory once");
        // root, a (= b), emptydir, nested, x, d1, d2, d3
        assert_eq!(sent.len(), 8);
        let r = &dirs[0];
        assert_eq!(dir_node(r, "a").digest, dir_node(r, "b").digest);

        // Sizes: every DirectoryNode announces 2 × entries + the sizes its
        // own DirectoryNodes announce; the proto's definition (entries +
        // children) is a lower bound of that.
        for d in &dirs {
            for n in &d.directories {
                let child = dirs
                    .iter()
                    .find(|c| digest_of(c)[..] == n.digest[..])
                    .unwrap();
                let entries =
                    (child.directories.len() + child.files.len() + child.symlinks.len()) as u64;
                let below: u64 = child.directories.iter().map(|c| c.size).sum();
                assert_eq!(n.size, 2 * entries + below, "size of {:?}", n.name);
                assert!(n.size >= own_size(child));
            }
        }
        assert_eq!(
            top.size, 36,
            "9 entries × 2 + a 4 + b 4 + emptydir 0 + nested 10"
        );
        assert_eq!(own_size(r), 27, "what the proto's definition gives");
        assert_eq!(dir_node(r, "nested").size, 10);
        assert_eq!(dir_node(r, "emptydir").size, 0);

        // Non-recursive Get: exactly one Directory.
        let (one, err) = w.directories(&top.digest, false).await;
        assert!(err.is_none());
        assert_eq!(one, vec![dirs[0].clone()]);

        // The library's validation accepts all of it.
        let client = store_client(&store.socket, kind);
        let digest = B3Digest::of(&{
            use prost::Message;
            dirs[0].encode_to_vec()
        });
        let validated = client
            .directories(&digest, Some(top.size), 100)
            .await
            .unwrap();
        assert_eq!(validated.len(), 8);
        // and takes the empty stream for an unknown digest as not found.
        let unknown = B3Digest::from([7; 32]);
        let err = client.directories(&unknown, None, 100).await.unwrap_err();
        assert!(
            matches!(
                err,
                tvix_virtiofsd::store::StoreError::DirectoryNotFound { .. }
            ),
            "{err}"
        );
    });
}

#[test]
fn tvix_directory_get() {
    directory_get(StoreKind::Tvix, "tvix_directory_get");
}

#[test]
fn snix_directory_get() {
    directory_get(StoreKind::Snix, "snix_directory_get");
}

// ---------------------------------------------------------------- Blobs

/// BlobService on the objectstore backend: unknown digests are NOT_FOUND
/// for Stat and Read; a 3 MiB blob is listed as FastCDC chunks of
/// 128–512 KiB that add up to it, each readable on its own and hashing to
/// its digest; blobs under the minimum chunk size answer with an empty
/// list; Read sends messages of at most 4 KiB; the empty blob is always
/// there (Stat answers, with no chunks) and reads as an empty stream.
fn blobs_on_objectstore(kind: StoreKind, test: &str) {
    let Some((store, root)) = audited(kind, test) else {
        return;
    };
    runtime().block_on(async {
        let mut w = Wire::new(&store.socket, kind);
        assert_eq!(w.stat(&[7; 32]).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(w.read(&[7; 32]).await.unwrap_err().code(), Code::NotFound);

        let top = tree_root(&mut w, &store, &root).await;
        let (dirs, _) = w.directories(&top.digest, false).await;
        let r = &dirs[0];
        let host = root.join("tree");

        let big = file_node(r, "big");
        assert_eq!(big.size, BIG as u64);
        let chunks = w.stat(&big.digest).await.unwrap();
        assert!(chunks.len() > 1, "a 3 MiB blob is chunked");
        assert_eq!(chunks.iter().map(|c| c.1).sum::<u64>(), BIG as u64);
        let mut joined = Vec::new();
        for (i, (digest, size)) in chunks.iter().enumerate() {
            if i + 1 < chunks.len() {
                assert!((128 << 10..=512 << 10).contains(size), "chunk {i}: {size}");
            } else {
                assert!(*size <= 512 << 10, "last chunk: {size}");
            }
            let msgs = w.read(digest).await.unwrap();
            assert!(msgs.iter().all(|m| m.len() <= 4096), "chunk {i} messages");
            let data = msgs.concat();
            assert_eq!(data.len() as u64, *size);
            assert_eq!(B3Digest::of(&data).as_bytes()[..], digest[..], "chunk {i}");
            // A chunk is a blob with no finer chunking.
            assert_eq!(w.stat(digest).await.unwrap(), vec![]);
            joined.extend_from_slice(&data);
        }
        assert_eq!(joined, std::fs::read(host.join("big")).unwrap());

        // The whole blob reads too, in messages of at most 4 KiB (and often
        // fewer bytes: messages do not span chunks).
        let msgs = w.read(&big.digest).await.unwrap();
        assert_eq!(msgs.iter().map(|m| m.len()).max(), Some(4096));
        assert!(msgs.len() > BIG / 4096, "{} messages", msgs.len());
        assert_eq!(msgs.concat(), joined);

        // The library's chunk list is the same.
        let client = store_client(&store.socket, kind);
        let digest = B3Digest::try_from(&big.digest[..]).unwrap();
        let lib = client.blob_chunks(&digest, big.size).await.unwrap();
        assert_eq!(lib.len(), chunks.len());
        assert_eq!(
            lib.iter().map(|c| c.size).collect::<Vec<_>>(),
            chunks.iter().map(|c| c.1).collect::<Vec<_>>()
        );

        let small = file_node(r, "small");
        assert_eq!(
            w.stat(&small.digest).await.unwrap(),
            vec![],
            "small: no chunks"
        );
        let msgs = w.read(&small.digest).await.unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.len()).collect::<Vec<_>>(),
            vec![4096, 4096, 2048]
        );

        // The empty blob.
        let empty = file_node(r, "empty");
        assert_eq!(empty.size, 0);
        assert_eq!(empty.digest[..], B3Digest::of(b"").as_bytes()[..]);
        assert_eq!(w.stat(&empty.digest).await.unwrap(), vec![]);
        assert_eq!(w.read(&empty.digest).await.unwrap(), Vec::<Bytes>::new());
    });
}

#[test]
fn tvix_blobs_on_objectstore() {
    blobs_on_objectstore(StoreKind::Tvix, "tvix_blobs_on_objectstore");
}

#[test]
fn snix_blobs_on_objectstore() {
    blobs_on_objectstore(StoreKind::Snix, "snix_blobs_on_objectstore");
}

/// A store daemon on memory:// backends for all three services, started
/// here (the shared helper only serves on-disk backends).
struct MemoryStore {
    bin: PathBuf,
    child: Child,
    socket: PathBuf,
}

impl MemoryStore {
    fn start(kind: StoreKind, test: &str) -> Option<Self> {
        let bin = kind.require(test)?;
        let dir = scratch("memory-store");
        let socket = dir.join("grpc.sock");
        let mut child = Command::new(&bin)
            .args(["--otlp=false", "daemon", "--listen-address"])
            .arg(&socket)
            .args([
                "--blob-service-addr",
                "memory://",
                "--directory-service-addr",
                "memory://",
                "--path-info-service-addr",
                "memory://",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "memory store exited");
            assert!(Instant::now() < deadline, "memory store did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self { bin, child, socket })
    }

    /// `import` through the daemon; the store path basename it printed.
    fn import(&self, path: &Path) -> String {
        let a = format!("grpc+unix://{}", self.socket.display());
        let out = Command::new(&self.bin)
            .args(["--otlp=false", "import", "--blob-service-addr", &a])
            .args([
                "--directory-service-addr",
                &a,
                "--path-info-service-addr",
                &a,
            ])
            .arg(path)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "import {}", path.display());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("/nix/store/"))
            .unwrap();
        line.trim_start_matches("/nix/store/").trim().to_string()
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// memory:// keeps blobs whole: Stat(send_chunks) of the 3 MiB blob is an
/// empty list, and Read streams it in messages of exactly 4 KiB. The empty
/// blob is not special: a fresh store answers NOT_FOUND for it (Stat and
/// Read) until an import of an empty file puts it, then Stat answers with
/// no chunks and Read with an empty stream. The store path is the same as
/// with the on-disk backends.
fn memory_backend_keeps_blobs_whole(kind: StoreKind, test: &str) {
    let Some(store) = MemoryStore::start(kind, test) else {
        return;
    };
    let rt = runtime();
    let empty = B3Digest::of(b"");
    rt.block_on(async {
        let mut w = Wire::new(&store.socket, kind);
        let stat = w.stat(empty.as_bytes()).await;
        assert_eq!(
            stat.unwrap_err().code(),
            Code::NotFound,
            "empty blob, fresh store"
        );
        let read = w.read(empty.as_bytes()).await;
        assert_eq!(
            read.unwrap_err().code(),
            Code::NotFound,
            "empty blob, fresh store"
        );
        assert_eq!(w.stat(&[7; 32]).await.unwrap_err().code(), Code::NotFound);
    });
    let root = audit_tree();
    let base = store.import(&root.join("tree"));
    rt.block_on(async {
        let mut w = Wire::new(&store.socket, kind);
        let info = w.path_info(path_hash(&base)).await.unwrap();
        let Some(node::Node::Directory(top)) = info.node.and_then(|n| n.node) else {
            panic!("tree is a directory");
        };
        let (dirs, _) = w.directories(&top.digest, false).await;
        let big = file_node(&dirs[0], "big");
        assert_eq!(
            w.stat(&big.digest).await.unwrap(),
            vec![],
            "memory:// does not chunk"
        );
        let msgs = w.read(&big.digest).await.unwrap();
        assert_eq!(msgs.len(), BIG / 4096);
        assert!(msgs.iter().all(|m| m.len() == 4096));
        assert_eq!(msgs.concat(), std::fs::read(root.join("tree/big")).unwrap());
        assert_eq!(
            w.stat(empty.as_bytes()).await.unwrap(),
            vec![],
            "empty blob, imported"
        );
        assert_eq!(w.read(empty.as_bytes()).await.unwrap(), Vec::<Bytes>::new());
    });
    let mut on_disk = audited(kind, test).expect("the binary is there").0;
    assert_eq!(base, on_disk.store_path_of(&root.join("tree")));
    on_disk.stop();
}

#[test]
fn tvix_memory_backend_keeps_blobs_whole() {
    memory_backend_keeps_blobs_whole(StoreKind::Tvix, "tvix_memory_backend_keeps_blobs_whole");
}

#[test]
fn snix_memory_backend_keeps_blobs_whole() {
    memory_backend_keeps_blobs_whole(StoreKind::Snix, "snix_memory_backend_keeps_blobs_whole");
}

// ---------------------------------------------------------------- nodes

/// The nodes `import` writes: an empty file is a FileNode of size 0 with
/// the empty blob's digest and executable false; an empty directory a
/// DirectoryNode of size 0 with the empty Directory's digest (also the
/// empty blob's: both are blake3 of no bytes); a 0755 file has
/// executable = true; a symlink with a 4095-byte target (the most the
/// host's symlink(2) takes: PATH_MAX 4096 with the NUL) round-trips byte
/// for byte. Longer targets cannot be made on the host, and the stores
/// refuse them too: a Directory Put with a 4096-byte or 10 KiB target
/// fails, 4095 is the longest they take.
fn nodes_of_an_import(kind: StoreKind, test: &str) {
    let Some((store, root)) = audited(kind, test) else {
        return;
    };
    let host = root.join("tree");
    let too_long = scratch("long-symlink").join("link");
    let err = std::os::unix::fs::symlink("t".repeat(10 << 10), &too_long).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    let err = std::os::unix::fs::symlink("t".repeat(4096), &too_long).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");

    runtime().block_on(async {
        let mut w = Wire::new(&store.socket, kind);
        let top = tree_root(&mut w, &store, &root).await;
        let (dirs, _) = w.directories(&top.digest, true).await;
        let r = &dirs[0];
        let empty_digest = B3Digest::of(b"");

        let empty = file_node(r, "empty");
        assert_eq!((empty.size, empty.executable), (0, false));
        assert_eq!(empty.digest[..], empty_digest.as_bytes()[..]);

        let emptydir = dir_node(r, "emptydir");
        assert_eq!(emptydir.size, 0);
        assert_eq!(emptydir.digest[..], digest_of(&Directory::default()));
        assert_eq!(emptydir.digest[..], empty_digest.as_bytes()[..]);
        let (got, err) = w.directories(&emptydir.digest, false).await;
        assert!(err.is_none());
        assert_eq!(
            got,
            vec![Directory::default()],
            "the empty Directory is stored"
        );

        let exe = file_node(r, "exe");
        assert!(exe.executable);
        assert_eq!(exe.size, std::fs::metadata(host.join("exe")).unwrap().len());
        assert!(!file_node(r, "small").executable);

        assert_eq!(r.symlinks.len(), 1);
        let link = &r.symlinks[0];
        assert_eq!(link.name, "link".as_bytes());
        assert_eq!(link.target.len(), LONG_TARGET);
        let host_target = std::fs::read_link(host.join("link")).unwrap();
        assert_eq!(link.target[..], *host_target.as_os_str().as_encoded_bytes());

        // Entries are sorted by name within each list.
        for d in &dirs {
            assert!(d.directories.windows(2).all(|p| p[0].name < p[1].name));
            assert!(d.files.windows(2).all(|p| p[0].name < p[1].name));
        }

        // A top-level empty directory is a store path of its own.
        let lonely = store.store_path_of(&root.join("lonely"));
        let info = w.path_info(path_hash(&lonely)).await.unwrap();
        match info.node.and_then(|n| n.node) {
            Some(node::Node::Directory(d)) => {
                assert_eq!(d.size, 0);
                assert_eq!(d.digest[..], empty_digest.as_bytes()[..]);
            }
            other => panic!("lonely: {other:?}"),
        }
        // A top-level file: a FileNode named by the basename.
        let hello = store.store_path_of(&root.join("hello"));
        let info = w.path_info(path_hash(&hello)).await.unwrap();
        match info.node.and_then(|n| n.node) {
            Some(node::Node::File(f)) => {
                assert_eq!((f.size, f.executable), (6, false));
                assert_eq!(f.digest[..], B3Digest::of(b"hello\n").as_bytes()[..]);
            }
            other => panic!("hello: {other:?}"),
        }

        // Put straight into the DirectoryService: the stores take targets
        // up to 4095 bytes and refuse 4096 and more (10 KiB too) with
        // INTERNAL, "Invalid symlink target"; nothing is stored then.
        for (len, accepted) in [(4095usize, true), (4096, false), (10 << 10, false)] {
            let d = Directory {
                symlinks: vec![tvix_virtiofsd::proto::castore::SymlinkNode {
                    name: Bytes::from_static(b"long"),
                    target: Bytes::from("t".repeat(len)),
                }],
                ..Default::default()
            };
            let put = w.dirs.put(tokio_stream::iter(vec![d.clone()])).await;
            let (got, err) = w.directories(&digest_of(&d), false).await;
            if accepted {
                let root_digest = put.unwrap().into_inner().root_digest;
                assert_eq!(root_digest[..], digest_of(&d), "target of {len}");
                assert_eq!(got, vec![d], "target of {len} sent back as is");
            } else {
                let e = put.unwrap_err();
                assert_eq!(e.code(), Code::Internal, "target of {len}: {e:?}");
                assert!(e.message().contains("Invalid symlink target"), "{len}");
                assert_eq!(err.map(|e| e.code()), Some(Code::NotFound), "{len}");
            }
        }
    });
}

#[test]
fn tvix_nodes_of_an_import() {
    nodes_of_an_import(StoreKind::Tvix, "tvix_nodes_of_an_import");
}

#[test]
fn snix_nodes_of_an_import() {
    nodes_of_an_import(StoreKind::Snix, "snix_nodes_of_an_import");
}
