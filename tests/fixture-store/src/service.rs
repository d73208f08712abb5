//! The three gRPC services (BlobService, DirectoryService, PathInfoService)
//! over the imported content, plus the misbehaviour tests ask for.
//!
//! Every request input is checked and answered with a gRPC status on error;
//! nothing here panics on what a client sends.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::castore::blob_service_server::BlobService;
use crate::proto::castore::directory_service_server::DirectoryService;
use crate::proto::castore::{
    get_directory_request, BlobChunk, Directory, GetDirectoryRequest, Node, PutBlobResponse,
    PutDirectoryResponse, ReadBlobRequest, StatBlobRequest, StatBlobResponse, SymlinkNode,
};
use crate::proto::store::path_info_service_server::PathInfoService;
use crate::proto::store::{
    get_path_info_request, CalculateNarResponse, GetPathInfoRequest, ListPathInfoRequest, PathInfo,
};
use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use tvix_virtiofsd::store::nixbase32;

use crate::adversarial::Adversarial;
use crate::import::{
    directory_digest, hex, node_name, Blob, BlobSource, Digest, Imported, StorePathHash,
};
use crate::stats::{Method, Stats};

/// Largest blob accepted by BlobService.Put; uploads are kept in memory.
const MAX_PUT_BLOB: usize = 64 << 20;

/// Misbehaviour requested on the command line.
#[derive(Debug, Default)]
pub struct Misbehaviour {
    /// Blobs (and chunks of those blobs) whose Read flips a byte.
    pub corrupt_blobs: HashSet<Digest>,
    /// Blobs whose Read of the whole blob flips its last byte, while their
    /// chunks are served intact (a stream of the blob goes bad, a fetch
    /// chunk by chunk does not).
    pub corrupt_whole_reads: HashSet<Digest>,
    /// Directories whose Get returns a Directory that does not hash to its
    /// digest.
    pub corrupt_directories: HashSet<Digest>,
    /// Delay before answering every RPC.
    pub latency: Duration,
    /// How the `--adversarial` store paths misbehave.
    pub adversarial: Adversarial,
}

/// The store's content and configuration, shared by all services and
/// listeners.
pub struct State {
    blobs: RwLock<HashMap<Digest, Blob>>,
    directories: RwLock<HashMap<Digest, Directory>>,
    path_infos: RwLock<BTreeMap<StorePathHash, PathInfo>>,
    read_piece_size: usize,
    misbehaviour: Misbehaviour,
    stats: Stats,
}

impl State {
    pub fn new(
        imported: Imported,
        read_piece_size: usize,
        mut misbehaviour: Misbehaviour,
        stats: Stats,
    ) -> Self {
        // Corrupting a chunked blob corrupts its chunks too: a client that
        // fetches it chunk by chunk must see bad data as well.
        let mut chunk_digests = Vec::new();
        for digest in &misbehaviour.corrupt_blobs {
            match imported.blobs.get(digest) {
                Some(blob) => chunk_digests.extend(
                    blob.chunks
                        .iter()
                        .filter_map(|c| <Digest>::try_from(c.digest.as_ref()).ok()),
                ),
                None => warn!(digest = %hex(digest), "--corrupt-blob: no such blob imported"),
            }
        }
        misbehaviour.corrupt_blobs.extend(chunk_digests);
        for digest in &misbehaviour.corrupt_directories {
            if !imported.directories.contains_key(digest) {
                warn!(digest = %hex(digest), "--corrupt-directory: no such directory imported");
            }
        }
        stats.write();
        Self {
            blobs: RwLock::new(imported.blobs),
            directories: RwLock::new(imported.directories),
            path_infos: RwLock::new(imported.path_infos),
            read_piece_size,
            misbehaviour,
            stats,
        }
    }

    /// Common start of every RPC: log it, count it, then wait the configured
    /// latency.
    async fn begin(&self, rpc: &'static str, method: Option<Method>) {
        debug!(rpc, "call");
        if let Some(method) = method {
            self.stats.record(method);
        }
        if !self.misbehaviour.latency.is_zero() {
            tokio::time::sleep(self.misbehaviour.latency).await;
        }
    }
}

