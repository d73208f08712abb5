//! Writes the seed corpus (`fuzz/corpus/<target>/`): what a real store
//! answered for the store paths given, in the forms the daemon meets them
//! (from the store and from the disk cache), and FUSE request sequences
//! over the FUSE target's fixture. See docs/fuzzing.md for how to run it.
//!
//! Usage: seeds CORPUS_DIR grpc+unix:///path/to/store.sock BASENAME...

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use fuse_backend_rs::abi::fuse_abi::Opcode;
use prost::Message;
use tvix_virtiofsd::cache::encode_chunk_list;
use tvix_virtiofsd::proto::castore::blob_service_client::BlobServiceClient;
use tvix_virtiofsd::proto::castore::directory_service_client::DirectoryServiceClient;
use tvix_virtiofsd::proto::castore::{
    self, get_directory_request, GetDirectoryRequest, StatBlobRequest,
};
use tvix_virtiofsd::proto::store::path_info_service_client::PathInfoServiceClient;
use tvix_virtiofsd::proto::store::{
    get_path_info_request, GetPathInfoRequest, ListPathInfoRequest,
};
use tvix_virtiofsd::store::chunk_list::validate_chunk_list;
use tvix_virtiofsd::store::{store_path, B3Digest, StoreAddress, TlsSettings};
use tvix_virtiofsd_fuzz::fixture::{store_path_names, SUB_ENTRIES, TREE_ENTRIES};
use tvix_virtiofsd_fuzz::guest::frame;
use tvix_virtiofsd_fuzz::requests::Requests;

/// Writes one seed, named by the BLAKE3 of its content (as libFuzzer names
/// its own by SHA-1: a name that says nothing but never collides).
fn write_seed(corpus: &Path, target: &str, data: &[u8]) -> anyhow::Result<()> {
    let dir = corpus.join(target);
    std::fs::create_dir_all(&dir)?;
    let name = B3Digest::of(data).to_string();
    std::fs::write(dir.join(&name[..16]), data)?;
    Ok(())
}

struct Store {
    path_infos: PathInfoServiceClient<tonic::transport::Channel>,
    directories: DirectoryServiceClient<tonic::transport::Channel>,
    blobs: BlobServiceClient<tonic::transport::Channel>,
}

/// The file nodes of a tree, to ask the store for their chunk lists.
fn files_of(directory: &castore::Directory, out: &mut Vec<castore::FileNode>) {
    out.extend(directory.files.iter().cloned());
}

async fn store_seeds(corpus: &Path, address: &str, names: &[String]) -> anyhow::Result<()> {
    let address: StoreAddress = address.parse()?;
    let channel = address.channel(Duration::from_secs(10), &TlsSettings::default())?;
    let mut store = Store {
        path_infos: PathInfoServiceClient::new(channel.clone()),
        directories: DirectoryServiceClient::new(channel.clone()),
        blobs: BlobServiceClient::new(channel),
    };
    let mut files = Vec::new();
    let mut roots = Vec::new();
    for name in names {
        write_seed(corpus, "store_path", name.as_bytes())?;
        let hash = store_path::parse(name.as_bytes()).with_context(|| name.clone())?;
        let info = store
            .path_infos
            .get(GetPathInfoRequest {
                by_what: Some(get_path_info_request::ByWhat::ByOutputHash(
                    Bytes::copy_from_slice(&hash),
                )),
            })
            .await
            .with_context(|| format!("path info of {name}"))?
            .into_inner();
        write_seed(corpus, "path_info", &info.encode_to_vec())?;
        let node = info.node.context("path info without node")?;
        // The disk cache keeps the node alone.
        write_seed(corpus, "path_info", &node.encode_to_vec())?;
        match node.node {
            Some(castore::node::Node::Directory(d)) => roots.push(d.digest),
            Some(castore::node::Node::File(f)) => files.push(f),
            _ => {}
        }
    }
    let mut listed = store
        .path_infos
        .list(ListPathInfoRequest {})
        .await?
        .into_inner();
    while let Some(info) = listed.message().await? {
        write_seed(corpus, "path_info", &info.encode_to_vec())?;
    }
    for root in roots {
        let mut stream = store
            .directories
            .get(GetDirectoryRequest {
                by_what: Some(get_directory_request::ByWhat::Digest(root)),
                recursive: true,
            })
            .await?
            .into_inner();
        while let Some(directory) = stream.message().await? {
            write_seed(corpus, "directory", &directory.encode_to_vec())?;
            files_of(&directory, &mut files);
        }
    }
    let mut seen = BTreeSet::new();
    for file in files {
        if !seen.insert(file.digest.clone()) {
            continue;
        }
        let answer = store
            .blobs
            .stat(StatBlobRequest {
                digest: file.digest.clone(),
                send_chunks: true,
                send_bao: false,
            })
            .await?
            .into_inner();
        let mut seed = file.size.to_le_bytes().to_vec();
        seed.extend_from_slice(&answer.encode_to_vec());
        write_seed(corpus, "chunk_list", &seed)?;
        if let Ok(chunks) = validate_chunk_list(&answer.chunks, file.size) {
            if !chunks.is_empty() {
                let mut seed = file.size.to_le_bytes().to_vec();
                seed.extend_from_slice(&encode_chunk_list(&chunks));
                write_seed(corpus, "chunk_list", &seed)?;
            }
        }
    }
    Ok(())
}

