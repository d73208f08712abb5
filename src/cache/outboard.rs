//! Verifying part of a chunk without reading all of it. A chunk's BLAKE3
//! digest is the root of a binary tree over its bytes; an "outboard" keeps
//! the chaining values of the chunk's aligned 16 KiB groups. To check a
//! range, the groups it touches are hashed from the bytes read, the others
//! taken from the outboard, and the tree above them recomputed: only if
//! that gives the chunk's digest are the bytes (and the outboard) genuine.
//! The outboard itself is never trusted, so it needs no checksum.
//!
//! A random 4 KiB read of a chunk in the disk cache then costs a 16 KiB
//! read and hash instead of the whole chunk's.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::store::B3Digest;

/// Bytes per group: a power of two, and 16 BLAKE3 chunks, which is what the
/// widest SIMD hashing works on at once.
pub const GROUP: u64 = 16 << 10;

/// The chaining values of every group of `data` (an outboard), or `None`
/// if `data` is a single group (it is read whole anyway).
pub fn compute(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() as u64 <= GROUP {
        return None;
    }
    let mut outboard = Vec::with_capacity(groups(data.len() as u64) * 32);
    for (i, group) in data.chunks(GROUP as usize).enumerate() {
        outboard.extend_from_slice(&group_cv(i as u64 * GROUP, group));
    }
    Some(outboard)
}

/// How many groups a chunk of `size` bytes has.
pub fn groups(size: u64) -> usize {
    size.div_ceil(GROUP) as usize
}

/// The group-aligned range that covers `from..to` of a chunk of `size`.
pub fn aligned(from: u64, to: u64, size: u64) -> (u64, u64) {
    (
        from / GROUP * GROUP,
        to.div_ceil(GROUP).saturating_mul(GROUP).min(size),
    )
}

/// Whether `data`, the bytes at `start` (group-aligned) of a chunk of
/// `size` bytes, belong to the chunk `digest`, given its `outboard`.
pub fn verify_range(
    digest: &B3Digest,
    size: u64,
    outboard: &[u8],
    start: u64,
    data: &[u8],
) -> bool {
    let end = start + data.len() as u64;
    let aligned_end = end == size || end % GROUP == 0;
    if size <= GROUP
        || start % GROUP != 0
        || !aligned_end
        || end > size
        || data.is_empty()
        || outboard.len() != groups(size) * 32
    {
        return false;
    }
    let mut leaves: Vec<ChainingValue> = outboard
        .chunks_exact(32)
        .map(|cv| cv.try_into().expect("32-byte chunks"))
        .collect();
    for (i, group) in data.chunks(GROUP as usize).enumerate() {
        let offset = start + i as u64 * GROUP;
        leaves[(offset / GROUP) as usize] = group_cv(offset, group);
    }
    let (left, right) = split(0, size, &leaves);
    merge_subtrees_root(&left, &right, Mode::Hash).as_bytes() == digest.as_bytes()
}

/// The group chaining values of an outboard, if they hash to `digest`
/// for a blob of `size` (more than one group): a blob's bytes can then be
/// checked group by group against them.
pub fn verified_leaves(
    digest: &B3Digest,
    size: u64,
    outboard: &[u8],
) -> Option<Vec<ChainingValue>> {
    let leaves = leaves(size, outboard)?;
    (root_of(size, &leaves).as_bytes() == digest.as_bytes()).then_some(leaves)
}

/// The BLAKE3 digest an outboard of a blob of `size` (more than one
/// group) stands for: the root of the tree over its group chaining values.
pub fn root(size: u64, outboard: &[u8]) -> Option<B3Digest> {
    let leaves = leaves(size, outboard)?;
    Some(B3Digest::from(root_of(size, &leaves)))
}

fn leaves(size: u64, outboard: &[u8]) -> Option<Vec<ChainingValue>> {
    if size <= GROUP || outboard.len() != groups(size) * 32 {
        return None;
    }
    Some(
        outboard
            .chunks_exact(32)
            .map(|cv| cv.try_into().expect("32-byte chunks"))
            .collect(),
    )
}

fn root_of(size: u64, leaves: &[ChainingValue]) -> blake3::Hash {
    let (left, right) = split(0, size, leaves);
    merge_subtrees_root(&left, &right, Mode::Hash)
}

