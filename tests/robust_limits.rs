//! Bounds on what a guest can make the daemon hold, through a real FUSE
//! mount: opens without close get ENFILE at --max-open-handles, the root
//! listing (--list-root) is one List shared by every OPENDIR, and resident
//! memory (from /proc) stays flat through both loops; what one inode
//! costs, behind the default of --max-inodes.

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

/// Directories and files per directory of the inode measurement.
const INODE_DIRS: usize = 40;
const FILES_PER_DIR: usize = 1000;

/// Resident memory per live inode, from /proc: the figure behind the
/// default of --max-inodes. Every file of a 40,000-file tree is looked up
/// through a real FUSE mount (the kernel keeps the dentries, so the daemon
/// keeps the inodes); resident memory is read after each directory. The
/// Directories are fetched first, one lookup each, so the slope is the
/// inode table's alone. Prints the figure:
/// `cargo test --release --test robust_limits memory_per_inode -- --nocapture`.
#[test]
fn memory_per_inode_is_measured_and_bounded() {
    let root = scratch("inode-tree").join("tree");
    let pkg = root.join("inodes-1.0");
    for d in 0..INODE_DIRS {
        let dir = pkg.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            std::fs::write(dir.join(format!("file-{f:04}")), f.to_string()).unwrap();
        }
    }
    let fixture = Fixture::start(&root, &[]);
    let mut daemon = Daemon::mount(&fixture.address(), &[]);
    let base = daemon.path(&fixture.store_path("inodes-1.0"));
    let dirs: Vec<_> = (0..INODE_DIRS)
        .map(|d| base.join(format!("d{d:02}")))
        .collect();
    for dir in &dirs {
        std::fs::metadata(dir.join("file-0000")).expect("warming the Directories");
    }
    let rss_start = rss_bytes(daemon.pid());
    let mut looked_up = 0u64;
    let mut points = Vec::new();
    for dir in &dirs {
        for f in 1..FILES_PER_DIR {
            std::fs::metadata(dir.join(format!("file-{f:04}"))).expect("lookup");
            looked_up += 1;
        }
        points.push((looked_up, rss_bytes(daemon.pid())));
    }
    let (n, rss_end) = *points.last().unwrap();
    // The slope over the second half: the table's own growth, past the
    // allocator's first arenas.
    let (n_half, rss_half) = points[points.len() / 2];
    let per_inode = (rss_end - rss_half) as f64 / (n - n_half) as f64;
    let overall = (rss_end - rss_start) as f64 / n as f64;
    // Bytes per inode times 2^20 inodes, in MiB: the same number.
    let at_default = per_inode.max(overall);
    eprintln!(
        "{n} inodes: RSS {rss_start} -> {rss_end} bytes; {overall:.0} bytes per inode overall, \
         {per_inode:.0} over the second half; at the default --max-inodes (1 << 20): \
         {at_default:.0} MiB"
    );
    assert!(daemon.is_running());
    // A bound that catches a table that grew a copy of each Directory.
    assert!(overall < 2048.0, "{overall:.0} bytes per inode");
}