fn address_seeds(corpus: &Path) -> anyhow::Result<()> {
    for address in [
        "grpc+unix:///run/tvix-store/grpc.sock",
        "grpc+http://127.0.0.1:8000",
        "grpc+http://[::1]:8000",
        "grpc+https://store.example:443",
        "grpc+http://store.example",
    ] {
        write_seed(corpus, "store_address", address.as_bytes())?;
    }
    Ok(())
}

/// A request sequence, each request over the virtqueue (shape: request in
/// one descriptor, a large reply in one) and over /dev/fuse.
fn fuse_seed(corpus: &Path, requests: &[Vec<u8>]) -> anyhow::Result<()> {
    for transport in [0u8, 0x80] {
        let shape = transport | 7 << 2;
        let seed: Vec<u8> = requests.iter().flat_map(|r| frame(shape, r)).collect();
        write_seed(corpus, "fuse_server", &seed)?;
    }
    Ok(())
}

/// What a guest does first: INIT, look up each store path, walk and read.
/// Inodes are numbered from 2 in lookup order; handles from 1.
fn fuse_seeds(corpus: &Path) -> anyhow::Result<()> {
    let [tree, file, link, missing] = store_path_names();
    let mut r = Requests::default();

    // Look up and stat everything in the tree, list it, read the files.
    let mut walk = vec![r.init(), r.statfs(), r.lookup(1, &tree), r.getattr(2)];
    walk.push(r.open(Opcode::Opendir, 2));
    walk.push(r.read(Opcode::Readdirplus, 2, 1, 0, 4096));
    walk.push(r.read(Opcode::Readdir, 2, 1, 3, 4096));
    walk.push(r.release(Opcode::Releasedir, 2, 1));
    for (i, name) in TREE_ENTRIES.iter().enumerate() {
        walk.push(r.lookup(2, name));
        walk.push(r.getattr(3 + i as u64));
    }
    let mut handle = 2;
    for (i, name) in TREE_ENTRIES.iter().enumerate() {
        let node = 3 + i as u64;
        match *name {
            "abs" => walk.push(r.readlink(node)),
            "sub" => {}
            _ => {
                walk.push(r.open(Opcode::Open, node));
                walk.push(r.read(Opcode::Read, node, handle, 0, 128 << 10));
                walk.push(r.read(Opcode::Read, node, handle, 131_000, 4096));
                walk.push(r.flush(node, handle));
                walk.push(r.release(Opcode::Release, node, handle));
                handle += 1;
            }
        }
    }
    fuse_seed(corpus, &walk)?;

    // Into the subdirectory, through a symlink, forget and look up again.
    let sub = r.lookup(2, "sub");
    let mut deeper = vec![r.init(), r.lookup(1, &tree), sub];
    for name in SUB_ENTRIES {
        deeper.push(r.lookup(3, name));
    }
    deeper.push(r.readlink(5));
    deeper.push(r.getxattr(4, "user.x", 64));
    deeper.push(r.listxattr(4, 0));
    deeper.push(r.forget(3, 1));
    deeper.push(r.lookup(2, "sub"));
    deeper.push(r.open(Opcode::Opendir, 6));
    deeper.push(r.read(Opcode::Readdirplus, 6, 1, 0, 65536));
    fuse_seed(corpus, &deeper)?;

    // Store paths of each kind, one missing, names that are no store path.
    let mut roots = vec![r.init(), r.lookup(1, &file), r.lookup(1, &link)];
    roots.push(r.lookup(1, &missing));
    roots.push(r.lookup(1, "not-a-store-path"));
    roots.push(r.readlink(3));
    roots.push(r.open(Opcode::Open, 2));
    roots.push(r.read(Opcode::Read, 2, 1, 0, 4096));
    roots.push(r.open(Opcode::Opendir, 1));
    roots.push(r.read(Opcode::Readdir, 1, 2, 0, 4096));
    fuse_seed(corpus, &roots)?;

    // The large file read sequentially in the kernel's 128 KiB requests.
    let mut large = vec![r.init(), r.lookup(1, &tree), r.lookup(2, "large")];
    large.push(r.open(Opcode::Open, 3));
    for i in 0..4u64 {
        large.push(r.read(Opcode::Read, 3, 1, i * (128 << 10), 128 << 10));
    }
    large.push(r.read(Opcode::Read, 3, 1, 4 << 20, 128 << 10));
    fuse_seed(corpus, &large)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [corpus, address, names @ ..] = args.as_slice() else {
        bail!("usage: seeds CORPUS_DIR STORE_ADDRESS BASENAME...");
    };
    let corpus = PathBuf::from(corpus);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(store_seeds(&corpus, address, names))?;
    address_seeds(&corpus)?;
    fuse_seeds(&corpus)
}
