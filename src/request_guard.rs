//! Every request ends with a reply: [`RequestGuard`] wraps a filesystem so
//! that a panic inside one request (a bug, or input nobody foresaw) is
//! caught, logged with the operation and the panic message, counted, and
//! answered with EIO, while the serving thread goes on with the next
//! request. The same layer measures each request for the metrics. Both
//! transports serve through it.

use std::any::Any;
use std::ffi::CStr;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, SetattrValid};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

use crate::metrics::fuse as metrics;
use crate::panics::panic_message;

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
    let total = metrics::request_panicked();
    tracing::error!(
        operation,
        panic = panic_message(payload),
        total,
        "a request panicked; answered EIO, serving on"
    );
}

/// The one layer every request passes through, whichever transport
/// brought it: a panic inside the request becomes EIO (see [`guarded`]),
/// and the request is measured (time, errno, bytes READ) for the metrics.
pub struct RequestGuard<F> {
    inner: F,
}

impl<F> RequestGuard<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

/// Runs one request of `opcode`: guarded, then measured (a panic is
/// measured as the EIO it is answered with).
fn serve<T>(opcode: &'static str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let started = Instant::now();
    let result = guarded(opcode, f);
    metrics::observe(opcode, started, &result);
    result
}

/// Forwards each listed method to the inner filesystem through [`serve`].
macro_rules! served {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) -> $ret {
                serve(stringify!($name), || self.inner.$name($($arg),*))
            }
        )*
    };
}

