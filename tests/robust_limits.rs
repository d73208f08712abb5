//! Bounds on what a guest can make the daemon hold, through a real FUSE
//! mount: opens without close get ENFILE at --max-open-handles, the root
//! listing (--list-root) is one List shared by every OPENDIR, and resident
//! memory (from /proc) stays flat through both loops.

mod common;

use std::time::{Duration, Instant};

use common::*;

const MAX_HANDLES: usize = 200;

#[test]
fn opens_without_close_stop_at_the_handle_bound() {
    let fixture = Fixture::start(&robust_tree(), &[]);
    let bound = MAX_HANDLES.to_string();
    let mut daemon = Daemon::mount(&fixture.address(), &["--max-open-handles", &bound]);
    let hello = daemon.path(&fixture.store_path("pkg-1.0")).join("hello");
    let rss_start = rss_bytes(daemon.pid());
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..3 * MAX_HANDLES {
        match std::fs::File::open(&hello) {
            Ok(f) => open.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENFILE), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(open.len(), MAX_HANDLES, "{refused} refused");
    let rss_full = rss_bytes(daemon.pid());
    drop(open);
    // RELEASE reaches the daemon asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match std::fs::read(&hello) {
            Ok(data) => break data,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no handle free after closing them all: {e}"),
        }
    };
    assert_eq!(reopened, ROBUST_HELLO);
    eprintln!("daemon RSS: {rss_start} at start, {rss_full} with {MAX_HANDLES} handles");
    assert!(rss_full < rss_start + (32 << 20));
    assert!(daemon.is_running());
}

#[test]
fn every_opendir_of_the_root_shares_one_listing() {
    let fixture = Fixture::start(&robust_tree(), &[]);
    let mut daemon = Daemon::mount(
        &fixture.address(),
        &[
            "--list-root",
            "--root-listing-ttl",
            "30",
            "--cache",
            "never",
        ],
    );
    let rss_start = rss_bytes(daemon.pid());
    let lists_before = fixture.stats().get("pathinfo_list").copied().unwrap_or(0);
    let mut handles = Vec::new();
    for _ in 0..MAX_HANDLES / 2 {
        let mut dir = std::fs::read_dir(&daemon.mountpoint).unwrap();
        let first = dir.next().expect("an empty root listing").unwrap();
        assert!(first.file_name().to_string_lossy().ends_with("-pkg-1.0"));
        handles.push(dir);
    }
    let lists = fixture.stats().get("pathinfo_list").copied().unwrap_or(0) - lists_before;
    assert!(
        lists == 1,
        "{lists} List calls for {} OPENDIRs",
        handles.len()
    );
    let rss_end = rss_bytes(daemon.pid());
    eprintln!(
        "daemon RSS: {rss_start} at start, {rss_end} with {} root handles",
        handles.len()
    );
    assert!(rss_end < rss_start + (32 << 20));
    drop(handles);
    assert!(daemon.is_running());
}
