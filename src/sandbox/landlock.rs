//! Landlock: after start-up the daemon may touch only the paths its
//! configuration names (of the disk cache only the shared objects and its
//! own instance's mappings, the spool directory, stats file, TLS files)
//! and connect only to the store's TCP ports. Everything else on the
//! filesystem is out of reach, /proc, /etc and the other instances'
//! mappings included.
//!
//! What Landlock does not cover, up to ABI 7 (Linux 6.18): connecting to a
//! *pathname* unix socket needs no filesystem right, so a daemon could
//! still connect to another instance's vhost-user socket if it can name
//! it. The abstract-socket and signal scopes (ABI 6) do hold: no abstract
//! socket outside the domain, no signal to another instance. Pathname
//! sockets of other instances are kept out by the service's mount view
//! instead, in which they do not exist (systemd/README.md).
//!
//! The handled rights are those of Landlock ABI 6 (Linux 6.12): every
//! filesystem right up to `IoctlDev`, TCP bind and connect, and the
//! signal and abstract-unix-socket scopes. Older kernels enforce the subset
//! they know (best effort), except that a disk cache needs `Refer` (ABI 2):
//! without it every rename between the cache's directories would fail, so
//! on such a kernel Landlock is not used at all.

use std::path::{Path, PathBuf};

use landlock::{
    Access as _, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The ABI whose rights are handled (see the module documentation).
const HANDLED_ABI: ABI = ABI::V6;

/// What the daemon may do beneath a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read files and list directories.
    ReadOnly,
    /// Create, write, truncate, rename within a directory and remove
    /// regular files (spool directory, the stats file's directory).
    Files,
    /// `Files` plus directories and renames between them (disk cache).
    Tree,
    /// Only remove files (the vhost-user socket at a clean stop).
    RemoveFiles,
}

impl Access {
    fn rights(self) -> BitFlags<AccessFs> {
        let read = AccessFs::ReadFile | AccessFs::ReadDir;
        let files = read
            | AccessFs::WriteFile
            | AccessFs::Truncate
            | AccessFs::MakeReg
            | AccessFs::RemoveFile;
        match self {
            Access::ReadOnly => read,
            Access::Files => files,
            Access::Tree => files | AccessFs::MakeDir | AccessFs::RemoveDir | AccessFs::Refer,
            Access::RemoveFiles => AccessFs::RemoveFile.into(),
        }
    }
}

/// Paths and ports the daemon needs once it serves.
#[derive(Clone, Debug, Default)]
pub struct LandlockPolicy {
    pub paths: Vec<(PathBuf, Access)>,
    /// TCP ports the daemon may connect to (binding is never allowed).
    pub tcp_connect_ports: Vec<u16>,
    /// Leave abstract unix sockets outside the sandbox reachable (a service
    /// manager's `NOTIFY_SOCKET=@...`).
    pub allow_abstract_unix_sockets: bool,
}

impl LandlockPolicy {
    /// Allows `access` beneath `path`. A `Tree` directory is created if
    /// missing when the sandbox is entered; other paths must exist.
    pub fn allow(&mut self, path: &Path, access: Access) {
        self.paths.push((path.to_path_buf(), access));
    }

    /// Like [`LandlockPolicy::allow`], for optional system files.
    pub fn allow_if_exists(&mut self, path: &Path, access: Access) {
        if path.exists() {
            self.allow(path, access);
        }
    }

    pub fn allow_tcp_port(&mut self, port: u16) {
        if !self.tcp_connect_ports.contains(&port) {
            self.tcp_connect_ports.push(port);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("creating {path} for the sandbox: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "Landlock rule for {path}: {source} (does it exist? run with --landlock=off to go \
         without Landlock)"
    )]
    Path {
        path: PathBuf,
        source: landlock::PathFdError,
    },
    #[error("Landlock: {0} (run with --landlock=off to go without Landlock)")]
    Ruleset(#[from] landlock::RulesetError),
    #[error(
        "--landlock=require, but this kernel does not enforce Landlock (needs Linux 5.13+ \
         with landlock in the lsm= boot parameter, and 5.19+ with --cache-dir); use \
         --landlock=auto to start without it"
    )]
    Unavailable,
}

/// How much of the policy the kernel enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LandlockStatus {
    Off,
    NotEnforced,
    PartiallyEnforced,
    FullyEnforced,
}

impl std::fmt::Display for LandlockStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LandlockStatus::Off => "off",
            LandlockStatus::NotEnforced => "not supported by this kernel",
            LandlockStatus::PartiallyEnforced => "partially enforced (older kernel)",
            LandlockStatus::FullyEnforced => "enforced",
        })
    }
}

/// Restricts the calling thread (and the threads it spawns later) to
/// `policy`.
pub fn restrict(policy: &LandlockPolicy, required: bool) -> Result<LandlockStatus, LandlockError> {
    for (path, access) in &policy.paths {
        if *access == Access::Tree {
            std::fs::create_dir_all(path).map_err(|source| LandlockError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
    }
    let needs_refer = policy.paths.iter().any(|(_, a)| *a == Access::Tree);
    let mut ruleset = Ruleset::default().set_compatibility(CompatLevel::BestEffort);
    if needs_refer {
        // Without Refer the disk cache cannot work: then no Landlock at all.
        ruleset = ruleset
            .set_compatibility(CompatLevel::SoftRequirement)
            .handle_access(AccessFs::Refer)?
            .set_compatibility(CompatLevel::BestEffort);
    }
    let mut scopes = Scope::from_all(HANDLED_ABI);
    if policy.allow_abstract_unix_sockets {
        scopes &= !Scope::AbstractUnixSocket;
    }
    let mut created = ruleset
        .handle_access(AccessFs::from_all(HANDLED_ABI))?
        .handle_access(AccessNet::from_all(HANDLED_ABI))?
        .scope(scopes)?
        .create()?;
    for (path, access) in &policy.paths {
        let fd = PathFd::new(path).map_err(|source| LandlockError::Path {
            path: path.clone(),
            source,
        })?;
        let rights = if path.is_dir() {
            access.rights()
        } else {
            access.rights() & AccessFs::from_file(HANDLED_ABI)
        };
        created = created.add_rule(PathBeneath::new(fd, rights))?;
    }
    for port in &policy.tcp_connect_ports {
        created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
    }
    // no_new_privs is set by the caller already.
    let status = created.no_new_privs(false).restrict_self()?;
    let status = match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockStatus::FullyEnforced,
        RulesetStatus::PartiallyEnforced => LandlockStatus::PartiallyEnforced,
        RulesetStatus::NotEnforced => LandlockStatus::NotEnforced,
    };
    if required && status == LandlockStatus::NotEnforced {
        return Err(LandlockError::Unavailable);
    }
    Ok(status)
}