impl<F: FileSystem> FileSystem for RequestGuard<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn destroy(&self) {
        let _ = serve("destroy", || {
            self.inner.destroy();
            Ok(())
        });
    }

    fn forget(&self, ctx: &Context, inode: F::Inode, count: u64) {
        let _ = serve("forget", || {
            self.inner.forget(ctx, inode, count);
            Ok(())
        });
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(F::Inode, u64)>) {
        let _ = serve("batch_forget", || {
            self.inner.batch_forget(ctx, requests);
            Ok(())
        });
    }

    fn lookup(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<Entry> {
        let result = serve("lookup", || self.inner.lookup(ctx, parent, name));
        if matches!(&result, Ok(entry) if entry.inode == 0) {
            // A negative entry: the guest gets ENOENT.
            metrics::negative_lookup();
        }
        result
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
        let result = serve("read", || {
            self.inner
                .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
        });
        if let Ok(bytes) = &result {
            metrics::read_bytes(*bytes);
        }
        result
    }

    served! {
        fn init(&self, capable: FsOptions) -> io::Result<FsOptions>;
        fn getattr(&self, ctx: &Context, inode: F::Inode, handle: Option<F::Handle>) -> io::Result<(stat64, Duration)>;
        fn setattr(&self, ctx: &Context, inode: F::Inode, attr: stat64, handle: Option<F::Handle>, valid: SetattrValid) -> io::Result<(stat64, Duration)>;
        fn readlink(&self, ctx: &Context, inode: F::Inode) -> io::Result<Vec<u8>>;
        fn symlink(&self, ctx: &Context, linkname: &CStr, parent: F::Inode, name: &CStr) -> io::Result<Entry>;
        fn mknod(&self, ctx: &Context, inode: F::Inode, name: &CStr, mode: u32, rdev: u32, umask: u32) -> io::Result<Entry>;
        fn mkdir(&self, ctx: &Context, parent: F::Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry>;
        fn unlink(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<()>;
        fn rmdir(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<()>;
        fn rename(&self, ctx: &Context, olddir: F::Inode, oldname: &CStr, newdir: F::Inode, newname: &CStr, flags: u32) -> io::Result<()>;
        fn link(&self, ctx: &Context, inode: F::Inode, newparent: F::Inode, newname: &CStr) -> io::Result<Entry>;
        fn open(&self, ctx: &Context, inode: F::Inode, flags: u32, fuse_flags: u32) -> io::Result<(Option<F::Handle>, OpenOptions, Option<u32>)>;
        fn create(&self, ctx: &Context, parent: F::Inode, name: &CStr, args: CreateIn) -> io::Result<(Entry, Option<F::Handle>, OpenOptions, Option<u32>)>;
        fn write(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, r: &mut dyn ZeroCopyReader, size: u32, offset: u64, lock_owner: Option<u64>, delayed_write: bool, flags: u32, fuse_flags: u32) -> io::Result<usize>;
        fn flush(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, lock_owner: u64) -> io::Result<()>;
        fn fsync(&self, ctx: &Context, inode: F::Inode, datasync: bool, handle: F::Handle) -> io::Result<()>;
        fn fallocate(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, mode: u32, offset: u64, length: u64) -> io::Result<()>;
        fn release(&self, ctx: &Context, inode: F::Inode, flags: u32, handle: F::Handle, flush: bool, flock_release: bool, lock_owner: Option<u64>) -> io::Result<()>;
        fn statfs(&self, ctx: &Context, inode: F::Inode) -> io::Result<statvfs64>;
        fn setxattr(&self, ctx: &Context, inode: F::Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()>;
        fn getxattr(&self, ctx: &Context, inode: F::Inode, name: &CStr, size: u32) -> io::Result<GetxattrReply>;
        fn listxattr(&self, ctx: &Context, inode: F::Inode, size: u32) -> io::Result<ListxattrReply>;
        fn removexattr(&self, ctx: &Context, inode: F::Inode, name: &CStr) -> io::Result<()>;
        fn opendir(&self, ctx: &Context, inode: F::Inode, flags: u32) -> io::Result<(Option<F::Handle>, OpenOptions)>;
        fn readdir(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, size: u32, offset: u64, add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>) -> io::Result<()>;
        fn readdirplus(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, size: u32, offset: u64, add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>) -> io::Result<()>;
        fn fsyncdir(&self, ctx: &Context, inode: F::Inode, datasync: bool, handle: F::Handle) -> io::Result<()>;
        fn releasedir(&self, ctx: &Context, inode: F::Inode, flags: u32, handle: F::Handle) -> io::Result<()>;
        fn setupmapping(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, foffset: u64, len: u64, flags: u64, moffset: u64, vu_req: &mut dyn FsCacheReqHandler) -> io::Result<()>;
        fn removemapping(&self, ctx: &Context, inode: F::Inode, requests: Vec<RemovemappingOne>, vu_req: &mut dyn FsCacheReqHandler) -> io::Result<()>;
        fn access(&self, ctx: &Context, inode: F::Inode, mask: u32) -> io::Result<()>;
        fn lseek(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, offset: u64, whence: u32) -> io::Result<u64>;
        fn getlk(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, owner: u64, lock: FileLock, flags: u32) -> io::Result<FileLock>;
        fn setlk(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, owner: u64, lock: FileLock, flags: u32) -> io::Result<()>;
        fn setlkw(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, owner: u64, lock: FileLock, flags: u32) -> io::Result<()>;
        fn ioctl(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, flags: u32, cmd: u32, data: IoctlData, out_size: u32) -> io::Result<IoctlData<'_>>;
        fn bmap(&self, ctx: &Context, inode: F::Inode, block: u64, blocksize: u32) -> io::Result<u64>;
        fn poll(&self, ctx: &Context, inode: F::Inode, handle: F::Handle, khandle: F::Handle, flags: u32, events: u32) -> io::Result<u32>;
        fn notify_reply(&self) -> io::Result<()>;
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        // Called for every request before it is dispatched: not a request.
        self.inner.id_remap(ctx)
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
        let before = metrics::request_panics();
        let r: io::Result<()> = guarded("TEST", || panic!("boom {}", 1));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(metrics::request_panics() > before);
        assert_eq!(guarded("TEST", || Ok(5)).unwrap(), 5);
    }

    /// Panics in GETATTR; has no LOOKUP.
    struct Broken;

    impl FileSystem for Broken {
        type Inode = u64;
        type Handle = u64;

        fn getattr(&self, _: &Context, _: u64, _: Option<u64>) -> io::Result<(stat64, Duration)> {
            panic!("broken getattr")
        }
    }

    #[test]
    fn one_layer_guards_and_measures() {
        let fs = RequestGuard::new(Broken);
        let ctx = Context::default();
        let before = metrics::request_panics();
        let r = fs.getattr(&ctx, 1, None);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(metrics::request_panics() > before);
        // Broken's LOOKUP is the trait's default (ENOSYS), measured too.
        assert!(fs.lookup(&ctx, 1, c"x").is_err());
        let text = crate::metrics::global().render();
        for series in [
            "fuse_errors_total{opcode=\"getattr\",errno=\"EIO\"}",
            "fuse_request_duration_seconds_count{opcode=\"getattr\"}",
            "fuse_errors_total{opcode=\"lookup\",errno=\"ENOSYS\"}",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
