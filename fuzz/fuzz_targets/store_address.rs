//! Store addresses (`--store` and the per-service flags) and the channels
//! made from them.

// libFuzzer's main, except in a test build (fuzz/Cargo.toml).
#![cfg_attr(not(test), no_main)]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tvix_virtiofsd::store::{StoreAddress, TlsSettings};
use tvix_virtiofsd_fuzz::fixture::runtime;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(address) = text.parse::<StoreAddress>() else {
        return;
    };
    // What is shown in logs parses back to the same address.
    assert_eq!(
        address.to_string().parse::<StoreAddress>().ok(),
        Some(address.clone())
    );
    // (The runtime runs the tasks a channel spawns, so they end with it.)
    // Plain and unix addresses make a channel without touching the network
    // (TLS ones would read the system's roots on every input).
    if !matches!(address, StoreAddress::Https(_)) {
        let _enter = runtime().enter();
        let _ = address.channel(Duration::from_secs(1), &TlsSettings::default());
    }
});
