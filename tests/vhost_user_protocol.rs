//! Speaks vhost-user to the daemon as the VMM, without QEMU, to show that
//! malformed input from a guest never takes the daemon down: a malformed
//! descriptor chain or FUSE message gets an error reply or is dropped (the
//! chain is still returned to the used ring), it is logged, and the next
//! valid request is answered.

mod common;
// Each test uses the part of the test VMM that it needs.
#[allow(dead_code)]
use test_support::{fuse_guest, vhost_frontend};

use std::mem::size_of;
use std::time::{Duration, Instant};

use common::*;
use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, BatchForgetIn, EntryOut, ForgetIn, FsOptions, GetattrIn, InHeader, InitIn, InitOut,
    Opcode, OpenIn, OpenOut, OutHeader, ROOT_ID,
};
use fuse_guest::*;
use vhost_frontend::{Buf, Vmm};
use vm_memory::ByteValued;

const HIPRIO: usize = 0;
const HELLO: &[u8] = b"#!/bin/sh\necho hello\n";

/// What a known file resolves to.
struct Known {
    package: u64,
    file: u64,
    fh: u64,
    /// The guest-physical address just past guest memory.
    mem_end: u64,
}

/// The FUSE requests a guest sends on mount and to read one file.
fn valid_session(guest: &mut Guest, fixture: &Fixture) -> Known {
    let init = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 128 << 10,
        flags: (FsOptions::ASYNC_READ | FsOptions::DO_READDIRPLUS | FsOptions::MAX_PAGES).bits()
            as u32,
    };
    let reply: InitOut = decode(
        &guest
            .request(REQUESTS, Opcode::Init, 0, init.as_slice())
            .ok(),
    );
    assert_eq!(reply.major, 7);
    assert!(reply.minor >= 31, "server minor {}", reply.minor);

    let package = guest.lookup_ok(ROOT_ID, &fixture.store_path("hello-2.12"));
    assert_eq!(package.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    // Not a store path name: a negative entry, or ENOENT.
    match guest.lookup(ROOT_ID, "not-a-store-path") {
        Outcome::Reply { error: 0, body } => {
            assert_eq!(
                decode::<EntryOut>(&body).nodeid,
                0,
                "found not-a-store-path"
            )
        }
        other => assert_eq!(other.errno(), libc::ENOENT),
    }

    let bin = guest.lookup_ok(package.nodeid, "bin");
    let file = guest.lookup_ok(bin.nodeid, "hello");
    assert_eq!(file.attr.size, HELLO.len() as u64);
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let opened: OpenOut = decode(
        &guest
            .request(REQUESTS, Opcode::Open, file.nodeid, open.as_slice())
            .ok(),
    );
    let known = Known {
        package: package.nodeid,
        file: file.nodeid,
        fh: opened.fh,
        mem_end: guest.vmm.mem_end(),
    };
    assert_still_serving(guest, &known);
    known
}

/// A valid GETATTR and READ both succeed.
fn assert_still_serving(guest: &mut Guest, known: &Known) {
    let attr: AttrOut = decode(&guest.getattr(known.package).ok());
    assert_eq!(attr.attr.ino, known.package);
    assert_eq!(guest.read(known.file, known.fh).ok(), HELLO);
}

/// One malformed request: what to send and what must come back.
struct Case {
    what: &'static str,
    queue: usize,
    /// A chain whose last descriptor points back to its head.
    looped: bool,
    expect: Expect,
    /// The chain, given the request's `unique`.
    chain: Box<dyn Fn(u64) -> Vec<Buf>>,
}

enum Expect {
    /// Returned unanswered, and logged as malformed.
    Dropped,
    /// Returned unanswered, as FUSE wants (FORGET).
    NoReply,
    Errno(i32),
    /// Some error reply; the errno is the filesystem's choice.
    AnyError,
    /// Either an error reply, or dropped and logged.
    ErrorOrDropped,
    /// Any well-formed outcome: what matters is that it ends.
    Anything,
}

fn case(what: &'static str, expect: Expect, chain: impl Fn(u64) -> Vec<Buf> + 'static) -> Case {
    Case {
        what,
        queue: REQUESTS,
        looped: false,
        expect,
        chain: Box::new(chain),
    }
}

fn getattr_root(unique: u64) -> Vec<u8> {
    let body = GetattrIn::default();
    message(Opcode::Getattr as u32, unique, ROOT_ID, body.as_slice())
}

fn read(unique: u64, nodeid: u64, fh: u64) -> Vec<u8> {
    let body = read_in(fh);
    message(Opcode::Read as u32, unique, nodeid, body.as_slice())
}

