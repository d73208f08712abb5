//! A process's CPU time, user and system, of all its threads (those that
//! ended included), in nanoseconds: its CPU-time clock. /proc/PID/stat
//! counts in clock ticks of 10 ms, as long as a whole pass of the faster
//! workloads.

use anyhow::{bail, Result};

/// Seconds of CPU `pid` has used so far.
pub fn seconds(pid: u32) -> Result<f64> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        bail!("pid {pid} out of range");
    };
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid place for the call to write the id to.
    let rc = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
    if rc != 0 {
        bail!(
            "no CPU-time clock for process {pid}: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        bail!(
            "reading the CPU-time clock of process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's own CPU time, in seconds.
    fn this_thread_seconds() -> f64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec for the call to fill.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        assert_eq!(rc, 0, "the thread's CPU-time clock");
        now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
    }

    #[test]
    fn counts_a_busy_thread_that_has_ended_in_nanoseconds() {
        let pid = std::process::id();
        let before = seconds(pid).unwrap();
        // 30 ms of the thread's own CPU, not of wall time: a loaded host
        // may run it for less than its wall time.
        let spun = std::thread::spawn(|| {
            let start = this_thread_seconds();
            let mut x = 0u64;
            while this_thread_seconds() - start < 0.030 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            this_thread_seconds() - start
        })
        .join()
        .unwrap();
        let used = seconds(pid).unwrap() - before;
        assert!(
            (spun..spun + 1.0).contains(&used),
            "a thread that spun {spun} s of CPU and ended counted {used} s"
        );
    }

    #[test]
    fn a_process_that_is_gone_is_an_error() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(seconds(pid).is_err());
    }
}
