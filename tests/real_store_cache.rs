//! The disk cache against real tvix-store and snix-store daemons, through
//! real FUSE mounts: a second daemon on a shared cache serves the sample
//! tree without asking the store for anything, and a daemon whose store is
//! down serves what is cached, fails what is not, and picks the store up
//! again when it returns; a cold sequential read of a large file is one
//! stream of its blob. Real stores count no calls, so our daemon's
//! `--stats-file` counts them.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::real_store::{RealStore, StoreKind};
use common::*;

const PKG: &str = "hello-2.12";

/// The files of the package that the offline test fetches (and so caches).
const CACHED_FILES: &[&str] = &[
    "bin/hello",
    "lib/libbig.so",
    "lib/medium.bin",
    "share/doc/name with spaces.txt",
];

/// The one file of the package the offline test never reads while the
/// store is up.
const UNCACHED_FILE: &str = "lib/small.bin";

/// The daemon flags for `store`'s protocol, a cache directory and, when
/// given, a stats file, plus `extra`.
fn args(store: &RealStore, cache: &Path, stats: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = store.protocol_args().map(String::from).to_vec();
    out.extend(["--cache-dir".into(), cache.display().to_string()]);
    if let Some(stats) = stats {
        out.extend(["--stats-file".into(), stats.display().to_string()]);
    }
    out.extend(extra.iter().map(|s| s.to_string()));
    out
}

fn mount_with(store: &RealStore, args: &[String]) -> Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::mount(&store.address(), &args)
}

/// Reads every store path of the sample tree and compares it with its
/// source; returns the number of entries compared.
fn read_everything(daemon: &Daemon, store: &RealStore) -> usize {
    let mut compared = 0;
    for (source, basename) in store.store_paths() {
        let served = daemon.path(basename);
        compare_entry(source, &served, basename);
        compared += 1;
        if served.is_dir() {
            compared += compare_trees(source, &served);
        }
    }
    compared
}

/// The counters a stopped daemon wrote at exit.
fn counters_at_exit(daemon: &mut Daemon, stats: &Path) -> HashMap<String, u64> {
    assert!(daemon.stop(), "the daemon did not unmount by itself");
    let counters = read_counters(stats);
    assert!(
        counters.contains_key("store_requests"),
        "no counters in {}: {counters:?}",
        stats.display()
    );
    counters
}

fn second_instance_on_a_shared_cache_asks_only_for_its_mappings(kind: StoreKind, test: &str) {
    let tree = sample_tree();
    let store = real_store_or_skip!(kind, test, &[&tree]);
    let cache = scratch("real-shared-cache");
    let stats_dir = scratch("real-shared-cache-stats");

    let first_stats = stats_dir.join("first");
    let mut first = mount_with(
        &store,
        &args(&store, &cache, Some(&first_stats), &["--instance", "vm1"]),
    );
    let compared = read_everything(&first, &store);
    assert!(compared > MANY + 20, "compared only {compared} entries");
    let first_counters = counters_at_exit(&mut first, &first_stats);
    eprintln!("{kind:?}, first daemon: {first_counters:?}");
    assert!(
        first_counters["store_requests"] > MANY as u64 / 100,
        "the first daemon fetched almost nothing? {first_counters:?}"
    );
    assert_eq!(
        first_counters["store_errors"],
        0,
        "the first daemon met store errors: {first_counters:?}\n{}",
        first.log()
    );

    // What the shared objects hold: Directories and chunks (content
    // addressed, checked on every read). What each instance keeps for
    // itself: path infos and chunk lists, which cannot be checked from
    // their name. So a second instance reading the same tree asks the
    // store for those mappings, as many as the first did, and for nothing
    // else: `store_requests` (every RPC the cache layer makes) is exactly
    // its PathInfoService.Get and BlobService.Stat calls; no Directory or
    // blob byte comes from the store. The protocol check at start is made
    // before the cache layer and not counted in `store_requests`.
    let second_stats = stats_dir.join("second");
    let mut second = mount_with(
        &store,
        &args(&store, &cache, Some(&second_stats), &["--instance", "vm2"]),
    );
    assert_eq!(read_everything(&second, &store), compared);
    let counters = counters_at_exit(&mut second, &second_stats);
    eprintln!("{kind:?}, second daemon: {counters:?}");
    let mappings = counters["store_path_info_calls"] + counters["store_chunk_list_calls"];
    assert_eq!(
        counters["store_requests"],
        mappings,
        "the second instance went to the {kind:?} store for content: {counters:?}\n{}",
        second.log()
    );
    assert_eq!(
        counters["store_path_info_calls"], first_counters["store_path_info_calls"],
        "{counters:?}"
    );
    assert_eq!(
        counters["store_chunk_list_calls"], first_counters["store_chunk_list_calls"],
        "{counters:?}"
    );
    assert_eq!(counters["store_bytes_fetched"], 0, "{counters:?}");
    assert_eq!(counters["verification_failures"], 0, "{counters:?}");
    assert!(counters["disk_hits"] > MANY as u64, "{counters:?}");

    // The first instance again: its own mappings too come from disk.
    let third_stats = stats_dir.join("third");
    let mut third = mount_with(
        &store,
        &args(&store, &cache, Some(&third_stats), &["--instance", "vm1"]),
    );
    assert_eq!(read_everything(&third, &store), compared);
    let counters = counters_at_exit(&mut third, &third_stats);
    eprintln!("{kind:?}, first instance again: {counters:?}");
    assert_eq!(
        counters["store_requests"], 0,
        "a restarted instance went to the {kind:?} store: {counters:?}"
    );
}

