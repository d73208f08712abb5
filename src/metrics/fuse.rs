//! FUSE requests: a [`FileSystem`] that times every call of the one it
//! wraps and counts its errors by errno and the bytes READ gave the guest.
//! Wrapping the filesystem, rather than hooking each transport, sees the
//! same requests over vhost-user and /dev/fuse, with their results.

use std::borrow::Cow;
use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, SetattrValid};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::requests::{Help, RequestMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpcodeLabels {
    opcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    opcode: &'static str,
    errno: Cow<'static, str>,
}

/// The FUSE request metrics.
pub(super) struct FuseMetrics {
    requests: RequestMetrics<OpcodeLabels, ErrorLabels>,
    read_bytes: Counter,
}

/// 25 µs (a cached getattr) to 5 s (a cold read far from the store).
fn latency_histogram() -> Histogram {
    Histogram::new([
        25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0,
    ])
}

impl FuseMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let help = Help {
            requests: "FUSE requests handled, by opcode",
            duration: "Time the filesystem took to answer a FUSE request, by opcode",
            errors: "FUSE requests answered with an error, by opcode and errno (a lookup of a \
                     name that does not exist counts as ENOENT)",
        };
        let read_bytes = Counter::default();
        registry.register_with_unit(
            "fuse_read",
            "File content served to the guest by READ",
            Unit::Bytes,
            read_bytes.clone(),
        );
        Self {
            requests: RequestMetrics::register(registry, "fuse", help, latency_histogram),
            read_bytes,
        }
    }

    fn request(&self, opcode: &'static str, took: Duration) {
        self.requests.observe(&OpcodeLabels { opcode }, took);
    }

    fn error(&self, opcode: &'static str, errno: i32) {
        let errno = super::errno::name(errno);
        self.requests.error(&ErrorLabels { opcode, errno });
    }
}

/// Whether a reply is an error the guest sees, and its errno.
trait GuestError {
    fn guest_errno(&self) -> Option<i32>;
}

impl<T> GuestError for io::Result<T> {
    fn guest_errno(&self) -> Option<i32> {
        match self {
            Ok(_) => None,
            Err(e) => Some(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

/// Records one call's time and outcome.
fn observe<R: GuestError>(opcode: &'static str, started: Instant, result: &R) {
    let metrics = &super::global().fuse;
    metrics.request(opcode, started.elapsed());
    if let Some(errno) = result.guest_errno() {
        metrics.error(opcode, errno);
    }
}

/// `inner` with every request measured.
pub struct MeteredFs<F> {
    inner: Arc<F>,
}

impl<F> MeteredFs<F> {
    pub fn new(inner: Arc<F>) -> Self {
        Self { inner }
    }
}

/// Forwards each listed method to the inner filesystem and observes it.
macro_rules! metered {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) -> $ret {
                let started = Instant::now();
                let result = self.inner.$name($($arg),*);
                observe(stringify!($name), started, &result);
                result
            }
        )*
    };
}

impl<F: FileSystem> FileSystem for MeteredFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn destroy(&self) {
        let started = Instant::now();
        self.inner.destroy();
        observe("destroy", started, &io::Result::Ok(()));
    }

    fn forget(&self, ctx: &Context, inode: F::Inode, count: u64) {
        let started = Instant::now();
        self.inner.forget(ctx, inode, count);
        observe("forget", started, &io::Result::Ok(()));
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(F::Inode, u64)>) {
        let started = Instant::now();
        self.inner.batch_forget(ctx, requests);
        observe("batch_forget", started, &io::Result::Ok(()));
    }

    fn lookup(&self, ctx: &Context, parent: F::Inode, name: &CStr) -> io::Result<Entry> {
        let started = Instant::now();
        let result = self.inner.lookup(ctx, parent, name);
        observe("lookup", started, &result);
        if matches!(&result, Ok(entry) if entry.inode == 0) {
            // A negative entry: the guest gets ENOENT.
            super::global().fuse.error("lookup", libc::ENOENT);
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
        let started = Instant::now();
        let result = self
            .inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags);
        observe("read", started, &result);
        if let Ok(bytes) = &result {
            super::global().fuse.read_bytes.inc_by(*bytes as u64);
        }
        result
    }

    metered! {
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
