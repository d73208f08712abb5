//! The daemon against real tvix-store and snix-store daemons, through a
//! real FUSE mount: the trees are imported by the stores' own `import`, so
//! what the daemon meets is what real stores write and send.

mod common;

use common::real_store::StoreKind;
use common::*;

/// Every store path of the sample tree, listed with `--list-root` (the
/// store's real `List`) and compared entry by entry with its source.
fn serves_the_sample_tree_exactly(kind: StoreKind, test: &str) {
    let tree = sample_tree();
    let store = real_store_or_skip!(kind, test, &[&tree]);
    let daemon = store.mount(&["--list-root"]);

    let mut listed: Vec<String> = std::fs::read_dir(&daemon.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = store.store_paths().values().cloned().collect();
    expected.sort();
    assert_eq!(listed, expected, "root listing against the real List");
    assert_eq!(listed.len(), 4);

    let mut compared = 0;
    for (source, basename) in store.store_paths() {
        let served = daemon.path(basename);
        compare_entry(source, &served, basename);
        compared += 1;
        if served.is_dir() {
            compared += compare_trees(source, &served);
        }
    }
    assert!(compared > MANY + 20, "compared only {compared} entries");
}

#[test]
fn serves_a_tvix_store_tree_exactly() {
    serves_the_sample_tree_exactly(StoreKind::Tvix, "serves_a_tvix_store_tree_exactly");
}

#[test]
fn serves_a_snix_store_tree_exactly() {
    serves_the_sample_tree_exactly(StoreKind::Snix, "serves_a_snix_store_tree_exactly");
}

/// The wrong `--store-protocol` is refused at start, with the flag to use,
/// both ways round.
#[test]
fn the_wrong_protocol_is_refused_with_the_flag_to_use() {
    let tree = sample_tree();
    for (kind, wrong, hint) in [
        (StoreKind::Tvix, "snix", "pass --store-protocol tvix"),
        (StoreKind::Snix, "tvix", "pass --store-protocol snix"),
    ] {
        let store = real_store_or_skip!(kind, "the_wrong_protocol_is_refused", &[&tree]);
        let log = refused_start(&store.address(), &["--store-protocol", wrong]);
        assert!(
            log.contains(hint),
            "{kind:?} store, --store-protocol {wrong}: {log}"
        );
    }
}
