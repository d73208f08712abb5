//! The sandbox the daemon enters once start-up is done, before it spawns
//! its first thread: a guest that takes over the daemon finds
//!
//! 1. no way to gain privileges (`no_new_privs`),
//! 2. the filesystem limited to the cache, spool and stats paths and the
//!    network to the store's TCP ports (Landlock, where the kernel has it),
//! 3. no capabilities in any set (effective, permitted, inheritable,
//!    ambient, bounding),
//! 4. a deny-by-default syscall allowlist (seccomp), read from
//!    `seccomp/<arch>.json`, and on each thread that serves requests a
//!    narrower one on top ([`restrict_serving_thread`]).
//!
//! Capabilities and Landlock apply to the calling thread and the threads it
//! spawns later, so [`enter`] refuses to run when the process already has a
//! second thread; the seccomp filter is installed with TSYNC anyway.
//!
//! In FUSE mode the one privileged thing left, unmounting at exit, is done
//! by a small helper process forked before the sandbox ([`unmount`]).

pub mod caps;
pub mod landlock;
pub mod seccomp;
pub mod unmount;

use std::path::{Path, PathBuf};

pub use self::landlock::{Access, LandlockPolicy};

/// What the seccomp filter does with a syscall outside the allowlist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the process (SIGSYS); the kernel logs the syscall number.
    #[default]
    Kill,
    /// Allow it but log it (SECCOMP_RET_LOG: dmesg / audit.log, type=1326),
    /// to find a syscall missing from the policy.
    Log,
    /// No seccomp filter at all.
    None,
}

/// Whether to confine filesystem and network access with Landlock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LandlockMode {
    /// Use what the running kernel supports; without Landlock, go on with a
    /// warning.
    #[default]
    Auto,
    /// Refuse to start unless the kernel enforces Landlock.
    Require,
    /// Do not use Landlock.
    Off,
}

/// Everything [`enter`] needs to know.
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    pub seccomp: SeccompMode,
    pub landlock: LandlockMode,
    pub policy: LandlockPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the sandbox must be entered while the process has one thread, but it has {0} \
         (capabilities and Landlock only apply to the calling thread): this is a bug"
    )]
    Threads(usize),
    #[error("counting this process's threads in /proc/self/task: {0} (is /proc mounted?)")]
    ProcTask(std::io::Error),
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Caps(#[from] caps::CapsError),
    #[error(transparent)]
    Landlock(#[from] landlock::LandlockError),
}

/// What [`enter`] put in place, for the start-up log.
#[derive(Debug)]
pub struct SandboxStatus {
    pub seccomp: SeccompMode,
    /// Syscalls the daemon filter allows (for this architecture).
    pub syscalls: usize,
    /// Syscalls the serving threads' filter allows.
    pub request_syscalls: usize,
    pub landlock: landlock::LandlockStatus,
    pub bounding_set_dropped: bool,
}

/// Enters the sandbox: no_new_privs, Landlock, no capabilities, seccomp, in
/// that order (Landlock and seccomp need the capability-free process to be
/// unable to undo them; capset and landlock calls need to run before the
/// seccomp filter forbids them).
pub fn enter(config: &SandboxConfig) -> Result<SandboxStatus, SandboxError> {
    let threads = count_threads()?;
    if threads != 1 {
        return Err(SandboxError::Threads(threads));
    }
    set_no_new_privs()?;
    let landlock = match config.landlock {
        LandlockMode::Off => landlock::LandlockStatus::Off,
        mode => landlock::restrict(&config.policy, mode == LandlockMode::Require)?,
    };
    if landlock == landlock::LandlockStatus::NotEnforced {
        tracing::warn!(
            "this kernel does not enforce Landlock: file access is not confined \
             (--landlock=require refuses to start without it)"
        );
    }
    let bounding_set_dropped = caps::drop_all()?;
    let filters = seccomp::Filters::daemon(config.seccomp)?;
    if let Some(request) = seccomp::Filters::request(config.seccomp)? {
        // Compiled now, while a broken policy still stops the start.
        let _ = REQUEST_FILTER.set(request);
    }
    if let Some(filters) = &filters {
        filters.install()?;
    }
    Ok(SandboxStatus {
        seccomp: config.seccomp,
        syscalls: filters.as_ref().map_or(0, |f| f.syscalls()),
        request_syscalls: REQUEST_FILTER.get().map_or(0, |f| f.syscalls()),
        landlock,
        bounding_set_dropped,
    })
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seccomp {
            SeccompMode::None => write!(f, "seccomp off")?,
            mode => write!(
                f,
                "seccomp {} ({} syscalls allowed, {} on request threads)",
                format!("{mode:?}").to_lowercase(),
                self.syscalls,
                self.request_syscalls
            )?,
        }
        write!(f, ", no capabilities")?;
        if !self.bounding_set_dropped {
            write!(f, " (bounding set kept: no CAP_SETPCAP)")?;
        }
        write!(f, ", no_new_privs, landlock {}", self.landlock)
    }
}

