//! A hostile or broken store (the fixture's `--adversarial` store paths)
//! through a real FUSE mount: every read ends, with the right data or EIO,
//! within a stated bound, and the daemon keeps serving everything else.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// `--store-timeout` of these tests.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

fn adversarial_store() -> Fixture {
    Fixture::start(
        &robust_tree(),
        &["--adversarial", "--drip-interval-ms", "1500"],
    )
}

fn mount(fixture: &Fixture, extra: &[&str]) -> Daemon {
    let mut args = vec!["--store-timeout", "2", "--fuse-threads", "4"];
    args.extend_from_slice(extra);
    Daemon::mount(&fixture.address(), &args)
}

/// Runs `f` on a thread of its own; `None` if it did not end within
/// `limit` (the thread is left behind, stuck in the kernel).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

fn errno_of<T>(r: &std::io::Result<T>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

/// The daemon still answers: a lookup of a good path, a read, and a name
/// that cannot exist.
fn assert_serving(daemon: &mut Daemon, fixture: &Fixture) {
    let hello = daemon.path(&fixture.store_path("pkg-1.0")).join("hello");
    let got = within(Duration::from_secs(5), move || std::fs::read(hello))
        .expect("reading hello hung")
        .expect("reading hello");
    assert_eq!(got, ROBUST_HELLO);
    let missing = daemon.path("not-a-store-path");
    let r = within(Duration::from_secs(5), move || std::fs::metadata(missing))
        .expect("a lookup of an invalid name hung");
    assert_eq!(errno_of(&r), Some(libc::ENOENT));
    assert!(daemon.is_running(), "daemon died; log:\n{}", daemon.log());
}

fn read_within(path: PathBuf, limit: Duration) -> std::io::Result<Vec<u8>> {
    let shown = path.display().to_string();
    within(limit, move || std::fs::read(path))
        .unwrap_or_else(|| panic!("reading {shown} did not end within {limit:?}"))
}

#[test]
fn one_digest_with_two_sizes_gives_eio_or_the_right_bytes() {
    let fixture = adversarial_store();
    let mut daemon = mount(&fixture, &[]);
    let dir = daemon.path(&fixture.store_path("adv-two-sizes"));
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    // The right size first, so that the larger one hits the memory cache
    // with a chunk shorter than its size says.
    for name in ["a", "b", "a", "b"] {
        let r = read_within(dir.join(name), Duration::from_secs(20));
        match (&r, name) {
            (Ok(data), "a") => assert!(*data == content, "a: wrong bytes"),
            (Ok(data), _) => panic!("{name}: {} bytes served for a wrong size", data.len()),
            (Err(_), _) => assert_eq!(errno_of(&r), Some(libc::EIO), "{name}: {r:?}"),
        }
    }
    assert_serving(&mut daemon, &fixture);
}

#[test]
fn a_dripping_store_gives_eio_within_its_bound_while_lookups_are_answered() {
    let fixture = adversarial_store();
    // Direct I/O: the guest's page cache would let one reader at a time
    // ask, so the readers would not share one fetch.
    let mut daemon = mount(&fixture, &["--cache", "never"]);
    let drip = daemon.path(&fixture.store_path("adv-drip"));
    // The bound: --store-timeout plus 20 bytes at the default minimum rate
    // (1 MiB/s), so 2 s; slack for a loaded machine.
    let bound = STORE_TIMEOUT + Duration::from_secs(3);
    let started = Instant::now();
    // Three readers of one digest: one fetch, two waiting on it, three of
    // the four FUSE threads held.
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let drip = drip.clone();
            std::thread::spawn(move || {
                let r = std::fs::read(&drip);
                (errno_of(&r), started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let pkg = daemon.path(&fixture.store_path("pkg-1.0"));
    while started.elapsed() < STORE_TIMEOUT {
        let asked = Instant::now();
        let p = pkg.clone();
        within(Duration::from_secs(1), move || {
            std::fs::metadata(p).map(|m| m.is_dir())
        })
        .expect("a lookup waited behind the dripping reads")
        .expect("lookup of pkg-1.0");
        assert!(asked.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    for reader in readers {
        let (errno, took) = reader.join().unwrap();
        assert_eq!(errno, Some(libc::EIO), "a dripping read did not fail");
        assert!(
            took < bound,
            "a dripping read took {took:?}, bound {bound:?}"
        );
    }
    assert!(
        daemon.log().contains("slower than the minimum rate"),
        "the log does not say why:\n{}",
        daemon.log()
    );
    assert_serving(&mut daemon, &fixture);
}

#[test]
fn a_store_flooding_empty_messages_gives_eio_within_its_bound() {
    let fixture = adversarial_store();
    let mut daemon = mount(&fixture, &[]);
    // Empty messages earn no time: the bound is --store-timeout plus 1000
    // bytes at the minimum rate, with slack for a loaded machine.
    let bound = STORE_TIMEOUT + Duration::from_secs(3);
    let started = Instant::now();
    let r = read_within(
        daemon.path(&fixture.store_path("adv-empty-flood")),
        Duration::from_secs(30),
    );
    let took = started.elapsed();
    assert_eq!(errno_of(&r), Some(libc::EIO), "{:?}", r.map(|d| d.len()));
    assert!(took < bound, "the read took {took:?}, bound {bound:?}");
    assert!(
        daemon.log().contains("slower than the minimum rate"),
        "the log does not say why:\n{}",
        daemon.log()
    );
    assert_serving(&mut daemon, &fixture);
}

#[test]
fn endless_streams_huge_symlinks_bad_chunk_lists_and_self_referring_directories_are_refused() {
    let fixture = adversarial_store();
    let mut daemon = mount(&fixture, &[]);
    let path = |name: &str| daemon.path(&fixture.store_path(name));
    let limit = Duration::from_secs(10);

    let r = read_within(path("adv-endless"), limit);
    assert_eq!(
        errno_of(&r),
        Some(libc::EIO),
        "endless: {:?}",
        r.map(|d| d.len())
    );

    let link = path("adv-huge-symlink");
    let r = within(limit, move || std::fs::read_link(link)).expect("readlink hung");
    assert_eq!(errno_of(&r), Some(libc::EIO), "huge symlink: {r:?}");

    for name in ["adv-bad-chunks", "adv-many-chunks"] {
        let r = read_within(path(name), limit);
        assert_eq!(
            errno_of(&r),
            Some(libc::EIO),
            "{name}: {:?}",
            r.map(|d| d.len())
        );
    }
    let log = daemon.log();
    assert!(
        log.contains("chunks add up to"),
        "bad chunk list not named:\n{log}"
    );
    assert!(
        log.contains("allowed"),
        "huge chunk list not refused as such:\n{log}"
    );

    let inner: PathBuf = path("adv-self-dir").join("self");
    let r = within(limit, move || std::fs::read_dir(&inner).map(|d| d.count()))
        .expect("listing a self-referring directory hung");
    assert_eq!(errno_of(&r), Some(libc::EIO), "self-dir: {r:?}");
    assert_serving(&mut daemon, &fixture);
}
