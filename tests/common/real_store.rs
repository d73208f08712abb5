//! Real tvix-store and snix-store daemons as test peers: the authority on
//! what a store sends, where the fixture store is only a stand-in.
//!
//! A store is found through `TVIX_STORE_BIN` / `SNIX_STORE_BIN`, then `PATH`,
//! then `../shared/ref/bin` beside the repository. Without one a test says
//! loudly that it skipped, unless `CI` is set: then a missing store fails the
//! run, because CI always has them.
//!
//! Trees are imported once per build directory with the store's own
//! `import` (writing its on-disk backends directly), and each test starts a
//! daemon on its own copy of those backends, so tests can stop and restart
//! their store without disturbing each other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{is_mounted, scratch, terminate, Daemon};

/// Which real store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Tvix,
    Snix,
}

impl StoreKind {
    pub fn binary_name(self) -> &'static str {
        match self {
            Self::Tvix => "tvix-store",
            Self::Snix => "snix-store",
        }
    }

    /// The daemon's `--store-protocol` for this store.
    pub fn protocol(self) -> &'static str {
        match self {
            Self::Tvix => "tvix",
            Self::Snix => "snix",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Self::Tvix => "TVIX_STORE_BIN",
            Self::Snix => "SNIX_STORE_BIN",
        }
    }

    /// The store's binary, if this machine has one.
    pub fn binary(self) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(self.env_var()) {
            return Some(PathBuf::from(p));
        }
        let name = self.binary_name();
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        });
        on_path.or_else(|| {
            let shared = super::repo_root().join("../shared/ref/bin").join(name);
            shared.is_file().then_some(shared)
        })
    }

    /// The binary, or `None` after saying loudly that the test is skipped;
    /// panics when `CI` is set, since CI must run these tests.
    pub fn require(self, test: &str) -> Option<PathBuf> {
        if let Some(bin) = self.binary() {
            return Some(bin);
        }
        let message = format!(
            "{test}: no {name} ({var}, PATH or ../shared/ref/bin); build one with \
             scripts/build-ref-stores.sh SOURCE_CHECKOUT",
            name = self.binary_name(),
            var = self.env_var(),
        );
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but {message}");
        }
        eprintln!("\n*** SKIPPED {message} ***\n");
        None
    }
}

/// Starts a real store of `kind` holding `trees`, or returns from the test
/// after a loud skip message when there is none.
#[macro_export]
macro_rules! real_store_or_skip {
    ($kind:expr, $test:expr, $trees:expr) => {
        match $crate::common::real_store::RealStore::with_trees($kind, $test, $trees) {
            Some(store) => store,
            None => return,
        }
    };
}

/// Backends filled once by `import` and kept for every test of this build.
struct Imported {
    dir: PathBuf,
    /// Imported host path → store path basename (`<hash>-<name>`).
    store_paths: BTreeMap<PathBuf, String>,
}

fn backend_args(dir: &Path) -> [String; 6] {
    [
        "--blob-service-addr".into(),
        format!("objectstore+file://{}", dir.join("blobs").display()),
        "--directory-service-addr".into(),
        format!("redb://{}", dir.join("directories.redb").display()),
        "--path-info-service-addr".into(),
        format!("redb://{}", dir.join("pathinfo.redb").display()),
    ]
}

/// Runs `import` for one path against `services` (backend URLs or a
/// daemon's address) and returns the store path basename it printed.
fn run_import(bin: &Path, services: &[String], path: &Path) -> String {
    let out = Command::new(bin)
        .arg("--otlp=false")
        .arg("import")
        .args(services)
        .arg(path)
        .stderr(Stdio::piped())
        .output()
        .expect("running the store's import");
    assert!(
        out.status.success(),
        "{} import {}: {}\n{}",
        bin.display(),
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("/nix/store/"))
        .unwrap_or_else(|| panic!("import printed no store path: {stdout}"));
    line.trim_start_matches("/nix/store/").trim().to_string()
}

/// The top-level entries of `tree`, each of which becomes one store path
/// (as the fixture store imports a tree).
pub fn top_level_entries(tree: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

/// Imports every top-level entry of `trees` into fresh on-disk backends of
/// `kind`, once per build directory (concurrent test processes race to a
/// rename; either result is the same).
fn imported(kind: StoreKind, bin: &Path, trees: &[&Path]) -> Imported {
    let mut key = blake3::Hasher::new();
    for t in trees {
        key.update(t.as_os_str().as_encoded_bytes());
        key.update(b"\0");
    }
    let key = key.finalize().to_hex();
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join(format!("{}-import-{}", kind.binary_name(), &key[..16]));
    let index = dir.join("store-paths");
    if !index.exists() {
        let staging = tempfile::Builder::new()
            .prefix("real-store-staging-")
            .tempdir_in(base)
            .unwrap()
            .keep();
        let services = backend_args(&staging);
        let mut lines = String::new();
        for tree in trees {
            for entry in top_level_entries(tree) {
                let basename = run_import(bin, &services, &entry);
                lines.push_str(&format!("{}\t{basename}\n", entry.display()));
            }
        }
        std::fs::write(staging.join("store-paths"), lines).unwrap();
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    let store_paths = std::fs::read_to_string(&index)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, b)| (PathBuf::from(p), b.to_string()))
        .collect();
    Imported { dir, store_paths }
}

