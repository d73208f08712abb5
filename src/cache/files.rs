//! Opening and writing cache files that another daemon may have planted:
//! never follow a symlink, never block on a FIFO or device, accept only
//! regular files, and learn a file's length before reading any of it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for reading if it is a regular file, with its length.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok((file, meta.len()))
}

/// Takes `flock(how | LOCK_NB)` on `file`, retrying every few milliseconds
/// for at most `wait`; false if another holder kept it that long.
pub fn try_flock(file: &File, how: libc::c_int, wait: std::time::Duration) -> bool {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + wait;
    loop {
        // SAFETY: flock on a descriptor owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A temporary file in `dir`, locked for as long as it is open, so that an
/// eviction by any daemon can tell a live writer's file from an abandoned
/// one (the kernel drops the lock when the writer dies).
pub fn locked_temp_file(dir: &Path) -> io::Result<tempfile::NamedTempFile> {
    let temp = tempfile::NamedTempFile::new_in(dir)?;
    if !try_flock(temp.as_file(), libc::LOCK_EX, std::time::Duration::ZERO) {
        return Err(io::Error::other("locking a new temporary file failed"));
    }
    Ok(temp)
}
