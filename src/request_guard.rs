//! Every request ends with a reply: [`PanicGuard`] wraps a filesystem so
//! that a panic inside one request (a bug, or input nobody foresaw) is
//! caught, logged with the operation and the panic message, counted, and
//! answered with EIO, while the serving thread goes on with the next
//! request. Both transports serve through it.

use std::any::Any;
use std::ffi::CStr;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    ZeroCopyReader, ZeroCopyWriter,
};

/// Requests whose handler panicked since the daemon started.
static REQUEST_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many requests panicked (answered EIO) so far.
pub fn request_panics() -> u64 {
    REQUEST_PANICS.load(Ordering::Relaxed)
}

/// The guard's counter as a `name value` line, like the stats file's.
pub fn render() -> String {
    format!("request_panics {}\n", request_panics())
}

/// The text a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs `f`, turning a panic into EIO for this one request.
fn guarded<T>(operation: &'static str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            note_panic(operation, payload.as_ref());
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }
}

/// Logs and counts a panic that was caught while serving `operation`.
pub fn note_panic(operation: &str, payload: &(dyn Any + Send)) {
    let total = REQUEST_PANICS.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::error!(
        operation,
        panic = panic_message(payload),
        total,
        "a request panicked; answered EIO, serving on"
    );
}

/// A filesystem whose every request is answered, even when it panics.
pub struct PanicGuard<F> {
    inner: F,
}

