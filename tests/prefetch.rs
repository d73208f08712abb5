//! The prefetch (`--prefetch-bytes`, `--prefetch-guess`), through real
//! FUSE mounts of daemon processes against the fixture store (which counts
//! its calls): the `tree` guess (what a lookup fetches without a read, the
//! budget, a warm cache), the default `directory` guess (a lookup fetches
//! nothing, an open its directory's small files), turning it off, and the
//! access trace (recorded by one instance, replayed by another that has
//! it); and against the real tvix-store and snix-store, whose answers it
//! takes (counted by our daemon's `--stats-file`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::real_store::{RealStore, StoreKind};
use common::*;

const NAME: &str = "tool-1.0";
/// Sizes of the small files in `etc/` and in `share/doc/deep/`.
const ETC: [usize; 6] = [1, 100, 4096, 5000, 70_000, 256 << 10];
const DEEP: [usize; 4] = [10, 2000, 30_000, 200_000];

/// A store path with small files near the top (`etc/`), small files deep
/// down (`share/doc/deep/`), an empty file, a symlink and a file larger
/// than a chunk (`lib/big.bin`), which is never prefetched.
fn tree() -> PathBuf {
    let root = scratch("prefetch-tree");
    let pkg = root.join(NAME);
    let write = |dir: &Path, sizes: &[usize], seed: usize| {
        std::fs::create_dir_all(dir).unwrap();
        for (i, &size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|b| (b * 31 + i * 7 + seed) as u8).collect();
            std::fs::write(dir.join(format!("f{i}")), data).unwrap();
        }
    };
    write(&pkg.join("etc"), &ETC, 1);
    write(&pkg.join("share/doc/deep"), &DEEP, 2);
    write(&pkg.join("lib"), &[600 << 10], 3);
    std::fs::rename(pkg.join("lib/f0"), pkg.join("lib/big.bin")).unwrap();
    std::fs::write(pkg.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("etc/f0", pkg.join("link")).unwrap();
    root
}

fn fixture(tree: &Path) -> Fixture {
    Fixture::start(tree, &["--chunk-size", &CHUNK_SIZE.to_string()])
}

const NO_READAHEAD: &[&str] = &["--readahead-chunks", "0"];

fn blob_reads(fixture: &Fixture) -> u64 {
    fixture.stats().get("blob_read").copied().unwrap_or(0)
}

/// Waits until the fixture has served `expected` blob reads, then a little
/// longer to see that no more come.
fn settle_at(fixture: &Fixture, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while blob_reads(fixture) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(blob_reads(fixture), expected, "blob reads of the prefetch");
}

fn daemon(fixture: &Fixture, cache: &Path, instance: &str, prefetch: &str) -> Daemon {
    daemon_guessing(fixture, cache, instance, prefetch, "tree", &[])
}

fn daemon_guessing(
    fixture: &Fixture,
    cache: &Path,
    instance: &str,
    prefetch: &str,
    guess: &str,
    extra: &[&str],
) -> Daemon {
    let cache = cache.display().to_string();
    let mut args = vec![
        "--cache-dir",
        &cache,
        "--instance",
        instance,
        "--prefetch-bytes",
        prefetch,
        "--prefetch-guess",
        guess,
    ];
    args.extend(extra);
    Daemon::mount(&fixture.address(), &args)
}

