//! The sandbox: under the daemon's seccomp filter a forbidden syscall kills
//! the process with SIGSYS, and a running daemon, in FUSE and in vhost-user
//! mode, holds no capabilities and has no_new_privs and the filter on every
//! thread. (Every other end-to-end test runs the daemon in its default
//! sandbox, `--seccomp=kill`, so they show what it still allows.)

mod common;
#[allow(dead_code)]
use test_support::vhost_frontend;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tvix_virtiofsd::sandbox::seccomp::Filters;
use tvix_virtiofsd::sandbox::SeccompMode;
use vhost_frontend::Vmm;

/// What the child did, as seen by its parent.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Forks a child that installs the daemon's compiled filters (`mode`) and
/// then runs `call`, which returns the child's exit code.
fn under_daemon_filter(mode: SeccompMode, call: fn() -> i32) -> Ended {
    // Compiled here: after fork, this multi-threaded process's child may
    // only make raw syscalls (no allocation, no locks).
    let filters = Filters::daemon(mode).unwrap().expect("a filter");
    // SAFETY: the child installs the filter (no allocation on success),
    // makes raw syscalls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match filters.install() {
            Ok(()) => call(),
            Err(_) => 100,
        };
        // SAFETY: ends the child without running the test harness's code.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        Ended::Signaled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}

/// The raw syscall's result: 0 for success, else errno (the child exits
/// with it).
fn result(rc: libc::c_long) -> i32 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(99)
    } else {
        0
    }
}

fn execve() -> i32 {
    let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: valid NUL-terminated arrays.
    result(unsafe {
        libc::syscall(
            libc::SYS_execve,
            c"/bin/true".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })
}

fn ptrace() -> i32 {
    // SAFETY: PTRACE_TRACEME takes no pointers.
    result(unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) })
}

fn mount() -> i32 {
    // SAFETY: valid C strings.
    result(unsafe {
        libc::syscall(
            libc::SYS_mount,
            c"none".as_ptr(),
            c"/nonexistent-tvix-virtiofsd".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            0,
        )
    })
}

fn fork_a_process() -> i32 {
    // clone without CLONE_THREAD: a new process (fork).
    // SAFETY: a fork-like clone; a child that returns here exits at once.
    let rc = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    if rc == 0 {
        // SAFETY: the (unexpected) grandchild leaves at once.
        unsafe { libc::_exit(0) }
    }
    result(rc)
}

fn netlink_socket() -> i32 {
    // SAFETY: integer arguments only.
    result(unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_NETLINK,
            libc::SOCK_RAW,
            libc::NETLINK_ROUTE,
        )
    })
}

fn executable_memory() -> i32 {
    // SAFETY: an anonymous mapping; no memory is touched.
    result(unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0,
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    })
}

fn signal_another_process() -> i32 {
    // SAFETY: signal 0 only checks whether it could be sent.
    result(unsafe { libc::syscall(libc::SYS_kill, 1, 0) })
}

fn allowed_calls() -> i32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let msg = b"";
    // SAFETY: valid pointers to locals.
    unsafe {
        if libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) != 0
            || libc::syscall(libc::SYS_gettid) <= 0
            || libc::syscall(libc::SYS_write, 2, msg.as_ptr(), 0) != 0
            || libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) < 0
        {
            return 1;
        }
        // clone3 is answered with ENOSYS (glibc then falls back to clone).
        if libc::syscall(libc::SYS_clone3, 0, 0) != -1
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
        {
            return 2;
        }
    }
    0
}

#[test]
fn forbidden_syscalls_are_killed_with_sigsys() {
    type Call = fn() -> i32;
    let cases: [(&str, Call); 7] = [
        ("execve", execve),
        ("ptrace", ptrace),
        ("mount", mount),
        ("clone of a process", fork_a_process),
        ("socket(AF_NETLINK)", netlink_socket),
        ("mmap(PROT_EXEC)", executable_memory),
        ("kill", signal_another_process),
    ];
    for (name, call) in cases {
        assert_eq!(
            under_daemon_filter(SeccompMode::Kill, call),
            Ended::Signaled(libc::SIGSYS),
            "{name} under the daemon's filter"
        );
    }
}

#[test]
fn what_the_daemon_needs_still_works_under_the_filter() {
    assert_eq!(
        under_daemon_filter(SeccompMode::Kill, allowed_calls),
        Ended::Exited(0)
    );
}

#[test]
fn log_mode_lets_forbidden_syscalls_through() {
    // The kernel logs them (type=1326) and runs them: mount fails on its
    // own (ENOENT: no such mount point), it is not killed.
    assert_eq!(
        under_daemon_filter(SeccompMode::Log, mount),
        Ended::Exited(libc::ENOENT)
    );
}

