//! Store path basenames the guest looks up, and the nixbase32 inside them.

// libFuzzer's main, except in a test build (fuzz/Cargo.toml).
#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use tvix_virtiofsd::store::{nixbase32, store_path};

fuzz_target!(|data: &[u8]| {
    if let Some(hash) = store_path::parse(data) {
        assert_eq!(
            nixbase32::encode(&hash).as_bytes(),
            &data[..store_path::HASH_LEN]
        );
    }
    // Decoding accepts exactly what encoding produces.
    if let Ok(bytes) = nixbase32::decode::<20>(data) {
        assert_eq!(nixbase32::encode(&bytes).as_bytes(), data);
    }
    if let Ok(bytes) = nixbase32::decode::<32>(data) {
        assert_eq!(nixbase32::encode(&bytes).as_bytes(), data);
    }
    if let Some(bytes) = data.first_chunk::<20>() {
        let encoded = nixbase32::encode(bytes);
        assert_eq!(encoded.len(), store_path::HASH_LEN);
        assert_eq!(nixbase32::decode::<20>(encoded.as_bytes()), Ok(*bytes));
    }
});
