//! The gRPC client of the three store services. Every answer is verified
//! before it leaves this module: Directories against their digest and the
//! castore rules, blob bytes against their BLAKE3 digest and size, PathInfo
//! nodes against the name that was looked up.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

use super::address::{AddressError, StoreAddress, TlsSettings};
use super::answers::{validate_path_info, StorePathInfo};
use super::chunk_list::validate_chunk_list;
pub use super::chunk_list::Chunk;
use super::deadline::CallDeadline;
use super::digest::B3Digest;
use super::directory::{
    directory_digest, validate_directory, validate_node, DirEntry, Directory, ValidationError,
};
pub use super::error::{Result, StoreError};
use super::observed::{CallObserver, ObservedChannel};
use super::protocol::{PackagePrefix, StoreProtocol};
use crate::proto::castore::blob_service_client::BlobServiceClient;
use crate::proto::castore::directory_service_client::DirectoryServiceClient;
use crate::proto::castore::{
    get_directory_request, GetDirectoryRequest, ReadBlobRequest, StatBlobRequest,
};
use crate::proto::store::path_info_service_client::PathInfoServiceClient;
use crate::proto::store::{get_path_info_request, GetPathInfoRequest, ListPathInfoRequest};

/// Largest message accepted from the store (a Directory with ~100k entries).
const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Most Directory bytes taken from one recursive Get.
const MAX_PREFETCH_BYTES: usize = 8 << 20;

/// Notes the child directories of `directory` and their sizes.
fn add_children(directory: &Directory, expected: &mut HashMap<B3Digest, u64>) {
    for entry in &directory.entries {
        if let super::directory::Node::Directory { digest, size } = entry.node {
            // Reached through several parents, a child is checked against
            // the smallest size announced, so that it satisfies them all.
            expected
                .entry(digest)
                .and_modify(|s| *s = (*s).min(size))
                .or_insert(size);
        }
    }
}

/// The transport every client uses: a channel under tvix or snix names.
type Transport = PackagePrefix<ObservedChannel<Channel>>;

/// Where each service lives, how it is named, how long we wait.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub blob_service: StoreAddress,
    pub directory_service: StoreAddress,
    pub path_info_service: StoreAddress,
    pub protocol: StoreProtocol,
    /// Bound on connecting, on each answer and on each streamed message.
    pub timeout: Duration,
    /// Bytes per second a streaming call must deliver on average beyond
    /// `timeout`: the whole call ends by `timeout + bytes / min_rate`.
    pub min_rate: u64,
    /// CA and client identity for `grpc+https://` addresses.
    pub tls: TlsSettings,
}

/// A client of the store's BlobService, DirectoryService and PathInfoService.
#[derive(Clone)]
pub struct StoreClient {
    blobs: BlobServiceClient<Transport>,
    directories: DirectoryServiceClient<Transport>,
    path_infos: PathInfoServiceClient<Transport>,
    protocol: StoreProtocol,
    timeout: Duration,
    min_rate: u64,
}

impl StoreClient {
    /// Builds the clients, each call told to `observer` when it ends.
    /// Connections are made lazily, on the first call, and remade after
    /// failures. Must be called inside a tokio runtime.
    pub fn new(
        config: &StoreConfig,
        observer: &'static dyn CallObserver,
    ) -> Result<Self, AddressError> {
        let transport = |addr: &StoreAddress| -> Result<Transport, AddressError> {
            Ok(PackagePrefix::new(
                ObservedChannel::new(addr.channel(config.timeout, &config.tls)?, observer),
                config.protocol,
            ))
        };
        Ok(Self {
            blobs: BlobServiceClient::new(transport(&config.blob_service)?)
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            directories: DirectoryServiceClient::new(transport(&config.directory_service)?)
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            path_infos: PathInfoServiceClient::new(transport(&config.path_info_service)?)
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            protocol: config.protocol,
            timeout: config.timeout,
            min_rate: config.min_rate,
        })
    }