/// A real store daemon on a unix socket, serving its own copy of the
/// imported backends.
pub struct RealStore {
    pub kind: StoreKind,
    bin: PathBuf,
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    store_paths: BTreeMap<PathBuf, String>,
}

impl RealStore {
    /// A real store holding each top-level entry of `trees` as a store
    /// path; `None` (after a loud skip message) when there is no binary.
    pub fn with_trees(kind: StoreKind, test: &str, trees: &[&Path]) -> Option<Self> {
        let bin = kind.require(test)?;
        let imported = imported(kind, &bin, trees);
        let dir = scratch(kind.binary_name());
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", imported.dir.display()))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "copying the imported backends");
        let mut store = Self {
            kind,
            bin,
            child: None,
            socket: dir.join("grpc.sock"),
            dir,
            store_paths: imported.store_paths,
        };
        store.spawn();
        Some(store)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("store.log"))
            .unwrap();
        let mut child = Command::new(&self.bin)
            .arg("--otlp=false")
            .arg("daemon")
            .arg("--listen-address")
            .arg(&self.socket)
            .arg("--unix-listen-unlink")
            .args(backend_args(&self.dir))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the store daemon");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} daemon exited with {status}; log:\n{}",
                    self.kind.binary_name(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} daemon did not listen in time",
                self.kind.binary_name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("store.log")).unwrap_or_default()
    }

    /// The address our daemon takes as `--store`.
    pub fn address(&self) -> String {
        format!("grpc+unix://{}", self.socket.display())
    }

    /// The daemon flags that speak this store's protocol.
    pub fn protocol_args(&self) -> [&'static str; 2] {
        ["--store-protocol", self.kind.protocol()]
    }

    /// Our daemon, FUSE-mounted on this store in its protocol, with `extra`
    /// flags.
    pub fn mount(&self, extra: &[&str]) -> Daemon {
        let mut args = self.protocol_args().to_vec();
        args.extend(extra);
        Daemon::mount(&self.address(), &args)
    }

    /// The store's own FUSE mount of itself (`mount --list-root
    /// --show-xattr`), the reference for what a peer shows.
    pub fn own_mount(&self) -> OwnMount {
        let mountpoint = scratch("own-mount").join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let address = self.address();
        let log = std::fs::File::create(self.dir.join("own-mount.log")).unwrap();
        let mut child = Command::new(&self.bin)
            .arg("--otlp=false")
            .arg("mount")
            .arg(&mountpoint)
            .args(["--blob-service-addr", &address])
            .args(["--directory-service-addr", &address])
            .args(["--path-info-service-addr", &address])
            .args(["--list-root", "--show-xattr"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the store's own mount");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&mountpoint) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} mount exited with {status}: {}",
                    self.kind.binary_name(),
                    std::fs::read_to_string(self.dir.join("own-mount.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the store's own mount took too long"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnMount {
            child: Some(child),
            mountpoint,
        }
    }

    /// The store path basename the store gave the imported host `path`.
    pub fn store_path_of(&self, path: &Path) -> String {
        self.store_paths
            .get(path)
            .unwrap_or_else(|| panic!("{} was not imported", path.display()))
            .clone()
    }

    /// Every imported host path with its store path basename.
    pub fn store_paths(&self) -> &BTreeMap<PathBuf, String> {
        &self.store_paths
    }

    /// Imports one more host path through the running daemon.
    pub fn import(&mut self, path: &Path) -> String {
        let address = self.address();
        let services = [
            "--blob-service-addr".to_string(),
            address.clone(),
            "--directory-service-addr".into(),
            address.clone(),
            "--path-info-service-addr".into(),
            address,
        ];
        let basename = run_import(&self.bin, &services, path);
        self.store_paths
            .insert(path.to_path_buf(), basename.clone());
        basename
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Starts it again on the same socket and backends.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RealStore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real store's own FUSE mount; unmounted when dropped.
pub struct OwnMount {
    child: Option<Child>,
    pub mountpoint: PathBuf,
}

impl Drop for OwnMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}
