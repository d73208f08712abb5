//! The FUSE target's store serves real data: the seed walks get replies
//! with content, not errors, so fuzzing starts past the error paths.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::Opcode;
use fuse_backend_rs::api::server::Server;
use tvix_virtiofsd::fs::{FsConfig, StoreFs};
use tvix_virtiofsd_fuzz::fixture::{self, store_path_names};
use tvix_virtiofsd_fuzz::guest::{frame, serve, Reply};
use tvix_virtiofsd_fuzz::requests::Requests;

/// Serves `requests` on a new filesystem over `transport` (a shape bit).
fn serve_over(transport: u8, requests: &[Vec<u8>]) -> Vec<Reply> {
    let fs = Arc::new(StoreFs::new(FsConfig::default(), fixture::store()));
    let server = Server::new(fs);
    let input: Vec<u8> = requests
        .iter()
        .flat_map(|r| frame(transport | 7 << 2, r))
        .collect();
    serve(&server, &input)
}

/// The replies to `requests`, the same over the virtqueue and /dev/fuse.
fn replies(requests: &[Vec<u8>]) -> Vec<Reply> {
    let virtqueue = serve_over(0, requests);
    assert_eq!(virtqueue, serve_over(0x80, requests), "transports differ");
    virtqueue
}

fn ok_with(len: usize) -> Reply {
    Reply::Sent { len, error: 0 }
}

#[test]
fn reads_every_kind_of_file_from_the_fixture() {
    let [tree, file, link, missing] = store_path_names();
    let mut r = Requests::default();
    let sizes = [
        ("small", 100),
        ("chunked", 300 << 10),
        ("large", (4 << 20) + 1),
    ];
    let mut requests = vec![r.init(), r.lookup(1, &tree)];
    for (i, (name, _)) in sizes.iter().enumerate() {
        let node = 3 + i as u64;
        requests.push(r.lookup(2, name));
        requests.push(r.open(Opcode::Open, node));
        // The last 4 KiB of each, which crosses chunks for the chunked one.
        let size: u64 = sizes[i].1;
        requests.push(r.read(
            Opcode::Read,
            node,
            1 + i as u64,
            size.saturating_sub(4096),
            4096,
        ));
    }
    requests.push(r.lookup(1, &file));
    requests.push(r.lookup(1, &link));
    requests.push(r.readlink(7));
    requests.push(r.lookup(1, &missing));

    let got = replies(&requests);
    // 16-byte header, then 128 bytes of entry, 16 of open, the data.
    assert!(
        matches!(got[0], Reply::Sent { error: 0, .. }),
        "INIT: {:?}",
        got[0]
    );
    assert_eq!(got[1], ok_with(144), "lookup of the tree");
    for (i, (name, size)) in sizes.iter().enumerate() {
        assert_eq!(got[2 + 3 * i], ok_with(144), "lookup of {name}");
        assert_eq!(got[3 + 3 * i], ok_with(32), "open of {name}");
        let data = (*size as usize).min(4096);
        assert_eq!(got[4 + 3 * i], ok_with(16 + data), "read of {name}");
    }
    assert_eq!(got[11], ok_with(144), "lookup of the file path");
    assert_eq!(got[12], ok_with(144), "lookup of the symlink path");
    assert_eq!(got[13], ok_with(16 + tree.len()), "readlink");
    // The store path whose lookup fails as with the store down.
    assert_eq!(
        got[14],
        Reply::Sent {
            len: 16,
            error: -libc::EIO
        },
        "missing path"
    );
}

/// FUSE_DESTROY: fuse-backend-rs writes its success reply to /dev/fuse but
/// counts it as 0 bytes; the harness takes that as the silent reply the
/// virtqueue reports, after checking the header that reached the device.
#[test]
fn destroy_is_answered_on_the_device_and_reported_silent() {
    let mut r = Requests::default();
    let requests = vec![r.init(), r.request(Opcode::Destroy, 0, &[])];
    let got = replies(&requests);
    assert_eq!(got[1], Reply::Silent, "DESTROY");
}
