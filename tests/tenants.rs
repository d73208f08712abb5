//! One host, many tenants: a co-tenant with exactly the file access the
//! sandbox grants a daemon (the shared objects and its own instance
//! directory, played by a thread under that daemon's real Landlock policy,
//! or by the test writing the shared objects directly) can neither make
//! another instance serve its bytes nor stall or crash it.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser as _;
use common::real_store::StoreKind;
use common::*;
use prost::Message as _;
use tvix_virtiofsd::cache::{CacheLayout, InstanceName, EVICTION_LOCK_WAIT};
use tvix_virtiofsd::config::Cli;
use tvix_virtiofsd::proto::castore;
use tvix_virtiofsd::store::B3Digest;

const PKG: &str = "hello-2.12";
const BIG: &str = "lib/libbig.so";

fn args(cache: &Path, instance: &str, extra: &[&str]) -> Vec<String> {
    let mut out = vec![
        "--cache-dir".to_string(),
        cache.display().to_string(),
        "--instance".into(),
        instance.into(),
    ];
    out.extend(extra.iter().map(|s| s.to_string()));
    out
}

fn mount(fixture: &Fixture, args: &[String]) -> Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::mount(&fixture.address(), &args)
}

fn hex_path(dir: &Path, key: &[u8]) -> PathBuf {
    let name = data_encoding::HEXLOWER.encode(key);
    dir.join(&name[..2]).join(name)
}

fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(path, data)
}

/// A payload as the old layout kept mappings: BLAKE3 checksum in front,
/// which anyone can recompute.
fn checksummed(payload: &[u8]) -> Vec<u8> {
    let mut out = B3Digest::of(payload).as_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The layout and Landlock policy the daemon of `instance` runs under.
fn sandbox_of(
    cache: &Path,
    instance: &str,
) -> (CacheLayout, tvix_virtiofsd::sandbox::LandlockPolicy) {
    // The daemon may remove its own socket: a directory beside the cache.
    let runtime = cache.with_extension(format!("{instance}-run"));
    std::fs::create_dir_all(&runtime).unwrap();
    let socket = runtime.join("vhost-user.sock");
    let cli = Cli::parse_from([
        "tvix-virtiofsd",
        "--socket-path",
        socket.to_str().unwrap(),
        "--store",
        "grpc+unix:///nonexistent/store.sock",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--instance",
        instance,
    ]);
    let store = cli.store_config().unwrap();
    let name: InstanceName = instance.parse().unwrap();
    (
        CacheLayout::new(cache, Some(&name)),
        cli.sandbox_config(&store).policy,
    )
}

/// Runs `attack` on a thread of its own under the Landlock domain of the
/// daemon of `instance` (Landlock restricts the calling thread only).
fn as_co_tenant<T: Send + 'static>(
    cache: &Path,
    instance: &str,
    attack: impl FnOnce(&CacheLayout) -> T + Send + 'static,
) -> T {
    let (layout, policy) = sandbox_of(cache, instance);
    std::thread::spawn(move || {
        let status = tvix_virtiofsd::sandbox::landlock::restrict(&policy, true).expect("Landlock");
        assert_ne!(
            status,
            tvix_virtiofsd::sandbox::landlock::LandlockStatus::NotEnforced
        );
        attack(&layout)
    })
    .join()
    .unwrap()
}

