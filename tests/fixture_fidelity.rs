//! The fixture store is a stand-in for fault injection; it is only honest if
//! its import writes what the real importers write. The same trees imported
//! into the fixture and into real tvix-store and snix-store must give the
//! same store paths and the same PathInfo: root node (digest, size), the
//! NARInfo, everything.

mod common;

use std::path::Path;
use std::time::Duration;

use common::real_store::StoreKind;
use common::*;
use tvix_virtiofsd::proto::store::path_info_service_client::PathInfoServiceClient;
use tvix_virtiofsd::proto::store::{get_path_info_request, GetPathInfoRequest, PathInfo};
use tvix_virtiofsd::store::protocol::PackagePrefix;
use tvix_virtiofsd::store::{nixbase32, StoreAddress, StoreProtocol, TlsSettings};

/// The PathInfo `address` answers for the store path `basename`.
fn path_info(address: &str, protocol: StoreProtocol, basename: &str) -> PathInfo {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let address: StoreAddress = address.parse().unwrap();
        let channel = address
            .channel(Duration::from_secs(10), &TlsSettings::default())
            .unwrap();
        let mut client = PathInfoServiceClient::new(PackagePrefix::new(channel, protocol))
            .max_decoding_message_size(64 << 20);
        let hash = nixbase32::decode::<20>(&basename.as_bytes()[..32]).unwrap();
        let request = GetPathInfoRequest {
            by_what: Some(get_path_info_request::ByWhat::ByOutputHash(
                bytes::Bytes::copy_from_slice(&hash),
            )),
        };
        client
            .get(request)
            .await
            .unwrap_or_else(|e| panic!("{basename}: {e}"))
            .into_inner()
    })
}

/// The doc's "complicated" test vector on disk, plus the nesting that makes
/// sizes add up over several levels.
fn nested_tree() -> std::path::PathBuf {
    let root = scratch("fidelity-tree");
    let c = root.join("complicated");
    std::fs::create_dir_all(c.join("keep")).unwrap();
    std::fs::write(c.join("keep/.keep"), b"").unwrap();
    std::fs::write(c.join(".keep"), b"").unwrap();
    std::os::unix::fs::symlink("/nix/store/somewhereelse", c.join("aa")).unwrap();
    let n = root.join("nested");
    std::fs::create_dir_all(n.join("a/b/c")).unwrap();
    std::fs::create_dir_all(n.join("a/empty")).unwrap();
    std::fs::write(n.join("a/b/c/f"), b"f\n").unwrap();
    std::fs::write(n.join("a/b/g"), b"g\n").unwrap();
    std::fs::write(n.join("top"), b"top\n").unwrap();
    root
}

fn imports_as_the_real_store_does(kind: StoreKind, test: &str) {
    let trees = [sample_tree(), nested_tree()];
    let tree_refs: Vec<&Path> = trees.iter().map(|t| t.as_path()).collect();
    let store = real_store_or_skip!(kind, test, &tree_refs);
    let protocol = match kind {
        StoreKind::Tvix => StoreProtocol::Tvix,
        StoreKind::Snix => StoreProtocol::Snix,
    };
    let mut compared = 0;
    for tree in &trees {
        let fixture = Fixture::start(tree, &["--chunk-size", &CHUNK_SIZE.to_string()]);
        let mut fixture_paths = fixture.store_paths.clone();
        fixture_paths.sort();
        let mut real_paths: Vec<String> = store
            .store_paths()
            .iter()
            .filter(|(source, _)| source.parent() == Some(tree.as_path()))
            .map(|(_, b)| b.clone())
            .collect();
        real_paths.sort();
        assert_eq!(fixture_paths, real_paths, "store path names");
        for basename in &real_paths {
            let real = path_info(&store.address(), protocol, basename);
            let ours = path_info(&fixture.address(), StoreProtocol::Tvix, basename);
            assert_eq!(ours.node, real.node, "{basename}: root node");
            assert_eq!(ours.narinfo, real.narinfo, "{basename}: narinfo");
            assert_eq!(ours, real, "{basename}: path info");
            compared += 1;
        }
    }
    assert_eq!(compared, 6, "store paths compared");
}

#[test]
fn the_fixture_imports_as_tvix_store_does() {
    imports_as_the_real_store_does(StoreKind::Tvix, "the_fixture_imports_as_tvix_store_does");
}

#[test]
fn the_fixture_imports_as_snix_store_does() {
    imports_as_the_real_store_does(StoreKind::Snix, "the_fixture_imports_as_snix_store_does");
}
