//! Queue polling (`--queue-poll-us`), seen from the VMM's side: while the
//! guest sends requests back to back, the queue thread keeps watching the
//! ring and answers requests that were never kicked; with polling off such
//! a request waits for its kick; and a guest that goes idle costs the
//! daemon no CPU, whatever the guest did before.

mod common;
// Each test uses the part of the test VMM that it needs.
#[allow(dead_code)]
use test_support::{fuse_guest, vhost_frontend};

use std::time::Duration;

use common::*;
use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
use fuse_guest::*;
use vhost_frontend::{Kick, Vmm};

/// A daemon on the sample tree and a guest (EVENT_IDX, as Linux) past INIT.
fn start(fixture: &Fixture, args: &[&str]) -> (VhostUserDaemon, Guest) {
    let daemon = VhostUserDaemon::start(&fixture.address(), args);
    let mut guest = Guest {
        vmm: Vmm::connect(&daemon.socket, 2, true),
        unique: 0,
    };
    guest.init(0);
    (daemon, guest)
}

fn getattr_root(guest: &mut Guest, times: usize) {
    for _ in 0..times {
        guest.getattr(ROOT_ID).ok();
    }
}

/// GETATTRs with `pause` before each: longer than the daemon takes to
/// finish its drain of the queue, so that only polling (or a kick) can
/// find the request.
fn getattr_root_paced(guest: &mut Guest, times: usize, pause: Duration) {
    for _ in 0..times {
        std::thread::sleep(pause);
        guest.getattr(ROOT_ID).ok();
    }
}

/// The daemon's CPU time so far (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon's stat");
    // The fields after the command name, which may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Requests 2 ms apart, which the drain after each reply never sees.
const PAUSE: Duration = Duration::from_millis(2);

/// A daemon polling up to `poll_us`: 30 kicked requests at [`PAUSE`] (every
/// wake-up then comes soon after the thread slept, so a window that can
/// grow doubles until it spans the pause), then 20 at the same pace made
/// available without a kick, kicked only after `kick_after`. Returns how
/// many of those 20 needed that late kick.
fn late_kicks_of_paced_requests(poll_us: &str, kick_after: Duration) -> u32 {
    let fixture = Fixture::start(&sample_tree(), &[]);
    let (_daemon, mut guest) = start(&fixture, &["--queue-poll-us", poll_us]);
    getattr_root_paced(&mut guest, 30, PAUSE);
    guest.vmm.queue(REQUESTS).kick = Kick::Late(kick_after);
    getattr_root_paced(&mut guest, 20, PAUSE);
    guest.vmm.queue(REQUESTS).late_kicks
}

#[test]
fn requests_in_quick_succession_are_answered_without_a_kick() {
    // A bound far above the pause, so that the window can grow past it.
    // The late kick comes well within the bound, as a guest's kick would:
    // a request the window missed then grows it (a sleep longer than the
    // bound would shrink it instead, and on a loaded host one oversleep
    // would then cascade into missing most of the rest).
    let late = late_kicks_of_paced_requests("100000", Duration::from_millis(10));
    // A loaded host may oversleep a pause now and then (the window then
    // grows further); most requests must have been found by polling.
    assert!(
        late <= 4,
        "{late} of 20 requests made available without a kick waited for one"
    );
}

#[test]
fn without_polling_a_request_waits_for_its_kick() {
    let late = late_kicks_of_paced_requests("0", Duration::from_millis(100));
    assert_eq!(late, 20, "a request was answered unkicked");
}

#[test]
fn an_idle_guest_costs_no_cpu_after_a_burst() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    for args in [&[][..], &["--queue-poll-us", "100000"][..]] {
        let (daemon, mut guest) = start(&fixture, args);
        getattr_root(&mut guest, 200);
        // Past any poll window, then two idle seconds.
        std::thread::sleep(Duration::from_millis(300));
        let before = cpu_ticks(daemon.pid());
        std::thread::sleep(Duration::from_secs(2));
        let spent = cpu_ticks(daemon.pid()) - before;
        assert!(
            spent <= 10,
            "{args:?}: the daemon used {spent} ticks of CPU in 2 s with an idle guest"
        );
        // Still answering after the idle time.
        getattr_root(&mut guest, 1);
    }
}