#[test]
fn second_instance_on_a_shared_cache_asks_a_tvix_store_only_for_mappings() {
    second_instance_on_a_shared_cache_asks_only_for_its_mappings(
        StoreKind::Tvix,
        "second_instance_on_a_shared_cache_asks_a_tvix_store_only_for_mappings",
    );
}

#[test]
fn second_instance_on_a_shared_cache_asks_a_snix_store_only_for_mappings() {
    second_instance_on_a_shared_cache_asks_only_for_its_mappings(
        StoreKind::Snix,
        "second_instance_on_a_shared_cache_asks_a_snix_store_only_for_mappings",
    );
}

fn compare_files(source: &Path, served: &Path, relatives: &[&str]) {
    for relative in relatives {
        compare_entry(&source.join(relative), &served.join(relative), relative);
    }
}

fn serves_everything_cached_while_the_store_is_down(kind: StoreKind, test: &str) {
    let tree = sample_tree();
    let mut store = real_store_or_skip!(kind, test, &[&tree]);
    let cache = scratch("real-offline-cache");
    let pkg_source = tree.join(PKG);
    let pkg = store.store_path_of(&pkg_source);

    // Populate: every store path but the package whole, and of the package
    // everything but one file, which stays uncached.
    {
        let daemon = mount_with(&store, &args(&store, &cache, None, &["--instance", "vm1"]));
        for (source, basename) in store.store_paths() {
            if *source == pkg_source {
                continue;
            }
            let served = daemon.path(basename);
            compare_entry(source, &served, basename);
            if served.is_dir() {
                compare_trees(source, &served);
            }
        }
        compare_files(&pkg_source, &daemon.path(&pkg), CACHED_FILES);
    }
    store.stop();
    assert!(!store.is_running());

    // A new daemon, the store down: all of that is served from disk.
    let daemon = mount_with(
        &store,
        &args(
            &store,
            &cache,
            None,
            &["--instance", "vm1", "--store-timeout", "2"],
        ),
    );
    for (source, basename) in store.store_paths() {
        if *source == pkg_source {
            continue;
        }
        let served = daemon.path(basename);
        compare_entry(source, &served, basename);
        if served.is_dir() {
            compare_trees(source, &served);
        }
    }
    let pkg_dir = daemon.path(&pkg);
    compare_files(&pkg_source, &pkg_dir, CACHED_FILES);

    // Never fetched: EIO, the daemon still serving.
    let uncached: PathBuf = pkg_dir.join(UNCACHED_FILE);
    let started = Instant::now();
    assert_eq!(
        std::fs::read(&uncached).unwrap_err().raw_os_error(),
        Some(libc::EIO),
        "reading uncached content with the {kind:?} store down"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the failing read took {:?}",
        started.elapsed()
    );
    compare_files(&pkg_source, &pkg_dir, &["bin/hello"]);

    // The store returns: uncached content is fetched, no restart needed.
    store.restart();
    let expected = std::fs::read(pkg_source.join(UNCACHED_FILE)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::fs::read(&uncached) {
            Ok(data) => {
                assert!(data == expected, "wrong bytes once the store is back");
                break;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!(
                "the {kind:?} store is back but the read still fails: {e}\n{}",
                daemon.log()
            ),
        }
    }
    compare_files(&pkg_source, &pkg_dir, CACHED_FILES);
}

#[test]
fn serves_everything_cached_while_a_tvix_store_is_down() {
    serves_everything_cached_while_the_store_is_down(
        StoreKind::Tvix,
        "serves_everything_cached_while_a_tvix_store_is_down",
    );
}

#[test]
fn serves_everything_cached_while_a_snix_store_is_down() {
    serves_everything_cached_while_the_store_is_down(
        StoreKind::Snix,
        "serves_everything_cached_while_a_snix_store_is_down",
    );
}

/// A cold sequential read of a large file: every byte verified and
/// received once, in a handful of calls rather than one per chunk (one
/// stream of the whole blob, split at the chunk list the store gave).
fn a_cold_sequential_read_is_one_stream(kind: StoreKind, test: &str) {
    let tree = sample_tree();
    let store = real_store_or_skip!(kind, test, &[&tree]);
    let cache = scratch("real-cold-stream");
    let stats = scratch("real-cold-stream-stats").join("stats");
    let mut daemon = mount_with(&store, &args(&store, &cache, Some(&stats), &[]));
    let relative = "lib/libbig.so";
    let served = read_direct(
        &daemon
            .path(&store.store_path_of(&tree.join(PKG)))
            .join(relative),
    );
    let source = std::fs::read(tree.join(PKG).join(relative)).unwrap();
    assert!(served == source, "served bytes differ from the source");
    let counters = counters_at_exit(&mut daemon, &stats);
    eprintln!("{kind:?}: {counters:?}");
    assert_eq!(counters["store_errors"], 0, "store errors: {counters:?}");
    assert_eq!(
        counters["store_bytes_fetched"], BIG_FILE_SIZE,
        "bytes received for one read of the file"
    );
    // The path info, the Directories, the chunk list and one Read of the
    // whole blob (one spare): per chunk, this would be hundreds.
    assert!(
        counters["store_requests"] <= 5,
        "store calls for one file: {counters:?}"
    );
    assert!(
        counters["readahead_chunks"] > 0,
        "nothing read ahead: {counters:?}"
    );
}

#[test]
fn a_cold_sequential_read_from_a_tvix_store_is_one_stream() {
    a_cold_sequential_read_is_one_stream(
        StoreKind::Tvix,
        "a_cold_sequential_read_from_a_tvix_store_is_one_stream",
    );
}

#[test]
fn a_cold_sequential_read_from_a_snix_store_is_one_stream() {
    a_cold_sequential_read_is_one_stream(
        StoreKind::Snix,
        "a_cold_sequential_read_from_a_snix_store_is_one_stream",
    );
}
