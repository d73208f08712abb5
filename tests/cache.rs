//! The local cache, through real FUSE mounts of daemon processes against the
//! fixture store: sharing one disk cache between daemons, its size bound,
//! corruption on disk, serving while the store is down, one fetch per chunk
//! for concurrent readers, one stream of a blob for a reader from its
//! start, and bounded memory.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const PKG: &str = "hello-2.12";

fn chunked(tree: &Path) -> Fixture {
    Fixture::start(tree, &["--chunk-size", &CHUNK_SIZE.to_string()])
}

/// A disk cache, as instance `vm1` (its private mappings included).
fn cache_args(cache: &Path) -> Vec<String> {
    instance_args(cache, "vm1")
}

fn instance_args(cache: &Path, instance: &str) -> Vec<String> {
    vec![
        "--cache-dir".into(),
        cache.display().to_string(),
        "--instance".into(),
        instance.into(),
    ]
}

fn mount_with(fixture: &Fixture, args: &[String]) -> Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::mount(&fixture.address(), &args)
}

/// Reads every store path of the sample tree and compares it with the source.
fn read_everything(daemon: &Daemon, fixture: &Fixture) {
    let tree = sample_tree();
    for entry in std::fs::read_dir(&tree).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let served = daemon.path(&fixture.store_path(&name));
        compare_entry(&tree.join(&name), &served, &name);
        if served.is_dir() {
            compare_trees(&tree.join(&name), &served);
        }
    }
}

#[test]
fn second_daemon_on_a_shared_cache_makes_no_content_calls() {
    let fixture = chunked(&sample_tree());
    let cache = scratch("shared-cache");
    let mut first = mount_with(&fixture, &instance_args(&cache, "vm1"));
    read_everything(&first, &fixture);
    first.stop();
    let after_first = fixture.stats();
    assert!(
        fixture.content_calls() > MANY as u64 / 100,
        "the first daemon fetched nothing?"
    );
    let calls =
        |s: &std::collections::HashMap<String, u64>, call: &str| s.get(call).copied().unwrap_or(0);

    // Another instance: the shared objects serve every byte and every
    // Directory; its own mappings (store path -> node, blob -> chunks) it
    // asks the store for, as many as the first instance did, plus the
    // protocol check at start.
    let mut second = mount_with(&fixture, &instance_args(&cache, "vm2"));
    read_everything(&second, &fixture);
    second.stop();
    let after_second = fixture.stats();
    for call in ["blob_read", "directory_get"] {
        assert_eq!(
            calls(&after_first, call),
            calls(&after_second, call),
            "{call}: the second instance went to the store for shared content"
        );
    }
    let first_lookups = calls(&after_first, "pathinfo_get") - 1;
    assert!(first_lookups > 0);
    assert_eq!(
        calls(&after_second, "pathinfo_get") - calls(&after_first, "pathinfo_get"),
        first_lookups + 1,
        "pathinfo_get: one per store path and the protocol check"
    );
    assert_eq!(
        calls(&after_second, "blob_stat") - calls(&after_first, "blob_stat"),
        calls(&after_first, "blob_stat"),
        "blob_stat: one chunk list per large file, as the first instance asked"
    );

    // The first instance again: its own mappings are still there, so only
    // the protocol check reaches the store.
    let third = mount_with(&fixture, &instance_args(&cache, "vm1"));
    read_everything(&third, &fixture);
    let after_third = fixture.stats();
    for call in ["blob_read", "directory_get", "blob_stat"] {
        assert_eq!(
            calls(&after_second, call),
            calls(&after_third, call),
            "{call}: a restarted instance went to the store"
        );
    }
    assert_eq!(
        calls(&after_third, "pathinfo_get"),
        calls(&after_second, "pathinfo_get") + 1
    );
}

#[test]
fn daemons_sharing_a_cache_at_once_serve_correct_data() {
    let fixture = chunked(&sample_tree());
    let cache = scratch("concurrent-cache");
    let a = mount_with(&fixture, &cache_args(&cache));
    let b = mount_with(&fixture, &cache_args(&cache));
    std::thread::scope(|s| {
        s.spawn(|| read_everything(&a, &fixture));
        s.spawn(|| read_everything(&b, &fixture));
    });
}