    /// Asks the path-info service for a store path that cannot exist, to
    /// learn before serving whether the store speaks our protocol. A store
    /// under the other package names answers UNIMPLEMENTED, which is
    /// [`StoreError::WrongProtocol`]; NOT_FOUND is the expected answer.
    /// Other errors (the store down or slow) are the caller's to judge: a
    /// daemon with a disk cache can serve without the store.
    pub async fn check_protocol(&self) -> Result<()> {
        self.path_info([0; 20], b"(protocol check)")
            .await
            .map(|_| ())
    }

    /// A deadline for a streaming call starting now.
    fn deadline(&self) -> CallDeadline {
        CallDeadline::start(self.timeout, self.min_rate)
    }

    /// Awaits `fut` for at most the configured timeout and at most until
    /// the whole call's `deadline`. A message already received is taken
    /// without arming a timer (a blob arrives in thousands of small
    /// messages, mostly buffered already); the deadline is then checked
    /// every few messages instead, so a store flooding empty messages still
    /// runs out of time.
    async fn bounded_within<T>(
        &self,
        call: &'static str,
        subject: &(dyn std::fmt::Display + Sync),
        deadline: &mut CallDeadline,
        fut: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T> {
        let too_slow = |deadline: &CallDeadline| StoreError::TooSlow {
            call,
            subject: subject.to_string(),
            received: deadline.received(),
            elapsed: deadline.elapsed(),
        };
        let mut fut = std::pin::pin!(fut);
        if let std::task::Poll::Ready(answer) = futures::poll!(fut.as_mut()) {
            if deadline.overdue() {
                return Err(too_slow(deadline));
            }
            return self.answer(call, subject, answer);
        }
        let per_message = tokio::time::Instant::now() + self.timeout;
        if deadline.at() < per_message {
            if let Ok(answer) = tokio::time::timeout_at(deadline.at(), fut).await {
                return self.answer(call, subject, answer);
            }
            return Err(too_slow(deadline));
        }
        self.bounded(call, subject, fut).await
    }

    /// Awaits `fut` for at most the configured timeout.
    async fn bounded<T>(
        &self,
        call: &'static str,
        subject: &(dyn std::fmt::Display + Sync),
        fut: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(answer) => self.answer(call, subject, answer),
            Err(_) => Err(StoreError::Timeout {
                call,
                subject: subject.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    /// The store's answer, its status turned into a [`StoreError`].
    fn answer<T>(
        &self,
        call: &'static str,
        subject: &(dyn std::fmt::Display + Sync),
        answer: Result<T, tonic::Status>,
    ) -> Result<T> {
        match answer {
            Ok(v) => Ok(v),
            Err(status) if status.code() == Code::Unimplemented => Err(StoreError::WrongProtocol {
                call,
                subject: subject.to_string(),
                protocol: self.protocol,
                message: match status.message() {
                    "" => status.code().to_string(),
                    m => m.to_string(),
                },
            }),
            Err(status) => Err(StoreError::Rpc {
                call,
                subject: subject.to_string(),
                status,
            }),
        }
    }

    /// Looks up a store path by its 20-byte output hash. `name` is the full
    /// basename that was asked for; a PathInfo whose node carries another
    /// name counts as not found. `Ok(None)` when the store does not know it.
    pub async fn path_info(&self, hash: [u8; 20], name: &[u8]) -> Result<Option<StorePathInfo>> {
        let shown = String::from_utf8_lossy(name);
        let mut client = self.path_infos.clone();
        let request = GetPathInfoRequest {
            by_what: Some(get_path_info_request::ByWhat::ByOutputHash(
                Bytes::copy_from_slice(&hash),
            )),
        };
        let answer = self
            .bounded("PathInfoService.Get", &shown, client.get(request))
            .await;
        let info = match answer {
            Ok(response) => response.into_inner(),
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        validate_path_info(&info, name)
    }

    /// Lists every store path (PathInfoService.List), up to `limit` entries.
    /// Entries that fail validation are skipped with a warning.
    pub async fn list_path_infos(&self, limit: usize) -> Result<Vec<DirEntry>> {
        let mut client = self.path_infos.clone();
        let subject = "(all)";
        let mut stream = self
            .bounded(
                "PathInfoService.List",
                &subject,
                client.list(ListPathInfoRequest {}),
            )
            .await?
            .into_inner();
        let mut entries = Vec::new();
        let mut deadline = self.deadline();
        while let Some(info) = self
            .bounded_within(
                "PathInfoService.List",
                &subject,
                &mut deadline,
                stream.message(),
            )
            .await?
        {
            deadline.credit(info.encoded_len() as u64);
            let entry = info
                .node
                .as_ref()
                .ok_or(ValidationError::EmptyNode)
                .and_then(validate_node);
            match entry {
                Ok(e) if super::store_path::parse(&e.name).is_some() => entries.push(e),
                Ok(e) => {
                    tracing::warn!(name = %String::from_utf8_lossy(&e.name), "listed path is not a store path name; skipped")
                }
                Err(e) => tracing::warn!(error = %e, "listed path info rejected; skipped"),
            }
            if entries.len() >= limit {
                tracing::warn!(
                    limit,
                    "store lists more paths than the root listing holds; truncated"
                );
                break;
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        Ok(entries)
    }

    /// Fetches the Directory `digest` and validates it against the digest
    /// and, when the parent node gave one, its `expected_size`. With
    /// `limit` > 1 it asks for the Directories below it too (a recursive
    /// Get: one round trip for a whole store path) and returns up to `limit`
    /// of them, root first, each validated against the digest and size its
    /// parent gave; the rest of the stream is dropped at the first one that
    /// fails or that nothing refers to. Each comes with its canonical
    /// encoding (what the disk cache keeps).
    pub async fn directories(
        &self,
        digest: &B3Digest,
        expected_size: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(Directory, Bytes)>> {
        let mut client = self.directories.clone();
        let request = GetDirectoryRequest {
            by_what: Some(get_directory_request::ByWhat::Digest(
                Bytes::copy_from_slice(digest.as_bytes()),
            )),
            recursive: limit > 1,
        };
        let call = "DirectoryService.Get";
        let not_found =
            |e: StoreError| e.not_found_as(|| StoreError::DirectoryNotFound { digest: *digest });
        let mut stream = self
            .bounded(call, digest, client.get(request))
            .await
            .map_err(not_found)?
            .into_inner();
        let mut deadline = self.deadline();
        let first = self
            .bounded_within(call, digest, &mut deadline, stream.message())
            .await
            .map_err(not_found)?
            .ok_or(StoreError::DirectoryNotFound { digest: *digest })?;
        let root = validate_directory(&first, digest, expected_size).map_err(|source| {
            StoreError::InvalidDirectory {
                digest: *digest,
                source,
            }
        })?;

        // Children the validated Directories refer to, with their sizes.
        let mut expected: HashMap<B3Digest, u64> = HashMap::new();
        let mut received: HashSet<B3Digest> = HashSet::from([*digest]);
        let mut bytes = first.encoded_len();
        deadline.credit(bytes as u64);
        add_children(&root, &mut expected);
        let mut out = vec![(root, Bytes::from(first.encode_to_vec()))];
        while out.len() < limit && bytes < MAX_PREFETCH_BYTES {
            let next = match self
                .bounded_within(call, digest, &mut deadline, stream.message())
                .await
            {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(root = %digest, error = %e, "recursive directory fetch ended early");
                    break;
                }
            };
            deadline.credit(next.encoded_len() as u64);
            let child = directory_digest(&next);
            if received.contains(&child) {
                continue;
            }
            let Some(&size) = expected.get(&child) else {
                tracing::warn!(root = %digest, child = %child, "store sent a directory nothing refers to; ignoring the rest");
                break;
            };
            match validate_directory(&next, &child, Some(size)) {
                Ok(directory) => {
                    bytes += next.encoded_len();
                    received.insert(child);
                    add_children(&directory, &mut expected);
                    out.push((directory, Bytes::from(next.encode_to_vec())));
                }
                Err(e) => {
                    tracing::warn!(root = %digest, directory = %child, error = %e, "recursive directory fetch: rejected one; ignoring the rest");
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The chunks of a blob of `size` bytes, or an empty list when the store
    /// has no finer chunking. The list must add up to exactly `size`.
    pub async fn blob_chunks(&self, digest: &B3Digest, size: u64) -> Result<Vec<Chunk>> {
        let mut client = self.blobs.clone();
        let request = StatBlobRequest {
            digest: Bytes::copy_from_slice(digest.as_bytes()),
            send_chunks: true,
            send_bao: false,
        };
        let answer = self
            .bounded("BlobService.Stat", digest, client.stat(request))
            .await
            .map_err(|e| e.not_found_as(|| StoreError::BlobNotFound { digest: *digest }))?
            .into_inner();
        validate_chunk_list(&answer.chunks, size).map_err(|reason| StoreError::InvalidChunkList {
            digest: *digest,
            reason,
        })
    }

    /// Opens a Read of the blob `digest` of `size` bytes, to be taken
    /// message by message, UNVERIFIED: the caller checks what it keeps
    /// (the chunks of the blob, each by its own digest, or the whole blob
    /// group by group) and may stop reading for a while in between.
    pub async fn blob_messages(&self, digest: &B3Digest, size: u64) -> Result<BlobMessages<'_>> {
        let mut client = self.blobs.clone();
        let request = ReadBlobRequest {
            digest: Bytes::copy_from_slice(digest.as_bytes()),
        };
        let stream = self
            .bounded(BLOB_READ, digest, client.read(request))
            .await
            .map_err(|e| e.not_found_as(|| StoreError::BlobNotFound { digest: *digest }))?
            .into_inner();
        Ok(BlobMessages {
            client: self,
            digest: *digest,
            size,
            received: 0,
            deadline: self.deadline(),
            stream,
        })
    }
}

const BLOB_READ: &str = "BlobService.Read";

/// The messages of one BlobService.Read, each call bounded by the
/// client's timeout and the whole call by its minimum rate.
pub struct BlobMessages<'a> {
    client: &'a StoreClient,
    digest: B3Digest,
    size: u64,
    received: u64,
    deadline: CallDeadline,
    stream: tonic::Streaming<crate::proto::castore::BlobChunk>,
}

impl BlobMessages<'_> {
    /// The next piece of the blob; `None` once exactly `size` bytes came.
    /// A store that sends more is cut off at once, one that ends early is
    /// an error.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        let digest = self.digest;
        let piece = self
            .client
            .bounded_within(
                BLOB_READ,
                &digest,
                &mut self.deadline,
                self.stream.message(),
            )
            .await
            .map_err(|e| e.not_found_as(|| StoreError::BlobNotFound { digest }))?;
        let Some(piece) = piece else {
            if self.received != self.size {
                return Err(self.size_mismatch());
            }
            return Ok(None);
        };
        self.received += piece.data.len() as u64;
        self.deadline.credit(piece.data.len() as u64);
        if self.received > self.size {
            return Err(self.size_mismatch());
        }
        Ok(Some(piece.data))
    }

    /// The error for a blob whose bytes so far disagree with its size: more
    /// than it, fewer at its end, or fewer than its chunk list says.
    pub fn size_mismatch(&self) -> StoreError {
        StoreError::BlobSizeMismatch {
            digest: self.digest,
            expected: self.size,
            actual: self.received,
        }
    }

    /// Starts the call's bound afresh: the time the caller spent not
    /// reading (the store held back by flow control) is not the store's.
    pub fn resume(&mut self) {
        self.deadline = self.client.deadline();
    }
}
