//! A blob's chunk list: from the store (BlobService.Stat with chunks) and
//! from the disk cache (40-byte records, `cache::mappings`). The input is
//! the blob's size (8 bytes, little-endian) followed by the message.

// libFuzzer's main, except in a test build (fuzz/Cargo.toml).
#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tvix_virtiofsd::cache::{decode_chunk_list, encode_chunk_list};
use tvix_virtiofsd::proto::castore;
use tvix_virtiofsd::store::chunk_list::{max_chunks, validate_chunk_list};
use tvix_virtiofsd::store::Chunk;

/// A list the filesystem may slice by: contiguous from 0, no empty chunk,
/// adding up to the blob's size.
fn check(chunks: &[Chunk], size: u64) {
    if chunks.is_empty() {
        return;
    }
    let mut offset = 0u64;
    for c in chunks {
        assert_eq!(c.offset, offset);
        assert!(c.size > 0);
        offset = offset.checked_add(c.size).expect("no overflow");
    }
    assert_eq!(offset, size);
}

fuzz_target!(|data: &[u8]| {
    let Some((size, message)) = data.split_first_chunk::<8>() else {
        return;
    };
    let size = u64::from_le_bytes(*size);

    if let Ok(answer) = castore::StatBlobResponse::decode(message) {
        if let Ok(chunks) = validate_chunk_list(&answer.chunks, size) {
            check(&chunks, size);
            assert!(
                chunks.len() as u64 <= max_chunks(size),
                "list past the bound"
            );
            // What the cache writes for it reads back the same.
            let stored = encode_chunk_list(&chunks);
            assert_eq!(decode_chunk_list(&stored, size), Some(chunks));
        }
    }

    if let Some(chunks) = decode_chunk_list(message, size) {
        check(&chunks, size);
        assert_eq!(encode_chunk_list(&chunks), message);
    }
});
