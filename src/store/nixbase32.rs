//! Nix's base32 encoding of store path hashes.
//!
//! Alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no e, o, t, u), no padding,
//! characters produced from the last 5-bit group to the first: output
//! character k, counted from the end, holds bits `[5k, 5k+5)` of the input
//! read as a little-endian bit string.

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the encoding of `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    (len * 8).div_ceil(5)
}

/// Encodes `input` in Nix base32.
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for k in (0..len).rev() {
        let bit = k * 5;
        let byte = bit / 8;
        let shift = bit % 8;
        let lo = u16::from(input[byte]) >> shift;
        let hi = input
            .get(byte + 1)
            .map_or(0, |b| u16::from(*b) << (8 - shift));
        out.push(ALPHABET[usize::from((lo | hi) & 0x1f)] as char);
    }
    out
}

/// Why a string is not valid Nix base32.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid nixbase32 character {0:?}")]
    InvalidCharacter(char),
    #[error("nixbase32 string has bits set past the end of the output")]
    TrailingBits,
    #[error("nixbase32 string of length {0} does not encode a whole number of bytes")]
    InvalidLength(usize),
}

/// Decodes a Nix base32 string into `N` bytes.
pub fn decode<const N: usize>(input: &[u8]) -> Result<[u8; N], DecodeError> {
    if input.len() != encoded_len(N) {
        return Err(DecodeError::InvalidLength(input.len()));
    }
    let mut out = [0u8; N];
    for (pos, &c) in input.iter().enumerate() {
        let digit = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or(DecodeError::InvalidCharacter(c as char))? as u16;
        let k = input.len() - 1 - pos;
        let bit = k * 5;
        let byte = bit / 8;
        let shift = bit % 8;
        out[byte] |= (digit << shift) as u8;
        let carry = digit >> (8 - shift);
        if carry != 0 {
            match out.get_mut(byte + 1) {
                Some(b) => *b |= carry as u8,
                None => return Err(DecodeError::TrailingBits),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    #[test]
    fn encodes_the_documented_vectors() {
        assert_eq!(encode(&hex("1f")), "0z");
        assert_eq!(
            encode(&hex("8a12321522fd91efbd60ebb2481af88580f61600")),
            "00bgd045z0d4icpbc2yyz4gx48ak44la"
        );
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn decodes_the_documented_vectors() {
        assert_eq!(decode::<1>(b"0z").unwrap().to_vec(), hex("1f"));
        assert_eq!(
            decode::<20>(b"00bgd045z0d4icpbc2yyz4gx48ak44la")
                .unwrap()
                .to_vec(),
            hex("8a12321522fd91efbd60ebb2481af88580f61600")
        );
    }

    #[test]
    fn rejects_bits_past_the_end() {
        assert_eq!(decode::<1>(b"zz"), Err(DecodeError::TrailingBits));
    }

    #[test]
    fn rejects_letters_outside_the_alphabet() {
        for bad in [b'e', b'o', b't', b'u', b'A', b'-', b'/'] {
            let mut s = *b"00bgd045z0d4icpbc2yyz4gx48ak44la";
            s[5] = bad;
            assert_eq!(
                decode::<20>(&s),
                Err(DecodeError::InvalidCharacter(bad as char))
            );
        }
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert_eq!(
            decode::<20>(b"00bgd045z0d4icpbc2yyz4gx48ak44l"),
            Err(DecodeError::InvalidLength(31))
        );
    }

    #[test]
    fn round_trips_every_byte_value() {
        let mut input = [0u8; 20];
        for v in 0..=255u8 {
            input.iter_mut().enumerate().for_each(|(i, b)| {
                *b = v.wrapping_mul(31).wrapping_add(i as u8);
            });
            assert_eq!(decode::<20>(encode(&input).as_bytes()).unwrap(), input);
        }
    }
}
