//! The metrics, scraped as Prometheus would and parsed by a Prometheus
//! text-format parser, while the daemon serves a real store through a FUSE
//! mount with the sandbox on (`--seccomp kill --landlock auto`): over TCP,
//! over a unix socket, and as a node_exporter textfile. Also the quiet log
//! while the store is down.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::real_store::{RealStore, StoreKind};
use common::*;
use prometheus_parse::{Scrape, Value};

const PKG: &str = "metrics-pkg";
/// Read twice while the store is up: the second read is a memory hit.
const READ_FILE: &str = "data.bin";
const READ_SIZE: usize = 100 * 1024;
/// Never read while the store is up.
const UNCACHED_FILE: &str = "never-read.txt";

/// A small tree of one store path, made once per build directory (so the
/// real store's import of it is reused too).
fn metrics_tree() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics-tree-v1");
    if root.exists() {
        return root;
    }
    let staging = tempfile::Builder::new()
        .prefix("metrics-tree-staging-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    let pkg = staging.join(PKG);
    std::fs::create_dir_all(pkg.join("sub")).unwrap();
    let data: Vec<u8> = (0..READ_SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(pkg.join(READ_FILE), data).unwrap();
    std::fs::write(
        pkg.join(UNCACHED_FILE),
        b"not fetched while the store is up\n",
    )
    .unwrap();
    std::fs::write(pkg.join("sub/other.txt"), b"other\n").unwrap();
    if std::fs::rename(&staging, &root).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    root
}

/// GET /metrics over `stream`; the body, after checking the status line.
fn get_metrics(mut stream: impl Read + Write) -> String {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// Connects with `connect`, retrying for up to 30 s while the daemon is
/// still starting (it mounts before it binds the metrics socket).
fn connect_when_up<S>(mut connect: impl FnMut() -> std::io::Result<S>) -> S {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect() {
            Ok(stream) => return stream,
            Err(e) if Instant::now() > deadline => panic!("metrics endpoint: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn scrape_tcp(port: u16) -> Scrape {
    let stream = connect_when_up(|| std::net::TcpStream::connect(("127.0.0.1", port)));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    parse(&get_metrics(stream))
}

fn scrape_unix(socket: &Path) -> Scrape {
    let stream = connect_when_up(|| std::os::unix::net::UnixStream::connect(socket));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    parse(&get_metrics(stream))
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The sum of the samples of `metric` whose labels include `labels` (for a
/// histogram, its observation count).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    matching
        .iter()
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Whether the scrape has `metric` at all, with any value.
fn has(scrape: &Scrape, metric: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == metric)
}

/// Every metric docs/grafana-dashboard.json queries is one the daemon
/// publishes (a HELP line in `scrape`).
fn assert_dashboard_uses_only(scrape: &Scrape) {
    let path = repo_root().join("docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "only {} queries", exprs.len());
    for expr in exprs {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("tvix_virtiofsd_"));
        for name in names {
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                scrape.docs.contains_key(family),
                "the dashboard queries {name}, which the daemon does not publish: {expr}"
            );
        }
    }
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Sandboxed, every guest access reaching the daemon (`--cache never`).
fn daemon_args(store: &RealStore, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = store.protocol_args().map(String::from).to_vec();
    for flag in [
        "--seccomp",
        "kill",
        "--landlock",
        "auto",
        "--cache",
        "never",
        "--store-timeout",
        "2",
    ] {
        args.push(flag.into());
    }
    args.extend(extra.iter().cloned());
    args
}

fn mount(store: &RealStore, args: &[String]) -> Daemon {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::mount(&store.address(), &args)
}

/// Waits up to 15 s for `path` to hold a parseable scrape that satisfies
/// `ready`.
fn wait_for_textfile(path: &Path, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let scrape = parse(&text);
            if ready(&scrape) {
                return scrape;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed what was expected",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_over_tcp_and_in_the_textfile_follow_the_guest_and_the_store() {
    let tree = metrics_tree();
    let mut store = real_store_or_skip!(
        StoreKind::Tvix,
        "metrics_over_tcp_and_in_the_textfile_follow_the_guest_and_the_store",
        &[&tree]
    );
    let pkg = store.store_path_of(&tree.join(PKG));
    let port = free_tcp_port();
    let dir = scratch("metrics-textfile");
    let textfile = dir.join("tvix-virtiofsd.prom");
    let args = daemon_args(
        &store,
        &[
            "--metrics-listen".into(),
            format!("127.0.0.1:{port}"),
            "--metrics-file".into(),
            textfile.display().to_string(),
        ],
    );
    let mut daemon = mount(&store, &args);
    let file = daemon.path(&format!("{pkg}/{READ_FILE}"));

    let before = scrape_tcp(port);
    // The protocol check at start is a path-info call the store answered.
    assert_eq!(value(&before, "tvix_virtiofsd_store_up", &[]), 1.0);

    assert_eq!(std::fs::read(&file).unwrap().len(), READ_SIZE);
    let after_first = scrape_tcp(port);
    assert_eq!(std::fs::read(&file).unwrap().len(), READ_SIZE);
    assert_eq!(
        std::fs::metadata(daemon.path(&format!("{pkg}/missing")))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    let up = scrape_tcp(port);

    let lookups = value(
        &up,
        "tvix_virtiofsd_fuse_requests_total",
        &[("opcode", "lookup")],
    );
    assert!(lookups >= 3.0, "lookups: {lookups}");
    let reads = value(
        &up,
        "tvix_virtiofsd_fuse_requests_total",
        &[("opcode", "read")],
    );
    assert!(reads >= 2.0, "reads: {reads}");
    let timed_reads = value(
        &up,
        "tvix_virtiofsd_fuse_request_duration_seconds",
        &[("opcode", "read")],
    );
    assert_eq!(timed_reads, reads, "every read is in the latency histogram");
    let served = value(&up, "tvix_virtiofsd_fuse_read_bytes_total", &[]);
    assert!(served >= 2.0 * READ_SIZE as f64, "bytes served: {served}");
    assert!(
        value(
            &up,
            "tvix_virtiofsd_fuse_errors_total",
            &[("opcode", "lookup"), ("errno", "ENOENT")]
        ) >= 1.0
    );
    for method in [
        "PathInfoService.Get",
        "DirectoryService.Get",
        "BlobService.Read",
    ] {
        let calls = value(
            &up,
            "tvix_virtiofsd_store_requests_total",
            &[("method", method)],
        );
        assert!(calls >= 1.0, "{method}: {calls} calls");
        let timed = value(
            &up,
            "tvix_virtiofsd_store_request_duration_seconds",
            &[("method", method)],
        );
        assert_eq!(timed, calls, "{method}: every call is in the histogram");
    }
    // The second read of the file came from memory, not the store.
    let hits = |s: &Scrape| value(s, "tvix_virtiofsd_cache_hits_total", &[("layer", "memory")]);
    assert!(
        hits(&up) > hits(&after_first),
        "memory hits {} then {}",
        hits(&after_first),
        hits(&up)
    );
    let reads_of_blobs = |s: &Scrape| {
        value(
            s,
            "tvix_virtiofsd_store_requests_total",
            &[("method", "BlobService.Read")],
        )
    };
    assert_eq!(reads_of_blobs(&up), reads_of_blobs(&after_first));
    assert!(value(&up, "tvix_virtiofsd_cache_bytes", &[("layer", "memory")]) >= READ_SIZE as f64);
    assert!(value(&up, "tvix_virtiofsd_inodes", &[]) >= 2.0);
    assert!(has(&up, "tvix_virtiofsd_open_handles"));
    for layer in ["memory", "disk"] {
        assert_eq!(
            value(
                &up,
                "tvix_virtiofsd_cache_evictions_total",
                &[("layer", layer)]
            ),
            0.0,
            "{layer} evictions of a few files"
        );
    }
    for bound in ["handles", "inodes", "read"] {
        let refused = &[("bound", bound)];
        assert_eq!(
            value(&up, "tvix_virtiofsd_guest_limit_refusals_total", refused),
            0.0
        );
    }
    assert!(has(&up, "tvix_virtiofsd_request_panics_total"));
    assert_eq!(
        value(&up, "tvix_virtiofsd_verification_failures_total", &[]),
        0.0
    );
    assert_eq!(value(&up, "tvix_virtiofsd_store_up", &[]), 1.0);

    assert_dashboard_uses_only(&up);

    // The textfile says the same, a few seconds late.
    wait_for_textfile(&textfile, |s| {
        value(
            s,
            "tvix_virtiofsd_fuse_requests_total",
            &[("opcode", "read")],
        ) >= reads
    });

    // The store stops: the next call fails, and the store is down.
    store.stop();
    let uncached = daemon.path(&format!("{pkg}/{UNCACHED_FILE}"));
    assert_eq!(
        std::fs::read(&uncached).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    let down = scrape_tcp(port);
    assert_eq!(value(&down, "tvix_virtiofsd_store_up", &[]), 0.0);
    assert!(
        value(
            &down,
            "tvix_virtiofsd_store_errors_total",
            &[("code", "Unavailable")]
        ) >= 1.0,
        "no Unavailable store errors"
    );
    assert!(
        value(
            &down,
            "tvix_virtiofsd_fuse_errors_total",
            &[("errno", "EIO")]
        ) >= 1.0
    );

    // At exit the textfile is written one last time.
    assert!(daemon.stop(), "the daemon did not unmount by itself");
    let last = wait_for_textfile(&textfile, |s| {
        value(s, "tvix_virtiofsd_store_up", &[]) == 0.0
    });
    assert!(
        value(
            &last,
            "tvix_virtiofsd_fuse_errors_total",
            &[("errno", "EIO")]
        ) >= 1.0
    );
    assert!(!dir.join(".tvix-virtiofsd.prom.tmp").exists());
    let log = daemon.log();
    let sandboxed = log
        .lines()
        .find(|l| l.contains("sandboxed"))
        .unwrap_or_else(|| panic!("no sandbox line: {log}"));
    eprintln!("{sandboxed}");
    assert!(sandboxed.contains("seccomp kill"), "{sandboxed}");
}

/// With the store down, many guest reads of one uncached file log its
/// failure once, then once a window with the count of the others; the
/// metrics, over a unix socket, count every one.
#[test]
fn a_store_outage_logs_one_line_per_window_and_the_unix_socket_counts_all() {
    let tree = metrics_tree();
    let mut store = real_store_or_skip!(
        StoreKind::Tvix,
        "a_store_outage_logs_one_line_per_window_and_the_unix_socket_counts_all",
        &[&tree]
    );
    let pkg = store.store_path_of(&tree.join(PKG));
    let socket = scratch("metrics-unix").join("metrics.sock");
    let args = daemon_args(
        &store,
        &[
            "--metrics-listen".into(),
            socket.display().to_string(),
            "--log-repeat-window".into(),
            "2".into(),
        ],
    );
    let daemon = mount(&store, &args);
    // Metadata cached while the store is up, content not.
    let uncached = daemon.path(&format!("{pkg}/{UNCACHED_FILE}"));
    assert!(std::fs::metadata(&uncached).unwrap().is_file());
    assert_eq!(
        value(&scrape_unix(&socket), "tvix_virtiofsd_store_up", &[]),
        1.0
    );
    store.stop();

    const READS: usize = 30;
    let started = Instant::now();
    for _ in 0..READS {
        assert_eq!(
            std::fs::read(&uncached).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the reads took {:?}: the window passed",
        started.elapsed()
    );
    let failure_lines = |log: &str| {
        log.lines()
            .filter(|l| l.contains("store request failed"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let during = failure_lines(&daemon.log());
    assert_eq!(during.len(), 1, "{during:#?}");

    // After the window, the next failure is logged with the count.
    std::thread::sleep(Duration::from_millis(2100));
    assert!(std::fs::read(&uncached).is_err());
    let after = failure_lines(&daemon.log());
    assert_eq!(after.len(), 2, "{after:#?}");
    let suppressed: u64 = after[1]
        .split("(suppressed ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed count in {:?}", after[1]));
    assert_eq!(suppressed as usize, READS - 1, "{}", after[1]);

    let metrics = scrape_unix(&socket);
    assert_eq!(value(&metrics, "tvix_virtiofsd_store_up", &[]), 0.0);
    let eio = value(
        &metrics,
        "tvix_virtiofsd_fuse_errors_total",
        &[("errno", "EIO")],
    );
    assert!(eio >= (READS + 1) as f64, "EIO errors: {eio}");
}

/// A blob the store corrupts (a fault the fixture store injects) is
/// counted as a verification failure of its kind, and the guest's read as
/// an EIO.
#[test]
fn bad_data_from_the_store_is_counted_by_kind() {
    let tree = metrics_tree();
    let relative = format!("{PKG}/{READ_FILE}");
    let digest = Fixture::start(&tree, &[]).digest(&relative);
    let fixture = Fixture::start(&tree, &["--corrupt-blob", digest.as_str()]);
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::mount(
        &fixture.address(),
        &["--seccomp", "kill", "--metrics-listen", &listen],
    );
    let file = daemon.path(&format!("{}/{READ_FILE}", fixture.store_path(PKG)));
    assert_eq!(
        std::fs::read(&file).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    let scrape = scrape_tcp(port);
    let failures = value(
        &scrape,
        "tvix_virtiofsd_verification_failures_total",
        &[("source", "store"), ("kind", "blob_digest")],
    );
    assert!(failures >= 1.0, "blob digest failures: {failures}");
    assert_eq!(
        value(
            &scrape,
            "tvix_virtiofsd_verification_failures_total",
            &[("source", "disk")]
        ),
        0.0
    );
    assert!(
        value(
            &scrape,
            "tvix_virtiofsd_fuse_errors_total",
            &[("errno", "EIO")]
        ) >= 1.0
    );
    // The store answered: it is up, though its data is bad.
    assert_eq!(value(&scrape, "tvix_virtiofsd_store_up", &[]), 1.0);
}

/// Closing a file costs the guest no FLUSH after the first: the daemon
/// answers it ENOSYS, the kernel stops sending it on that mount, and every
/// close still succeeds.
#[test]
fn only_the_first_close_on_a_mount_sends_a_flush() {
    let tree = metrics_tree();
    let store = real_store_or_skip!(
        StoreKind::Tvix,
        "only_the_first_close_on_a_mount_sends_a_flush",
        &[&tree]
    );
    let pkg = store.store_path_of(&tree.join(PKG));
    let port = free_tcp_port();
    let args = daemon_args(
        &store,
        &["--metrics-listen".into(), format!("127.0.0.1:{port}")],
    );
    let daemon = mount(&store, &args);
    let file = daemon.path(&format!("{pkg}/{READ_FILE}"));

    const CLOSES: usize = 5;
    for _ in 0..CLOSES {
        use std::os::fd::IntoRawFd;
        let mut opened = std::fs::File::open(&file).unwrap();
        let mut first = [0u8; 16];
        opened.read_exact(&mut first).unwrap();
        // SAFETY: the descriptor was just taken out of its File, so it is
        // open and nothing else closes it.
        let closed = unsafe { libc::close(opened.into_raw_fd()) };
        assert_eq!(closed, 0, "close: {}", std::io::Error::last_os_error());
    }

    let scrape = scrape_tcp(port);
    let count = |metric: &str, labels: &[(&str, &str)]| value(&scrape, metric, labels);
    let opens = count("tvix_virtiofsd_fuse_requests_total", &[("opcode", "open")]);
    assert!(opens >= CLOSES as f64, "opens: {opens}");
    let flushes = count("tvix_virtiofsd_fuse_requests_total", &[("opcode", "flush")]);
    assert_eq!(flushes, 1.0, "FLUSH requests for {CLOSES} closes");
    assert_eq!(
        count(
            "tvix_virtiofsd_fuse_errors_total",
            &[("opcode", "flush"), ("errno", "ENOSYS")]
        ),
        1.0
    );
}
