//! Every end-to-end path under the default `--seccomp kill`: a blob larger
//! than the in-memory bound that the store does not chunk (spooled to a
//! temporary file, then kept in the disk cache), eviction, serving from the
//! disk cache with the store gone, the root listing and the stats file. A
//! syscall missing from the allowlist kills the daemon with SIGSYS here,
//! not in a deployment.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::tree::pseudo_random;
use common::*;

/// Two files over the 4 MiB in-memory bound, each its own store path.
fn big_unchunked_tree() -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let dir = scratch("big-unchunked");
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..2u64)
        .map(|i| (format!("big-{i}"), pseudo_random(i + 7, (9 << 20) + 4321)))
        .collect();
    for (name, data) in &files {
        std::fs::write(tree.join(name), data).unwrap();
    }
    (tree, files)
}

fn assert_alive(daemon: &mut Daemon, what: &str) {
    assert!(
        daemon.is_running(),
        "the daemon died {what} (SIGSYS from the seccomp allowlist?); log:\n{}",
        daemon.log()
    );
}

#[test]
fn large_unchunked_blobs_with_a_disk_cache_in_kill_mode() {
    let (tree, files) = big_unchunked_tree();
    // No --chunk-size: the fixture, like tvix-store's memory:// and redb://
    // blob services, sends no chunk list.
    let mut fixture = Fixture::start(&tree, &[]);
    let cache = scratch("kill-cache");
    let stats = cache.join("..").join("daemon-stats");
    let cache_arg = cache.display().to_string();
    let stats_arg = stats.display().to_string();
    // Room for one of the two files: reading both evicts.
    let args = [
        "--seccomp",
        "kill",
        "--cache-dir",
        cache_arg.as_str(),
        "--disk-cache-size",
        "12M",
        "--list-root",
        "--stats-file",
        stats_arg.as_str(),
    ];
    let mut daemon = Daemon::mount(&fixture.address(), &args);
    let listed: Vec<String> = std::fs::read_dir(&daemon.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed.len(), files.len(), "root listing: {listed:?}");
    for round in 0..2 {
        for (name, data) in &files {
            let path = daemon.path(&fixture.store_path(name));
            let got = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("reading {name} (round {round}): {e}"));
            assert!(got == *data, "{name}: wrong content");
            assert_alive(&mut daemon, &format!("reading {name}"));
        }
    }
    // The stats file is written once a second while counters change.
    std::thread::sleep(Duration::from_millis(1500));
    assert_alive(&mut daemon, "writing the stats file");
    let counters = read_counters(&stats);
    assert!(
        counters.get("disk_evictions").copied().unwrap_or(0) > 0,
        "nothing was evicted: {counters:?}"
    );
    assert!(daemon.stop(), "did not unmount cleanly");

    // A cache without eviction pressure, filled and then read from with
    // the store gone.
    let offline_cache = scratch("kill-offline-cache");
    let offline_arg = offline_cache.display().to_string();
    let offline_args = ["--seccomp", "kill", "--cache-dir", offline_arg.as_str()];
    let (name, data) = &files[0];
    let path_name = fixture.store_path(name);
    let mut filling = Daemon::mount(&fixture.address(), &offline_args);
    assert!(std::fs::read(filling.path(&path_name)).unwrap() == *data);
    assert_alive(&mut filling, "filling the disk cache");
    assert!(filling.stop(), "did not unmount cleanly");
    fixture.stop();
    let mut offline = Daemon::mount(&fixture.address(), &offline_args);
    let got = std::fs::read(offline.path(&path_name))
        .unwrap_or_else(|e| panic!("reading from the disk cache: {e}; log:\n{}", offline.log()));
    assert!(got == *data, "offline read: wrong content");
    assert_alive(&mut offline, "serving offline");
}
