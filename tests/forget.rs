//! FORGET through a real FUSE mount: after the kernel drops its dentries
//! and inodes, the daemon's inode table is back to (near) empty. The
//! filesystem runs in this process so the test can look at its table.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tvix_virtiofsd::cache::{CacheConfig, CachedStore};
use tvix_virtiofsd::fs::{FsConfig, StoreFs};
use tvix_virtiofsd::fuse::FuseMount;
use tvix_virtiofsd::store::{StoreAddress, StoreClient, StoreConfig, StoreProtocol};

#[test]
fn forgotten_inodes_are_freed() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let address: StoreAddress = fixture.address().parse().unwrap();
    let config = StoreConfig {
        blob_service: address.clone(),
        directory_service: address.clone(),
        path_info_service: address,
        protocol: StoreProtocol::Tvix,
        timeout: Duration::from_secs(10),
        min_rate: 1 << 20,
        tls: Default::default(),
    };
    let client = {
        let _guard = runtime.enter();
        StoreClient::new(&config, &tvix_virtiofsd::store::observed::Unobserved).unwrap()
    };
    let store = CachedStore::new(
        Arc::new(client),
        runtime.handle().clone(),
        CacheConfig::default(),
    )
    .unwrap();
    let fs = Arc::new(StoreFs::new(FsConfig::default(), store));
    let mountpoint = scratch("forget").join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mount = FuseMount::mount(fs.clone(), &mountpoint, 2).unwrap();

    let entries = mountpoint
        .join(fixture.store_path("many-files-1.0"))
        .join("entries");
    let mut looked_up = 0;
    for i in 0..MANY {
        let meta = std::fs::symlink_metadata(entries.join(format!("file-{i:05}"))).unwrap();
        assert!(meta.is_file());
        looked_up += 1;
    }
    assert_eq!(looked_up, MANY);
    assert!(
        fs.inode_count() >= MANY,
        "only {} inodes after {MANY} lookups",
        fs.inode_count()
    );

    // Make the kernel drop its dentry and inode caches: it sends FORGET.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches (are we root?)");
        if fs.inode_count() <= 10 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        fs.inode_count() <= 10,
        "{} inodes still live after FORGET",
        fs.inode_count()
    );

    // The filesystem still works after forgetting, with fresh inodes.
    assert!(entries.join("file-00042").is_file());
    mount.unmount().unwrap();
}
