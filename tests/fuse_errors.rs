//! Bad data and a bad store, seen through a real FUSE mount: the reader
//! gets EIO (never wrong bytes), the log names the digest, and the daemon
//! keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PKG: &str = "hello-2.12";

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    match r {
        Ok(_) => None,
        Err(e) => e.raw_os_error(),
    }
}

/// Reading `relative` in the package fails with EIO and the log names
/// `digest`; a good file read afterwards is served.
fn assert_corrupt_file_is_refused(fixture_args: &[&str], relative: &str) {
    let tree = sample_tree();
    let digest = Fixture::start(&tree, &[]).digest(&format!("{PKG}/{relative}"));
    let mut args = vec!["--corrupt-blob", digest.as_str()];
    args.extend_from_slice(fixture_args);
    let fixture = Fixture::start(&tree, &args);
    let mut daemon = Daemon::mount(&fixture.address(), &[]);
    let pkg = daemon.path(&fixture.store_path(PKG));

    for _ in 0..2 {
        assert_eq!(
            errno(std::fs::read(pkg.join(relative))),
            Some(libc::EIO),
            "{relative}"
        );
    }
    let log = daemon.log();
    assert!(log.contains(&digest), "log does not name {digest}:\n{log}");
    assert!(log.contains("bad data"), "log does not say why:\n{log}");

    let good = std::fs::read(pkg.join("bin/hello")).unwrap();
    assert_eq!(
        good,
        std::fs::read(tree.join(PKG).join("bin/hello")).unwrap()
    );
    assert!(daemon.is_running());
}

#[test]
fn corrupt_chunk_of_a_large_file_gives_eio() {
    assert_corrupt_file_is_refused(&["--chunk-size", &CHUNK_SIZE.to_string()], "lib/libbig.so");
}

#[test]
fn a_bad_stream_of_a_whole_blob_falls_back_to_its_chunks() {
    // A store whose Read of the whole blob ends in a flipped byte while
    // each chunk read alone is intact: the reader still gets every byte
    // right, each chunk verified, and the log says which blob.
    let tree = sample_tree();
    let relative = "lib/libbig.so";
    let digest = Fixture::start(&tree, &[]).digest(&format!("{PKG}/{relative}"));
    let chunk_size = CHUNK_SIZE.to_string();
    let fixture = Fixture::start(
        &tree,
        &["--chunk-size", &chunk_size, "--corrupt-whole-read", &digest],
    );
    let mut daemon = Daemon::mount(&fixture.address(), &[]);
    let served = read_direct(&daemon.path(&fixture.store_path(PKG)).join(relative));
    let source = std::fs::read(tree.join(PKG).join(relative)).unwrap();
    assert!(served == source, "served bytes differ from the source");
    let log = daemon.log();
    assert!(
        log.contains("streaming a blob failed") && log.contains(&digest),
        "log does not name the blob whose stream failed ({digest}):\n{log}"
    );
    assert!(daemon.is_running());
}

#[test]
fn corrupt_large_unchunked_blob_gives_eio() {
    assert_corrupt_file_is_refused(&[], "lib/medium.bin");
}

#[test]
fn corrupt_small_blob_gives_eio() {
    assert_corrupt_file_is_refused(&[], "lib/small.bin");
}

#[test]
fn corrupt_directory_gives_eio_and_the_rest_is_served() {
    let tree = sample_tree();
    let digest = Fixture::start(&tree, &[]).digest(&format!("{PKG}/share/doc"));
    let fixture = Fixture::start(&tree, &["--corrupt-directory", &digest]);
    let mut daemon = Daemon::mount(&fixture.address(), &[]);
    let pkg = daemon.path(&fixture.store_path(PKG));

    assert_eq!(
        errno(std::fs::read_dir(pkg.join("share/doc"))),
        Some(libc::EIO)
    );
    assert_eq!(
        errno(std::fs::metadata(
            pkg.join("share/doc/name with spaces.txt")
        )),
        Some(libc::EIO)
    );
    let log = daemon.log();
    assert!(log.contains(&digest), "log does not name {digest}:\n{log}");

    assert_eq!(
        std::fs::read(pkg.join("share/grüße/äöü 漢字.txt")).unwrap(),
        b"unicode\n"
    );
    assert!(daemon.is_running());
}

#[test]
fn dead_store_gives_eio_within_the_timeout_and_recovers() {
    let tree = sample_tree();
    let mut fixture = Fixture::start(&tree, &[]);
    let timeout_secs = 2;
    let mut daemon = Daemon::mount(
        &fixture.address(),
        &["--store-timeout", &timeout_secs.to_string()],
    );
    let pkg = daemon.path(&fixture.store_path(PKG));
    assert!(pkg.join("bin/hello").exists());

    fixture.stop();
    let started = Instant::now();
    assert_eq!(
        errno(std::fs::read(pkg.join("lib/small.bin"))),
        Some(libc::EIO)
    );
    let took = started.elapsed();
    // The kernel may retry a failed read once; allow for two timeouts.
    assert!(
        took < Duration::from_secs(2 * timeout_secs + 3),
        "EIO took {took:?} with a {timeout_secs}s timeout"
    );

    fixture.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let data = loop {
        match std::fs::read(pkg.join("lib/small.bin")) {
            Ok(data) => break data,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("store is back but reads still fail: {e}"),
        }
    };
    assert_eq!(
        data,
        std::fs::read(tree.join(PKG).join("lib/small.bin")).unwrap()
    );
    assert!(daemon.is_running());
}

#[test]
fn slow_store_gives_eio_after_the_timeout() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &["--latency-ms", "4000"]);
    let mut daemon = Daemon::mount(&fixture.address(), &["--store-timeout", "1"]);
    let started = Instant::now();
    let path = daemon.path(&fixture.store_path(PKG));
    assert_eq!(errno(std::fs::symlink_metadata(path)), Some(libc::EIO));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "did not time out"
    );
    assert!(
        daemon.log().contains("no answer within"),
        "{}",
        daemon.log()
    );
    assert!(daemon.is_running());
}

#[test]
fn store_refusing_connections_gives_eio() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &["--refuse-connections"]);
    let mut daemon = Daemon::mount(&fixture.address(), &["--store-timeout", "2"]);
    let path = daemon.path(&fixture.store_path(PKG));
    assert_eq!(errno(std::fs::symlink_metadata(path)), Some(libc::EIO));
    assert!(daemon.is_running());
}