/// What a buggy or hostile guest driver might put on the queues.
fn malformed_cases(known: &Known) -> Vec<Case> {
    let (file, fh, mem_end) = (known.file, known.fh, known.mem_end);
    let reply = || Buf::Writable(4096);
    vec![
        case(
            "request descriptor below guest memory",
            Expect::Dropped,
            move |_| {
                let outside = Buf::Raw {
                    addr: 0x1000,
                    len: 64,
                    writable: false,
                };
                vec![outside, reply()]
            },
        ),
        case(
            "request descriptor running past the end of guest memory",
            Expect::Dropped,
            move |u| {
                let straddling = Buf::Raw {
                    addr: mem_end - 8,
                    len: 64,
                    writable: false,
                };
                vec![Buf::Readable(getattr_root(u)), straddling, reply()]
            },
        ),
        case(
            "reply descriptor outside guest memory",
            Expect::Dropped,
            |u| {
                let outside = Buf::Raw {
                    addr: u64::MAX - 4095,
                    len: 4096,
                    writable: true,
                };
                vec![Buf::Readable(getattr_root(u)), outside]
            },
        ),
        case(
            "no writable descriptor for the reply",
            Expect::Dropped,
            |u| vec![Buf::Readable(getattr_root(u))],
        ),
        Case {
            looped: true,
            ..case(
                "descriptor chain looping back to its head",
                Expect::Anything,
                move |u| vec![Buf::Readable(getattr_root(u)), reply()],
            )
        },
        case(
            "header len larger than the buffer",
            Expect::Dropped,
            move |u| {
                let mut request = message(Opcode::Lookup as u32, u, ROOT_ID, b"short\0");
                let claimed = size_of::<InHeader>() as u32 + 200;
                request[..4].copy_from_slice(&claimed.to_le_bytes());
                vec![Buf::Readable(request), reply()]
            },
        ),
        case(
            "header len of 4 GiB",
            Expect::Errno(libc::ENOMEM),
            move |u| {
                let mut request = getattr_root(u);
                request[..4].copy_from_slice(&u32::MAX.to_le_bytes());
                vec![Buf::Readable(request), reply()]
            },
        ),
        case("header cut short", Expect::Dropped, move |u| {
            let request = getattr_root(u)[..size_of::<InHeader>() - 12].to_vec();
            vec![Buf::Readable(request), reply()]
        }),
        case("unknown opcode", Expect::Errno(libc::ENOSYS), move |u| {
            vec![Buf::Readable(message(4242, u, ROOT_ID, &[])), reply()]
        }),
        case(
            "READ of a handle never opened",
            Expect::Errno(libc::EBADF),
            move |u| vec![Buf::Readable(read(u, file, 0xdead_beef)), reply()],
        ),
        case(
            "READ into a reply buffer too small for the data",
            Expect::AnyError,
            move |u| {
                let room = size_of::<OutHeader>() as u32 + 4;
                vec![Buf::Readable(read(u, file, fh)), Buf::Writable(room)]
            },
        ),
        case(
            "READ into a reply buffer too small for the header",
            Expect::Dropped,
            move |u| vec![Buf::Readable(read(u, file, fh)), Buf::Writable(8)],
        ),
        case(
            "GETATTR of an inode never looked up",
            Expect::AnyError,
            move |u| {
                let body = GetattrIn::default();
                let request = message(Opcode::Getattr as u32, u, 0x7777_7777, body.as_slice());
                vec![Buf::Readable(request), reply()]
            },
        ),
        // FORGETs have no reply; Linux gives them no writable buffer either.
        Case {
            queue: HIPRIO,
            ..case("FORGET of a nonsense inode", Expect::NoReply, |u| {
                let body = ForgetIn { nlookup: 3 };
                let request = message(Opcode::Forget as u32, u, 0x7777_7777, body.as_slice());
                vec![Buf::Readable(request)]
            })
        },
        Case {
            queue: HIPRIO,
            ..case(
                "BATCH_FORGET claiming more entries than it has",
                Expect::Dropped,
                |u| {
                    let body = BatchForgetIn {
                        count: 1000,
                        dummy: 0,
                    };
                    let request = message(Opcode::BatchForget as u32, u, 0, body.as_slice());
                    vec![Buf::Readable(request)]
                },
            )
        },
    ]
}

/// A name the server cannot take as a C string.
fn name_without_nul() -> Case {
    case("LOOKUP name without its NUL", Expect::ErrorOrDropped, |u| {
        let request = message(Opcode::Lookup as u32, u, ROOT_ID, b"hello-2.12");
        vec![Buf::Readable(request), Buf::Writable(4096)]
    })
}