/// A 32-byte digest from a request, or INVALID_ARGUMENT.
fn parse_digest(bytes: &[u8]) -> Result<Digest, Status> {
    Digest::try_from(bytes).map_err(|_| {
        Status::invalid_argument(format!("digest must be 32 bytes, got {}", bytes.len()))
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves blobs: whole imported files, their chunks, and uploads.
#[derive(Clone)]
pub struct Blobs(pub Arc<State>);

#[tonic::async_trait]
impl BlobService for Blobs {
    async fn stat(
        &self,
        request: Request<StatBlobRequest>,
    ) -> Result<Response<StatBlobResponse>, Status> {
        self.0
            .begin("BlobService.Stat", Some(Method::BlobStat))
            .await;
        let request = request.into_inner();
        let digest = parse_digest(&request.digest)?;
        let chunks = match self.0.blobs.read().get(&digest) {
            Some(blob) if request.send_chunks => blob.chunks.clone(),
            Some(_) => Vec::new(),
            None => return Err(blob_not_found(&digest)),
        };
        // send_bao is not supported: bao stays empty, which clients treat as
        // "not available".
        Ok(Response::new(StatBlobResponse {
            chunks,
            bao: Bytes::new(),
        }))
    }

    type ReadStream = ReceiverStream<Result<BlobChunk, Status>>;

    async fn read(
        &self,
        request: Request<ReadBlobRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.0
            .begin("BlobService.Read", Some(Method::BlobRead))
            .await;
        let digest = parse_digest(&request.get_ref().digest)?;
        let source = match self.0.blobs.read().get(&digest) {
            Some(blob) => blob.source.clone(),
            None => return Err(blob_not_found(&digest)),
        };
        let adversarial = &self.0.misbehaviour.adversarial;
        let misbehaving = if adversarial.drip.contains(&digest) {
            Some(BadRead::Drip(adversarial.drip_interval))
        } else if adversarial.endless.contains(&digest) {
            Some(BadRead::Endless)
        } else if adversarial.empty_flood.contains(&digest) {
            Some(BadRead::EmptyFlood)
        } else {
            None
        };
        if let Some(how) = misbehaving {
            return Ok(Response::new(misbehaving_read(&source, how)));
        }
        let misbehaviour = &self.0.misbehaviour;
        let corrupt = if misbehaviour.corrupt_blobs.contains(&digest) {
            Some(0)
        } else if misbehaviour.corrupt_whole_reads.contains(&digest) {
            Some(source.len().saturating_sub(1))
        } else {
            None
        };
        if let Some(at) = corrupt {
            info!(digest = %hex(&digest), at, "misbehaving: Read returns the blob with one byte flipped");
        }
        // A blocking task reads the file piece by piece and feeds a small
        // channel, so at most a few pieces are in memory and a client that
        // goes away (receiver dropped) stops the reading.
        let (tx, rx) = mpsc::channel(4);
        let piece_size = self.0.read_piece_size;
        tokio::task::spawn_blocking(move || send_blob(&source, piece_size, corrupt, &tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn put(
        &self,
        request: Request<Streaming<BlobChunk>>,
    ) -> Result<Response<PutBlobResponse>, Status> {
        self.0.begin("BlobService.Put", Some(Method::BlobPut)).await;
        let mut stream = request.into_inner();
        let mut data = BytesMut::new();
        while let Some(chunk) = stream.message().await? {
            if data.len() + chunk.data.len() > MAX_PUT_BLOB {
                return Err(Status::resource_exhausted(format!(
                    "this fixture store keeps uploads in memory and accepts blobs of at most {MAX_PUT_BLOB} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let data = data.freeze();
        let digest: Digest = blake3::hash(&data).into();
        self.0.blobs.write().entry(digest).or_insert(Blob {
            source: BlobSource::Memory(data),
            chunks: Vec::new(),
        });
        Ok(Response::new(PutBlobResponse {
            digest: Bytes::copy_from_slice(&digest),
        }))
    }
}

/// How an `--adversarial` Read misbehaves.
enum BadRead {
    /// The blob one byte per interval.
    Drip(Duration),
    /// Pieces of the blob, for ever.
    Endless,
    /// Empty messages, for ever.
    EmptyFlood,
}

/// An `--adversarial` read. Ends when the client goes away.
fn misbehaving_read(
    source: &BlobSource,
    how: BadRead,
) -> ReceiverStream<Result<BlobChunk, Status>> {
    let data = match source {
        BlobSource::Memory(data) => data.clone(),
        BlobSource::File { .. } => Bytes::from_static(b"?"),
    };
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        match how {
            BadRead::Drip(interval) => {
                info!(interval = ?interval, "misbehaving: Read drips one byte at a time");
                for i in 0..data.len() {
                    tokio::time::sleep(interval).await;
                    if tx
                        .send(Ok(BlobChunk {
                            data: data.slice(i..i + 1),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            BadRead::Endless => {
                info!("misbehaving: Read never ends");
                while tx.send(Ok(BlobChunk { data: data.clone() })).await.is_ok() {}
            }
            BadRead::EmptyFlood => {
                info!("misbehaving: Read sends empty messages for ever");
                while tx.send(Ok(BlobChunk { data: Bytes::new() })).await.is_ok() {}
            }
        }
    });
    ReceiverStream::new(rx)
}

fn blob_not_found(digest: &Digest) -> Status {
    Status::not_found(format!("blob {} not found", hex(digest)))
}

/// Streams a blob's bytes into `tx` in pieces of at most `piece_size`,
/// flipping the byte at offset `corrupt`, if any. Stops when the receiver is gone.
fn send_blob(
    source: &BlobSource,
    piece_size: usize,
    corrupt: Option<u64>,
    tx: &mpsc::Sender<Result<BlobChunk, Status>>,
) {
    let mut flip = corrupt;
    let mut sent = 0u64;
    let mut send = |data: Bytes| -> bool {
        let start = sent;
        sent += data.len() as u64;
        let data = match flip {
            Some(at) if (start..sent).contains(&at) => {
                flip = None;
                let mut bytes = data.to_vec();
                bytes[(at - start) as usize] ^= 0xff;
                Bytes::from(bytes)
            }
            _ => data,
        };
        tx.blocking_send(Ok(BlobChunk { data })).is_ok()
    };
    match source {
        BlobSource::Memory(data) => {
            let mut offset = 0;
            while offset < data.len() {
                let end = data.len().min(offset.saturating_add(piece_size));
                if !send(data.slice(offset..end)) {
                    return;
                }
                offset = end;
            }
        }
        BlobSource::File { path, offset, len } => {
            let result = (|| -> std::io::Result<()> {
                let file = std::fs::File::open(path)?;
                let mut done = 0u64;
                while done < *len {
                    let n = usize::try_from(*len - done)
                        .map_or(piece_size, |rest| rest.min(piece_size));
                    let mut buf = vec![0u8; n];
                    file.read_exact_at(&mut buf, offset + done)?;
                    if !send(Bytes::from(buf)) {
                        return Ok(());
                    }
                    done += n as u64;
                }
                Ok(())
            })();
            if let Err(e) = result {
                warn!(path = %path.display(), error = %e, "reading blob from the host file failed");
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "reading the blob's backing file failed: {e}"
                ))));
            }
        }
    }
    if flip.is_some() {
        warn!("asked to corrupt a byte past the end of the blob: none flipped");
    }
}

/// Serves Directories, by digest, alone or with all their descendants.
#[derive(Clone)]
pub struct Directories(pub Arc<State>);

impl Directories {
    /// The Directory stored under `digest` as this store hands it out: with
    /// `--corrupt-directory`, a copy that no longer hashes to `digest`.
    fn served(&self, digest: &Digest, directory: &Directory) -> Directory {
        if self.0.misbehaviour.corrupt_directories.contains(digest) {
            info!(digest = %hex(digest), "misbehaving: Get returns a corrupted Directory");
            corrupt_directory(directory.clone())
        } else {
            directory.clone()
        }
    }
}

/// Changes `directory` so it no longer hashes to its digest, while still
/// decoding fine: a file's size + 1, else a symlink target changed, else a
/// child directory's size + 1, else (empty) an entry added.
fn corrupt_directory(mut directory: Directory) -> Directory {
    if let Some(file) = directory.files.first_mut() {
        file.size = file.size.wrapping_add(1);
    } else if let Some(symlink) = directory.symlinks.first_mut() {
        let mut target = symlink.target.to_vec();
        target.extend_from_slice(b".corrupt");
        symlink.target = Bytes::from(target);
    } else if let Some(child) = directory.directories.first_mut() {
        child.size = child.size.wrapping_add(1);
    } else {
        directory.symlinks.push(SymlinkNode {
            name: Bytes::from_static(b"corrupt"),
            target: Bytes::from_static(b"corrupt"),
        });
    }
    directory
}

#[tonic::async_trait]
impl DirectoryService for Directories {
    type GetStream = BoxStream<Directory>;

    async fn get(
        &self,
        request: Request<GetDirectoryRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        self.0
            .begin("DirectoryService.Get", Some(Method::DirectoryGet))
            .await;
        let request = request.into_inner();
        let Some(get_directory_request::ByWhat::Digest(digest)) = request.by_what else {
            return Err(Status::invalid_argument("by_what (digest) is missing"));
        };
        let root = parse_digest(&digest)?;
        let directories = self.0.directories.read();
        let not_found = |d: &Digest| Status::not_found(format!("directory {} not found", hex(d)));
        let aliases = &self.0.misbehaviour.adversarial.directory_aliases;
        let find = |d: &Digest| directories.get(d).or_else(|| aliases.get(d));
        let root_directory = find(&root).ok_or_else(|| not_found(&root))?;

        let mut out = vec![Ok(self.served(&root, root_directory))];
        if request.recursive {
            // Breadth-first from the root: each Directory comes after the one
            // that refers to it, and each digest is sent once. Children are
            // found in the stored (true) Directory, so a corrupted copy does
            // not change what follows it.
            let mut seen = HashSet::from([root]);
            let mut queue = VecDeque::from([root_directory]);
            'walk: while let Some(directory) = queue.pop_front() {
                for child in &directory.directories {
                    let Ok(digest) = Digest::try_from(child.digest.as_ref()) else {
                        out.push(Err(Status::internal(
                            "stored Directory has a bad child digest",
                        )));
                        break 'walk;
                    };
                    if !seen.insert(digest) {
                        continue;
                    }
                    let Some(child_directory) = find(&digest) else {
                        out.push(Err(not_found(&digest)));
                        break 'walk;
                    };
                    out.push(Ok(self.served(&digest, child_directory)));
                    queue.push_back(child_directory);
                }
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }

    async fn put(
        &self,
        request: Request<Streaming<Directory>>,
    ) -> Result<Response<PutDirectoryResponse>, Status> {
        self.0
            .begin("DirectoryService.Put", Some(Method::DirectoryPut))
            .await;
        let mut stream = request.into_inner();
        let mut last = None;
        while let Some(directory) = stream.message().await? {
            // Light validation only: digests must have the right length.
            let bad_digest = directory
                .directories
                .iter()
                .map(|d| &d.digest)
                .chain(directory.files.iter().map(|f| &f.digest))
                .any(|d| d.len() != 32);
            if bad_digest {
                return Err(Status::invalid_argument(
                    "a Directory entry has a digest that is not 32 bytes",
                ));
            }
            let digest = directory_digest(&directory);
            self.0.directories.write().insert(digest, directory);
            last = Some(digest);
        }
        let root = last.ok_or_else(|| Status::invalid_argument("no Directory was sent"))?;
        Ok(Response::new(PutDirectoryResponse {
            root_digest: Bytes::copy_from_slice(&root),
        }))
    }
}

/// Serves PathInfos: one per imported top-level entry, plus uploads.
#[derive(Clone)]
pub struct PathInfos(pub Arc<State>);

#[tonic::async_trait]
impl PathInfoService for PathInfos {
    async fn get(
        &self,
        request: Request<GetPathInfoRequest>,
    ) -> Result<Response<PathInfo>, Status> {
        self.0
            .begin("PathInfoService.Get", Some(Method::PathInfoGet))
            .await;
        let Some(get_path_info_request::ByWhat::ByOutputHash(hash)) = request.into_inner().by_what
        else {
            return Err(Status::invalid_argument(
                "by_what (by_output_hash) is missing",
            ));
        };
        let hash = StorePathHash::try_from(hash.as_ref()).map_err(|_| {
            Status::invalid_argument(format!(
                "by_output_hash must be 20 bytes, got {}",
                hash.len()
            ))
        })?;
        self.0
            .path_infos
            .read()
            .get(&hash)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!("store path {} not found", nixbase32::encode(&hash)))
            })
    }

    async fn put(&self, request: Request<PathInfo>) -> Result<Response<PathInfo>, Status> {
        self.0
            .begin("PathInfoService.Put", Some(Method::PathInfoPut))
            .await;
        let path_info = request.into_inner();
        let Some(node) = path_info.node.as_ref().and_then(|n| n.node.as_ref()) else {
            return Err(Status::invalid_argument("PathInfo has no node"));
        };
        let name = node_name(node);
        let hash = name
            .get(..32)
            .filter(|_| name.get(32) == Some(&b'-') && name.len() > 33)
            .and_then(|h| nixbase32::decode::<20>(h).ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "node name {:?} is not a store path basename <nixbase32 hash>-<name>",
                    String::from_utf8_lossy(name)
                ))
            })?;
        self.0.path_infos.write().insert(hash, path_info.clone());
        Ok(Response::new(path_info))
    }

    async fn calculate_nar(
        &self,
        _request: Request<Node>,
    ) -> Result<Response<CalculateNarResponse>, Status> {
        self.0.begin("PathInfoService.CalculateNAR", None).await;
        Err(Status::unimplemented(
            "CalculateNAR is not implemented by the fixture store (it has no NAR renderer)",
        ))
    }

    type ListStream = BoxStream<PathInfo>;

    async fn list(
        &self,
        _request: Request<ListPathInfoRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        self.0
            .begin("PathInfoService.List", Some(Method::PathInfoList))
            .await;
        let mut all: Vec<PathInfo> = self.0.path_infos.read().values().cloned().collect();
        all.sort_by_cached_key(|info| {
            info.node
                .as_ref()
                .and_then(|n| n.node.as_ref())
                .map(|n| node_name(n).clone())
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(all).map(Ok))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::castore::{DirectoryNode, FileNode};
    use prost::Message;

    #[test]
    fn corrupted_directories_hash_differently() {
        let file = FileNode {
            name: Bytes::from_static(b"f"),
            digest: Bytes::copy_from_slice(&[0; 32]),
            size: 3,
            executable: false,
        };
        let dir = DirectoryNode {
            name: Bytes::from_static(b"d"),
            digest: Bytes::copy_from_slice(&[0; 32]),
            size: 0,
        };
        let link = SymlinkNode {
            name: Bytes::from_static(b"l"),
            target: Bytes::from_static(b"t"),
        };
        let cases = [
            Directory::default(),
            Directory {
                files: vec![file],
                ..Default::default()
            },
            Directory {
                symlinks: vec![link],
                ..Default::default()
            },
            Directory {
                directories: vec![dir],
                ..Default::default()
            },
        ];
        for directory in cases {
            let corrupted = corrupt_directory(directory.clone());
            assert_ne!(directory_digest(&directory), directory_digest(&corrupted));
            // Still a well-formed message.
            assert!(Directory::decode(corrupted.encode_to_vec().as_slice()).is_ok());
        }
    }

    #[tokio::test]
    async fn reads_flip_one_byte_when_corrupt() {
        let data = Bytes::from_static(b"hello world");
        // The first, a middle and the last byte (as --corrupt-whole-read).
        let cases = [(None, 4), (Some(0), 4), (Some(5), 4), (Some(10), 100)];
        for (corrupt, piece) in cases {
            let source = BlobSource::Memory(data.clone());
            let (tx, rx) = mpsc::channel(100);
            tokio::task::spawn_blocking(move || send_blob(&source, piece, corrupt, &tx))
                .await
                .unwrap();
            let pieces: Vec<Bytes> = ReceiverStream::new(rx)
                .map(|r| r.unwrap().data)
                .collect()
                .await;
            assert!(pieces.iter().all(|p| p.len() <= piece));
            let got: Vec<u8> = pieces.concat();
            assert_eq!(got.len(), data.len());
            let differing = got.iter().zip(data.iter()).filter(|(a, b)| a != b).count();
            assert_eq!(differing, usize::from(corrupt.is_some()));
            if let Some(at) = corrupt {
                assert_ne!(got[at as usize], data[at as usize], "byte {at}");
            }
        }
    }
}