impl<F> PanicGuard<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: FileSystem> FileSystem for PanicGuard<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        guarded("INIT", || self.inner.init(capable))
    }

    fn destroy(&self) {
        let _ = guarded("DESTROY", || {
            self.inner.destroy();
            Ok(())
        });
    }

    fn lookup(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<Entry> {
        guarded("LOOKUP", || self.inner.lookup(ctx, parent, name))
    }

    fn forget(&self, ctx: &Context, inode: F::Inode, count: u64) {
        let _ = guarded("FORGET", || {
            self.inner.forget(ctx, inode, count);
            Ok(())
        });
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(F::Inode, u64)>) {
        let _ = guarded("BATCH_FORGET", || {
            self.inner.batch_forget(ctx, requests);
            Ok(())
        });
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: Option<F::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        guarded("GETATTR", || self.inner.getattr(ctx, inode, handle))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: F::Inode,
        attr: stat64,
        handle: Option<F::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        guarded("SETATTR", || {
            self.inner.setattr(ctx, inode, attr, handle, valid)
        })
    }

    fn readlink(&self, ctx: &Context, inode: F::Inode) -> io::Result<Vec<u8>> {
        guarded("READLINK", || self.inner.readlink(ctx, inode))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: F::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        guarded("SYMLINK", || {
            self.inner.symlink(ctx, linkname, parent, name)
        })
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: F::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        guarded("MKNOD", || {
            self.inner.mknod(ctx, parent, name, mode, rdev, umask)
        })
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: F::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        guarded("MKDIR", || self.inner.mkdir(ctx, parent, name, mode, umask))
    }

    fn unlink(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<()> {
        guarded("UNLINK", || self.inner.unlink(ctx, parent, name))
    }

    fn rmdir(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<()> {
        guarded("RMDIR", || self.inner.rmdir(ctx, parent, name))
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: F::Inode,
        oldname: &CStr,
        newdir: F::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        guarded("RENAME", || {
            self.inner
                .rename(ctx, olddir, oldname, newdir, newname, flags)
        })
    }

    fn link(
        &self,
        ctx: &Context,
        inode: F::Inode,
        newparent: F::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        guarded("LINK", || self.inner.link(ctx, inode, newparent, newname))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: F::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<F::Handle>, OpenOptions, Option<u32>)> {
        guarded("OPEN", || self.inner.open(ctx, inode, flags, fuse_flags))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: F::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<F::Handle>, OpenOptions, Option<u32>)> {
        guarded("CREATE", || self.inner.create(ctx, parent, name, args))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        guarded("READ", || {
            self.inner
                .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        guarded("WRITE", || {
            self.inner.write(
                ctx,
                inode,
                handle,
                r,
                size,
                offset,
                lock_owner,
                delayed_write,
                flags,
                fuse_flags,
            )
        })
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        guarded("FLUSH", || self.inner.flush(ctx, inode, handle, lock_owner))
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: F::Inode,
        datasync: bool,
        handle: F::Handle,
    ) -> io::Result<()> {
        guarded("FSYNC", || self.inner.fsync(ctx, inode, datasync, handle))
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        guarded("FALLOCATE", || {
            self.inner
                .fallocate(ctx, inode, handle, mode, offset, length)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: F::Inode,
        flags: u32,
        handle: F::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        guarded("RELEASE", || {
            self.inner
                .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
        })
    }

    fn statfs(&self, ctx: &Context, inode: F::Inode) -> io::Result<statvfs64> {
        guarded("STATFS", || self.inner.statfs(ctx, inode))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: F::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        guarded("SETXATTR", || {
            self.inner.setxattr(ctx, inode, name, value, flags)
        })
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: F::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        guarded("GETXATTR", || self.inner.getxattr(ctx, inode, name, size))
    }

    fn listxattr(&self, ctx: &Context, inode: F::Inode, size: u32) -> io::Result<ListxattrReply> {
        guarded("LISTXATTR", || self.inner.listxattr(ctx, inode, size))
    }

    fn removexattr(&self, ctx: &Context, inode: F::Inode, name: &CStr) -> io::Result<()> {
        guarded("REMOVEXATTR", || self.inner.removexattr(ctx, inode, name))
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: F::Inode,
        flags: u32,
    ) -> io::Result<(Option<F::Handle>, OpenOptions)> {
        guarded("OPENDIR", || self.inner.opendir(ctx, inode, flags))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        guarded("READDIR", || {
            self.inner
                .readdir(ctx, inode, handle, size, offset, add_entry)
        })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: F::Inode,
        handle: F::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        guarded("READDIRPLUS", || {
            self.inner
                .readdirplus(ctx, inode, handle, size, offset, add_entry)
        })
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: F::Inode,
        datasync: bool,
        handle: F::Handle,
    ) -> io::Result<()> {
        guarded("FSYNCDIR", || {
            self.inner.fsyncdir(ctx, inode, datasync, handle)
        })
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: F::Inode,
        flags: u32,
        handle: F::Handle,
    ) -> io::Result<()> {
        guarded("RELEASEDIR", || {
            self.inner.releasedir(ctx, inode, flags, handle)
        })
    }

    fn access(&self, ctx: &Context, inode: F::Inode, mask: u32) -> io::Result<()> {
        guarded("ACCESS", || self.inner.access(ctx, inode, mask))
    }
}

/// Replaces the default panic report (which, with RUST_BACKTRACE set, reads
/// the executable to symbolize a backtrace: outside what the sandbox
/// allows) with one log line: thread, source location and message.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        tracing::error!(
            thread = thread.name().unwrap_or("(unnamed)"),
            %location,
            panic = panic_message(info.payload()),
            "panic"
        );
    }));
}

/// Ends the process at once when a serving thread is about to die anyway
/// (a panic outside any request): a daemon serving with fewer threads than
/// it has queues leaves a guest hanging, and a non-zero exit lets systemd
/// restart it.
pub fn exit_on_thread_death(thread: &str, payload: &(dyn Any + Send)) -> ! {
    tracing::error!(
        thread,
        panic = panic_message(payload),
        "a serving thread panicked outside a request; exiting so that the daemon is restarted"
    );
    std::process::exit(70)
}

/// Runs a serving thread's body; a panic that escapes it ends the process
/// (see [`exit_on_thread_death`]).
pub fn serve_or_exit<T>(thread: &str, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => exit_on_thread_death(thread, payload.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_eio_and_is_counted() {
        let before = request_panics();
        let r: io::Result<()> = guarded("TEST", || panic!("boom {}", 1));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(request_panics() > before);
        assert_eq!(guarded("TEST", || Ok(5)).unwrap(), 5);
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let s = catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(s.as_ref()), "static");
        let f = catch_unwind(|| panic!("formatted {}", 2)).unwrap_err();
        assert_eq!(panic_message(f.as_ref()), "formatted 2");
    }
}
