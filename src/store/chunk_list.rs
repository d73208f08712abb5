//! Checks a blob's chunk list as the store sent it (BlobService.Stat) before
//! anything uses it: each chunk names a digest and a size, the sizes add up
//! to the blob's, and there are not more of them than a real chunker makes,
//! so that a store cannot make each open file hold a list of hundreds of
//! thousands of entries.

use crate::proto::castore::stat_blob_response::ChunkMeta;

use super::digest::B3Digest;

/// One piece of a blob as listed by BlobService.Stat, with its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub digest: B3Digest,
    pub offset: u64,
    pub size: u64,
}

/// Chunks any blob may have, whatever its size.
pub const BASE_CHUNKS: u64 = 1024;
/// Beyond [`BASE_CHUNKS`], one chunk per this many bytes of the blob: real
/// chunkers make chunks of tens of KiB or more on average.
pub const MIN_AVERAGE_CHUNK: u64 = 4096;

/// The most chunks a blob of `size` bytes may be listed as.
pub fn max_chunks(size: u64) -> u64 {
    BASE_CHUNKS + size / MIN_AVERAGE_CHUNK
}

/// The chunks of a blob of `size` bytes with their offsets, or why the list
/// is refused. A list of zero or one chunk means "not chunked": empty.
pub fn validate_chunk_list(metas: &[ChunkMeta], size: u64) -> Result<Vec<Chunk>, String> {
    if metas.len() <= 1 {
        return Ok(Vec::new());
    }
    let limit = max_chunks(size);
    if metas.len() as u64 > limit {
        return Err(format!(
            "{} chunks for {size} bytes, more than the {limit} allowed",
            metas.len()
        ));
    }
    let mut offset = 0u64;
    let mut chunks = Vec::with_capacity(metas.len());
    for (i, meta) in metas.iter().enumerate() {
        let digest =
            B3Digest::try_from(meta.digest.as_ref()).map_err(|e| format!("chunk {i}: {e}"))?;
        if meta.size == 0 {
            return Err(format!("chunk {i} is empty"));
        }
        chunks.push(Chunk {
            digest,
            offset,
            size: meta.size,
        });
        offset = offset
            .checked_add(meta.size)
            .ok_or_else(|| "chunk sizes overflow".to_string())?;
    }
    if offset != size {
        return Err(format!(
            "chunks add up to {offset} bytes, the file has {size}"
        ));
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn meta(size: u64) -> ChunkMeta {
        ChunkMeta {
            digest: Bytes::copy_from_slice(&[1; 32]),
            size,
        }
    }

    #[test]
    fn a_list_that_adds_up_is_taken_with_offsets() {
        let chunks = validate_chunk_list(&[meta(3), meta(5)], 8).unwrap();
        assert_eq!(chunks[1].offset, 3);
        assert!(validate_chunk_list(&[meta(8)], 8).unwrap().is_empty());
    }

    #[test]
    fn lists_that_do_not_add_up_or_are_too_long_are_refused() {
        assert!(validate_chunk_list(&[meta(3), meta(4)], 8).is_err());
        assert!(validate_chunk_list(&[meta(3), meta(0), meta(5)], 8).is_err());
        assert!(validate_chunk_list(&[meta(u64::MAX), meta(2)], 1).is_err());
        let size = 1 << 20;
        let many = vec![meta(4); (size / 4) as usize];
        let e = validate_chunk_list(&many, size).unwrap_err();
        assert!(e.contains("allowed"), "{e}");
        let enough = vec![meta(size / 1024); 1024];
        assert_eq!(validate_chunk_list(&enough, size).unwrap().len(), 1024);
    }
}