/// Attacks 1 and 2: planted path info and planted chunk list.
#[test]
fn planted_path_infos_and_chunk_lists_are_never_served() {
    let tree = sample_tree();
    let store = real_store_or_skip!(
        StoreKind::Tvix,
        "planted_path_infos_and_chunk_lists_are_never_served",
        &[&tree]
    );
    let cache = scratch("tenants-planted");
    let stats = scratch("tenants-planted-stats");
    let pkg = store.store_path_of(&tree.join(PKG));
    let daemon_args = |instance: &str| {
        let stats = stats.join(instance);
        let mut extra = store.protocol_args().to_vec();
        extra.extend(["--stats-file", stats.to_str().unwrap()]);
        (args(&cache, instance, &extra), stats)
    };
    let mount_real = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::mount(&store.address(), &args)
    };
    let honest_big = fs::read(tree.join(PKG).join(BIG)).unwrap();
    let honest_hello = fs::read(tree.join(PKG).join("bin/hello")).unwrap();

    let mut vm1 = mount_real(&daemon_args("vm1").0);
    assert!(read_direct(&vm1.path(&format!("{pkg}/{BIG}"))) == honest_big);
    vm1.stop();

    // The attacker's content, under its true digests: the shared objects
    // accept it, it is what it claims to be.
    let evil_exe = b"#!/bin/sh\necho owned\n".to_vec();
    let evil_exe_digest = B3Digest::of(&evil_exe);
    let evil_chunks: Vec<Vec<u8>> = (0..honest_big.len().div_ceil(1 << 20))
        .map(|i| vec![0xEE ^ i as u8; (honest_big.len() - i * (1 << 20)).min(1 << 20)])
        .collect();
    let big_digest = B3Digest::of(&honest_big);
    let hash = tvix_virtiofsd::store::store_path::parse(pkg.as_bytes()).unwrap();
    let path_info = checksummed(
        &castore::Node {
            node: Some(castore::node::Node::File(castore::FileNode {
                name: pkg.clone().into(),
                digest: evil_exe_digest.as_bytes().to_vec().into(),
                size: evil_exe.len() as u64,
                executable: true,
            })),
        }
        .encode_to_vec(),
    );
    let mut chunk_list = Vec::new();
    for c in &evil_chunks {
        chunk_list.extend_from_slice(B3Digest::of(c).as_bytes());
        chunk_list.extend_from_slice(&(c.len() as u64).to_le_bytes());
    }
    let chunk_list = checksummed(&chunk_list);

    let (evil_chunks2, path_info2, chunk_list2) =
        (evil_chunks.clone(), path_info.clone(), chunk_list.clone());
    let denied = as_co_tenant(&cache, "evil", move |own| {
        let objects = own.objects.clone();
        for c in std::iter::once(&evil_exe).chain(&evil_chunks2) {
            write_new(
                &hex_path(&objects.join("chunks"), B3Digest::of(c).as_bytes()),
                c,
            )
            .unwrap();
        }
        // Its own mappings it may write; nobody else reads them.
        let mine = own.instance.clone().unwrap();
        write_new(&hex_path(&mine.join("path_infos"), &hash), &path_info2).unwrap();
        write_new(
            &hex_path(&mine.join("chunklists"), big_digest.as_bytes()),
            &chunk_list2,
        )
        .unwrap();
        // vm1's mappings, and the old shared layout: out of reach.
        let root = objects.parent().unwrap().to_path_buf();
        let targets = [
            hex_path(&root.join("instances/vm1/path_infos"), &hash),
            hex_path(
                &root.join("instances/vm1/chunklists"),
                big_digest.as_bytes(),
            ),
            hex_path(&root.join("instances/vm3/path_infos"), &hash),
            hex_path(&root.parent().unwrap().join("v1/pathinfos"), &hash),
        ];
        targets
            .iter()
            .map(|t| write_new(t, &path_info2).map_err(|e| e.kind()))
            .collect::<Vec<_>>()
    });
    for result in &denied {
        assert_eq!(
            result,
            &Err(std::io::ErrorKind::PermissionDenied),
            "the co-tenant wrote another instance's mapping: {denied:?}"
        );
    }
    // What a co-tenant without a sandbox could still leave: the old shared
    // layout, checksums and all. No daemon reads it any more.
    write_new(&hex_path(&cache.join("v1/pathinfos"), &hash), &path_info).unwrap();
    write_new(
        &hex_path(&cache.join("v1/chunklists"), big_digest.as_bytes()),
        &chunk_list,
    )
    .unwrap();

    for instance in ["vm1", "vm3"] {
        let (args, stats) = daemon_args(instance);
        let mut daemon = mount_real(&args);
        let root = daemon.path(&pkg);
        assert!(
            root.is_dir(),
            "{instance}: the planted path info was served"
        );
        assert!(fs::read(root.join("bin/hello")).unwrap() == honest_hello);
        assert!(
            read_direct(&root.join(BIG)) == honest_big,
            "{instance}: planted chunks were served"
        );
        assert!(daemon.stop());
        let counters = read_counters(&stats);
        eprintln!("{instance}: {counters:?}");
        // vm1 has its own mappings from before; the new instance vm3 asks
        // the store for its own, not the planted ones.
        let asked = counters["store_path_info_calls"];
        match instance {
            "vm1" => assert_eq!(asked, 0, "vm1 lost its own mappings: {counters:?}"),
            _ => assert!(
                asked >= 1,
                "vm3 did not ask the store for the path info: {counters:?}"
            ),
        }
        assert_eq!(counters["verification_failures"], 0, "{counters:?}");
    }
}

