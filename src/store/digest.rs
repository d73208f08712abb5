//! BLAKE3-256 digests as used by castore for blobs and Directories.

use std::fmt;

/// A BLAKE3-256 digest. Displayed as lowercase hex, the form the logs use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct B3Digest([u8; 32]);

impl B3Digest {
    pub const LEN: usize = 32;

    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for B3Digest {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl From<[u8; 32]> for B3Digest {
    fn from(b: [u8; 32]) -> Self {
        Self(b)
    }
}

/// A digest field from the store that is not 32 bytes long.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("digest has {0} bytes, expected 32")]
pub struct InvalidDigestLength(pub usize);

impl TryFrom<&[u8]> for B3Digest {
    type Error = InvalidDigestLength;

    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 32]>::try_from(b)
            .map(Self)
            .map_err(|_| InvalidDigestLength(b.len()))
    }
}

impl fmt::Display for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_blob_digest_matches_the_protocol_doc() {
        assert_eq!(
            B3Digest::of(b"").to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn rejects_digests_of_the_wrong_length() {
        assert_eq!(
            B3Digest::try_from(&[0u8; 31][..]),
            Err(InvalidDigestLength(31))
        );
        assert_eq!(
            B3Digest::try_from(&[0u8; 33][..]),
            Err(InvalidDigestLength(33))
        );
        assert!(B3Digest::try_from(&[7u8; 32][..]).is_ok());
    }
}