/// The outboard of bytes arriving in order into one buffer, each group
/// hashed as soon as it is complete, while it is still in the CPU's cache.
/// Its root is the buffer's digest: one hashing pass both verifies the
/// bytes and gives the outboard.
#[derive(Default)]
pub struct GroupHasher {
    hashed: usize,
    outboard: Vec<u8>,
}

impl GroupHasher {
    /// Hashes the complete groups of `data` (the buffer so far; it only
    /// ever grows) not hashed yet.
    pub fn advance(&mut self, data: &[u8]) {
        let group = GROUP as usize;
        while data.len() - self.hashed >= group {
            let cv = group_cv(self.hashed as u64, &data[self.hashed..self.hashed + group]);
            self.outboard.extend_from_slice(&cv);
            self.hashed += group;
        }
    }

    /// The digest of `data` (the whole buffer) and, if it is more than one
    /// group, its outboard.
    pub fn finish(mut self, data: &[u8]) -> (B3Digest, Option<Vec<u8>>) {
        if data.len() as u64 <= GROUP {
            return (B3Digest::of(data), None);
        }
        self.advance(data);
        if self.hashed < data.len() {
            let cv = group_cv(self.hashed as u64, &data[self.hashed..]);
            self.outboard.extend_from_slice(&cv);
        }
        let digest = root(data.len() as u64, &self.outboard).expect("one value per group");
        (digest, Some(self.outboard))
    }
}

/// Whether `group`, the bytes of the group at `offset`, match `leaves`.
pub fn group_matches(leaves: &[ChainingValue], offset: u64, group: &[u8]) -> bool {
    offset % GROUP == 0 && leaves.get((offset / GROUP) as usize) == Some(&group_cv(offset, group))
}

/// Computes an outboard from bytes fed in order, in pieces of any size.
#[derive(Default)]
pub struct OutboardBuilder {
    group: Vec<u8>,
    offset: u64,
    outboard: Vec<u8>,
}