#[test]
fn disk_cache_stays_within_its_bound() {
    let tree = sample_tree();
    let fixture = chunked(&tree);
    let cache = scratch("bounded-cache");
    let bound: u64 = 16 << 20;
    let slack = bound / 16;
    let mut args = cache_args(&cache);
    args.extend([
        "--disk-cache-size".into(),
        bound.to_string(),
        "--memory-cache-size".into(),
        "8M".into(),
    ]);
    let daemon = mount_with(&fixture, &args);

    let largest = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (largest, done, cache) = (largest.clone(), done.clone(), cache.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                largest.fetch_max(dir_size(&cache), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // More than four times the bound, twice.
    let pkg = daemon.path(&fixture.store_path(PKG));
    let source = std::fs::read(tree.join(PKG).join("lib/libbig.so")).unwrap();
    for _ in 0..2 {
        let served = read_direct(&pkg.join("lib/libbig.so"));
        assert!(served == source, "content differs under eviction");
    }
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let largest = largest.load(Ordering::Relaxed);
    // One chunk may be on its way into place while a scan runs.
    let allowed = bound + slack + CHUNK_SIZE;
    assert!(
        largest <= allowed,
        "cache reached {largest} bytes, bound {bound} + slack {slack}"
    );
    assert!(
        largest > bound / 2,
        "cache never filled ({largest} bytes): test proves nothing"
    );
}

/// Reads a whole file with O_DIRECT (past the kernel page cache), 1 MiB at a time.

#[test]
fn a_flipped_byte_on_disk_is_detected_and_never_served() {
    let tree = sample_tree();
    let mut fixture = chunked(&tree);
    let cache = scratch("corrupt-cache");
    let relative = "lib/small.bin";
    let source = std::fs::read(tree.join(PKG).join(relative)).unwrap();
    let mut daemon = mount_with(&fixture, &cache_args(&cache));
    let file = daemon.path(&fixture.store_path(PKG)).join(relative);
    assert_eq!(std::fs::read(&file).unwrap(), source);
    daemon.stop();

    // small.bin is one unchunked blob: its cache file is named by its digest.
    let digest = fixture.digest(&format!("{PKG}/{relative}"));
    let cached = cache
        .join("v2/objects/chunks")
        .join(&digest[..2])
        .join(&digest);
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    };
    flip(&cached);

    // Store up: the right bytes, refetched; the failure is counted.
    let stats_file = scratch("stats").join("stats");
    let mut args = cache_args(&cache);
    args.extend(["--stats-file".into(), stats_file.display().to_string()]);
    let mut daemon = mount_with(&fixture, &args);
    let before = fixture.stats().get("blob_read").copied().unwrap_or(0);
    assert_eq!(
        std::fs::read(daemon.path(&fixture.store_path(PKG)).join(relative)).unwrap(),
        source
    );
    assert_eq!(
        fixture.stats().get("blob_read").copied().unwrap_or(0),
        before + 1,
        "not refetched"
    );
    assert!(
        daemon.log().contains("failed verification"),
        "{}",
        daemon.log()
    );
    daemon.stop();
    assert!(read_counters(&stats_file)["verification_failures"] >= 1);

    // Store down: EIO, never the flipped bytes.
    flip(&cached);
    fixture.stop();
    let daemon = mount_with(&fixture, &cache_args(&cache));
    let err = std::fs::read(daemon.path(&fixture.store_path(PKG)).join(relative)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}

/// The files of the package that the offline test fetches (and so caches).
const CACHED_FILES: &[&str] = &[
    "bin/hello",
    "lib/libbig.so",
    "lib/medium.bin",
    "share/doc/name with spaces.txt",
];

fn compare_files(source: &Path, served: &Path, relatives: &[&str]) {
    for relative in relatives {
        compare_entry(&source.join(relative), &served.join(relative), relative);
    }
}

#[test]
fn serves_everything_cached_while_the_store_is_down() {
    let tree = sample_tree();
    let mut fixture = chunked(&tree);
    let cache = scratch("offline-cache");
    let mut daemon = mount_with(&fixture, &cache_args(&cache));
    // Populate: everything but one file, which stays uncached.
    let pkg = fixture.store_path(PKG);
    for entry in std::fs::read_dir(&tree).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let served = daemon.path(&fixture.store_path(&name));
        if name != PKG {
            compare_entry(&tree.join(&name), &served, &name);
            if served.is_dir() {
                compare_trees(&tree.join(&name), &served);
            }
        }
    }
    let pkg_dir = daemon.path(&pkg);
    compare_files(&tree.join(PKG), &pkg_dir, CACHED_FILES);
    daemon.stop();
    fixture.stop();

    // A new daemon, the store down: all of that is served from disk.
    let mut args = cache_args(&cache);
    args.extend(["--store-timeout".into(), "2".into()]);
    let daemon = mount_with(&fixture, &args);
    let many = fixture.store_path("many-files-1.0");
    compare_trees(&tree.join("many-files-1.0"), &daemon.path(&many));
    let pkg_dir = daemon.path(&pkg);
    compare_files(&tree.join(PKG), &pkg_dir, CACHED_FILES);
    // Never fetched: EIO, the daemon still serving.
    let uncached = pkg_dir.join("lib/small.bin");
    assert_eq!(
        std::fs::read(&uncached).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    assert!(pkg_dir.join("bin/hello").exists());

    // The store returns: uncached content is fetched, no restart needed.
    fixture.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match std::fs::read(&uncached) {
            Ok(data) => {
                assert_eq!(
                    data,
                    std::fs::read(tree.join(PKG).join("lib/small.bin")).unwrap()
                );
                break;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("store is back but the read still fails: {e}"),
        }
    }
}

/// Daemon flags for a stats file at `stats`, and `extra`.
fn with_stats(stats: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--stats-file".to_string(), stats.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Blob bytes the daemon received from the store, by its stats file
/// (written every second and when it stops).
fn bytes_fetched(stats: &Path) -> u64 {
    read_counters(stats)
        .get("store_bytes_fetched")
        .copied()
        .unwrap_or(0)
}

/// `readers` threads each reading the big file of a fresh daemon from
/// start to end: the store's blob reads meanwhile, and the daemon's stats
/// file (the daemon stopped, so it is final).
fn cold_reads_of_the_big_file(
    fixture: &Fixture,
    name: &str,
    readers: usize,
    args: &[&str],
) -> (u64, std::path::PathBuf) {
    let stats = scratch(name).join("stats");
    let mut daemon = mount_with(fixture, &with_stats(&stats, args));
    let file = daemon.path(&fixture.store_path(PKG)).join("lib/libbig.so");
    let source = std::fs::read(sample_tree().join(PKG).join("lib/libbig.so")).unwrap();
    let before = fixture.stats().get("blob_read").copied().unwrap_or(0);
    std::thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| assert!(read_direct(&file) == source, "a reader got wrong bytes"));
        }
    });
    let reads = fixture.stats().get("blob_read").copied().unwrap_or(0) - before;
    daemon.stop();
    (reads, stats)
}