/// Sends one malformed request, checks its outcome, and that the daemon is
/// still running and answering.
fn send_case(guest: &mut Guest, daemon: &mut VhostUserDaemon, known: &Known, case: Case) {
    let what = case.what;
    let logged_before = daemon.log().matches("malformed").count();
    let unique = guest.next_unique();
    let chain = (case.chain)(unique);
    let used = if case.looped {
        guest.vmm.call_looped(case.queue, &chain, TIMEOUT)
    } else {
        guest.vmm.call(case.queue, &chain, TIMEOUT)
    };
    let outcome = check(what, unique, used);
    let log = daemon.log();
    let logged = log.matches("malformed").count() > logged_before;
    match (&case.expect, &outcome) {
        (Expect::Dropped | Expect::ErrorOrDropped, Outcome::Dropped) => {
            // Logged before the chain is returned, so it is there now.
            assert!(logged, "{what}: dropped but not logged:\n{log}");
        }
        (Expect::NoReply, Outcome::Dropped) | (Expect::Anything, _) => {}
        (Expect::Errno(errno), Outcome::Reply { error, .. }) if -error == *errno => {}
        (Expect::AnyError | Expect::ErrorOrDropped, Outcome::Reply { error, .. }) if *error < 0 => {
        }
        _ => panic!("{what}: unexpected {outcome:?}"),
    }
    assert!(daemon.is_running(), "daemon died after {what}; log:\n{log}");
    assert_still_serving(guest, known);
}

/// The guest claims more requests than the queue holds. The device cannot
/// take any of them; it must say so once and serve the queue again as soon
/// as the guest publishes a sane index (no dead queue, no busy loop).
fn bogus_avail_index(guest: &mut Guest, daemon: &VhostUserDaemon, known: &Known) {
    const COMPLAINT: &str = "invalid available ring index";
    guest
        .vmm
        .publish_bogus_avail_idx(REQUESTS, vhost_frontend::QUEUE_SIZE + 5);
    // No used element or interrupt to wait for: the log is the only sign.
    let deadline = Instant::now() + TIMEOUT;
    while !daemon.log().contains(COMPLAINT) {
        assert!(
            Instant::now() < deadline,
            "bogus available index not logged:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_still_serving(guest, known);
    // Once for the kick; a second time if the queue thread was still
    // draining the previous request when the bogus index appeared. A device
    // that spins on the bad ring logs thousands.
    let complaints = daemon.log().matches(COMPLAINT).count();
    assert!(
        (1..=2).contains(&complaints),
        "logged {complaints} times for one kick"
    );
}

/// Starts a daemon, connects as its VMM and goes through a guest's mount.
fn start(
    fixture: &Fixture,
    event_idx: bool,
    daemon_args: &[&str],
) -> (VhostUserDaemon, Guest, Known) {
    let daemon = VhostUserDaemon::start(&fixture.address(), daemon_args);
    let mut guest = Guest {
        vmm: Vmm::connect(&daemon.socket, 2, event_idx),
        unique: 0,
    };
    let known = valid_session(&mut guest, fixture);
    (daemon, guest, known)
}

/// The VMM goes away: without --persistent the daemon exits cleanly.
fn disconnect(mut daemon: VhostUserDaemon, guest: Guest) {
    drop(guest);
    let status = daemon
        .wait_exit(TIMEOUT)
        .expect("daemon still running after the VMM left");
    assert!(status.success(), "daemon exited with {status}");
}

/// Runs the whole conversation against a fresh daemon.
fn run(fixture: &Fixture, event_idx: bool, daemon_args: &[&str]) {
    let (mut daemon, mut guest, known) = start(fixture, event_idx, daemon_args);
    for case in malformed_cases(&known) {
        send_case(&mut guest, &mut daemon, &known, case);
    }
    bogus_avail_index(&mut guest, &daemon, &known);

    let log = daemon.log();
    assert!(!log.contains("panicked"), "daemon log:\n{log}");
    for expected in [
        "malformed descriptor chain (request side)",
        "malformed descriptor chain (reply side)",
        "malformed FUSE message",
    ] {
        assert!(log.contains(expected), "no {expected:?} in:\n{log}");
    }
    disconnect(daemon, guest);
}

#[test]
fn malformed_guest_requests_never_take_the_daemon_down() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    // Requests handled on the queue threads, notifications on every use.
    run(&fixture, false, &[]);
    // EVENT_IDX notification suppression, and requests on a thread pool.
    run(&fixture, true, &["--thread-pool-size", "2"]);
}

/// The server answers such a LOOKUP with EINVAL but then reports an error,
/// so the reply must still be returned with the length it has.
#[test]
fn reply_to_a_name_without_nul_is_returned_with_its_length() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    let (mut daemon, mut guest, known) = start(&fixture, false, &[]);
    send_case(&mut guest, &mut daemon, &known, name_without_nul());
    disconnect(daemon, guest);
}
