//! Checks of the store's PathInfo and BlobService.Stat answers, apart from
//! the calls that fetch them, so that they run without a store (unit tests,
//! fuzzing).

use super::client::{Chunk, StoreError};
use super::digest::B3Digest;
use super::directory::{validate_node, DirEntry};
use crate::proto::castore::StatBlobResponse;
use crate::proto::store::PathInfo;

/// The root node of a PathInfo answered for the store path `name`, validated.
/// A PathInfo whose node carries another name counts as not found (`None`).
pub fn path_info_entry(info: &PathInfo, name: &[u8]) -> Result<Option<DirEntry>, StoreError> {
    let shown = String::from_utf8_lossy(name);
    let invalid = |reason: String| StoreError::InvalidPathInfo {
        name: shown.to_string(),
        reason,
    };
    let node = info
        .node
        .as_ref()
        .ok_or_else(|| invalid("no node".into()))?;
    let entry = validate_node(node).map_err(|e| invalid(e.to_string()))?;
    if entry.name != name {
        tracing::warn!(
            asked = %shown,
            got = %String::from_utf8_lossy(&entry.name),
            "store answered with a path info of another name; treating as not found"
        );
        return Ok(None);
    }
    Ok(Some(entry))
}

/// The chunk list of the blob `digest` of `size` bytes from its Stat answer,
/// or an empty list when the store has no finer chunking. The list must add
/// up to exactly `size`, with no empty chunk.
pub fn chunks_of_stat(
    digest: &B3Digest,
    size: u64,
    answer: &StatBlobResponse,
) -> Result<Vec<Chunk>, StoreError> {
    if answer.chunks.len() <= 1 {
        return Ok(Vec::new());
    }
    let invalid = |reason: String| StoreError::InvalidChunkList {
        digest: *digest,
        reason,
    };
    let mut offset = 0u64;
    let mut chunks = Vec::with_capacity(answer.chunks.len());
    for (i, meta) in answer.chunks.iter().enumerate() {
        let chunk_digest = B3Digest::try_from(meta.digest.as_ref())
            .map_err(|e| invalid(format!("chunk {i}: {e}")))?;
        if meta.size == 0 {
            return Err(invalid(format!("chunk {i} is empty")));
        }
        chunks.push(Chunk {
            digest: chunk_digest,
            offset,
            size: meta.size,
        });
        offset = offset
            .checked_add(meta.size)
            .ok_or_else(|| invalid("chunk sizes overflow".into()))?;
    }
    if offset != size {
        return Err(invalid(format!(
            "chunks add up to {offset} bytes, the file has {size}"
        )));
    }
    Ok(chunks)
}
