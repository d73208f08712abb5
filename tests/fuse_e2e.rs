//! End to end through a real FUSE mount: the fixture store and the daemon
//! run as processes, the kernel mounts the daemon's filesystem, and the test
//! reads it like any program would.

mod common;

use std::time::Duration;

use common::*;

/// Every store path of the sample tree, compared with its source.
fn compare_whole_store(fixture_args: &[&str]) {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, fixture_args);
    let daemon = Daemon::mount(&fixture.address(), &["--list-root"]);

    let mut listed: Vec<String> = std::fs::read_dir(&daemon.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected = fixture.store_paths.clone();
    expected.sort();
    assert_eq!(listed, expected, "root listing");
    assert_eq!(listed.len(), 4);

    let mut compared = 0;
    for entry in std::fs::read_dir(&tree).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let served = daemon.path(&fixture.store_path(&name));
        compare_entry(&tree.join(&name), &served, &name);
        compared += 1;
        if served.is_dir() {
            compared += compare_trees(&tree.join(&name), &served);
        }
    }
    assert!(compared > MANY + 20, "compared only {compared} entries");
}

#[test]
fn serves_the_tree_exactly_from_a_chunking_store() {
    compare_whole_store(&["--chunk-size", &CHUNK_SIZE.to_string()]);
}

#[test]
fn serves_the_tree_exactly_from_a_store_without_chunks() {
    // Whole blobs, streamed in pieces as small as tvix-store sends them.
    compare_whole_store(&["--read-piece-size", "4096"]);
}

#[test]
fn ranged_reads_at_chunk_boundaries_return_the_right_bytes() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &["--chunk-size", &CHUNK_SIZE.to_string()]);
    let daemon = Daemon::mount(&fixture.address(), &[]);
    let relative = "lib/libbig.so";
    let served = daemon.path(&format!("{}/{relative}", fixture.store_path("hello-2.12")));
    let source = std::fs::File::open(tree.join("hello-2.12").join(relative)).unwrap();
    // O_DIRECT makes the kernel pass each read to the daemon as asked,
    // bypassing the page cache and its readahead.
    let direct = open_direct(&served);
    let cached = std::fs::File::open(&served).unwrap();

    let c = CHUNK_SIZE;
    let size = BIG_FILE_SIZE;
    let offsets = [
        0,
        1,
        c - 1,
        c,
        c + 1,
        2 * c - 3,
        7 * c,
        size - c - 1,
        size - 100,
        size - 1,
        size,
        size + 10,
    ];
    let lengths = [
        1,
        2,
        4095,
        4096,
        c as usize,
        c as usize + 1,
        3 * c as usize + 17,
    ];
    let mut checked = 0;
    for &offset in &offsets {
        for &len in &lengths {
            let want = read_at(&source, offset, len).unwrap();
            for (how, file) in [("direct", &direct), ("cached", &cached)] {
                let got = read_at(file, offset, len).unwrap();
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{how} read of {len} at {offset}: length"
                );
                assert!(got == want, "{how} read of {len} at {offset}: bytes differ");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, offsets.len() * lengths.len() * 2);
    // Only the chunks touched were fetched, not the whole file.
    let reads = fixture.stats().get("blob_read").copied().unwrap_or(0);
    let chunks_in_file = size.div_ceil(c);
    assert!(reads > 0, "no blob reads counted");
    assert!(
        reads < chunks_in_file / 2,
        "{reads} chunk reads for a {chunks_in_file}-chunk file"
    );
}

#[test]
fn root_lists_nothing_without_list_root_but_resolves_names() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &[]);
    let daemon = Daemon::mount(&fixture.address(), &[]);
    assert_eq!(std::fs::read_dir(&daemon.mountpoint).unwrap().count(), 0);
    let file = daemon.path(&fixture.store_path("single-file.txt"));
    assert_eq!(
        std::fs::read(file).unwrap(),
        b"a store path that is a file\n"
    );
    assert_eq!(
        fixture.stats().get("pathinfo_list").copied().unwrap_or(0),
        0
    );
}