#[test]
fn concurrent_readers_of_a_cold_file_fetch_each_chunk_once() {
    let tree = sample_tree();
    let fixture = chunked(&tree);
    let (reads, stats) = cold_reads_of_the_big_file(&fixture, "concurrent-readers", 8, &[]);
    // One stream of the whole blob for the first reader, the others
    // waiting for its chunks: every byte comes once, whichever call
    // brought it.
    let fetched = bytes_fetched(&stats);
    assert!(
        (BIG_FILE_SIZE..=BIG_FILE_SIZE + CHUNK_SIZE).contains(&fetched),
        "{fetched} bytes fetched for a file of {BIG_FILE_SIZE} and 8 readers"
    );
    let chunks = BIG_FILE_SIZE.div_ceil(CHUNK_SIZE);
    assert!(
        reads <= 3,
        "{reads} blob reads for {chunks} chunks and 8 readers"
    );
}

#[test]
fn a_reader_from_the_start_gets_the_blob_in_one_call() {
    let tree = sample_tree();
    let fixture = chunked(&tree);
    let (reads, stats) = cold_reads_of_the_big_file(&fixture, "one-stream", 1, &[]);
    assert_eq!(reads, 1, "blob reads for one sequential reader");
    assert_eq!(bytes_fetched(&stats), BIG_FILE_SIZE, "bytes fetched");
}

