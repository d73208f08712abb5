//! The seccomp policy: deny-by-default syscall allowlists, kept as data in
//! `seccomp/<arch>.json` (seccompiler's JSON format, one comment per
//! syscall saying why), embedded in the binary and compiled to BPF at
//! start-up (microseconds; the unit tests compile every file for every
//! mode, so a broken policy fails `cargo test`, not a deployment).
//!
//! Filters, by name:
//! - `daemon`: every thread of the daemon (installed with TSYNC).
//! - `daemon_enosys`: stacked under `daemon`, answers `clone3` with ENOSYS
//!   so that glibc falls back to `clone`, whose flags a filter can check
//!   (clone3 passes them in memory): only threads can be created.
//! - `unmount_helper`: the FUSE mode's unmount helper process.
//! - `request`: stacked by each serving thread (FUSE workers, vhost-user
//!   queue threads, the request pool) on itself, on top of `daemon`: the
//!   daemon's list without the network, the VMM's socket, signal handlers
//!   and child processes, which only the main thread and the runtime's
//!   threads use. The threads a serving thread starts inherit it.
//!
//! `--seccomp=log` turns the allowlists' default action into
//! SECCOMP_RET_LOG, so a missing syscall is logged (dmesg / audit.log,
//! `type=1326 ... syscall=N`) instead of killing the daemon.

use seccompiler::{BpfMap, BpfProgram, TargetArch};

use super::SeccompMode;

/// The policy files, by architecture.
pub const X86_64_POLICY: &str = include_str!("../../seccomp/x86_64.json");
pub const AARCH64_POLICY: &str = include_str!("../../seccomp/aarch64.json");

/// Filter names in the policy files.
pub const DAEMON: &str = "daemon";
pub const DAEMON_ENOSYS: &str = "daemon_enosys";
pub const UNMOUNT_HELPER: &str = "unmount_helper";
pub const REQUEST: &str = "request";

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "no seccomp policy for this architecture ({0}); run with --seccomp=none, or add \
         seccomp/{0}.json"
    )]
    UnsupportedArch(&'static str),
    #[error("compiling the seccomp policy for {arch:?}: {detail} (a bug in seccomp/*.json)")]
    Compile { arch: TargetArch, detail: String },
    #[error("the seccomp policy has no filter named {0:?} (a bug in seccomp/*.json)")]
    MissingFilter(&'static str),
    #[error(
        "installing the seccomp filter: {0} (a kernel without CONFIG_SECCOMP_FILTER? run with \
         --seccomp=none to go without it)"
    )]
    Install(String),
}

/// The architecture this binary runs on and its policy.
pub fn native() -> Result<(TargetArch, &'static str), SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok((TargetArch::x86_64, X86_64_POLICY)),
        "aarch64" => Ok((TargetArch::aarch64, AARCH64_POLICY)),
        other => Err(SeccompError::UnsupportedArch(other)),
    }
}

/// Compiles every filter of `policy` for `arch`. In log mode, allowlists
/// (filters whose default is to kill) log instead.
pub fn compile(policy: &str, arch: TargetArch, mode: SeccompMode) -> Result<BpfMap, SeccompError> {
    let error = |detail: String| SeccompError::Compile { arch, detail };
    let mut json: serde_json::Value =
        serde_json::from_str(policy).map_err(|e| error(e.to_string()))?;
    if mode == SeccompMode::Log {
        for filter in json
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            if filter["default_action"] == "kill_process" {
                filter["default_action"] = "log".into();
            }
        }
    }
    let text = json.to_string();
    seccompiler::compile_from_json(text.as_bytes(), arch).map_err(|e| error(e.to_string()))
}

