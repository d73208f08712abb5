//! Turns a host directory into castore content: Directories, blobs and one
//! PathInfo per top-level entry.
//!
//! The import is deterministic (entries are visited in byte-wise name order
//! and store path hashes are derived from the content), so a restarted
//! fixture serves exactly the same store. Blob contents are never held in
//! memory: a blob remembers a byte range of a host file and is read from disk
//! when asked for, because tests use files of several GiB.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::nar;
use crate::proto::castore::{
    node, stat_blob_response::ChunkMeta, Directory, DirectoryNode, FileNode, Node, SymlinkNode,
};
use crate::proto::store::{nar_info, NarInfo, PathInfo};
use anyhow::{Context, Result};
use bytes::Bytes;
use prost::Message;
use tracing::{debug, warn};

/// A BLAKE3-256 digest.
pub type Digest = [u8; 32];

/// The 20-byte hash in a store path basename `<nixbase32 hash>-<name>`.
pub type StorePathHash = [u8; 20];

/// Where a blob's bytes live.
#[derive(Clone, Debug)]
pub enum BlobSource {
    /// A byte range of a host file (imported blobs and their chunks).
    File {
        path: Arc<Path>,
        offset: u64,
        len: u64,
    },
    /// In memory (blobs uploaded with BlobService.Put).
    Memory(Bytes),
}

impl BlobSource {
    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            BlobSource::File { len, .. } => *len,
            BlobSource::Memory(data) => data.len() as u64,
        }
    }
}

/// A blob the store can serve.
#[derive(Clone, Debug)]
pub struct Blob {
    pub source: BlobSource,
    /// The chunks Stat(send_chunks) answers with; empty when the blob is not
    /// chunked (no `--chunk-size`, or the blob fits in one chunk).
    pub chunks: Vec<ChunkMeta>,
}

/// What kind of node a manifest line describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
    Symlink,
}

/// One line of the `--manifest` file: every imported node, so tests can find
/// the digest of something to corrupt.
#[derive(Clone, Debug)]
pub struct ManifestEntry {
    pub kind: Kind,
    /// Directory or blob digest; `None` for symlinks.
    pub digest: Option<Digest>,
    /// DirectoryNode size, file size, or symlink target length.
    pub size: u64,
    /// Path relative to the imported directory, e.g. `pkg-a/bin/hello`.
    pub path: PathBuf,
}

impl ManifestEntry {
    /// `<kind>\t<hex digest or ->\t<size>\t<relative path>`.
    pub fn line(&self) -> String {
        let kind = match self.kind {
            Kind::Directory => "directory",
            Kind::File => "file",
            Kind::Symlink => "symlink",
        };
        let digest = self.digest.map_or_else(|| "-".to_string(), |d| hex(&d));
        format!(
            "{kind}\t{digest}\t{}\t{}",
            self.size,
            self.path.to_string_lossy()
        )
    }
}

/// Everything an import produced.
#[derive(Debug, Default)]
pub struct Imported {
    pub blobs: HashMap<Digest, Blob>,
    pub directories: HashMap<Digest, Directory>,
    /// Keyed by the store path hash; each node is named after its store path
    /// basename.
    pub path_infos: BTreeMap<StorePathHash, PathInfo>,
    pub manifest: Vec<ManifestEntry>,
}

/// Lower-case hex, for logs and the manifest.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// The digest of a Directory: BLAKE3 of its canonical protobuf encoding
/// (prost writes fields in number order and leaves default values out, which
/// is exactly the canonical form the protocol asks for).
pub fn directory_digest(directory: &Directory) -> Digest {
    blake3::hash(&directory.encode_to_vec()).into()
}

/// The size a DirectoryNode announces for `directory`, as the real importers
/// (tvix-store and snix-store `import`) write it: every entry counted twice,
/// plus the sizes of its child directories. The proto's own definition
/// counts each entry once; clients must accept any size at least that, so
/// a fixture that writes what real stores write tests what clients meet.
pub fn directory_size(directory: &Directory) -> u64 {
    let own =
        2 * (directory.directories.len() + directory.files.len() + directory.symlinks.len()) as u64;
    directory
        .directories
        .iter()
        .fold(own, |acc, d| acc.saturating_add(d.size))
}

/// The name of a node, whichever kind it is.
pub fn node_name(node: &node::Node) -> &Bytes {
    match node {
        node::Node::Directory(d) => &d.name,
        node::Node::File(f) => &f.name,
        node::Node::Symlink(s) => &s.name,
    }
}

/// One fixed-size piece of a chunked blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    pub digest: Digest,
    pub offset: u64,
    pub len: u64,
}

