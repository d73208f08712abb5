//! A serving thread that dies anyway ends the process at once, with exit
//! status 70 and a log line naming the thread, instead of leaving a queue
//! or a FUSE channel unserved while the rest looks healthy.
//!
//! The per-request guard and the transports' catch around decoding take
//! every panic inside a request, so the daemon's own filesystem cannot
//! reach this path on purpose. Here this test executable runs itself as
//! the serving process: the real transports (`FuseMount::serve` over
//! /dev/fuse, `VhostUserServer` with and without its worker pool) serve a
//! filesystem whose requests panic with a payload that panics again when
//! dropped, a few times over. Each catch drops what it caught, so the last
//! panic leaves the request on the serving thread, which is what the
//! thread's `serve_or_exit` must turn into an exit.

mod common;
#[allow(dead_code)]
use test_support::{fuse_guest, vhost_frontend};

use std::ffi::CStr;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{stat64, FsOptions, Opcode, ROOT_ID};
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};
use vm_memory::ByteValued;

use common::scratch;
use fuse_guest::{Guest, REQUESTS};
use tvix_virtiofsd::fuse::FuseMount;
use tvix_virtiofsd::vhost_user::{DeviceConfig, VhostUserServer};

/// Set in the child: which transport to serve, and where.
const CHILD_MODE: &str = "ROBUST_THREAD_DEATH_MODE";
const CHILD_PATH: &str = "ROBUST_THREAD_DEATH_PATH";
/// What `exit_on_thread_death` logs.
const EXIT_LINE: &str = "a serving thread panicked outside a request";

/// A panic payload that panics again when dropped, with one of depth one
/// less: each `catch_unwind` on the way catches one panic and drops its
/// payload after it, outside itself. More than the layers there are.
struct PanicsWhenDropped(u32);

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        match self.0 {
            0 => panic!("the last panic payload's destructor panicked"),
            n => std::panic::panic_any(PanicsWhenDropped(n - 1)),
        }
    }
}

const DEPTH: u32 = 4;

/// A filesystem whose LOOKUP and GETATTR panic with that payload.
struct DoublePanicFs;

impl FileSystem for DoublePanicFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::empty())
    }

    fn lookup(&self, _: &Context, _: u64, _: &CStr) -> io::Result<Entry> {
        std::panic::panic_any(PanicsWhenDropped(DEPTH))
    }

    fn getattr(&self, _: &Context, _: u64, _: Option<u64>) -> io::Result<(stat64, Duration)> {
        std::panic::panic_any(PanicsWhenDropped(DEPTH))
    }
}

/// The serving process: runs only when this executable was started by
/// [`spawn_server`] (the variables set), else passes at once.
#[test]
fn serving_process() {
    let (Ok(mode), Ok(path)) = (std::env::var(CHILD_MODE), std::env::var(CHILD_PATH)) else {
        return;
    };
    let path = PathBuf::from(path);
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(false)
        .init();
    tvix_virtiofsd::request_guard::install_panic_hook();
    let fs = Arc::new(DoublePanicFs);
    let thread_pool_size = match mode.as_str() {
        "fuse" => {
            let _mount = FuseMount::mount(fs, &path, 2).expect("mounting");
            eprintln!("serving");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "vhost-queue" => 0,
        "vhost-pool" => 2,
        other => panic!("unknown mode {other}"),
    };
    let config = DeviceConfig {
        num_request_queues: 1,
        queue_size: 1024,
        thread_pool_size,
        queue_poll: Duration::from_micros(32),
    };
    let listener = UnixListener::bind(&path).expect("binding the socket");
    let mut server = VhostUserServer::from_listener(fs, config, listener).expect("serving");
    server.serve_one().expect("serving the VMM");
    // The VMM left without the process ending: the assertion in the
    // parent (exit status 70) fails on this one.
}

/// Starts this executable as the serving process, its output in `log`.
fn spawn_server(mode: &str, path: &Path, log: &Path) -> Child {
    let exe = std::env::current_exe().expect("the test executable");
    Command::new(exe)
        .args([
            "--exact",
            "serving_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .env(CHILD_PATH, path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("creating the log"))
        .spawn()
        .expect("starting the serving process")
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn wait_for(what: &str, child: &mut Child, log: &Path, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "serving process exited with {status} before {what}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no {what} in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exited 70 within a few seconds of the request, saying so in the log.
fn assert_exited_70(child: &mut Child, log: &Path, thread: &str) {
    let status = wait_exit(child, Duration::from_secs(10));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("still running after its thread died:\n{text}"));
    assert_eq!(status.code(), Some(70), "exit status {status}:\n{text}");
    let line = text
        .lines()
        .find(|l| l.contains(EXIT_LINE))
        .unwrap_or_else(|| panic!("no exit line in the log:\n{text}"));
    assert!(
        line.contains(thread),
        "exit line names another thread: {line}"
    );
    // The first panic was a request's: answered EIO and logged as such.
    assert!(
        text.contains("a request panicked; answered EIO"),
        "the request's own panic was not caught:\n{text}"
    );
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

#[test]
fn a_fuse_worker_that_dies_ends_the_process_with_70() {
    let dir = scratch("thread-death-fuse");
    let mountpoint = dir.join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let log = dir.join("serving.log");
    let _unmount = LazyUnmount(mountpoint.clone());
    let mut child = spawn_server("fuse", &mountpoint, &log);
    wait_for("the mount", &mut child, &log, || is_mounted(&mountpoint));
    // The lookup's answer does not matter (the channel closes under it);
    // on a thread of its own, so that a hang cannot hold up the test.
    let probe = mountpoint.join("anything");
    std::thread::spawn(move || std::fs::metadata(probe));
    assert_exited_70(&mut child, &log, "fuse-");
}

/// Detaches the mount however the test ends (the dead process left it).
struct LazyUnmount(PathBuf);

impl Drop for LazyUnmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn vhost_user_case(mode: &str, thread: &str) {
    let dir = scratch("thread-death-vhost");
    let socket = dir.join("fs.sock");
    let log = dir.join("serving.log");
    let mut child = spawn_server(mode, &socket, &log);
    wait_for("the socket", &mut child, &log, || socket.exists());
    let (mut guest, _) = Guest::connect(&socket, 0);
    // GETATTR's reply never comes: the process ends first. Sent by hand,
    // without waiting for the used ring.
    let unique = guest.next_unique();
    let body = fuse_backend_rs::abi::fuse_abi::GetattrIn::default();
    let chain = [
        vhost_frontend::Buf::Readable(fuse_guest::message(
            Opcode::Getattr as u32,
            unique,
            ROOT_ID,
            body.as_slice(),
        )),
        vhost_frontend::Buf::Writable(4096),
    ];
    std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            guest.vmm.call(REQUESTS, &chain, Duration::from_secs(30))
        }));
    });
    assert_exited_70(&mut child, &log, thread);
}

#[test]
fn a_vhost_user_queue_thread_that_dies_ends_the_process_with_70() {
    vhost_user_case("vhost-queue", "vhost-user queue");
}

#[test]
fn a_vhost_user_pool_worker_that_dies_ends_the_process_with_70() {
    vhost_user_case("vhost-pool", "fs-worker");
}
