//! Shared helpers of the integration tests: a generated sample tree, the
//! fixture store and the daemon as real processes, and tree comparison.

#![allow(dead_code)]

pub mod manifest;
pub mod nar;
pub mod real_store;
pub mod tree;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use tree::{
    compare_entry, compare_trees, sample_tree, BIG_FILE_SIZE, CHUNK_SIZE, MANY, MANY_FILES,
};

/// The fixture store's binary, `tvix-fixture-store`: a crate of its own in
/// this workspace (so no `CARGO_BIN_EXE_` for it here), built next to this
/// test executable by `cargo test --workspace`. If it is not there (say,
/// `cargo test -p tvix-virtiofsd`), it is built once, with the same profile.
/// An existing binary is used as it is: after changing the fixture, test
/// with `--workspace` (or build it) so it is rebuilt.
pub fn fixture_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // The test executable lives in target/<profile dir>/deps/.
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is not in target/<profile>/deps/");
        let bin = profile_dir.join("tvix-fixture-store");
        if !bin.exists() {
            build_fixture(profile_dir, &bin);
        }
        bin
    })
}

/// `cargo build -p tvix-fixture-store` into `profile_dir`, or a panic that
/// says how to build it by hand.
fn build_fixture(profile_dir: &Path, bin: &Path) {
    let profile_args: Vec<String> = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => vec![],
        Some("release") => vec!["--release".into()],
        Some(other) => vec!["--profile".into(), other.into()],
        None => vec![],
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--locked",
        "-p",
        "tvix-fixture-store",
        "--manifest-path",
    ])
    .arg(&manifest)
    .args(&profile_args);
    eprintln!("{} is missing, building it: {cmd:?}", bin.display());
    let status = cmd.status();
    match status {
        Ok(s) if s.success() && bin.exists() => {}
        Ok(s) => panic!(
            "building the fixture store failed ({s}; expected {}): \
             run `cargo build --locked -p tvix-fixture-store{}` or test with \
             `cargo test --workspace`",
            bin.display(),
            profile_args
                .iter()
                .map(|a| format!(" {a}"))
                .collect::<String>(),
        ),
        Err(e) => panic!(
            "cannot run {} to build the fixture store: {e}",
            env!("CARGO")
        ),
    }
}
pub const DAEMON_BIN: &str = env!("CARGO_BIN_EXE_tvix-virtiofsd");

/// A scratch directory under cargo's target dir, fresh for each call.
pub fn scratch(name: &str) -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scratch");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(&base)
        .unwrap()
        .keep();
    dir
}