#[test]
fn a_stream_stays_within_a_small_memory_cache() {
    let tree = sample_tree();
    let fixture = chunked(&tree);
    // No disk cache, and a memory cache smaller than the read-ahead
    // window (32 chunks of 256 KiB): chunks the stream delivered ahead of
    // the reader must not be pushed out before it reads them, or they
    // would be fetched a second time.
    let (reads, stats) = cold_reads_of_the_big_file(
        &fixture,
        "small-memory-stream",
        1,
        &["--memory-cache-size", "4M"],
    );
    assert_eq!(reads, 1, "blob reads for one sequential reader");
    assert_eq!(bytes_fetched(&stats), BIG_FILE_SIZE, "bytes fetched");
    let counters = read_counters(&stats);
    assert!(
        counters["memory_evictions"] >= BIG_FILE_SIZE.div_ceil(CHUNK_SIZE) / 2,
        "the file should not have fit in memory: {counters:?}"
    );
}

#[test]
fn a_stream_ends_when_its_reader_lets_go() {
    let tree = sample_tree();
    let fixture = chunked(&tree);
    let stats = scratch("stream-released").join("stats");
    let mut daemon = mount_with(&fixture, &with_stats(&stats, &["--readahead-chunks", "8"]));
    let path = daemon.path(&fixture.store_path(PKG)).join("lib/libbig.so");
    let source = std::fs::read(tree.join(PKG).join("lib/libbig.so")).unwrap();
    {
        let file = open_direct(&path);
        for at in (0..4u64).map(|i| i << 20) {
            let piece = read_at(&file, at, 1 << 20).unwrap();
            assert!(piece == source[at as usize..][..1 << 20], "bytes at {at}");
        }
    }
    // Closed after 4 MiB: the stream stops within its window (8 chunks
    // of 256 KiB past the reader) and lets go of what it claimed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let counters = read_counters(&stats);
        // Written after the reads (their bytes counted) and nothing running.
        if counters.get("fetches_in_flight") == Some(&0)
            && counters.get("store_bytes_fetched").copied().unwrap_or(0) >= 4 << 20
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fetches still running after the file was closed: {counters:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.stop();
    // The window and the chunk it was in, and a message reaching past it.
    let fetched = bytes_fetched(&stats);
    let bound = (4 << 20) + 12 * CHUNK_SIZE;
    assert!(
        fetched <= bound,
        "{fetched} bytes fetched for 4 MiB read; at most {bound} expected"
    );
}

#[test]
fn chunks_streamed_past_a_reader_that_let_go_are_kept_in_memory() {
    let tree = sample_tree();
    let fixture = chunked(&tree);
    let dir = scratch("stream-kept");
    let stats = dir.join("stats");
    let mut args = with_stats(&stats, &["--readahead-chunks", "8"]);
    args.extend(cache_args(&dir.join("cache")));
    let mut daemon = mount_with(&fixture, &args);
    let path = daemon.path(&fixture.store_path(PKG)).join("lib/libbig.so");
    let source = std::fs::read(tree.join(PKG).join("lib/libbig.so")).unwrap();
    // Waits (at most 20 s) until the stats file says `done`.
    let wait_for = |what: &str, done: &dyn Fn(&HashMap<String, u64>) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let counters = read_counters(&stats);
            if done(&counters) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {counters:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let received = |c: &HashMap<String, u64>| c.get("store_bytes_fetched").copied().unwrap_or(0);
    {
        let file = open_direct(&path);
        let piece = read_at(&file, 0, 1 << 20).unwrap();
        assert!(piece == source[..1 << 20], "the first MiB");
        // The stream runs ahead of the reader (its window: 8 chunks).
        wait_for("the stream did not run ahead of its reader", &|c| {
            received(c) >= (1 << 20) + 4 * CHUNK_SIZE
        });
    }
    // Closed: the chunks it delivered ahead of the reader stay untaken.
    wait_for("fetches still running after the file was closed", &|c| {
        c.get("fetches_in_flight") == Some(&0)
    });
    // Read again, whole: what the first stream brought comes from memory
    // (not the disk cache, not the store), the rest from the store.
    assert!(read_direct(&path) == source, "the whole file");
    daemon.stop();
    let counters = read_counters(&stats);
    assert_eq!(
        counters.get("disk_hits").copied().unwrap_or(0),
        0,
        "chunks read back from disk: {counters:?}"
    );
    // Every byte once.
    let fetched = bytes_fetched(&stats);
    assert!(
        (BIG_FILE_SIZE..=BIG_FILE_SIZE + CHUNK_SIZE).contains(&fetched),
        "{fetched} bytes fetched for a file of {BIG_FILE_SIZE} read twice"
    );
}

#[test]
fn reading_a_file_16_times_the_memory_cache_keeps_memory_bounded() {
    // A tree of its own: one 1 GiB file of distinct chunks, 16 times the
    // memory cache.
    let dir = scratch("one-gib");
    let pkg = dir.join("big-data-1");
    std::fs::create_dir(&pkg).unwrap();
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(pkg.join("blob")).unwrap());
        let pattern = tree::pseudo_random(9, 1 << 20);
        for block in 0..1024u64 {
            let mut piece = pattern.clone();
            piece[..8].copy_from_slice(&block.to_le_bytes());
            out.write_all(&piece).unwrap();
        }
    }
    let fixture = chunked(&dir);
    let daemon = Daemon::mount(&fixture.address(), &["--memory-cache-size", "64M"]);
    let served = daemon.path(&fixture.store_path("big-data-1")).join("blob");

    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(&served).unwrap();
    let copied = std::io::copy(&mut file, &mut hasher).unwrap();
    assert_eq!(copied, 1 << 30);
    let mut expected = blake3::Hasher::new();
    expected
        .update_reader(std::fs::File::open(pkg.join("blob")).unwrap())
        .unwrap();
    assert_eq!(hasher.finalize(), expected.finalize(), "content differs");

    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    let limit_kib = (64 + 48) << 10;
    assert!(
        peak_kib < limit_kib,
        "daemon peak RSS {peak_kib} KiB over {limit_kib} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sequential_reader_gets_each_chunk_from_a_warm_disk_once() {
    let tree = sample_tree();
    let fixture = chunked(&tree);
    let cache = scratch("warm-disk-readahead");
    let file = format!("{}/lib/libbig.so", fixture.store_path(PKG));
    let expected = std::fs::read(tree.join(PKG).join("lib/libbig.so")).unwrap();
    let chunks = BIG_FILE_SIZE.div_ceil(CHUNK_SIZE);

    let mut first = mount_with(&fixture, &cache_args(&cache));
    assert!(std::fs::read(first.path(&file)).unwrap() == expected);
    first.stop();
    let content_calls = fixture.content_calls();

    // A memory cache far smaller than the file: chunks read ahead must
    // still be there when the reader gets to them, not read twice.
    let stats = scratch("warm-disk-readahead-stats").join("stats");
    let mut args = cache_args(&cache);
    args.extend(
        [
            "--cache",
            "never",
            "--memory-cache-size",
            "4M",
            "--stats-file",
        ]
        .map(String::from),
    );
    args.push(stats.display().to_string());
    let mut second = mount_with(&fixture, &args);
    let served = read_direct(&second.path(&file));
    assert!(served == expected, "served bytes differ from the source");
    second.stop();
    let counters = read_counters(&stats);
    assert_eq!(fixture.content_calls(), content_calls, "went to the store");
    assert!(
        counters["readahead_chunks"] > 0,
        "no read-ahead: {counters:?}"
    );
    // 64 MiB through a 4 MiB memory cache: most chunks were let go.
    assert!(
        counters["memory_evictions"] >= chunks / 2,
        "{} memory evictions for {chunks} chunks: {counters:?}",
        counters["memory_evictions"]
    );
    // Whole chunks read from disk (a read the kernel sends out of order
    // reads part of a chunk instead, with one outboard hit each). Every
    // chunk read twice would double this; some slack for chunks read ahead
    // that a busy reader reached only after they were let go (up to 13%
    // more on a loaded two-core host, with the other tests running).
    let whole = counters["disk_hits"] - counters["disk_range_reads"];
    assert!(
        whole >= chunks - counters["disk_range_reads"] && whole <= chunks + chunks / 4,
        "{whole} whole-chunk disk reads for {chunks} chunks: {counters:?}"
    );
}

/// How many files there are under `dir` (recursively; 0 if it is missing).
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
        .sum()
}