/// Attack 3: a cached large unchunked blob rewritten in place.
#[test]
fn a_cached_blob_rewritten_in_place_is_caught_on_the_next_read() {
    let tree = sample_tree();
    // No chunking: the store serves libbig.so as one 64 MiB blob.
    let fixture = Fixture::start(&tree, &[]);
    let cache = scratch("tenants-rewrite");
    let stats = scratch("tenants-rewrite-stats").join("stats");
    let honest = fs::read(tree.join(PKG).join(BIG)).unwrap();
    let digest = fixture.digest(&format!("{PKG}/{BIG}"));
    let object = cache
        .join("v2/objects/blobs")
        .join(&digest[..2])
        .join(&digest);
    let mut daemon = mount(
        &fixture,
        &args(
            &cache,
            "vm1",
            &["--cache", "never", "--stats-file", stats.to_str().unwrap()],
        ),
    );
    let file = open_direct(&daemon.path(&format!("{}/{BIG}", fixture.store_path(PKG))));
    assert!(read_at(&file, 0, 1 << 20).unwrap() == honest[..1 << 20]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !object.exists() {
        assert!(
            Instant::now() < deadline,
            "the blob never reached the shared objects"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reads_before = fixture.stats()["blob_read"];

    // Same inode, new bytes, through a writer the daemon never sees.
    let at = 8 << 20;
    let writer = OpenOptions::new().write(true).open(&object).unwrap();
    writer.write_all_at(&vec![0x66; 1 << 20], at).unwrap();
    writer.sync_all().unwrap();

    // The handle opened before the rewrite, then a new one.
    assert!(
        read_at(&file, at, 1 << 20).unwrap() == honest[at as usize..][..1 << 20],
        "modified bytes served through the open handle"
    );
    let again = read_direct(&daemon.path(&format!("{}/{BIG}", fixture.store_path(PKG))));
    assert!(
        again == honest,
        "modified bytes served through a new handle"
    );
    assert!(
        fixture.stats()["blob_read"] > reads_before,
        "the blob was not fetched again"
    );
    drop(file);
    assert!(daemon.stop());
    let counters = read_counters(&stats);
    assert!(counters["verification_failures"] >= 1, "{counters:?}");
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// Attack 4: sparse huge files at object paths.
#[test]
fn sparse_huge_files_at_object_paths_do_not_kill_grow_or_wipe() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &["--chunk-size", &(256u64 << 10).to_string()]);
    let cache = scratch("tenants-sparse");
    let honest = fs::read(tree.join(PKG).join(BIG)).unwrap();
    let big = format!("{}/{BIG}", fixture.store_path(PKG));
    let sizes = ["--disk-cache-size", "1G", "--memory-cache-size", "16M"];
    let mut warm = mount(&fixture, &args(&cache, "vm1", &sizes));
    assert!(read_direct(&warm.path(&big)) == honest);
    warm.stop();
    let chunks_dir = cache.join("v2/objects/chunks");
    let mut chunk_files: Vec<PathBuf> = fs::read_dir(&chunks_dir)
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten().map(|e| e.path()))
        .collect();
    chunk_files.sort();
    let honest_count = chunk_files.len();
    assert!(honest_count > 200, "{honest_count} chunks cached");

    // Two honest chunks replaced by sparse giants, and junk at a blob path.
    for (path, len) in [(&chunk_files[0], 1u64 << 40), (&chunk_files[1], 8 << 30)] {
        let f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.set_len(len).unwrap();
    }
    let junk = cache.join("v2/objects/blobs/ab").join("ab".repeat(32));
    fs::create_dir_all(junk.parent().unwrap()).unwrap();
    File::create(&junk).unwrap().set_len(8 << 30).unwrap();

    let stats = scratch("tenants-sparse-stats").join("stats");
    let mut extra = sizes.to_vec();
    extra.extend(["--cache", "never", "--stats-file", stats.to_str().unwrap()]);
    let mut daemon = mount(&fixture, &args(&cache, "vm1", &extra));
    let rss_before = vm_rss_kib(daemon.pid());
    assert!(read_direct(&daemon.path(&big)) == honest, "content differs");
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
    let rss_after = vm_rss_kib(daemon.pid());
    eprintln!("VmRSS {rss_before} KiB before, {rss_after} KiB after the read");
    // The memory cache is 16 MiB; a giant read into memory would be GiBs.
    assert!(
        rss_after < rss_before + (128 << 10),
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(daemon.stop());
    let counters = read_counters(&stats);
    eprintln!("{counters:?}");
    assert_eq!(
        counters["disk_evictions"], 0,
        "honest entries evicted: {counters:?}"
    );
    assert!(!junk.exists(), "the junk blob was kept");
    let left = fs::read_dir(&chunks_dir)
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .count();
    assert_eq!(left, honest_count, "the cache was wiped or the giants kept");
    for path in &chunk_files[..2] {
        assert!(
            fs::metadata(path).unwrap().len() <= 256 << 10,
            "a giant is still in place"
        );
    }
}

/// Attack 5: the cache lock held by another process.
#[test]
fn a_held_cache_lock_delays_no_read_and_no_start_up() {
    let tree = sample_tree();
    let fixture = Fixture::start(&tree, &["--chunk-size", &(256u64 << 10).to_string()]);
    let cache = scratch("tenants-lock");
    let objects = cache.join("v2/objects");
    fs::create_dir_all(&objects).unwrap();
    let holder = File::create(objects.join("lock")).unwrap();
    // SAFETY: flock on a descriptor owned by `holder`.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&holder), libc::LOCK_EX) };
    assert_eq!(locked, 0);

    let stats = scratch("tenants-lock-stats").join("stats");
    let started = Instant::now();
    // A bound that forces evictions: every few chunks written.
    let mut daemon = mount(
        &fixture,
        &args(
            &cache,
            "vm1",
            &[
                "--disk-cache-size",
                "16M",
                "--cache",
                "never",
                "--stats-file",
                stats.to_str().unwrap(),
            ],
        ),
    );
    let start_up = started.elapsed();
    let honest = fs::read(tree.join(PKG).join(BIG)).unwrap();
    let read_started = Instant::now();
    assert!(read_direct(&daemon.path(&format!("{}/{BIG}", fixture.store_path(PKG)))) == honest);
    let read = read_started.elapsed();
    let stop_started = Instant::now();
    assert!(
        daemon.stop(),
        "the daemon did not stop while the lock was held"
    );
    let stop = stop_started.elapsed();
    let counters = read_counters(&stats);
    eprintln!("start-up {start_up:?}, 64 MiB cold read {read:?}, stop {stop:?}, lock wait bound {EVICTION_LOCK_WAIT:?}: {counters:?}");
    assert!(
        counters["disk_lock_busy"] > 0,
        "no eviction ever met the held lock: {counters:?}"
    );
    // Start-up takes no lock; reads never wait for an eviction (writes do,
    // at most the lock wait each, behind the reader's back); a stop waits
    // for the writers still queued.
    assert!(
        start_up < Duration::from_secs(10),
        "start-up took {start_up:?}"
    );
    assert!(read < Duration::from_secs(60), "the read took {read:?}");
    assert!(stop < Duration::from_secs(30), "the stop took {stop:?}");
    drop(holder);
}