/// Hashes a blob and, with a chunk size, each fixed-size chunk of it, in one
/// streaming pass.
pub struct ChunkingHasher {
    chunk_size: Option<u64>,
    whole: blake3::Hasher,
    chunk: blake3::Hasher,
    len: u64,
    chunk_start: u64,
    chunks: Vec<ChunkSpan>,
}

impl ChunkingHasher {
    /// `chunk_size` must not be zero (the CLI rejects it); zero is treated
    /// as "no chunking".
    pub fn new(chunk_size: Option<u64>) -> Self {
        Self {
            chunk_size: chunk_size.filter(|&n| n > 0),
            whole: blake3::Hasher::new(),
            chunk: blake3::Hasher::new(),
            len: 0,
            chunk_start: 0,
            chunks: Vec::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        let Some(chunk_size) = self.chunk_size else {
            self.len += data.len() as u64;
            return;
        };
        while !data.is_empty() {
            let room = chunk_size - (self.len - self.chunk_start);
            let take = usize::try_from(room).map_or(data.len(), |room| room.min(data.len()));
            self.chunk.update(&data[..take]);
            self.len += take as u64;
            data = &data[take..];
            if self.len - self.chunk_start == chunk_size {
                self.finish_chunk();
            }
        }
    }

    fn finish_chunk(&mut self) {
        self.chunks.push(ChunkSpan {
            digest: self.chunk.finalize().into(),
            offset: self.chunk_start,
            len: self.len - self.chunk_start,
        });
        self.chunk.reset();
        self.chunk_start = self.len;
    }

    /// The blob's digest, its length, and its chunks: empty unless the blob
    /// is larger than one chunk.
    pub fn finalize(mut self) -> (Digest, u64, Vec<ChunkSpan>) {
        if self.chunk_size.is_some() && self.len > self.chunk_start {
            self.finish_chunk();
        }
        if self.chunks.len() <= 1 {
            self.chunks.clear();
        }
        (self.whole.finalize().into(), self.len, self.chunks)
    }
}

/// Imports every top-level entry of `dir` as a store path.
pub fn import(dir: &Path, chunk_size: Option<u64>) -> Result<Imported> {
    let mut importer = Importer {
        chunk_size,
        out: Imported::default(),
    };
    for entry in sorted_entries(dir)? {
        let name_os = entry.file_name();
        let Some(name) = name_os.to_str().map(str::to_owned) else {
            warn!(entry = ?entry.path(), "skipping top-level entry: name is not UTF-8, so it cannot be a store path name");
            continue;
        };
        let Some(node) = importer.import_entry(
            &entry.path(),
            Path::new(&name),
            Bytes::copy_from_slice(name.as_bytes()),
        )?
        else {
            continue;
        };
        let nar = nar::nar_hash(&entry.path())?;
        let (hash, basename) = nar::store_path_basename(&name, &nar.sha256);
        let renamed = rename(node, Bytes::from(basename.into_bytes()));
        importer.out.path_infos.insert(
            hash,
            PathInfo {
                node: Some(Node {
                    node: Some(renamed),
                }),
                references: Vec::new(),
                narinfo: Some(nar_info(&nar)),
            },
        );
    }
    Ok(importer.out)
}

/// The NARInfo real importers write for a path without references: the
/// NAR's size and SHA-256, and that same hash as its content address.
fn nar_info(nar: &nar::NarHash) -> NarInfo {
    let sha256 = Bytes::copy_from_slice(&nar.sha256);
    NarInfo {
        nar_size: nar.size,
        nar_sha256: sha256.clone(),
        ca: Some(nar_info::Ca {
            r#type: nar_info::ca::Hash::NarSha256.into(),
            digest: sha256,
        }),
        ..Default::default()
    }
}

/// `node` with its name replaced.
fn rename(node: node::Node, name: Bytes) -> node::Node {
    match node {
        node::Node::Directory(d) => node::Node::Directory(DirectoryNode { name, ..d }),
        node::Node::File(f) => node::Node::File(FileNode { name, ..f }),
        node::Node::Symlink(s) => node::Node::Symlink(SymlinkNode { name, ..s }),
    }
}

/// The entries of `dir`, sorted byte-wise by name (the castore order).
fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let mut entries = fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("reading directory {}", dir.display()))?;
    entries.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    Ok(entries)
}

struct Importer {
    chunk_size: Option<u64>,
    out: Imported,
}

