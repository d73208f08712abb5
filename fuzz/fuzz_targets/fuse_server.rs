//! The FUSE server with the filesystem behind it: request bytes from the
//! guest (see `guest.rs` for the framing), over virtqueue descriptor chains
//! in guest memory or /dev/fuse buffers, served from a store held in memory
//! (see `fixture.rs`). Each input starts a new filesystem, as a new VMM
//! connection does.

// libFuzzer's main, except in a test build (fuzz/Cargo.toml).
#![cfg_attr(not(test), no_main)]

use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use libfuzzer_sys::fuzz_target;
use tvix_virtiofsd::fs::{FsConfig, StoreFs};
use tvix_virtiofsd_fuzz::{fixture, guest};

fuzz_target!(|data: &[u8]| {
    let config = FsConfig {
        readahead_chunks: 2,
        ..Default::default()
    };
    let fs = Arc::new(StoreFs::new(config, fixture::store()));
    let server = Server::new(fs);
    let _ = guest::serve(&server, data);
});
