//! Store path basenames: `<32 nixbase32 chars>-<name>`.

use super::nixbase32;

/// Length of the hash part of a store path basename.
pub const HASH_LEN: usize = nixbase32::encoded_len(20);

/// Nix's rule for the name part: ASCII letters, digits and `+-._?=`, not
/// starting with a dot.
fn is_valid_name_part(name: &[u8]) -> bool {
    !name.is_empty()
        && name[0] != b'.'
        && name.len() <= 211
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(c))
}

/// Splits and decodes a store path basename into its 20-byte hash, or `None`
/// if it is not one. No store call is needed to reject a bad name.
pub fn parse(basename: &[u8]) -> Option<[u8; 20]> {
    if basename.len() < HASH_LEN + 2 || basename[HASH_LEN] != b'-' {
        return None;
    }
    if !is_valid_name_part(&basename[HASH_LEN + 1..]) {
        return None;
    }
    nixbase32::decode::<20>(&basename[..HASH_LEN]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_basenames() {
        let hash =
            parse(b"00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432").unwrap();
        assert_eq!(
            data_encoding::HEXLOWER.encode(&hash),
            "8a12321522fd91efbd60ebb2481af88580f61600"
        );
    }

    #[test]
    fn rejects_invalid_basenames() {
        for bad in [
            &b"00bgd045z0d4icpbc2yyz4gx48ak44la"[..],
            b"00bgd045z0d4icpbc2yyz4gx48ak44la-",
            b"00bgd045z0d4icpbc2yyz4gx48ak44la_x",
            b"00bgd045z0d4icpbc2yyz4gx48ak44le-x",
            b"00bgd045z0d4icpbc2yyz4gx48ak44la-.hidden",
            b"00bgd045z0d4icpbc2yyz4gx48ak44la-a b",
            b"short-name",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
