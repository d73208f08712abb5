//! Every end-to-end path under the default `--seccomp kill`: a blob larger
//! than the in-memory bound that the store does not chunk (spooled to a
//! temporary file, then kept in the disk cache), eviction, serving from the
//! disk cache with the store gone, the root listing and the stats file. A
//! syscall missing from the allowlist kills the daemon with SIGSYS here,
//! not in a deployment. The FUSE workers serve all of it under the
//! narrower `request` filter stacked on the daemon's (checked from
//! /proc: one filter more than the main thread).

mod common;
#[allow(dead_code)]
use test_support::{fuse_guest, vhost_frontend};

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

/// `Seccomp_filters` of each thread of `pid`, by thread name.
fn filters_by_thread(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let filters = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp_filters:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((name.trim().to_string(), filters));
    }
    out
}

/// Every thread whose name starts with `serving` has one filter more than
/// the main thread (the daemon's own, plus `request`).
fn assert_serving_threads_narrowed(pid: u32, serving: &str) {
    let threads = filters_by_thread(pid);
    let main = threads
        .iter()
        .find(|(name, _)| name == "tvix-virtiofsd")
        .map(|(_, n)| *n)
        .expect("the main thread");
    assert!(main >= 2, "main thread: {main} filters: {threads:?}");
    let serving: Vec<_> = threads
        .iter()
        .filter(|(name, _)| name.starts_with(serving))
        .collect();
    assert!(!serving.is_empty(), "no {serving:?} thread: {threads:?}");
    for (name, n) in serving {
        assert_eq!(*n, main + 1, "{name}: {threads:?}");
    }
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
    assert_serving_threads_narrowed(daemon.pid(), "fuse-");
    assert!(daemon.stop(), "did not unmount cleanly");

    // A cache without eviction pressure, filled and then read from with
    // the store gone, by one instance (its mappings are its own).
    let offline_cache = scratch("kill-offline-cache");
    let offline_arg = offline_cache.display().to_string();
    let offline_args = [
        "--seccomp",
        "kill",
        "--cache-dir",
        offline_arg.as_str(),
        "--instance",
        "vm1",
    ];
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
    assert_serving_threads_narrowed(offline.pid(), "fuse-");
}

/// Over vhost-user, with a request pool: the queue threads (named by
/// vhost-user-backend; each narrows itself at its first event) and the
/// pool's workers both serve under `request`, in kill mode, through INIT,
/// LOOKUP, OPEN, READ and FORGET.
#[test]
fn vhost_user_serving_threads_run_under_the_request_filter() {
    use fuse_backend_rs::abi::fuse_abi::{Opcode, OpenIn, OpenOut, ROOT_ID};
    use fuse_guest::{decode, Guest, REQUESTS};
    use vm_memory::ByteValued;

    let fixture = Fixture::start(&robust_tree(), &[]);
    let mut daemon = VhostUserDaemon::start(
        &fixture.address(),
        &["--seccomp", "kill", "--thread-pool-size", "2"],
    );
    let (mut guest, _) = Guest::connect(&daemon.socket, 0);
    let pkg = guest.lookup_ok(ROOT_ID, &fixture.store_path("pkg-1.0"));
    let hello = guest.lookup_ok(pkg.nodeid, "hello");
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let fh = decode::<OpenOut>(
        &guest
            .request(REQUESTS, Opcode::Open, hello.nodeid, open.as_slice())
            .ok(),
    )
    .fh;
    assert_eq!(guest.read(hello.nodeid, fh).ok(), ROBUST_HELLO);
    // The high-priority queue's thread narrows itself at its first event.
    let forget = fuse_backend_rs::abi::fuse_abi::ForgetIn { nlookup: 1 };
    let unique = guest.next_unique();
    let chain = [vhost_frontend::Buf::Readable(fuse_guest::message(
        Opcode::Forget as u32,
        unique,
        hello.nodeid,
        forget.as_slice(),
    ))];
    let used = guest.vmm.call(0, &chain, fuse_guest::TIMEOUT);
    assert_eq!(used.len, 0, "FORGET got a reply");
    assert!(daemon.is_running(), "daemon died:\n{}", daemon.log());
    assert_serving_threads_narrowed(daemon.pid(), "vring_worker");
    assert_serving_threads_narrowed(daemon.pid(), "fs-worker");
    drop(guest);
    daemon.assert_exits_cleanly_after_the_guest_left();
}