pub fn terminate(child: &mut Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The fixture store, running as its own process on a unix socket (and
/// optionally more listeners).
pub struct Fixture {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    args: Vec<String>,
    /// `STORE_PATH` names it printed.
    pub store_paths: Vec<String>,
    /// `LISTENING` addresses it printed.
    pub listening: Vec<String>,
}

impl Fixture {
    /// Imports `tree` and serves it on a unix socket plus `extra` arguments.
    pub fn start(tree: &Path, extra: &[&str]) -> Self {
        let dir = scratch("fixture");
        let socket = dir.join("store.sock");
        let mut args: Vec<String> = vec![
            "--import".into(),
            tree.display().to_string(),
            "--listen".into(),
            format!("grpc+unix://{}", socket.display()),
            "--manifest".into(),
            dir.join("manifest").display().to_string(),
            "--stats-file".into(),
            dir.join("stats").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut f = Self {
            child: None,
            dir,
            socket,
            args,
            store_paths: Vec::new(),
            listening: Vec::new(),
        };
        f.spawn();
        f
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("fixture.log"))
            .unwrap();
        let mut child = Command::new(fixture_bin())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting the fixture store");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let expected_listeners = self.args.iter().filter(|a| *a == "--listen").count();
        let (mut paths, mut listening) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(300);
        while listening.len() < expected_listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(p) = line.strip_prefix("STORE_PATH ") {
                        paths.push(p.to_string());
                    } else if let Some(a) = line.strip_prefix("LISTENING ") {
                        listening.push(a.to_string());
                    }
                }
                Err(_) => panic!(
                    "fixture store did not come up; log:\n{}",
                    std::fs::read_to_string(self.dir.join("fixture.log")).unwrap_or_default()
                ),
            }
        }
        self.store_paths = paths;
        self.listening = listening;
        self.child = Some(child);
    }

    pub fn address(&self) -> String {
        format!("grpc+unix://{}", self.socket.display())
    }

    /// The store path whose name ends in `-{name}`.
    pub fn store_path(&self, name: &str) -> String {
        let suffix = format!("-{name}");
        self.store_paths
            .iter()
            .find(|p| p.ends_with(&suffix) && p.len() == 32 + suffix.len())
            .unwrap_or_else(|| panic!("no store path for {name} in {:?}", self.store_paths))
            .clone()
    }

    /// The hex digest the fixture gave the node at `relative` (from its
    /// import root).
    pub fn digest(&self, relative: &str) -> String {
        let manifest = std::fs::read_to_string(self.dir.join("manifest")).unwrap();
        manifest
            .lines()
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|f| f.len() == 4 && f[3] == relative)
            .unwrap_or_else(|| panic!("{relative} not in the fixture manifest"))[1]
            .to_string()
    }

    /// Call counts per RPC method.
    pub fn stats(&self) -> std::collections::HashMap<String, u64> {
        read_counters(&self.dir.join("stats"))
    }

    /// Calls that fetch content: blob stat/read and directory get.
    pub fn content_calls(&self) -> u64 {
        let s = self.stats();
        ["blob_stat", "blob_read", "directory_get"]
            .iter()
            .map(|k| s.get(*k).copied().unwrap_or(0))
            .sum()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Starts it again with the same arguments (same socket, same content).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = path.display().to_string();
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// Starts the daemon serving on `target` (`--mount DIR` or
/// `--socket-path PATH`), logging to `log`. Without `--prefetch-bytes`
/// among `extra`, with the prefetch of store paths off: most tests count the store calls their
/// reads cause, or keep a file uncached on purpose, and a background walk
/// fetching a store path's small files would change both
/// (tests/prefetch.rs tests the prefetch itself; the systemd guest's
/// packaged unit and scripts/bench-boot.sh run with the default).
fn spawn_daemon(mode: &str, target: &Path, store: &str, extra: &[&str], log: &Path) -> Child {
    let prefetch: &[&str] = if extra.contains(&"--prefetch-bytes") {
        &[]
    } else {
        &["--prefetch-bytes", "0"]
    };
    Command::new(DAEMON_BIN)
        .arg(mode)
        .arg(target)
        .arg("--store")
        .arg(store)
        .args(prefetch)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting the daemon")
}

/// Starts the daemon on a FUSE mount against `store` expecting it to refuse
/// to serve: asserts it exits non-zero within 30 s, unmounted, and returns
/// its log.
pub fn refused_start(store: &str, extra: &[&str]) -> String {
    let dir = scratch("refused");
    let mountpoint = dir.join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let log = dir.join("daemon.log");
    let mut child = spawn_daemon("--mount", &mountpoint, store, extra, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            terminate(&mut child);
            panic!("the daemon kept running against {store}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "the daemon exited 0: {text}");
    assert!(!is_mounted(&mountpoint), "left a mount behind");
    text
}

/// The daemon serving a FUSE mount, as its own process.
pub struct Daemon {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Mounts the store at `store` (an address) with extra daemon flags.
    pub fn mount(store: &str, extra: &[&str]) -> Self {
        let dir = scratch("daemon");
        let mountpoint = dir.join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let log = dir.join("daemon.log");
        let mut child = spawn_daemon("--mount", &mountpoint, store, extra, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&mountpoint) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "daemon exited with {status}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "daemon did not mount in time");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            mountpoint,
            log,
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon not running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits up to `timeout` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the daemon with SIGTERM; returns whether it unmounted by itself.
    pub fn stop(&mut self) -> bool {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        let clean = !is_mounted(&self.mountpoint);
        if !clean {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        clean
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Parses `name value` lines (the stats files of the fixture and daemon).
pub fn read_counters(path: &Path) -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Total bytes of the files below `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Reads exactly `len` bytes at `offset` (fewer at end of file).
pub fn read_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Resident memory of process `pid` in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A small tree for the robustness tests: `pkg-1.0` with `hello`, a 3 MiB
/// `big`, `sub/deeper/f`, and `many/file-NNN` (400 files).
pub fn robust_tree() -> PathBuf {
    static TREE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let root = scratch("robust-tree").join("tree");
        let pkg = root.join("pkg-1.0");
        std::fs::create_dir_all(pkg.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(pkg.join("many")).unwrap();
        std::fs::write(pkg.join("hello"), ROBUST_HELLO).unwrap();
        std::fs::write(pkg.join("big"), tree::pseudo_random(3, 3 << 20)).unwrap();
        std::fs::write(pkg.join("sub/deeper/f"), b"deep").unwrap();
        for i in 0..400 {
            std::fs::write(pkg.join(format!("many/file-{i:03}")), i.to_string()).unwrap();
        }
        root
    })
    .clone()
}

/// The content of `pkg-1.0/hello` in [`robust_tree`].
pub const ROBUST_HELLO: &[u8] = b"#!/bin/sh\necho hello\n";

/// The repository root (for the scripts under `scripts/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The daemon serving vhost-user on a socket, as its own process.
pub struct VhostUserDaemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl VhostUserDaemon {
    pub fn start(store: &str, extra: &[&str]) -> Self {
        let dir = scratch("vhost-user");
        let socket = dir.join("fs.sock");
        let log = dir.join("daemon.log");
        let mut child = spawn_daemon("--socket-path", &socket, store, extra, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "daemon exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "socket did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            socket,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon to exit by itself; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon not running").id()
    }

    /// The VMM disconnected: without `--persistent` the daemon exits 0.
    pub fn assert_exits_cleanly_after_the_guest_left(&mut self) {
        let status = self
            .wait_exit(Duration::from_secs(20))
            .expect("daemon still running after the guest left");
        assert!(status.success(), "daemon exited with {status}");
    }
}

impl Drop for VhostUserDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// What a guest run printed and how it ended.
pub struct GuestRun {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Builds the guest once (scripts/vm/build-guest.sh skips work that is up
/// to date) and boots it against `socket`, running `command` in the mount.
pub fn run_guest(
    socket: &Path,
    command: &str,
    timeout_secs: u32,
    env: &[(&str, &str)],
) -> GuestRun {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(repo_root().join("scripts/vm/build-guest.sh"))
            .status()
            .expect("running scripts/vm/build-guest.sh");
        assert!(status.success(), "building the test guest failed");
    });
    let output = Command::new(repo_root().join("scripts/vm/run-guest.sh"))
        .arg(socket)
        .arg("store")
        .arg(command)
        .arg(timeout_secs.to_string())
        .envs(env.iter().copied())
        .output()
        .expect("running scripts/vm/run-guest.sh");
    GuestRun {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `path` opened with O_DIRECT: the kernel passes each read to the daemon
/// as asked, past the page cache and its readahead.
pub fn open_direct(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} with O_DIRECT: {e}", path.display()))
}

/// Reads a whole file with O_DIRECT (past the guest page cache), 1 MiB at
/// a time.
pub fn read_direct(path: &Path) -> Vec<u8> {
    let file = open_direct(path);
    let len = file.metadata().unwrap().len();
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let piece = read_at(&file, out.len() as u64, 1 << 20).unwrap();
        assert!(!piece.is_empty());
        out.extend_from_slice(&piece);
    }
    out
}