impl OutboardBuilder {
    pub fn update(&mut self, mut piece: &[u8]) {
        let group = GROUP as usize;
        while !piece.is_empty() {
            if self.group.is_empty() && piece.len() >= group {
                // A whole group straight from the piece, without a copy.
                let cv = group_cv(self.offset, &piece[..group]);
                self.outboard.extend_from_slice(&cv);
                self.offset += GROUP;
                piece = &piece[group..];
                continue;
            }
            let take = (group - self.group.len()).min(piece.len());
            self.group.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if self.group.len() == group {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        self.outboard
            .extend_from_slice(&group_cv(self.offset, &self.group));
        self.offset += self.group.len() as u64;
        self.group.clear();
    }

    /// The outboard of everything fed.
    pub fn finish(mut self) -> Vec<u8> {
        if !self.group.is_empty() {
            self.flush();
        }
        self.outboard
    }
}

/// The chaining value of the group at `offset`.
fn group_cv(offset: u64, group: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(offset)
        .update(group)
        .finalize_non_root()
}

/// The two children of the subtree over bytes `start..end` (more than one
/// group), in BLAKE3's tree shape: the left one holds the largest power of
/// two of 1 KiB chunks that is less than the whole, which for a subtree
/// larger than a group is a whole number of groups.
fn split(start: u64, end: u64, leaves: &[ChainingValue]) -> (ChainingValue, ChainingValue) {
    let middle = start + left_subtree_len(end - start);
    (subtree(start, middle, leaves), subtree(middle, end, leaves))
}

fn subtree(start: u64, end: u64, leaves: &[ChainingValue]) -> ChainingValue {
    if end - start <= GROUP {
        return leaves[(start / GROUP) as usize];
    }
    let (left, right) = split(start, end, leaves);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    const SIZES: [usize; 8] = [
        16385,
        32768,
        32769,
        100_000,
        262_144,
        262_145,
        300_001,
        1 << 20,
    ];

    #[test]
    fn every_range_of_a_genuine_chunk_verifies() {
        for size in SIZES {
            let bytes = data(size);
            let digest = B3Digest::of(&bytes);
            let outboard = compute(&bytes).unwrap();
            assert_eq!(outboard.len(), groups(size as u64) * 32);
            for (from, to) in [(0, 1), (5000, 9000), (16384, 16385), (size - 1, size)] {
                let (start, end) = aligned(from as u64, to as u64, size as u64);
                assert!(start <= from as u64 && end >= to as u64);
                let range = &bytes[start as usize..end as usize];
                assert!(
                    verify_range(&digest, size as u64, &outboard, start, range),
                    "size {size}, bytes {from}..{to}"
                );
            }
            assert!(verify_range(&digest, size as u64, &outboard, 0, &bytes));
        }
    }

    #[test]
    fn a_flipped_byte_in_the_data_or_the_outboard_fails() {
        for size in SIZES {
            let bytes = data(size);
            let digest = B3Digest::of(&bytes);
            let outboard = compute(&bytes).unwrap();
            let (start, end) = aligned(size as u64 / 2, size as u64 / 2 + 100, size as u64);
            let mut range = bytes[start as usize..end as usize].to_vec();
            range[3] ^= 1;
            assert!(!verify_range(
                &digest,
                size as u64,
                &outboard,
                start,
                &range
            ));

            let range = &bytes[start as usize..end as usize];
            for at in [0, outboard.len() / 2, outboard.len() - 1] {
                let mut bad = outboard.clone();
                bad[at] ^= 1;
                // The group being read replaces its own value, so a flip
                // there changes nothing; anywhere else it must fail.
                let own = (start / GROUP) as usize * 32..(start / GROUP + 1) as usize * 32;
                if !own.contains(&at) {
                    assert!(!verify_range(&digest, size as u64, &bad, start, range));
                }
            }
        }
    }

    #[test]
    fn a_built_outboard_verifies_and_checks_each_group() {
        for size in SIZES {
            let bytes = data(size);
            let digest = B3Digest::of(&bytes);
            // Pieces smaller than a group, and larger ones (hashed in place).
            let mut builder = OutboardBuilder::default();
            for piece in bytes.chunks(7777) {
                builder.update(piece);
            }
            let outboard = builder.finish();
            assert_eq!(outboard, compute(&bytes).unwrap());
            let mut builder = OutboardBuilder::default();
            for piece in bytes.chunks(40000) {
                builder.update(piece);
            }
            assert_eq!(builder.finish(), outboard);
            let leaves = verified_leaves(&digest, size as u64, &outboard).unwrap();
            for (i, group) in bytes.chunks(GROUP as usize).enumerate() {
                assert!(group_matches(&leaves, i as u64 * GROUP, group));
                let mut bad = group.to_vec();
                bad[0] ^= 1;
                assert!(!group_matches(&leaves, i as u64 * GROUP, &bad));
            }
            let mut bad = outboard.clone();
            bad[5] ^= 1;
            assert!(verified_leaves(&digest, size as u64, &bad).is_none());
        }
    }

    #[test]
    fn a_group_hasher_gives_the_digest_and_the_outboard_in_one_pass() {
        for size in [0, 1, 16384, 16385].into_iter().chain(SIZES) {
            let bytes = data(size);
            let mut hasher = GroupHasher::default();
            let mut buf = Vec::new();
            for piece in bytes.chunks(5000) {
                buf.extend_from_slice(piece);
                hasher.advance(&buf);
            }
            let (digest, outboard) = hasher.finish(&buf);
            assert_eq!(digest, B3Digest::of(&bytes), "size {size}");
            assert_eq!(outboard, compute(&bytes), "size {size}");
        }
    }

    #[test]
    fn misaligned_or_misshapen_input_is_refused() {
        let bytes = data(100_000);
        let digest = B3Digest::of(&bytes);
        let outboard = compute(&bytes).unwrap();
        // Not group-aligned at the start or the end, a size the outboard
        // does not fit, empty, an outboard of the wrong length, a
        // single-group chunk. (The size only shapes the tree: the digest
        // commits to the bytes and so to their length.)
        assert!(!verify_range(
            &digest,
            100_000,
            &outboard,
            1,
            &bytes[1..16385]
        ));
        assert!(!verify_range(
            &digest,
            100_000,
            &outboard,
            0,
            &bytes[..1000]
        ));
        assert!(!verify_range(
            &digest,
            200_000,
            &outboard,
            0,
            &bytes[..16384]
        ));
        assert!(!verify_range(&digest, 100_000, &outboard, 0, &[]));
        assert!(!verify_range(
            &digest,
            100_000,
            &outboard[32..],
            0,
            &bytes[..16384]
        ));
        assert!(compute(&bytes[..16384]).is_none());
        // The right bytes against another chunk's digest.
        let other = B3Digest::of(b"other");
        assert!(!verify_range(
            &other,
            100_000,
            &outboard,
            0,
            &bytes[..16384]
        ));
    }
}
