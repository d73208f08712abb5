//! What can go wrong talking to the store, in one type that every layer
//! above the client reports: each variant names the call and the digest or
//! store path, and says whether the store holds bad data.

use std::io;
use std::time::Duration;

use tonic::Code;

use super::digest::B3Digest;
use super::directory::ValidationError;
use super::protocol::StoreProtocol;

/// Errors from talking to the store. Each names the call and the digest or
/// store path, so a log line says what could not be served and why.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{call} {subject}: store answered {}: {}", .status.code(), .status.message())]
    Rpc {
        call: &'static str,
        subject: String,
        status: tonic::Status,
    },
    #[error(
        "{call} {subject}: the store does not implement it under the {protocol} package names \
         ({message}); if it is a {other} store, pass --store-protocol {other}",
        other = protocol.other()
    )]
    WrongProtocol {
        call: &'static str,
        subject: String,
        protocol: StoreProtocol,
        message: String,
    },
    #[error("{call} {subject}: no answer within {timeout:?} (is the store up?)")]
    Timeout {
        call: &'static str,
        subject: String,
        timeout: Duration,
    },
    #[error(
        "{call} {subject}: the store sent {received} bytes in {elapsed:?}, slower than the \
         minimum rate (--store-min-rate); given up"
    )]
    TooSlow {
        call: &'static str,
        subject: String,
        received: u64,
        elapsed: Duration,
    },
    #[error("directory {digest}: not found in the store")]
    DirectoryNotFound { digest: B3Digest },
    #[error("directory {digest}: rejected: {source}")]
    InvalidDirectory {
        digest: B3Digest,
        source: ValidationError,
    },
    #[error("blob {digest}: not found in the store")]
    BlobNotFound { digest: B3Digest },
    #[error("blob {digest}: rejected: content hashes to {actual}")]
    BlobDigestMismatch { digest: B3Digest, actual: B3Digest },
    #[error("blob {digest}: rejected: store sent {actual} bytes or more, expected {expected}")]
    BlobSizeMismatch {
        digest: B3Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest}: rejected chunk list: {reason}")]
    InvalidChunkList { digest: B3Digest, reason: String },
    #[error("path info {name}: rejected: {reason}")]
    InvalidPathInfo { name: String, reason: String },
    #[error("blob {digest}: storing fetched data: {source}")]
    Sink { digest: B3Digest, source: io::Error },
}

impl StoreError {
    /// The store answered NOT_FOUND: what is asked for does not exist there.
    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, Self::Rpc { status, .. } if status.code() == Code::NotFound)
    }

    /// This error, or `missing` if the store answered NOT_FOUND.
    pub(super) fn not_found_as(self, missing: impl FnOnce() -> StoreError) -> StoreError {
        if self.is_not_found() {
            missing()
        } else {
            self
        }
    }

    /// Whether this error means the store holds bad data (as opposed to
    /// being unreachable or slow).
    pub fn is_corruption(&self) -> bool {
        self.rejected_kind().is_some()
    }

    /// What the store sent that failed verification (the `kind` label of
    /// the metrics), if this error is about bad data.
    pub fn rejected_kind(&self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidDirectory { .. } => "directory",
            Self::BlobDigestMismatch { .. } => "blob_digest",
            Self::BlobSizeMismatch { .. } => "blob_size",
            Self::InvalidChunkList { .. } => "chunk_list",
            Self::InvalidPathInfo { .. } => "path_info",
            _ => return None,
        })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