/// The `Name:`-prefixed fields of a /proc status file.
fn status_fields(path: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Checks the process `pid` and every one of its threads: the given
/// capability mask in every set but ambient (empty), no_new_privs, a seccomp
/// filter. Returns the thread names.
fn assert_sandboxed(pid: u32, caps: u64) -> Vec<String> {
    let mut names = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for task in tasks {
        let task = task.unwrap().path();
        let status = status_fields(&task.join("status"));
        let name = status["Name"].clone();
        let field = |k: &str| u64::from_str_radix(&status[k], 16).unwrap();
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(field(set), caps, "{name} ({}): {set}", task.display());
        }
        for set in ["CapInh", "CapAmb"] {
            assert_eq!(field(set), 0, "{name} ({}): {set}", task.display());
        }
        assert_eq!(status["NoNewPrivs"], "1", "{name}: NoNewPrivs");
        assert_eq!(status["Seccomp"], "2", "{name}: Seccomp (2 = filter)");
        names.push(name);
    }
    names
}

fn wait_for_log(log: impl Fn() -> String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fuse_daemon_holds_no_capabilities_on_any_thread() {
    let fixture = Fixture::start(&sample_tree(), &["--chunk-size", "65536"]);
    let cache = scratch("sandbox-cache");
    let daemon = Daemon::mount(
        &fixture.address(),
        &["--cache-dir", cache.to_str().unwrap()],
    );
    wait_for_log(|| daemon.log(), "sandboxed");
    // Work that starts the store client's threads and the disk cache's.
    let store_path = daemon.path(&fixture.store_path("hello-2.12"));
    assert!(std::fs::read(store_path.join("bin/hello")).is_ok());
    // Written after the read is answered: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(cache.join("v2/objects/chunks"))
        .unwrap()
        .count()
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "nothing written to the disk cache under Landlock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let names = assert_sandboxed(daemon.pid(), 0);
    assert!(
        names.iter().filter(|n| n.starts_with("fuse-")).count() >= 1
            && names.iter().any(|n| n.starts_with("store-client")),
        "threads: {names:?}"
    );

    // The unmount helper keeps CAP_SYS_ADMIN, and only that.
    let children = std::fs::read_to_string(format!(
        "/proc/{pid}/task/{pid}/children",
        pid = daemon.pid()
    ))
    .unwrap();
    let helper: u32 = children
        .split_whitespace()
        .next()
        .expect("no unmount helper")
        .parse()
        .unwrap();
    let names = assert_sandboxed(helper, 1 << 21 /* CAP_SYS_ADMIN */);
    assert_eq!(names, ["unmount-helper"]);
}

/// The pid of the process whose command line contains `needle`.
fn pid_with_argument(needle: &str) -> u32 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&needle.as_bytes())
            && args.first().is_some_and(|a| a.ends_with(b"tvix-virtiofsd"))
        {
            return pid;
        }
    }
    panic!("no daemon with {needle} on its command line");
}

#[test]
fn a_vhost_user_daemon_holds_no_capabilities_on_any_thread() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    let daemon = VhostUserDaemon::start(&fixture.address(), &["--thread-pool-size", "2"]);
    wait_for_log(|| daemon.log(), "sandboxed");
    // A VMM connects: the backend starts its queue threads.
    let vmm = Vmm::connect(&daemon.socket, 2, false);
    wait_for_log(|| daemon.log(), "VMM connected");

    let pid = pid_with_argument(daemon.socket.to_str().unwrap());
    // A new thread takes its name once it runs: until then it shows its
    // parent's, so the names are read again until every thread has one.
    let started = |names: &[String]| {
        names.iter().filter(|n| n.starts_with("vring")).count() >= 2
            && names.iter().filter(|n| n.starts_with("fs-worker")).count() == 2
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut names = assert_sandboxed(pid, 0);
    while !started(&names) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        names = assert_sandboxed(pid, 0);
    }
    assert!(started(&names), "threads: {names:?}");
    drop(vmm);
}

fn mounted(path: &Path) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

#[test]
fn the_unmount_helper_unmounts_after_the_daemon_is_killed() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    let mut daemon = Daemon::mount(&fixture.address(), &[]);
    wait_for_log(|| daemon.log(), "sandboxed");
    // SIGKILL leaves the daemon no chance to unmount (a crash or a seccomp
    // kill would not either): the helper sees its pipe close.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while mounted(&daemon.mountpoint) {
        assert!(Instant::now() < deadline, "still mounted after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!daemon.is_running());
}
