//! End to end through a real guest: QEMU boots a small Linux guest whose
//! vhost-user-fs device is served by the daemon; the guest mounts virtio-fs
//! and checks what it reads. Uses KVM only when ACCEL=kvm (TCG otherwise).

mod common;

use std::process::Command;

use common::manifest::{assert_guest_saw_the_whole_tree, assert_same_manifest, expected_manifest};
use common::*;

#[test]
fn guest_sees_the_tree_with_identical_checksums() {
    let fixture = Fixture::start(&sample_tree(), &["--chunk-size", &CHUNK_SIZE.to_string()]);
    let mut daemon = VhostUserDaemon::start(
        &fixture.address(),
        &["--list-root", "--num-request-queues", "2"],
    );
    let run = run_guest(
        &daemon.socket,
        "tree-manifest .",
        900,
        &[("NUM_QUEUES", "2")],
    );
    assert_eq!(
        run.status,
        0,
        "guest failed:\n{}\ndaemon log:\n{}",
        run.stderr,
        daemon.log()
    );

    assert_guest_saw_the_whole_tree(
        &expected_manifest(&sample_tree(), Some(&|top| fixture.store_path(top)), None),
        &run.stdout,
    );
    daemon.assert_exits_cleanly_after_the_guest_left();
}

#[test]
fn guest_gets_eio_for_corrupt_data_and_the_daemon_keeps_serving() {
    let tree = sample_tree();
    let digest = Fixture::start(&tree, &[]).digest("hello-2.12/lib/small.bin");
    let fixture = Fixture::start(&tree, &["--corrupt-blob", &digest]);
    let pkg = fixture.store_path("hello-2.12");
    let mut daemon = VhostUserDaemon::start(&fixture.address(), &["--persistent"]);

    let command = format!(
        "cat {pkg}/lib/small.bin > /dev/null; echo corrupt-rc=$?; \
         cat {pkg}/bin/hello | sha256sum; \
         ls 00bgd045z0d4icpbc2yyz4gx48ak44la-not-there 2>&1; ls not-a-store-path 2>&1; true"
    );
    let run = run_guest(&daemon.socket, &command, 300, &[]);
    assert_eq!(run.status, 0, "guest failed:\n{}", run.stderr);
    assert!(
        run.stdout.contains("corrupt-rc=1"),
        "corrupt read did not fail:\n{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("Input/output error"),
        "no EIO in guest:\n{}",
        run.stderr
    );
    let hello = std::fs::read(tree.join("hello-2.12/bin/hello")).unwrap();
    let sum = Command::new("sha256sum")
        .arg(tree.join("hello-2.12/bin/hello"))
        .output()
        .unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(!hello.is_empty());
    assert!(
        run.stdout.contains(&sum),
        "good file after a bad one:\n{}",
        run.stdout
    );
    assert_eq!(
        run.stdout.matches("No such file or directory").count(),
        2,
        "{}",
        run.stdout
    );
    assert!(daemon.log().contains(&digest), "log does not name {digest}");

    // --persistent: a second guest connects to the same daemon.
    assert!(daemon.is_running(), "daemon exited after the first guest");
    let again = run_guest(
        &daemon.socket,
        &format!("cat {pkg}/share/doc/*.txt"),
        300,
        &[],
    );
    assert_eq!(again.status, 0, "second guest failed:\n{}", again.stderr);
    assert_eq!(again.stdout.trim(), "spaces");
}

#[test]
fn guest_reads_the_disk_cache_while_the_store_is_down() {
    let tree = sample_tree();
    let mut fixture = Fixture::start(&tree, &["--chunk-size", &CHUNK_SIZE.to_string()]);
    let cache = scratch("guest-offline-cache");
    let cache_arg = cache.display().to_string();
    let pkg = fixture.store_path("hello-2.12");
    {
        // Populate the cache through a FUSE mount of another daemon.
        // The same instance as the guest's daemon below: store paths and
        // chunk lists are kept per instance.
        let daemon = Daemon::mount(
            &fixture.address(),
            &["--cache-dir", &cache_arg, "--instance", "vm1"],
        );
        compare_trees(&tree.join("hello-2.12"), &daemon.path(&pkg));
    }
    fixture.stop();

    let mut daemon = VhostUserDaemon::start(
        &fixture.address(),
        &[
            "--cache-dir",
            &cache_arg,
            "--instance",
            "vm1",
            "--store-timeout",
            "2",
            "--persistent",
        ],
    );
    let other = fixture.store_path("single-file.txt");
    let command =
        format!("(cd {pkg} && tree-manifest .); cat {other} >/dev/null 2>&1; echo uncached-rc=$?");
    let run = run_guest(&daemon.socket, &command, 300, &[]);
    assert_eq!(
        run.status,
        0,
        "guest failed:\n{}\ndaemon log:\n{}",
        run.stderr,
        daemon.log()
    );
    let (manifest, rest) = run
        .stdout
        .split_at(run.stdout.find("uncached-rc=").expect("no rc line"));
    assert_same_manifest(
        &expected_manifest(&tree.join("hello-2.12"), None, None),
        manifest,
    );
    assert_eq!(
        rest.trim(),
        "uncached-rc=1",
        "uncached content did not fail while the store was down"
    );

    // The store returns: the same daemon serves what it never had.
    fixture.restart();
    let run = run_guest(&daemon.socket, &format!("cat {other}"), 300, &[]);
    assert_eq!(run.status, 0, "guest failed:\n{}", run.stderr);
    assert_eq!(
        run.stdout,
        std::fs::read_to_string(tree.join("single-file.txt")).unwrap()
    );
    assert!(daemon.is_running());
}