/// Distinct syscalls a filter of `policy` names.
pub fn syscall_names(policy: &str, filter: &str) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(policy).unwrap_or_default();
    let mut names: Vec<String> = json[filter]["filter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|rule| rule["syscall"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Compiled filters, installed in order on every thread of the process.
pub struct Filters {
    programs: Vec<BpfProgram>,
    syscalls: usize,
}

impl Filters {
    fn named(mode: SeccompMode, names: &[&'static str]) -> Result<Option<Self>, SeccompError> {
        if mode == SeccompMode::None {
            return Ok(None);
        }
        let (arch, policy) = native()?;
        let mut map = compile(policy, arch, mode)?;
        let programs = names
            .iter()
            .map(|name| map.remove(*name).ok_or(SeccompError::MissingFilter(name)))
            .collect::<Result<Vec<_>, _>>()?;
        let allowlist = names.last().copied().unwrap_or_default();
        Ok(Some(Self {
            programs,
            syscalls: syscall_names(policy, allowlist).len(),
        }))
    }

    /// The daemon's filters (`None` with `--seccomp=none`).
    pub fn daemon(mode: SeccompMode) -> Result<Option<Self>, SeccompError> {
        // The ENOSYS filter first: the allowlist does not allow seccomp(2).
        Self::named(mode, &[DAEMON_ENOSYS, DAEMON])
    }

    /// The unmount helper's filter.
    pub fn unmount_helper(mode: SeccompMode) -> Result<Option<Self>, SeccompError> {
        Self::named(mode, &[UNMOUNT_HELPER])
    }

    /// The serving threads' filter.
    pub fn request(mode: SeccompMode) -> Result<Option<Self>, SeccompError> {
        Self::named(mode, &[REQUEST])
    }

    /// Syscalls the allowlist allows.
    pub fn syscalls(&self) -> usize {
        self.syscalls
    }

    /// Installs the filters on every thread of the process (TSYNC). Does
    /// not allocate unless it fails, so a child forked from a
    /// multi-threaded process may call it.
    pub fn install(&self) -> Result<(), SeccompError> {
        for program in &self.programs {
            seccompiler::apply_filter_all_threads(program)
                .map_err(|e| SeccompError::Install(e.to_string()))?;
        }
        Ok(())
    }

    /// Installs the filters on the calling thread only (and the threads it
    /// starts later). Needs no_new_privs, which the sandbox has set: unlike
    /// seccompiler's `apply_filter`, does not call prctl to set it, which
    /// the daemon filter does not allow.
    pub fn install_on_this_thread(&self) -> Result<(), SeccompError> {
        for program in &self.programs {
            let fprog = libc::sock_fprog {
                len: u16::try_from(program.len())
                    .map_err(|_| SeccompError::Install("filter too long".into()))?,
                filter: program.as_ptr().cast_mut().cast(),
            };
            // SAFETY: the kernel copies the program from `fprog`, which
            // points at `program`, alive for the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(SeccompError::Install(
                    std::io::Error::last_os_error().to_string(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: [(&str, TargetArch, &str); 2] = [
        ("x86_64", TargetArch::x86_64, X86_64_POLICY),
        ("aarch64", TargetArch::aarch64, AARCH64_POLICY),
    ];

    #[test]
    fn every_policy_compiles_in_every_mode() {
        for (name, arch, policy) in POLICIES {
            for mode in [SeccompMode::Kill, SeccompMode::Log] {
                let map =
                    compile(policy, arch, mode).unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
                let mut names: Vec<_> = map.keys().cloned().collect();
                names.sort();
                assert_eq!(
                    names,
                    [DAEMON, DAEMON_ENOSYS, REQUEST, UNMOUNT_HELPER],
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn every_rule_says_why() {
        for (name, _, policy) in POLICIES {
            let json: serde_json::Value = serde_json::from_str(policy).unwrap();
            for (filter, body) in json.as_object().unwrap() {
                for rule in body["filter"].as_array().unwrap() {
                    let comment = rule["comment"].as_str().unwrap_or_default();
                    assert!(
                        comment.len() > 10,
                        "{name} {filter}: {} has no comment saying why",
                        rule["syscall"]
                    );
                }
            }
        }
    }

    #[test]
    fn allowlists_kill_by_default_and_log_in_log_mode() {
        for (_, _, policy) in POLICIES {
            let json: serde_json::Value = serde_json::from_str(policy).unwrap();
            for filter in [DAEMON, UNMOUNT_HELPER, REQUEST] {
                assert_eq!(json[filter]["default_action"], "kill_process");
                assert_eq!(json[filter]["filter_action"], "allow");
            }
            assert_eq!(json[DAEMON_ENOSYS]["default_action"], "allow");
        }
        // Log mode yields different programs for the allowlists only.
        let (_, arch, policy) = POLICIES[0];
        let kill = compile(policy, arch, SeccompMode::Kill).unwrap();
        let log = compile(policy, arch, SeccompMode::Log).unwrap();
        assert_ne!(kill[DAEMON], log[DAEMON]);
        assert_eq!(kill[DAEMON_ENOSYS], log[DAEMON_ENOSYS]);
    }

    /// aarch64 has no legacy syscalls (open, stat, poll, epoll_wait, ...):
    /// its policy names the generic equivalent of each, and nothing else.
    #[test]
    fn architectures_allow_the_same_things() {
        fn generic(s: &str) -> &str {
            match s {
                "open" => "openat",
                "stat" | "lstat" => "newfstatat",
                "poll" => "ppoll",
                "epoll_wait" => "epoll_pwait",
                "epoll_create" => "epoll_create1",
                "pipe" => "pipe2",
                "dup2" => "dup3",
                "rename" => "renameat",
                "unlink" => "unlinkat",
                "mkdir" => "mkdirat",
                "rmdir" => "unlinkat",
                "access" => "faccessat",
                "readlink" => "readlinkat",
                "eventfd" => "eventfd2",
                "getdents" => "getdents64",
                "fork" | "vfork" => "clone",
                "time" | "gettimeofday" => "clock_gettime",
                other => other,
            }
        }
        for filter in [DAEMON, DAEMON_ENOSYS, UNMOUNT_HELPER, REQUEST] {
            let mut x86: Vec<&str> = Vec::new();
            let names = syscall_names(X86_64_POLICY, filter);
            for n in &names {
                x86.push(generic(n));
            }
            x86.sort();
            x86.dedup();
            let arm = syscall_names(AARCH64_POLICY, filter);
            assert_eq!(x86, arm, "{filter}: x86_64 (mapped) vs aarch64");
        }
    }

    /// Stacked on `daemon`, the request filter can only narrow it: each of
    /// its rules is one of the daemon's, word for word, and the network is
    /// not among them.
    #[test]
    fn the_request_filter_is_a_narrower_daemon_filter() {
        for (name, _, policy) in POLICIES {
            let json: serde_json::Value = serde_json::from_str(policy).unwrap();
            let daemon = json[DAEMON]["filter"].as_array().unwrap();
            let request = json[REQUEST]["filter"].as_array().unwrap();
            for rule in request {
                assert!(
                    daemon.contains(rule),
                    "{name}: {} not in daemon",
                    rule["syscall"]
                );
            }
            let allowed = syscall_names(policy, REQUEST);
            for denied in [
                "socket",
                "connect",
                "accept4",
                "sendmsg",
                "rt_sigaction",
                "wait4",
            ] {
                assert!(!allowed.iter().any(|s| s == denied), "{name}: {denied}");
            }
            assert!(allowed.len() < syscall_names(policy, DAEMON).len());
        }
    }
}
