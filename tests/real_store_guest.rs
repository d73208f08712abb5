//! End to end through a real guest against real tvix-store and snix-store
//! daemons: QEMU boots the test guest, whose vhost-user-fs device is served
//! by the daemon from a real store holding the sample tree (imported by the
//! store's own `import`); the guest lists and checksums everything it sees
//! and that must match the source tree. Uses KVM only when ACCEL=kvm (TCG
//! otherwise).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::real_store::{RealStore, StoreKind};
use common::*;

/// Seconds one guest run may take (boot, the whole manifest, power off).
const GUEST_TIMEOUT_SECS: u32 = 600;

static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs scripts/vm/tree-manifest.sh on the host over `root` and turns it
/// into what the guest must see: modes become the store's (r-x dirs, r-- or
/// r-x files) and top-level names become the store path names `store`
/// gave them.
fn expected_manifest(root: &Path, store: &RealStore) -> BTreeMap<String, String> {
    let output = Command::new("sh")
        .arg(repo_root().join("scripts/vm/tree-manifest.sh"))
        .arg(root)
        .output()
        .unwrap();
    assert!(output.status.success());
    let mut out = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let f: Vec<&str> = line.splitn(5, ' ').collect();
        let (kind, mode, size, content, path) = (f[0], f[1], f[2], f[3], f[4]);
        let mode = match kind {
            "d" => "0555",
            "l" => "0777",
            _ if u32::from_str_radix(mode, 8).unwrap() & 0o111 != 0 => "0555",
            _ => "0444",
        };
        let (top, rest) = path.split_once('/').unwrap_or((path, ""));
        let store_path = store.store_path_of(&root.join(top));
        let path = if rest.is_empty() {
            store_path
        } else {
            format!("{store_path}/{rest}")
        };
        out.insert(
            path.clone(),
            format!("{kind} {mode} {size} {content} {path}"),
        );
    }
    out
}

fn parse_manifest(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| l.len() > 10)
        .map(|l| (l.splitn(5, ' ').nth(4).unwrap().to_string(), l.to_string()))
        .collect()
}

/// Asserts that the manifest the guest printed equals `expected`.
fn assert_same_manifest(expected: &BTreeMap<String, String>, guest_stdout: &str) {
    let seen = parse_manifest(guest_stdout);
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = seen
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    let differing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| seen.get(*k) != Some(v))
        .map(|(k, v)| format!("expected {v}\n     got {}", seen[k]))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "entries differ:\n{}",
        differing.join("\n")
    );
}

/// The guest lists the root with the store's real List (`--list-root`)
/// and prints every entry's type, mode, size and checksum.
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
        "tree-manifest .",
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

    let expected = expected_manifest(&tree, &store);
    assert!(
        expected.len() > MANY,
        "expected manifest too small: {}",
        expected.len()
    );
    assert_same_manifest(&expected, &run.stdout);

    // The VMM disconnected: without --persistent the daemon exits 0.
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("daemon still running after the guest left");
    assert!(status.success(), "daemon exited with {status}");
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