/// The serving threads' filter, once [`enter`] compiled it.
static REQUEST_FILTER: std::sync::OnceLock<seccomp::Filters> = std::sync::OnceLock::new();

std::thread_local! {
    static RESTRICTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Stacks the `request` filter on the calling thread, once per thread: a
/// thread that serves the guest's requests needs neither the network nor
/// the VMM's socket (the runtime's threads and the main thread do that).
/// A no-op before [`enter`] (a later call still installs it) or with
/// `--seccomp=none`. Call at the start of each serving thread (cheap to
/// call again). Failing to narrow is logged; the daemon filter still holds.
pub fn restrict_serving_thread() {
    let Some(filter) = REQUEST_FILTER.get() else {
        return;
    };
    if RESTRICTED.with(|r| r.replace(true)) {
        return;
    }
    if let Err(e) = filter.install_on_this_thread() {
        tracing::warn!(error = %e, "the request threads' seccomp filter is not installed");
    }
}

fn count_threads() -> Result<usize, SandboxError> {
    Ok(std::fs::read_dir("/proc/self/task")
        .map_err(SandboxError::ProcTask)?
        .count())
}

fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl LandlockPolicy {
    /// The paths and ports the daemon needs after start-up, from its
    /// configuration.
    ///
    /// - `cache`: the shared objects and this instance's private mappings
    ///   (created if missing), read and write, and nothing else of the
    ///   cache directory: not the other instances' mappings;
    /// - otherwise `spool_dir` or `$TMPDIR`: unlinked temporary files;
    /// - the directory of `stats_file`: the file is replaced atomically;
    /// - `store`: TLS files and CA roots, resolver configuration and TCP
    ///   ports for `grpc+http(s)://` addresses.
    pub fn for_daemon(
        cache: Option<&crate::cache::CacheLayout>,
        spool_dir: Option<&Path>,
        stats_file: Option<&Path>,
        store: &crate::store::StoreConfig,
    ) -> Self {
        let mut policy = Self::default();
        match cache {
            Some(layout) => {
                policy.allow(&layout.objects, Access::Tree);
                if let Some(dir) = &layout.instance {
                    policy.allow(dir, Access::Tree);
                }
            }
            None => policy.allow(
                &spool_dir.map_or_else(std::env::temp_dir, Path::to_path_buf),
                Access::Files,
            ),
        }
        if let Some(dir) = stats_file.and_then(Path::parent) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            policy.allow(dir, Access::Files);
        }
        policy.add_store(store);
        // A service manager's abstract notification socket lies outside
        // the Landlock domain; a path one is not restricted.
        policy.allow_abstract_unix_sockets = std::env::var_os("NOTIFY_SOCKET")
            .is_some_and(|s| s.as_encoded_bytes().starts_with(b"@"));
        policy
    }

    fn add_store(&mut self, store: &crate::store::StoreConfig) {
        use crate::store::StoreAddress;
        let addresses = [
            &store.blob_service,
            &store.directory_service,
            &store.path_info_service,
        ];
        let mut tls = false;
        let mut resolver = false;
        for address in addresses {
            let (uri, default_port) = match address {
                StoreAddress::Unix(_) => continue,
                StoreAddress::Http(uri) => (uri, 80),
                StoreAddress::Https(uri) => {
                    tls = true;
                    (uri, 443)
                }
            };
            let Ok(uri) = uri.parse::<http::Uri>() else {
                continue;
            };
            self.allow_tcp_port(uri.port_u16().unwrap_or(default_port));
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            resolver |= host.parse::<std::net::IpAddr>().is_err();
        }
        if resolver {
            // getaddrinfo: its configuration, and DNS over TCP for answers
            // too large for UDP (UDP itself is not restricted by Landlock).
            for file in [
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/nsswitch.conf",
                "/etc/host.conf",
                "/etc/gai.conf",
            ] {
                self.allow_if_exists(Path::new(file), Access::ReadOnly);
            }
            self.allow_tcp_port(53);
        }
        if tls {
            let tls_files = [&store.tls.ca, &store.tls.cert, &store.tls.key];
            for file in tls_files.into_iter().flatten() {
                self.allow(file, Access::ReadOnly);
            }
            if store.tls.ca.is_none() {
                // The system's CA roots (rustls-native-certs: the openssl
                // locations, which link into /usr/share/ca-certificates).
                for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
                    if let Some(path) = std::env::var_os(var) {
                        self.allow_if_exists(&PathBuf::from(path), Access::ReadOnly);
                    }
                }
                for dir in [
                    "/etc/ssl",
                    "/etc/pki",
                    "/usr/lib/ssl",
                    "/usr/share/ca-certificates",
                    "/etc/ca-certificates",
                ] {
                    self.allow_if_exists(Path::new(dir), Access::ReadOnly);
                }
            }
        }
    }
}