/// The trace files an instance keeps (`instances/NAME/traces/`).
fn trace_files(cache: &Path, instance: &str) -> Vec<PathBuf> {
    let dir = cache.join("v2/instances").join(instance).join("traces");
    let mut found = Vec::new();
    let mut pending = vec![dir];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Copies an instance's traces into another cache's instance.
fn copy_traces(from: &Path, from_instance: &str, to: &Path, to_instance: &str) {
    let dir = from.join("v2/instances").join(from_instance).join("traces");
    for file in trace_files(from, from_instance) {
        let target = to
            .join("v2/instances")
            .join(to_instance)
            .join("traces")
            .join(file.strip_prefix(&dir).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// Reads every small file of the store path served at `served` and
/// compares it with the source tree's.
fn check_small_files(served: &Path, source: &Path) {
    for (dir, n) in [("etc", ETC.len()), ("share/doc/deep", DEEP.len())] {
        for i in 0..n {
            let relative = format!("{dir}/f{i}");
            assert!(
                std::fs::read(served.join(&relative)).unwrap()
                    == std::fs::read(source.join(NAME).join(&relative)).unwrap(),
                "{relative}: wrong bytes"
            );
        }
    }
}

#[test]
fn a_lookup_fetches_every_small_file_ahead_and_reads_then_need_no_store() {
    let source = tree();
    let fixture = fixture(&source);
    let daemon = daemon(&fixture, &scratch("prefetch-cache"), "vm1", "64M");
    assert_eq!(blob_reads(&fixture), 0);
    let root = daemon.path(&fixture.store_path(NAME));
    assert!(std::fs::metadata(&root).unwrap().is_dir());
    // Every non-empty small file, once; neither the empty file nor the
    // chunks of big.bin (nor its chunk list).
    let small = (ETC.len() + DEEP.len()) as u64;
    settle_at(&fixture, small);
    assert_eq!(fixture.stats().get("blob_stat").copied().unwrap_or(0), 0);
    check_small_files(&daemon.path(&fixture.store_path(NAME)), &source);
    assert_eq!(
        blob_reads(&fixture),
        small,
        "a prefetched file was fetched again"
    );
}

#[test]
fn the_budget_covers_the_first_files_breadth_first_and_a_warm_cache_needs_no_calls() {
    let source = tree();
    let fixture = fixture(&source);
    let cache = scratch("prefetch-cache");
    // Exactly the files of etc/, which the walk reaches before the deeper
    // ones (and before share/ itself).
    let budget = ETC.iter().sum::<usize>().to_string();
    let mut first = daemon(&fixture, &cache, "vm1", &budget);
    std::fs::metadata(first.path(&fixture.store_path(NAME))).unwrap();
    settle_at(&fixture, ETC.len() as u64);
    first.stop();

    // Another instance on the same cache (its path info comes from the
    // store, so it walks) covers the same files, all on disk.
    let second = daemon(&fixture, &cache, "vm2", &budget);
    std::fs::metadata(second.path(&fixture.store_path(NAME))).unwrap();
    settle_at(&fixture, ETC.len() as u64);
    let deep = second
        .path(&fixture.store_path(NAME))
        .join("share/doc/deep/f1");
    assert_eq!(std::fs::read(deep).unwrap().len(), DEEP[1]);
    assert_eq!(
        blob_reads(&fixture),
        ETC.len() as u64 + 1,
        "only the file read was fetched"
    );
}

#[test]
fn with_prefetch_off_a_lookup_fetches_nothing() {
    let source = tree();
    let fixture = fixture(&source);
    let daemon = daemon(&fixture, &scratch("prefetch-cache"), "vm1", "0");
    std::fs::metadata(daemon.path(&fixture.store_path(NAME))).unwrap();
    settle_at(&fixture, 0);
    check_small_files(&daemon.path(&fixture.store_path(NAME)), &source);
    assert_eq!(blob_reads(&fixture), (ETC.len() + DEEP.len()) as u64);
}

#[test]
fn by_default_a_lookup_fetches_nothing_and_an_open_fetches_its_directory() {
    let source = tree();
    let fixture = fixture(&source);
    let cache = scratch("prefetch-cache");
    // The default guess (only the budget is given: the tests' daemons
    // run without a prefetch unless told).
    let daemon = Daemon::mount(
        &fixture.address(),
        &[
            "--cache-dir",
            &cache.display().to_string(),
            "--instance",
            "vm1",
            "--prefetch-bytes",
            "64M",
        ],
    );
    let root = daemon.path(&fixture.store_path(NAME));
    // A metadata walk of the whole store path: no content.
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
            std::fs::symlink_metadata(entry.path()).unwrap();
        }
    }
    settle_at(&fixture, 0);
    // One open in etc/: the small files of etc/, nothing deeper.
    let first = std::fs::read(root.join("etc/f0")).unwrap();
    assert_eq!(first.len(), ETC[0]);
    settle_at(&fixture, ETC.len() as u64);
    check_small_files(&root, &source);
    assert_eq!(
        blob_reads(&fixture),
        (ETC.len() + DEEP.len()) as u64,
        "each small file was fetched once"
    );
}

#[test]
fn an_instance_with_the_trace_of_another_fetches_what_that_guest_read() {
    let source = tree();
    let fixture = fixture(&source);
    let (first_cache, second_cache) = (scratch("trace-cache-1"), scratch("trace-cache-2"));
    let store_path = fixture.store_path(NAME);
    // What the first guest reads: two small files, out of order, and the
    // first 100 KiB of big.bin (its first chunks only; no read-ahead of
    // ours, so that both guests' reads cover the same chunks).
    let read_like_a_guest = |daemon: &Daemon| {
        let root = daemon.path(&store_path);
        let deep = std::fs::read(root.join("share/doc/deep/f2")).unwrap();
        assert_eq!(
            deep,
            std::fs::read(source.join(NAME).join("share/doc/deep/f2")).unwrap()
        );
        let etc = std::fs::read(root.join("etc/f3")).unwrap();
        assert_eq!(
            etc,
            std::fs::read(source.join(NAME).join("etc/f3")).unwrap()
        );
        let mut head = vec![0; 100 << 10];
        use std::io::Read;
        std::fs::File::open(root.join("lib/big.bin"))
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(
            head[..],
            std::fs::read(source.join(NAME).join("lib/big.bin")).unwrap()[..100 << 10]
        );
    };
    let mut first = daemon_guessing(&fixture, &first_cache, "vm1", "64M", "none", NO_READAHEAD);
    read_like_a_guest(&first);
    assert!(first.stop(), "the daemon did not unmount by itself");
    let reads_of_the_guest = blob_reads(&fixture);
    let chunks_read = reads_of_the_guest - 2;
    assert!(chunks_read >= 1, "big.bin's head: {chunks_read} chunks");
    assert_eq!(
        trace_files(&first_cache, "vm1").len(),
        1,
        "one store path traced"
    );

    // Another instance on an empty cache, with that trace: a lookup alone
    // fetches exactly those files and chunks.
    copy_traces(&first_cache, "vm1", &second_cache, "vm2");
    let mut second = daemon_guessing(&fixture, &second_cache, "vm2", "64M", "none", NO_READAHEAD);
    std::fs::metadata(second.path(&store_path)).unwrap();
    settle_at(&fixture, 2 * reads_of_the_guest);
    read_like_a_guest(&second);
    assert_eq!(
        blob_reads(&fixture),
        2 * reads_of_the_guest,
        "the guest's reads found everything prefetched"
    );
    assert!(second.stop(), "the daemon did not unmount by itself");

    // A trace that is not one (a torn or foreign file) is dropped, not
    // trusted: the third instance fetches nothing ahead.
    let third_cache = scratch("trace-cache-3");
    copy_traces(&first_cache, "vm1", &third_cache, "vm3");
    for file in trace_files(&third_cache, "vm3") {
        std::fs::write(&file, b"not a trace at all, but long enough for a checksum").unwrap();
    }
    let third = daemon_guessing(&fixture, &third_cache, "vm3", "64M", "none", NO_READAHEAD);
    std::fs::metadata(third.path(&store_path)).unwrap();
    settle_at(&fixture, 2 * reads_of_the_guest);
    drop(third);
}

/// Our daemon on a real store with a prefetch budget of 64M, the instance
/// `instance` on `cache`, its counters in `stats`, and `extra` flags.
fn mount_real(
    store: &RealStore,
    cache: &Path,
    instance: &str,
    stats: &Path,
    extra: &[&str],
) -> Daemon {
    let mut args = vec![
        "--cache-dir",
        cache.to_str().unwrap(),
        "--instance",
        instance,
        "--stats-file",
        stats.to_str().unwrap(),
        "--prefetch-bytes",
        "64M",
    ];
    args.extend(extra);
    store.mount(&args)
}

/// Against a real store: a lookup alone fetches the small files, verified,
/// and another instance on the same cache then reads them all from disk.
fn prefetches_from_a_real_store(kind: StoreKind, test: &str) {
    let source = tree();
    let store = real_store_or_skip!(kind, test, &[&source]);
    let name = store.store_path_of(&source.join(NAME));
    let (cache, stats_dir) = (
        scratch("real-prefetch-cache"),
        scratch("real-prefetch-stats"),
    );
    let small = (ETC.len() + DEEP.len()) as u64;
    let small_bytes = ETC.iter().chain(&DEEP).sum::<usize>() as u64;
    let mount = |instance: &str, stats: &Path| {
        mount_real(
            &store,
            &cache,
            instance,
            stats,
            &["--prefetch-guess", "tree"],
        )
    };

    let first_stats = stats_dir.join("first");
    let mut first = mount("vm1", &first_stats);
    assert!(std::fs::metadata(first.path(&name)).unwrap().is_dir());
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_counters(&first_stats)
        .get("store_bytes_fetched")
        .copied()
        != Some(small_bytes)
    {
        assert!(
            Instant::now() < deadline,
            "{kind:?}: the prefetch did not fetch the {small_bytes} bytes of small files: {:?}\n{}",
            read_counters(&first_stats),
            first.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(first.stop(), "the daemon did not unmount by itself");
    let counters = read_counters(&first_stats);
    assert_eq!(
        counters["prefetched_files"], small,
        "{kind:?}: {counters:?}"
    );
    assert_eq!(
        counters["store_bytes_fetched"], small_bytes,
        "{kind:?}: {counters:?}"
    );
    assert_eq!(counters["store_errors"], 0, "{kind:?}: {counters:?}");
    assert_eq!(
        counters["verification_failures"], 0,
        "{kind:?}: {counters:?}"
    );
    assert_eq!(counters["disk_writes_dropped"], 0, "{kind:?}: {counters:?}");

    let second_stats = stats_dir.join("second");
    let mut second = mount("vm2", &second_stats);
    check_small_files(&second.path(&name), &source);
    assert!(second.stop(), "the daemon did not unmount by itself");
    let counters = read_counters(&second_stats);
    assert_eq!(
        counters["store_bytes_fetched"], 0,
        "{kind:?}: the second instance fetched content: {counters:?}"
    );
    assert_eq!(counters["prefetched_files"], 0, "{kind:?}: {counters:?}");
}

#[test]
fn prefetches_from_a_real_tvix_store() {
    prefetches_from_a_real_store(StoreKind::Tvix, "prefetches_from_a_real_tvix_store");
}

#[test]
fn prefetches_from_a_real_snix_store() {
    prefetches_from_a_real_store(StoreKind::Snix, "prefetches_from_a_real_snix_store");
}

/// Against a real store: an instance records what its guest read, and
/// another instance on an empty cache, given that trace, fetches those
/// files on the lookup alone, one store call per file (a file of several
/// chunks in one stream); its guest then reads them without a fetch.
fn replays_a_trace_from_a_real_store(kind: StoreKind, test: &str) {
    let source = tree();
    let store = real_store_or_skip!(kind, test, &[&source]);
    let name = store.store_path_of(&source.join(NAME));
    let stats_dir = scratch("real-trace-stats");
    let mount = |cache: &Path, instance: &str, stats: &Path| {
        mount_real(
            &store,
            cache,
            instance,
            stats,
            &["--prefetch-guess", "none", "--readahead-chunks", "0"],
        )
    };
    let read = ["etc/f4", "lib/big.bin", "share/doc/deep/f3", "etc/f1"];
    let read_them = |daemon: &Daemon| {
        for relative in read {
            assert!(
                std::fs::read(daemon.path(&format!("{name}/{relative}"))).unwrap()
                    == std::fs::read(source.join(NAME).join(relative)).unwrap(),
                "{kind:?}: {relative}: wrong bytes"
            );
        }
    };
    let (first_cache, second_cache) = (scratch("real-trace-1"), scratch("real-trace-2"));
    let mut first = mount(&first_cache, "vm1", &stats_dir.join("first"));
    read_them(&first);
    assert!(first.stop(), "the daemon did not unmount by itself");
    let counters = read_counters(&stats_dir.join("first"));
    let first_calls = counters["store_requests"];
    assert_eq!(counters["prefetched_files"], 0, "{kind:?}: {counters:?}");
    assert!(counters["traces_written"] >= 1, "{kind:?}: {counters:?}");

    copy_traces(&first_cache, "vm1", &second_cache, "vm2");
    let stats = stats_dir.join("second");
    let mut second = mount(&second_cache, "vm2", &stats);
    std::fs::metadata(second.path(&name)).unwrap();
    let want_bytes: u64 = read
        .iter()
        .map(|r| std::fs::metadata(source.join(NAME).join(r)).unwrap().len())
        .sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_counters(&stats).get("store_bytes_fetched").copied() != Some(want_bytes) {
        assert!(
            Instant::now() < deadline,
            "{kind:?}: the trace's {want_bytes} bytes were not prefetched: {:?}\n{}",
            read_counters(&stats),
            second.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    read_them(&second);
    assert!(second.stop(), "the daemon did not unmount by itself");
    let counters = read_counters(&stats);
    assert_eq!(
        counters["prefetch_trace_files"],
        read.len() as u64,
        "{kind:?}: {counters:?}"
    );
    assert_eq!(
        counters["store_bytes_fetched"], want_bytes,
        "{kind:?}: the guest's reads fetched again: {counters:?}"
    );
    assert_eq!(
        counters["verification_failures"], 0,
        "{kind:?}: {counters:?}"
    );
    // One store call per traced file: big.bin's chunks (the first guest
    // read them one by one, with no read-ahead) come in one stream of its
    // blob, after its chunk list. Besides: the path info and one
    // recursive Directory call.
    assert_eq!(
        counters["store_chunk_list_calls"], 1,
        "{kind:?}: {counters:?}"
    );
    assert_eq!(
        counters["store_requests"],
        counters["store_path_info_calls"] + 1 + 1 + read.len() as u64,
        "{kind:?}: not one call per traced file: {counters:?}"
    );
    assert!(
        first_calls > counters["store_requests"],
        "{kind:?}: big.bin is one chunk in this store, nothing shows the stream: {first_calls} calls before, {counters:?}"
    );
}

#[test]
fn replays_a_trace_from_a_real_tvix_store() {
    replays_a_trace_from_a_real_store(StoreKind::Tvix, "replays_a_trace_from_a_real_tvix_store");
}

#[test]
fn replays_a_trace_from_a_real_snix_store() {
    replays_a_trace_from_a_real_store(StoreKind::Snix, "replays_a_trace_from_a_real_snix_store");
}
