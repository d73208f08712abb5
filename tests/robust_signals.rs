//! SIGTERM stops the vhost-user daemon cleanly: exit status 0 and the
//! socket removed, whether it waits for a VMM or serves one.

mod common;
// Each test uses the part of the test VMM that it needs.
#[allow(dead_code)]
use test_support::vhost_frontend;

use std::time::Duration;

use common::*;
use vhost_frontend::Vmm;

fn sigterm(daemon: &VhostUserDaemon) {
    // SAFETY: kill(2) on our own child.
    let rc = unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

fn assert_stopped_cleanly(mut daemon: VhostUserDaemon) {
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("still running 10 s after SIGTERM");
    assert!(
        status.success(),
        "exited with {status}; log:\n{}",
        daemon.log()
    );
    assert!(!daemon.socket.exists(), "the socket was left behind");
    assert!(
        daemon.log().contains("stopping"),
        "no log line:\n{}",
        daemon.log()
    );
}

#[test]
fn sigterm_stops_cleanly_while_waiting_for_a_vmm() {
    let fixture = Fixture::start(&robust_tree(), &[]);
    let daemon = VhostUserDaemon::start(&fixture.address(), &["--persistent"]);
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&daemon);
    assert_stopped_cleanly(daemon);
}

#[test]
fn sigterm_stops_cleanly_while_serving_a_vmm() {
    let fixture = Fixture::start(&robust_tree(), &[]);
    let daemon = VhostUserDaemon::start(&fixture.address(), &[]);
    let _vmm = Vmm::connect(&daemon.socket, 2, false);
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&daemon);
    assert_stopped_cleanly(daemon);
}