impl Importer {
    /// Imports the node at host `path` (shown as `rel` in the manifest) under
    /// the name `name`. Returns `None` for file types castore cannot hold.
    fn import_entry(&mut self, path: &Path, rel: &Path, name: Bytes) -> Result<Option<node::Node>> {
        let meta =
            fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let file_type = meta.file_type();
        let (node, entry) = if file_type.is_dir() {
            let (digest, size) = self.import_dir(path, rel)?;
            (
                node::Node::Directory(DirectoryNode {
                    name,
                    digest: Bytes::copy_from_slice(&digest),
                    size,
                }),
                (Kind::Directory, Some(digest), size),
            )
        } else if file_type.is_file() {
            let (digest, size) = self.import_file(path)?;
            (
                node::Node::File(FileNode {
                    name,
                    digest: Bytes::copy_from_slice(&digest),
                    size,
                    executable: meta.permissions().mode() & 0o111 != 0,
                }),
                (Kind::File, Some(digest), size),
            )
        } else if file_type.is_symlink() {
            let target = fs::read_link(path)
                .with_context(|| format!("readlink {}", path.display()))?
                .into_os_string()
                .into_encoded_bytes();
            let size = target.len() as u64;
            (
                node::Node::Symlink(SymlinkNode {
                    name,
                    target: Bytes::from(target),
                }),
                (Kind::Symlink, None, size),
            )
        } else {
            warn!(path = %path.display(), "skipping: not a directory, regular file or symlink");
            return Ok(None);
        };
        let (kind, digest, size) = entry;
        self.out.manifest.push(ManifestEntry {
            kind,
            digest,
            size,
            path: rel.to_path_buf(),
        });
        Ok(Some(node))
    }

    /// Imports a directory tree bottom-up; returns its digest and size.
    fn import_dir(&mut self, path: &Path, rel: &Path) -> Result<(Digest, u64)> {
        let mut directory = Directory::default();
        for entry in sorted_entries(path)? {
            let name = entry.file_name();
            let node = self.import_entry(
                &entry.path(),
                &rel.join(&name),
                Bytes::copy_from_slice(name.as_bytes()),
            )?;
            // Entries arrive sorted, so each list stays sorted.
            match node {
                Some(node::Node::Directory(d)) => directory.directories.push(d),
                Some(node::Node::File(f)) => directory.files.push(f),
                Some(node::Node::Symlink(s)) => directory.symlinks.push(s),
                None => {}
            }
        }
        let digest = directory_digest(&directory);
        let size = directory_size(&directory);
        self.out.directories.insert(digest, directory);
        Ok((digest, size))
    }

