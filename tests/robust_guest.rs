//! A malicious guest through the test VMM (vhost-user, no QEMU): opens
//! without releasing, FORGET games, a READ through aliased indirect
//! descriptors, a second INIT. The daemon answers every request, stays
//! within its bounds (handles, inodes, READ size, resident memory from
//! /proc), and keeps serving.

mod common;
// Each test uses the part of the test VMM that it needs.
#[allow(dead_code)]
use test_support::{fuse_guest, vhost_frontend};

use fuse_backend_rs::abi::fuse_abi::{
    ForgetIn, FsOptions, InitOut, Opcode, OpenIn, OpenOut, ReadIn, ROOT_ID,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_memory::ByteValued;

use common::*;
use fuse_guest::*;

const HIPRIO: usize = 0;
const MAX_HANDLES: usize = 64;
const MAX_INODES: usize = 256;
/// The READ size FUSE INIT negotiates (max_pages 256).
const MAX_READ: u32 = 1 << 20;

fn init(guest: &mut Guest) {
    let flags = (FsOptions::ASYNC_READ | FsOptions::MAX_PAGES).bits() as u32;
    let reply: InitOut = decode(&guest.init(flags));
    assert_eq!(reply.major, 7);
}

fn open(guest: &mut Guest, nodeid: u64) -> Outcome {
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    guest.request(REQUESTS, Opcode::Open, nodeid, open.as_slice())
}

fn forget(guest: &mut Guest, nodeid: u64, nlookup: u64) {
    let unique = guest.next_unique();
    let body = ForgetIn { nlookup };
    let chain = [vhost_frontend::Buf::Readable(
        [message(Opcode::Forget as u32, unique, nodeid, body.as_slice()).as_slice()].concat(),
    )];
    let used = guest.vmm.call(HIPRIO, &chain, TIMEOUT);
    assert_eq!(used.len, 0, "FORGET got a reply");
}

/// Where the daemon writes its stats file and Prometheus textfile.
struct Counters {
    stats: PathBuf,
    metrics: PathBuf,
}

impl Counters {
    /// Waits up to 15 s (both are rewritten every few seconds) for the stats
    /// file to show `name value` for every pair of `stats`, and the textfile
    /// every sample of `metrics`, then returns both as read last.
    fn wait_for(
        &self,
        stats: &[(&str, u64)],
        metrics: &[(&str, u64)],
    ) -> (HashMap<String, u64>, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let counters = read_counters(&self.stats);
            let text = std::fs::read_to_string(&self.metrics).unwrap_or_default();
            let stats_ok = stats.iter().all(|(k, v)| counters.get(*k) == Some(v));
            let metrics_ok = metrics.iter().all(|(k, v)| sample(&text, k) == Some(*v));
            if stats_ok && metrics_ok || Instant::now() > deadline {
                return (counters, text);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The value of one sample line (`name{labels} value`) of a textfile.
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn start() -> (Fixture, VhostUserDaemon, Guest, Counters) {
    let fixture = Fixture::start(&robust_tree(), &["--adversarial"]);
    let dir = scratch("guest-counters");
    let counters = Counters {
        stats: dir.join("stats"),
        metrics: dir.join("tvix-virtiofsd.prom"),
    };
    let daemon = VhostUserDaemon::start(
        &fixture.address(),
        &[
            "--max-open-handles",
            &MAX_HANDLES.to_string(),
            "--max-inodes",
            &MAX_INODES.to_string(),
            "--stats-file",
            &counters.stats.display().to_string(),
            "--metrics-file",
            &counters.metrics.display().to_string(),
        ],
    );
    let flags = (FsOptions::ASYNC_READ | FsOptions::MAX_PAGES).bits() as u32;
    let (guest, reply) = Guest::connect(&daemon.socket, flags);
    assert_eq!(decode::<InitOut>(&reply).major, 7);
    (fixture, daemon, guest, counters)
}

/// A lookup and a read of `pkg-1.0/hello` work.
fn assert_serving(guest: &mut Guest, fixture: &Fixture, daemon: &mut VhostUserDaemon) {
    let pkg = guest.lookup_ok(ROOT_ID, &fixture.store_path("pkg-1.0"));
    let hello = guest.lookup_ok(pkg.nodeid, "hello");
    let fh = match open(guest, hello.nodeid) {
        Outcome::Reply { error: 0, body } => decode::<OpenOut>(&body).fh,
        other => panic!("open hello: {other:?}"),
    };
    assert_eq!(guest.read(hello.nodeid, fh).ok(), ROBUST_HELLO);
    guest.release(hello.nodeid, fh);
    assert!(daemon.is_running(), "daemon died:\n{}", daemon.log());
}

#[test]
fn a_malicious_guest_leaves_the_daemon_serving_and_bounded() {
    let (fixture, mut daemon, mut guest, counters) = start();
    let rss_start = rss_bytes(daemon.pid());
    let pkg = guest.lookup_ok(ROOT_ID, &fixture.store_path("pkg-1.0"));

    // A READ with 4 GiB of room, made of one 512 KiB buffer listed 8000
    // times in an indirect table: answered with at most the negotiated size.
    let big = guest.lookup_ok(pkg.nodeid, "big");
    let fh = decode::<OpenOut>(&open(&mut guest, big.nodeid).ok()).fh;
    let read = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    let unique = guest.next_unique();
    let request = message(Opcode::Read as u32, unique, big.nodeid, read.as_slice());
    let used = guest
        .vmm
        .call_aliased_indirect(REQUESTS, &request, 512 << 10, 8000, TIMEOUT);
    assert!(
        used > 16 && used <= 16 + MAX_READ,
        "READ through aliased descriptors answered {used} bytes"
    );

    // OPEN without RELEASE: ENFILE at the bound, nothing else.
    let hello = guest.lookup_ok(pkg.nodeid, "hello");
    let mut refused = 0;
    for _ in 0..4 * MAX_HANDLES {
        match open(&mut guest, hello.nodeid) {
            Outcome::Reply { error: 0, .. } => {}
            other => {
                assert_eq!(other.errno(), libc::ENFILE);
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 3 * MAX_HANDLES - 1,
        "only {refused} opens refused"
    );

    // Lookups without FORGET: ENOMEM at the inode bound.
    let many = guest.lookup_ok(pkg.nodeid, "many");
    let mut enomem = 0;
    for i in 0..400 {
        match guest.lookup(many.nodeid, &format!("file-{i:03}")) {
            Outcome::Reply { error: 0, .. } => {}
            other => {
                assert_eq!(other.errno(), libc::ENOMEM);
                enomem += 1;
            }
        }
    }
    assert!(enomem >= 400 - MAX_INODES, "only {enomem} lookups refused");

    // FORGET games: forget a directory, look it up again; what was found
    // below the old one is gone, so relookup loops stay within the bound.
    forget(&mut guest, many.nodeid, u64::MAX);
    let file = guest.lookup(many.nodeid, "file-000");
    assert_eq!(file.errno(), libc::ESTALE, "lookup below a forgotten inode");
    for round in 0..2 * MAX_INODES {
        let sub = guest.lookup_ok(pkg.nodeid, "sub");
        let deeper = guest.lookup(sub.nodeid, "deeper");
        assert!(
            matches!(deeper, Outcome::Reply { error: 0, .. }),
            "round {round}: {deeper:?}"
        );
        forget(&mut guest, sub.nodeid, u64::MAX);
        // Forgetting what was never looked up, or the root, is harmless.
        forget(&mut guest, 0xdead_beef, 1);
        forget(&mut guest, ROOT_ID, 1);
    }

    // A second INIT: a new session, with empty tables.
    init(&mut guest);
    let stale = guest.getattr(pkg.nodeid);
    assert_eq!(stale.errno(), libc::ESTALE, "inode kept across INIT");
    assert_serving(&mut guest, &fixture, &mut daemon);

    // Every refusal counted, in the stats file and the metrics alike.
    let expected = [
        ("handles_refused", refused as u64),
        ("inodes_refused", enomem as u64),
        ("reads_capped", 1),
        ("request_panics", 0),
    ];
    let series: Vec<(String, u64)> = [("handles", refused), ("inodes", enomem), ("read", 1)]
        .into_iter()
        .map(|(bound, n)| {
            let name = format!("tvix_virtiofsd_guest_limit_refusals_total{{bound=\"{bound}\"}}");
            (name, n as u64)
        })
        .chain([("tvix_virtiofsd_request_panics_total".to_string(), 0)])
        .collect();
    let series: Vec<(&str, u64)> = series.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let (stats, metrics) = counters.wait_for(&expected, &series);
    for (name, value) in expected {
        assert_eq!(stats.get(name), Some(&value), "{name}: {stats:?}");
    }
    for (name, value) in series {
        assert_eq!(sample(&metrics, name), Some(value), "{name}:\n{metrics}");
    }

    let rss_end = rss_bytes(daemon.pid());
    eprintln!("daemon RSS: {rss_start} bytes at start, {rss_end} after");
    assert!(
        rss_end < rss_start + (64 << 20),
        "RSS grew from {rss_start} to {rss_end}"
    );
}

/// One digest, two sizes (`adv-two-sizes`: `a` right, `b` twice as long)
/// over vhost-user: each READ answers EIO or the blob's own bytes at that
/// offset, `b` is never served whole, and the daemon serves on.
#[test]
fn one_digest_with_two_sizes_gives_eio_or_the_right_bytes_over_vhost_user() {
    let (fixture, mut daemon, mut guest, counters) = start();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let dir = guest.lookup_ok(ROOT_ID, &fixture.store_path("adv-two-sizes"));
    const PIECE: u32 = 64 << 10;
    // The right size first, so that the longer one meets the memory cache
    // holding a blob shorter than its size says.
    for name in ["a", "b", "a", "b"] {
        let entry = guest.lookup_ok(dir.nodeid, name);
        let size = entry.attr.size;
        let fh = decode::<OpenOut>(&open(&mut guest, entry.nodeid).ok()).fh;
        let mut served = 0u64;
        let mut failed = false;
        while served < size {
            match guest.read_at(entry.nodeid, fh, served, PIECE) {
                Outcome::Reply { error: 0, body } => {
                    let end = served as usize + body.len();
                    assert!(
                        !body.is_empty() && end <= content.len(),
                        "{name}: READ at {served} gave {} bytes of a {}-byte blob",
                        body.len(),
                        content.len()
                    );
                    assert!(
                        body == content[served as usize..end],
                        "{name}: wrong bytes at {served}"
                    );
                    served = end as u64;
                }
                other => {
                    assert_eq!(other.errno(), libc::EIO, "{name} at {served}");
                    failed = true;
                    break;
                }
            }
        }
        eprintln!("{name}: {served} of {size} bytes served, then EIO: {failed}");
        if name == "b" {
            assert!(failed, "b: {served} bytes served for a wrong size");
        }
        guest.release(entry.nodeid, fh);
    }
    assert_serving(&mut guest, &fixture, &mut daemon);
    let (stats, _) = counters.wait_for(&[("request_panics", 0)], &[]);
    assert_eq!(stats.get("request_panics"), Some(&0), "{stats:?}");
    assert!(
        !daemon.log().contains("panicked"),
        "a request panicked:\n{}",
        daemon.log()
    );
}