#[test]
fn names_that_are_not_store_paths_are_enoent_without_a_store_call() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &[]);
    let daemon = Daemon::mount(&fixture.address(), &[]);
    // The protocol check at start is one PathInfoService.Get.
    let gets = || {
        let all = fixture.stats().get("pathinfo_get").copied().unwrap_or(0);
        all.saturating_sub(1)
    };
    for bad in [
        "hello",
        "00bgd045z0d4icpbc2yyz4gx48ak44le-bad-letter",
        "00bgd045z0d4icpbc2yyz4gx48ak44la",
        "00bgd045z0d4icpbc2yyz4gx48ak44la-",
        "00bgd045z0d4icpbc2yyz4gx48ak44l-short",
        "00bgd045z0d4icpbc2yyz4gx48ak44la-bad name",
    ] {
        let err = std::fs::symlink_metadata(daemon.path(bad)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{bad}");
    }
    assert_eq!(gets(), 0, "invalid names reached the store");

    // A valid name the store does not have: one call, then ENOENT.
    let unknown = "00bgd045z0d4icpbc2yyz4gx48ak44la-not-there";
    let err = std::fs::symlink_metadata(daemon.path(unknown)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(gets(), 1);

    // A store path whose hash exists but whose name differs: not found.
    let real = fixture.store_path("single-file.txt");
    let renamed = format!("{}-other-name", &real[..32]);
    let err = std::fs::symlink_metadata(daemon.path(&renamed)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn changes_are_refused_as_read_only() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &[]);
    let daemon = Daemon::mount(&fixture.address(), &[]);
    let pkg = daemon.path(&fixture.store_path("hello-2.12"));
    let erofs = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        erofs(std::fs::write(pkg.join("new"), b"x")),
        Some(libc::EROFS)
    );
    assert_eq!(
        erofs(std::fs::create_dir(pkg.join("dir"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        erofs(std::fs::remove_file(pkg.join("bin/hello"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        erofs(
            std::fs::OpenOptions::new()
                .write(true)
                .open(pkg.join("bin/hello"))
                .map(drop)
        ),
        Some(libc::EROFS)
    );
    assert_eq!(
        erofs(std::fs::rename(pkg.join("bin/hello"), pkg.join("bin/h"))),
        Some(libc::EROFS)
    );
}

#[test]
fn unmounts_cleanly_on_sigterm() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &[]);
    let mut daemon = Daemon::mount(&fixture.address(), &[]);
    assert!(daemon
        .path(&fixture.store_path("hello-2.12"))
        .join("bin/hello")
        .exists());
    assert!(daemon.stop(), "mount still present after SIGTERM");
    assert!(daemon.log().contains("unmounted"), "log: {}", daemon.log());
}

#[test]
fn exits_when_unmounted_from_outside() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &[]);
    let mut daemon = Daemon::mount(&fixture.address(), &[]);
    assert!(daemon.path(&fixture.store_path("single-file.txt")).exists());
    let umount = std::process::Command::new("umount")
        .arg(&daemon.mountpoint)
        .status()
        .unwrap();
    assert!(umount.success());
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "daemon did not exit 0 after umount; log: {}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("the filesystem was unmounted"),
        "log: {}",
        daemon.log()
    );
}

/// Reads a file twice with `--cache POLICY` and returns how many chunk
/// lookups reached the daemon's memory cache (i.e. reads the kernel sent).
fn daemon_reads_for_two_reads(policy: &str) -> u64 {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &[]);
    let stats = scratch("policy").join("stats");
    let mut daemon = Daemon::mount(
        &fixture.address(),
        &["--cache", policy, "--stats-file", stats.to_str().unwrap()],
    );
    let file = daemon
        .path(&fixture.store_path("hello-2.12"))
        .join("lib/small.bin");
    let source = std::fs::read(tree.join("hello-2.12/lib/small.bin")).unwrap();
    for _ in 0..2 {
        assert!(std::fs::read(&file).unwrap() == source);
    }
    daemon.stop();
    let counters = read_counters(&stats);
    counters["memory_hits"] + counters["memory_misses"]
}

#[test]
fn cache_policy_decides_whether_the_guest_page_cache_is_used() {
    let always = daemon_reads_for_two_reads("always");
    let never = daemon_reads_for_two_reads("never");
    // With the page cache kept, the second read never reaches the daemon;
    // with direct I/O, both do.
    assert!(never > always, "never: {never} lookups, always: {always}");
}

#[test]
fn a_store_paths_directories_arrive_in_one_call() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &[]);
    let daemon = Daemon::mount(&fixture.address(), &[]);
    let name = "hello-2.12";
    let compared = compare_trees(&tree.join(name), &daemon.path(&fixture.store_path(name)));
    assert!(compared > 20);
    // One recursive DirectoryService.Get brought every directory of it.
    assert_eq!(fixture.stats().get("directory_get").copied(), Some(1));
}
