//! End to end through a real guest against real tvix-store and snix-store
//! daemons: QEMU boots the test guest, whose vhost-user-fs device is served
//! by the daemon from a real store holding the sample tree (imported by the
//! store's own `import`); the guest lists and checksums everything it sees
//! and that must match the source tree. Uses KVM only when ACCEL=kvm (TCG
//! otherwise).

mod common;

use common::manifest::{assert_guest_saw_the_whole_tree, expected_manifest};
use common::real_store::StoreKind;
use common::*;

/// Seconds one guest run may take (boot, the whole manifest, power off).
const GUEST_TIMEOUT_SECS: u32 = 600;

static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The guest lists the root with the store's real List (`--list-root`)
/// and prints every entry's type, mode, size and checksum, except the
/// content of the 10,000 small files of `many-files-1.0`: those are listed
/// (the store's 10,000-entry Directory), while their content, the same
/// BlobService.Read as every other small file, is compared byte for byte
/// on a FUSE mount of the same stores (tests/real_store_fuse.rs), and
/// through a guest in tests/vhost_user_guest.rs. Opening each one took
/// most of this test's time under emulation.
fn guest_sees_the_tree_with_identical_checksums(kind: StoreKind, test: &str) {
    let tree = sample_tree();
    let store = real_store_or_skip!(kind, test, &[&tree]);
    let mut args = vec!["--list-root", "--num-request-queues", "2"];
    args.extend(store.protocol_args());
    let mut daemon = VhostUserDaemon::start(&store.address(), &args);
    // One guest at a time: two TCG guests on a small host only slow each
    // other past their bound.
    let _one_guest = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_guest(
        &daemon.socket,
        &format!("tree-manifest --no-content-in {MANY_FILES} ."),
        GUEST_TIMEOUT_SECS,
        &[("NUM_QUEUES", "2")],
    );
    assert_eq!(
        run.status,
        0,
        "guest failed against the {kind:?} store:\n{}\ndaemon log:\n{}\nstore log:\n{}",
        run.stderr,
        daemon.log(),
        store.log()
    );
    eprintln!("{}", run.stderr.lines().last().unwrap_or_default());

    assert_guest_saw_the_whole_tree(
        &expected_manifest(
            &tree,
            Some(&|top| store.store_path_of(&tree.join(top))),
            Some(MANY_FILES),
        ),
        &run.stdout,
    );
    daemon.assert_exits_cleanly_after_the_guest_left();
}

#[test]
fn guest_sees_a_tvix_store_tree_with_identical_checksums() {
    guest_sees_the_tree_with_identical_checksums(
        StoreKind::Tvix,
        "guest_sees_a_tvix_store_tree_with_identical_checksums",
    );
}

#[test]
fn guest_sees_a_snix_store_tree_with_identical_checksums() {
    guest_sees_the_tree_with_identical_checksums(
        StoreKind::Snix,
        "guest_sees_a_snix_store_tree_with_identical_checksums",
    );
}