    /// Hashes a file (and its chunks) and registers it as a blob that is
    /// read from `path` on demand; returns its digest and size.
    fn import_file(&mut self, path: &Path) -> Result<(Digest, u64)> {
        let mut hasher = ChunkingHasher::new(self.chunk_size);
        nar::read_in_pieces(path, |piece| hasher.update(piece))?;
        let (digest, len, spans) = hasher.finalize();
        debug!(path = %path.display(), digest = %hex(&digest), len, chunks = spans.len(), "imported file");

        let path: Arc<Path> = Arc::from(path);
        let chunks = spans
            .iter()
            .map(|span| ChunkMeta {
                digest: Bytes::copy_from_slice(&span.digest),
                size: span.len,
            })
            .collect();
        for span in spans {
            self.out.blobs.entry(span.digest).or_insert_with(|| Blob {
                source: BlobSource::File {
                    path: path.clone(),
                    offset: span.offset,
                    len: span.len,
                },
                chunks: Vec::new(),
            });
        }
        self.out.blobs.entry(digest).or_insert(Blob {
            source: BlobSource::File {
                path,
                offset: 0,
                len,
            },
            chunks,
        });
        Ok((digest, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tvix_virtiofsd::store::nixbase32;

    const EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    const WITH_KEEP: &str = "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e";
    const COMPLICATED: &str = "3f951a15afd586fb3121ef4d13d582e811ce0e5a7f21c0497fd87490e9e2355a";

    /// Builds the protocol doc's three test Directories on disk.
    fn test_vector_tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("empty")).unwrap();
        fs::create_dir(root.join("with-keep")).unwrap();
        fs::write(root.join("with-keep/.keep"), b"").unwrap();
        fs::create_dir_all(root.join("complicated/keep")).unwrap();
        fs::write(root.join("complicated/keep/.keep"), b"").unwrap();
        fs::write(root.join("complicated/.keep"), b"").unwrap();
        std::os::unix::fs::symlink("/nix/store/somewhereelse", root.join("complicated/aa"))
            .unwrap();
        tmp
    }

    fn manifest_digest(imported: &Imported, path: &str) -> (String, u64) {
        let entry = imported
            .manifest
            .iter()
            .find(|e| e.path == Path::new(path))
            .unwrap();
        (hex(&entry.digest.unwrap()), entry.size)
    }

    #[test]
    fn imports_the_documented_test_vectors() {
        let tmp = test_vector_tree();
        let imported = import(tmp.path(), None).unwrap();
        assert_eq!(manifest_digest(&imported, "empty"), (EMPTY.to_string(), 0));
        // Sizes as real importers write them (each entry twice): "with
        // keep" keeps its digest (it has no child directory) but announces
        // 2; "complicated" announces 2 × 3 + 2 = 8 (tests/fixture_fidelity.rs
        // checks this against the real stores), and since its child "keep" says
        // 2 instead of the doc's 1, its digest is not the doc's vector.
        assert_eq!(
            manifest_digest(&imported, "with-keep"),
            (WITH_KEEP.to_string(), 2)
        );
        let (complicated, size) = manifest_digest(&imported, "complicated");
        assert_eq!(size, 8);
        assert_ne!(complicated, COMPLICATED);
        let directory = imported
            .directories
            .values()
            .find(|d| d.directories.len() == 1 && d.symlinks.len() == 1)
            .unwrap();
        assert_eq!(directory.directories[0].size, 2);
        assert_eq!(hex(&directory_digest(directory)), complicated);
        // The empty blob has the same digest as the empty Directory.
        assert_eq!(
            manifest_digest(&imported, "with-keep/.keep"),
            (EMPTY.to_string(), 0)
        );
        // Every Directory is stored under the digest of its encoding.
        for (digest, directory) in &imported.directories {
            assert_eq!(*digest, directory_digest(directory));
        }
        assert_eq!(imported.path_infos.len(), 3);
    }

    #[test]
    fn encodes_with_keep_canonically() {
        let directory = Directory {
            files: vec![FileNode {
                name: Bytes::from_static(b".keep"),
                digest: Bytes::copy_from_slice(blake3::hash(b"").as_bytes()),
                size: 0,
                executable: false,
            }],
            ..Default::default()
        };
        let mut expected = data_encoding::HEXLOWER
            .decode(b"12290a052e6b6565701220")
            .unwrap();
        expected.extend_from_slice(blake3::hash(b"").as_bytes());
        assert_eq!(directory.encode_to_vec(), expected);
        assert_eq!(hex(&directory_digest(&directory)), WITH_KEEP);
    }

    fn chunks_of(
        data: &[u8],
        chunk_size: Option<u64>,
        piece: usize,
    ) -> (Digest, u64, Vec<ChunkSpan>) {
        let mut hasher = ChunkingHasher::new(chunk_size);
        for part in data.chunks(piece.max(1)) {
            hasher.update(part);
        }
        hasher.finalize()
    }

    #[test]
    fn splits_into_fixed_size_chunks() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        // Feeding in pieces that straddle chunk boundaries changes nothing.
        for piece in [1, 7, 100, 256, 1000] {
            let (digest, len, chunks) = chunks_of(&data, Some(256), piece);
            assert_eq!(digest, *blake3::hash(&data).as_bytes());
            assert_eq!(len, 1000);
            let sizes: Vec<u64> = chunks.iter().map(|c| c.len).collect();
            assert_eq!(sizes, [256, 256, 256, 232]);
            for chunk in &chunks {
                let range = chunk.offset as usize..(chunk.offset + chunk.len) as usize;
                assert_eq!(chunk.digest, *blake3::hash(&data[range]).as_bytes());
            }
        }
    }

    #[test]
    fn does_not_chunk_blobs_that_fit_in_one_chunk() {
        let data = [42u8; 256];
        assert!(chunks_of(&data, Some(256), 10).2.is_empty());
        assert!(chunks_of(&data, Some(1000), 10).2.is_empty());
        assert!(chunks_of(&data, None, 10).2.is_empty());
        assert!(chunks_of(&[], Some(1), 10).2.is_empty());
        assert_eq!(chunks_of(&data, Some(255), 10).2.len(), 2);
    }

    #[test]
    fn names_store_paths_deterministically() {
        let a = test_vector_tree();
        let b = test_vector_tree();
        let names = |dir: &Path| -> Vec<String> {
            import(dir, None)
                .unwrap()
                .path_infos
                .into_iter()
                .map(|(hash, info)| {
                    let node = info.node.unwrap().node.unwrap();
                    let name = String::from_utf8(node_name(&node).to_vec()).unwrap();
                    assert_eq!(
                        nixbase32::decode::<20>(&name.as_bytes()[..32]).unwrap(),
                        hash
                    );
                    name
                })
                .collect()
        };
        let first = names(a.path());
        assert_eq!(first, names(b.path()));
        assert!(first
            .iter()
            .any(|n| n.ends_with("-complicated") && n.len() == 33 + 11));

        // Other content under the same name gives another store path.
        fs::write(b.path().join("with-keep/.keep"), b"x").unwrap();
        assert_ne!(first, names(b.path()));
    }
}