/// Flips one byte at `offset` of every file in `dir` (recursively) that is
/// longer than that.
fn flip_all(dir: &Path, offset: usize) -> usize {
    let mut flipped = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            flipped += flip_all(&path, offset);
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        if bytes.len() > offset {
            bytes[offset] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            flipped += 1;
        }
    }
    flipped
}

#[test]
fn random_reads_of_a_warm_disk_read_and_verify_only_what_they_touch() {
    let tree = sample_tree();
    let mut fixture = chunked(&tree);
    let cache = scratch("outboard-cache");
    let file = format!("{}/lib/libbig.so", fixture.store_path(PKG));
    let expected = std::fs::read(tree.join(PKG).join("lib/libbig.so")).unwrap();
    let mut first = mount_with(&fixture, &cache_args(&cache));
    assert!(std::fs::read(first.path(&file)).unwrap() == expected);
    first.stop();
    let content_calls = fixture.content_calls();

    let stats = scratch("outboard-stats").join("stats");
    let mut args = cache_args(&cache);
    args.extend(["--cache", "never", "--stats-file"].map(String::from));
    args.push(stats.display().to_string());
    // 4 KiB reads at offsets that are never sequential, each compared
    // with the source; `at` picks offsets within chunks.
    let random_reads = |daemon: &Daemon, at: &dyn Fn(u64) -> u64| {
        let reader = std::fs::File::open(daemon.path(&file)).unwrap();
        let chunks = BIG_FILE_SIZE / CHUNK_SIZE;
        for i in 0..64u64 {
            let offset = (i * 37 % chunks) * CHUNK_SIZE + at(i);
            let got = read_at(&reader, offset, 4096).unwrap();
            let want = &expected[offset as usize..offset as usize + 4096];
            assert!(got == want, "wrong bytes at {offset}");
        }
    };

    // A fetch writes no outboard (a chunk read whole needs none): the
    // first random read of each chunk reads it whole and writes one.
    let outboards = cache.join("v2/objects/outboards");
    assert_eq!(files_under(&outboards), 0, "outboards written on fetch");
    let mut daemon = mount_with(&fixture, &args);
    random_reads(&daemon, &|i| 4096 + i * 1000);
    daemon.stop();
    assert_eq!(read_counters(&stats)["disk_range_reads"], 0);
    assert!(files_under(&outboards) > 0, "no outboard written");

    let mut daemon = mount_with(&fixture, &args);
    random_reads(&daemon, &|i| 4096 + i * 1000);
    daemon.stop();
    let counters = read_counters(&stats);
    assert_eq!(fixture.content_calls(), content_calls, "went to the store");
    assert!(counters["disk_range_reads"] >= 60, "{counters:?}");
    assert_eq!(counters["verification_failures"], 0, "{counters:?}");

    // A flipped byte in the chunk files: the group holding it fails, the
    // whole chunk is read, fails too, and is fetched again.
    assert!(flip_all(&cache.join("v2/objects/chunks"), 100) > 200);
    let mut daemon = mount_with(&fixture, &args);
    random_reads(&daemon, &|_| 0);
    daemon.stop();
    assert!(fixture.content_calls() > content_calls, "not refetched");
    assert!(read_counters(&stats)["verification_failures"] >= 64);
    assert!(daemon
        .log()
        .contains("failed verification through its outboard"));

    // Flipped outboards: refused, the chunks read whole (they are fine),
    // the outboards written again.
    let content_calls = fixture.content_calls();
    let written = files_under(&outboards);
    assert!(written > 0 && flip_all(&outboards, 40) == written);
    let mut daemon = mount_with(&fixture, &args);
    random_reads(&daemon, &|i| 8192 + i * 100);
    daemon.stop();
    assert_eq!(fixture.content_calls(), content_calls, "went to the store");
    let mut daemon = mount_with(&fixture, &args);
    random_reads(&daemon, &|i| 8192 + i * 100);
    daemon.stop();
    assert_eq!(read_counters(&stats)["verification_failures"], 0);
    assert!(read_counters(&stats)["disk_range_reads"] >= 60);

    // Store down and the chunk files flipped again: EIO, never the bytes.
    flip_all(&cache.join("v2/objects/chunks"), 100);
    fixture.stop();
    let daemon = mount_with(&fixture, &args);
    let reader = std::fs::File::open(daemon.path(&file)).unwrap();
    let err = read_at(&reader, 3 * CHUNK_SIZE, 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}
