//! The unmount helper of FUSE mode. Unmounting needs CAP_SYS_ADMIN, which
//! the daemon gives up right after mounting; so before that it forks this
//! small process, which keeps CAP_SYS_ADMIN (and nothing else), holds no
//! descriptor but one end of a pipe, and waits. When the daemon closes its
//! end, on SIGTERM or by dying in any way (a crash, SIGKILL, a seccomp
//! kill), the helper lazily unmounts (`MNT_DETACH`) and exits; the daemon
//! waits for it when it closes the pipe itself. This is what fusermount's
//! `auto_unmount` does for unprivileged mounts.
//!
//! The helper ignores SIGINT, SIGTERM, SIGHUP and SIGQUIT (a terminal's ^C
//! reaches the whole process group): it outlives the daemon by design.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::SeccompMode;

#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    #[error("starting the unmount helper: {0}")]
    Start(io::Error),
    #[error("mount point {0:?} contains a NUL byte")]
    Path(String),
    #[error("waiting for the unmount helper: {0}")]
    Wait(io::Error),
    #[error(
        "the unmount helper failed (exit status {0}); its reason is in the log above; \
         unmount by hand with `umount -l MOUNTPOINT`"
    )]
    Failed(i32),
}

/// Exit codes of the helper.
const EXIT_UNMOUNTED: i32 = 0;
const EXIT_SETUP: i32 = 2;
const EXIT_UNMOUNT: i32 = 3;

/// The byte that tells the helper to exit without unmounting.
const DISMISS: u8 = b'd';

/// The daemon's handle on the helper.
#[derive(Debug)]
pub struct UnmountHelper {
    pid: libc::pid_t,
    /// Closing this tells the helper to unmount.
    pipe: Option<OwnedFd>,
}

impl UnmountHelper {
    /// Forks the helper for `mountpoint`. Call while the process has a
    /// single thread and still holds CAP_SYS_ADMIN.
    pub fn spawn(mountpoint: &Path, seccomp: SeccompMode) -> Result<Self, UnmountError> {
        let target = CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| UnmountError::Path(mountpoint.display().to_string()))?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(UnmountError::Start(io::Error::last_os_error()));
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the caller guarantees a single thread, so the child may
        // run arbitrary code (allocate, log) until it exits.
        match unsafe { libc::fork() } {
            -1 => Err(UnmountError::Start(io::Error::last_os_error())),
            0 => {
                drop(write);
                helper_main(read, &target, seccomp)
            }
            pid => {
                drop(read);
                Ok(Self {
                    pid,
                    pipe: Some(write),
                })
            }
        }
    }

    /// The helper's process id.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Has the helper unmount now, and waits until it has.
    pub fn unmount(&mut self) -> Result<(), UnmountError> {
        if self.pipe.take().is_none() {
            return Ok(());
        }
        self.wait()
    }

    /// Has the helper exit without unmounting (the filesystem is gone
    /// already), and waits until it has.
    pub fn dismiss(&mut self) -> Result<(), UnmountError> {
        let Some(pipe) = self.pipe.take() else {
            return Ok(());
        };
        // SAFETY: writes one byte from a local to our own pipe.
        if unsafe { libc::write(pipe.as_raw_fd(), [DISMISS].as_ptr().cast(), 1) } != 1 {
            return Err(UnmountError::Wait(io::Error::last_os_error()));
        }
        drop(pipe);
        self.wait()
    }

    fn wait(&mut self) -> Result<(), UnmountError> {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child.
            if unsafe { libc::waitpid(self.pid, &mut status, 0) } == self.pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(UnmountError::Wait(e));
            }
        }
        match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(EXIT_UNMOUNTED) => Ok(()),
            Some(code) => Err(UnmountError::Failed(code)),
            None => Err(UnmountError::Failed(-libc::WTERMSIG(status))),
        }
    }
}

impl Drop for UnmountHelper {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::error!(error = %e, "unmount failed");
        }
    }
}

/// The helper process: sets itself up, waits for the pipe to close, then
/// unmounts. Never returns.
fn helper_main(pipe: OwnedFd, target: &CString, seccomp: SeccompMode) -> ! {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        tracing::error!(error = %e, "unmount helper: {what}");
        // SAFETY: ends this process without running the daemon's exit code.
        unsafe { libc::_exit(EXIT_SETUP) }
    };
    // Only the pipe (as fd 3) and stderr stay open: in particular not
    // /dev/fuse, which would keep the FUSE connection alive.
    // SAFETY: plain descriptor and signal calls in a single-threaded child.
    unsafe {
        if libc::dup2(pipe.as_raw_fd(), 3) != 3 {
            fail("dup2", &io::Error::last_os_error());
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
            for fd in 4..1024 {
                libc::close(fd);
            }
        }
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"unmount-helper".as_ptr(), 0, 0, 0);
    }
    std::mem::forget(pipe); // now fd 3 only; the original was closed above
    if let Err(e) = super::set_no_new_privs() {
        fail("no_new_privs", &e);
    }
    if let Err(e) = super::caps::keep_only(&[caps::Capability::CAP_SYS_ADMIN]) {
        fail("dropping capabilities", &e);
    }
    match super::seccomp::Filters::unmount_helper(seccomp) {
        Ok(Some(filters)) => {
            if let Err(e) = filters.install() {
                fail("seccomp", &e);
            }
        }
        Ok(None) => {}
        Err(e) => fail("seccomp", &e),
    }

    // Wait for EOF (or any byte): the daemon is done or gone.
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(3, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 && byte == DISMISS {
            // SAFETY: ends the helper; the daemon saw the mount go away.
            unsafe { libc::_exit(EXIT_UNMOUNTED) }
        }
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    // SAFETY: target is a valid C string.
    let code = if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
        EXIT_UNMOUNTED
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            // Not mounted (any more): someone unmounted it already.
            EXIT_UNMOUNTED
        } else {
            tracing::error!(mountpoint = ?target, error = %e, "unmount helper: unmounting failed");
            EXIT_UNMOUNT
        }
    };
    // SAFETY: ends the helper.
    unsafe { libc::_exit(code) }
}
