//! The read-only filesystem: a flat root of store paths, each resolved
//! through PathInfoService, with directories and files from castore. It
//! implements fuse-backend-rs's `FileSystem` and knows nothing about the
//! transport (virtqueues or /dev/fuse) that carries its requests.

mod inode;
mod limits;
mod root_listing;
mod xattr;

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry as FuseDirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply,
    OpenOptions, ZeroCopyReader, ZeroCopyWriter,
};
use parking_lot::Mutex;

use crate::cache::{ContentSource, FileOrigin, OpenBlob, ReadError};
use crate::store::{
    store_path, B3Digest, DirEntry, Directory, Node, StoreError, StorePathInfo, StoreProtocol,
};
pub use inode::{InodeKind, ROOT_INODE};
use inode::{InodeTable, Refused};
pub use limits::{GuestLimits, LimitCounters, MAX_READ_SIZE};
use root_listing::RootListing;
pub use xattr::DigestXattrs;

/// Directory entry inode number for entries not (yet) looked up, as libfuse
/// reports it.
const UNKNOWN_INO: u64 = 0xffff_ffff;
/// Most store paths the root listing holds (`--list-root`).
const MAX_ROOT_LISTING: usize = 1 << 20;
/// Modification time of everything, as in a real Nix store.
const STORE_MTIME: i64 = 1;

/// How much the guest may cache, with virtiofsd's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CachePolicy {
    /// No guest page cache (direct I/O), no caching of names or attributes:
    /// every access is a request to the daemon.
    Never,
    /// Guest page cache within an open, names and attributes for a second.
    Auto,
    /// Guest page cache kept across opens (FOPEN_KEEP_CACHE), directory
    /// listings cached, long name and attribute timeouts: right for store
    /// content, which never changes.
    #[default]
    Always,
}

impl CachePolicy {
    /// Name and attribute timeout that goes with the policy.
    pub fn default_entry_timeout(self) -> Duration {
        match self {
            Self::Never => Duration::ZERO,
            Self::Auto => Duration::from_secs(1),
            Self::Always => Duration::from_secs(24 * 3600),
        }
    }
}

/// How the filesystem behaves towards the guest.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Answer readdir of the root with PathInfoService.List.
    pub list_root: bool,
    /// What the guest may cache.
    pub cache: CachePolicy,
    /// How long the guest may cache entries and attributes.
    pub entry_timeout: Duration,
    /// How long the guest may cache "no such store path": short, because
    /// new paths appear in the store.
    pub negative_root_timeout: Duration,
    /// Chunks fetched ahead of a sequential reader (0: none).
    pub readahead_chunks: usize,
    /// What the guest may make the daemon hold.
    pub limits: GuestLimits,
    /// The castore digests as extended attributes, under these names
    /// (`None`: no attributes, as with `--no-xattrs`).
    pub digest_xattrs: Option<DigestXattrs>,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            list_root: false,
            cache: CachePolicy::Always,
            entry_timeout: CachePolicy::Always.default_entry_timeout(),
            negative_root_timeout: Duration::from_secs(1),
            readahead_chunks: 32,
            limits: GuestLimits::default(),
            digest_xattrs: Some(DigestXattrs::of(StoreProtocol::default())),
        }
    }
}

/// What an open directory handle lists.
enum DirListing {
    Directory(Arc<Directory>),
    Root(Arc<Vec<DirEntry>>),
}

impl DirListing {
    fn entries(&self) -> &[DirEntry] {
        match self {
            Self::Directory(d) => &d.entries,
            Self::Root(v) => v,
        }
    }
}

/// The filesystem served to the guest.
pub struct StoreFs {
    config: FsConfig,
    store: Arc<dyn ContentSource>,
    inodes: InodeTable,
    next_handle: AtomicU64,
    open_files: Mutex<HashMap<u64, Arc<OpenBlob>>>,
    open_dirs: Mutex<HashMap<u64, Arc<DirListing>>>,
    root_listing: RootListing,
    limit_counters: LimitCounters,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Every request that would change the filesystem gets this.
fn read_only<T>() -> io::Result<T> {
    Err(errno(libc::EROFS))
}

/// Logs a store failure with what the guest asked for (repeats held back),
/// and turns it into EIO.
fn store_failure(context: &str, e: &StoreError) -> io::Error {
    crate::log_limit::store_failure(context, e);
    errno(libc::EIO)
}

impl StoreFs {
    /// The filesystem's methods block on store calls, so they must be
    /// called from threads outside the store client's async runtime.
    pub fn new(config: FsConfig, store: Arc<dyn ContentSource>) -> Self {
        Self {
            store,
            inodes: InodeTable::with_limit(config.limits.max_inodes),
            root_listing: RootListing::new(config.limits.root_listing_ttl),
            config,
            next_handle: AtomicU64::new(1),
            open_files: Mutex::new(HashMap::new()),
            open_dirs: Mutex::new(HashMap::new()),
            limit_counters: LimitCounters::default(),
        }
    }

    /// How often the guest hit each bound.
    pub fn limit_counters(&self) -> &LimitCounters {
        &self.limit_counters
    }

    /// Open file and directory handles (for tests and stats).
    pub fn handle_count(&self) -> usize {
        self.open_files.lock().len() + self.open_dirs.lock().len()
    }

    /// Registers a lookup of `name` in `parent`, within the inode bound.
    fn remember(&self, parent: u64, name: &bytes::Bytes, node: &Node) -> io::Result<u64> {
        self.refused_as_errno(self.inodes.lookup(parent, name, node))
    }

    /// Registers a lookup of a store path in the root, with its NAR facts.
    fn remember_store_path(&self, found: &StorePathInfo) -> io::Result<u64> {
        self.refused_as_errno(self.inodes.lookup_store_path(found))
    }

    fn refused_as_errno(&self, lookup: Result<u64, Refused>) -> io::Result<u64> {
        lookup.map_err(|refused| match refused {
            Refused::Full => {
                LimitCounters::hit(
                    &self.limit_counters.inodes_refused,
                    "inodes",
                    self.config.limits.max_inodes,
                );
                errno(libc::ENOMEM)
            }
            Refused::StaleParent => errno(libc::ESTALE),
        })
    }

    /// A new handle number if the guest may hold one more.
    fn reserve_handle(&self) -> io::Result<u64> {
        if self.handle_count() >= self.config.limits.max_open_handles {
            LimitCounters::hit(
                &self.limit_counters.handles_refused,
                "open handles",
                self.config.limits.max_open_handles,
            );
            return Err(errno(libc::ENFILE));
        }
        Ok(self.new_handle())
    }

    /// Number of live inodes besides the root (for tests and stats).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Number of open file and directory handles (for metrics).
    pub fn open_handle_count(&self) -> usize {
        self.open_files.lock().len() + self.open_dirs.lock().len()
    }

    fn kind(&self, inode: u64) -> io::Result<InodeKind> {
        // An inode the kernel never got from us, or already forgot.
        self.inodes.get(inode).ok_or_else(|| errno(libc::ESTALE))
    }

    /// A validated Directory, from the cache or the store.
    fn directory(&self, digest: &B3Digest, size: u64) -> io::Result<Arc<Directory>> {
        self.store
            .directory(digest, size)
            .map_err(|e| store_failure("reading a directory", &e))
    }

    fn attr(&self, inode: u64, kind: &InodeKind) -> stat64 {
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = inode;
        st.st_uid = 0;
        st.st_gid = 0;
        st.st_mtime = STORE_MTIME;
        st.st_ctime = STORE_MTIME;
        st.st_atime = STORE_MTIME;
        st.st_blksize = 65536;
        let (mode, nlink, size) = match kind {
            InodeKind::Root | InodeKind::Node(Node::Directory { .. }) => {
                (libc::S_IFDIR | 0o555, 2, 0)
            }
            InodeKind::Node(Node::File {
                size, executable, ..
            }) => (
                libc::S_IFREG | if *executable { 0o555 } else { 0o444 },
                1,
                *size,
            ),
            InodeKind::Node(Node::Symlink { target }) => {
                (libc::S_IFLNK | 0o777, 1, target.len() as u64)
            }
        };
        st.st_mode = mode;
        st.st_nlink = nlink;
        st.st_size = size as i64;
        st.st_blocks = size.div_ceil(512) as i64;
        st
    }

    fn entry(&self, inode: u64, kind: &InodeKind) -> Entry {
        Entry {
            inode,
            generation: 0,
            attr: self.attr(inode, kind),
            attr_flags: 0,
            attr_timeout: self.config.entry_timeout,
            entry_timeout: self.config.entry_timeout,
        }
    }

    /// A negative entry: "no such name", cacheable by the guest for `timeout`.
    fn negative(timeout: Duration) -> Entry {
        Entry {
            inode: 0,
            entry_timeout: timeout,
            ..Entry::default()
        }
    }

    fn lookup_root(&self, name: &[u8]) -> io::Result<Entry> {
        let Some(hash) = store_path::parse(name) else {
            // Not a store path name: it can never exist, no store call.
            return Ok(Self::negative(self.config.entry_timeout));
        };
        let shown = String::from_utf8_lossy(name);
        match self.store.path_info(hash, name) {
            Ok(Some(found)) => {
                let ino = self.remember_store_path(&found)?;
                Ok(self.entry(ino, &InodeKind::Node(found.entry.node)))
            }
            Ok(None) => Ok(Self::negative(self.config.negative_root_timeout)),
            Err(e) => Err(store_failure(&format!("looking up store path {shown}"), &e)),
        }
    }

    /// Where the guest found the file `inode`: its store path and
    /// directory, if it is still referenced and under a store path name.
    fn origin(&self, inode: u64) -> Option<FileOrigin> {
        let (name, directory) = self.inodes.origin(inode)?;
        Some(FileOrigin {
            store_path: store_path::parse(&name)?,
            directory: match directory {
                Some(Node::Directory { digest, size }) => Some((digest, size)),
                _ => None,
            },
        })
    }

    /// The extended attributes of `inode` (none with `--no-xattrs`).
    fn xattrs(&self, inode: u64) -> io::Result<Vec<xattr::Attribute>> {
        let kind = self.kind(inode)?;
        Ok(match (&self.config.digest_xattrs, &kind) {
            (Some(naming), InodeKind::Node(node)) => {
                naming.attributes(node, self.inodes.nar(inode).as_ref())
            }
            _ => Vec::new(),
        })
    }

    fn directory_of(&self, kind: &InodeKind) -> io::Result<Arc<Directory>> {
        match kind {
            InodeKind::Node(Node::Directory { digest, size }) => self.directory(digest, *size),
            _ => Err(errno(libc::ENOTDIR)),
        }
    }

    fn listing(&self, inode: u64) -> io::Result<DirListing> {
        match self.kind(inode)? {
            InodeKind::Root if self.config.list_root => {
                let entries = self
                    .root_listing
                    .get(|| self.store.list_path_infos(MAX_ROOT_LISTING))
                    .map_err(|e| store_failure("listing the store paths", &e))?;
                Ok(DirListing::Root(entries))
            }
            // Without --list-root the root lists nothing; names still resolve.
            InodeKind::Root => Ok(DirListing::Root(Arc::new(Vec::new()))),
            kind => Ok(DirListing::Directory(self.directory_of(&kind)?)),
        }
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn dir_handle(&self, handle: u64) -> io::Result<Arc<DirListing>> {
        self.open_dirs
            .lock()
            .get(&handle)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    /// The entries of a directory from readdir `offset` on: 0 is ".", 1 is
    /// "..", 2.. are the sorted entries. Calls `emit` until it returns false.
    fn for_each_entry(
        &self,
        handle: u64,
        offset: u64,
        mut emit: impl FnMut(u64, &[u8], Option<&DirEntry>) -> io::Result<bool>,
    ) -> io::Result<()> {
        let listing = self.dir_handle(handle)?;
        let entries = listing.entries();
        let total = entries.len() as u64 + 2;
        for index in offset..total {
            let (name, entry): (&[u8], _) = match index {
                0 => (b".", None),
                1 => (b"..", None),
                i => {
                    let e = &entries[(i - 2) as usize];
                    (&e.name[..], Some(e))
                }
            };
            if !emit(index + 1, name, entry)? {
                break;
            }
        }
        Ok(())
    }
}

fn dirent_type(node: Option<&Node>) -> u32 {
    match node {
        None | Some(Node::Directory { .. }) => libc::DT_DIR as u32,
        Some(Node::File { .. }) => libc::DT_REG as u32,
        Some(Node::Symlink { .. }) => libc::DT_LNK as u32,
    }
}

impl FileSystem for StoreFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let wanted = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO
            | FsOptions::CACHE_SYMLINKS
            | FsOptions::MAX_PAGES;
        // A new guest (or a new session): nothing it held before is valid.
        self.inodes.clear();
        self.open_files.lock().clear();
        self.open_dirs.lock().clear();
        Ok(capable & wanted)
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let name = name.to_bytes();
        let _span =
            tracing::debug_span!("lookup", parent, name = %String::from_utf8_lossy(name)).entered();
        match self.kind(parent)? {
            InodeKind::Root => self.lookup_root(name),
            kind => {
                let dir = self.directory_of(&kind)?;
                match dir.entry(name) {
                    Some(found) => {
                        let ino = self.remember(parent, &found.name, &found.node)?;
                        Ok(self.entry(ino, &InodeKind::Node(found.node.clone())))
                    }
                    // Directories never change: the guest may remember this.
                    None => Ok(Self::negative(self.config.entry_timeout)),
                }
            }
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.inodes.forget(inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.inodes.forget(inode, count);
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let kind = self.kind(inode)?;
        Ok((self.attr(inode, &kind), self.config.entry_timeout))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        match self.kind(inode)? {
            InodeKind::Node(Node::Symlink { target }) => Ok(target.to_vec()),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let flags = flags as i32;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return read_only();
        }
        let (digest, size) = match self.kind(inode)? {
            InodeKind::Node(Node::File { digest, size, .. }) => (digest, size),
            InodeKind::Root | InodeKind::Node(Node::Directory { .. }) => {
                return Err(errno(libc::EISDIR))
            }
            InodeKind::Node(Node::Symlink { .. }) => return Err(errno(libc::ELOOP)),
        };
        let handle = self.reserve_handle()?;
        let origin = self.origin(inode);
        self.open_files.lock().insert(
            handle,
            Arc::new(self.store.open_blob(digest, size, origin.as_ref())),
        );
        let options = match self.config.cache {
            CachePolicy::Never => OpenOptions::DIRECT_IO,
            CachePolicy::Auto => OpenOptions::empty(),
            CachePolicy::Always => OpenOptions::KEEP_CACHE,
        };
        Ok((Some(handle), options, None))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let _span = tracing::debug_span!("read", inode, offset, size).entered();
        let size = if size > MAX_READ_SIZE {
            LimitCounters::hit(
                &self.limit_counters.reads_capped,
                "READ size",
                MAX_READ_SIZE as usize,
            );
            MAX_READ_SIZE
        } else {
            size
        };
        let blob = self
            .open_files
            .lock()
            .get(&handle)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))?;
        self.store
            .read(&blob, offset, size, w)
            .map_err(|e| match e {
                ReadError::Store(e) => store_failure(
                    &format!("reading inode {inode} (blob {})", blob.digest()),
                    &e,
                ),
                ReadError::Guest(e) => e,
                ReadError::ForeignHandle => {
                    tracing::error!(inode, handle, "a file handle of another content source");
                    errno(libc::EBADF)
                }
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.open_files.lock().remove(&handle);
        Ok(())
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let handle = self.reserve_handle()?;
        let listing = self.listing(inode)?;
        self.open_dirs.lock().insert(handle, Arc::new(listing));
        // Listings never change, except the root's (new store paths).
        let options = if inode == ROOT_INODE || self.config.cache != CachePolicy::Always {
            OpenOptions::empty()
        } else {
            OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE
        };
        Ok((Some(handle), options))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.for_each_entry(handle, offset, |next, name, entry| {
            let ino = match entry {
                None => inode,
                Some(_) => self.inodes.peek(inode, name).unwrap_or(UNKNOWN_INO),
            };
            let written = add_entry(FuseDirEntry {
                ino,
                offset: next,
                type_: dirent_type(entry.map(|e| &e.node)),
                name,
            })?;
            Ok(written > 0)
        })
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(FuseDirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.for_each_entry(handle, offset, |next, name, entry| {
            let dirent = |ino| FuseDirEntry {
                ino,
                offset: next,
                type_: dirent_type(entry.map(|e| &e.node)),
                name,
            };
            let Some(entry) = entry else {
                // "." and "..": inode 0 tells the kernel no lookup is counted.
                return Ok(add_entry(dirent(inode), Entry::default())? > 0);
            };
            let Ok(ino) = self.inodes.lookup(inode, &entry.name, &entry.node) else {
                // No inode to spare: a plain entry, no lookup counted.
                LimitCounters::hit(
                    &self.limit_counters.inodes_refused,
                    "inodes",
                    self.config.limits.max_inodes,
                );
                return Ok(add_entry(dirent(UNKNOWN_INO), Entry::default())? > 0);
            };
            let kind = InodeKind::Node(entry.node.clone());
            match add_entry(dirent(ino), self.entry(ino, &kind)) {
                Ok(0) => {
                    // The buffer is full: this entry was not sent after all.
                    self.inodes.forget(ino, 1);
                    Ok(false)
                }
                Ok(_) => Ok(true),
                Err(e) => {
                    self.inodes.forget(ino, 1);
                    Err(e)
                }
            }
        })
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        self.open_dirs.lock().remove(&handle);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        // SAFETY: statvfs64 is plain old data; all-zero is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = 65536;
        st.f_frsize = 4096;
        st.f_namemax = 255;
        st.f_flag = libc::ST_RDONLY | libc::ST_NOSUID | libc::ST_NODEV;
        Ok(st)
    }

    fn access(&self, _ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let kind = self.kind(inode)?;
        let mask = mask as i32;
        if mask & libc::W_OK != 0 {
            return read_only();
        }
        if mask & libc::X_OK != 0 {
            if let InodeKind::Node(Node::File {
                executable: false, ..
            }) = kind
            {
                return Err(errno(libc::EACCES));
            }
        }
        Ok(())
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        xattr::get(&self.xattrs(inode)?, name.to_bytes(), size)
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        xattr::list(&self.xattrs(inode)?, size)
    }

    // Everything below would modify the store: refused in one place.

    fn setattr(
        &self,
        _: &Context,
        _: u64,
        _: stat64,
        _: Option<u64>,
        _: fuse_backend_rs::abi::fuse_abi::SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        read_only()
    }
    fn symlink(&self, _: &Context, _: &CStr, _: u64, _: &CStr) -> io::Result<Entry> {
        read_only()
    }
    fn mknod(&self, _: &Context, _: u64, _: &CStr, _: u32, _: u32, _: u32) -> io::Result<Entry> {
        read_only()
    }
    fn mkdir(&self, _: &Context, _: u64, _: &CStr, _: u32, _: u32) -> io::Result<Entry> {
        read_only()
    }
    fn unlink(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        read_only()
    }
    fn rmdir(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        read_only()
    }
    fn rename(&self, _: &Context, _: u64, _: &CStr, _: u64, _: &CStr, _: u32) -> io::Result<()> {
        read_only()
    }
    fn link(&self, _: &Context, _: u64, _: u64, _: &CStr) -> io::Result<Entry> {
        read_only()
    }
    fn create(
        &self,
        _: &Context,
        _: u64,
        _: &CStr,
        _: fuse_backend_rs::abi::fuse_abi::CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        read_only()
    }
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _: &Context,
        _: u64,
        _: u64,
        _: &mut dyn ZeroCopyReader,
        _: u32,
        _: u64,
        _: Option<u64>,
        _: bool,
        _: u32,
        _: u32,
    ) -> io::Result<usize> {
        read_only()
    }
    fn fallocate(&self, _: &Context, _: u64, _: u64, _: u32, _: u64, _: u64) -> io::Result<()> {
        read_only()
    }
    fn setxattr(&self, _: &Context, _: u64, _: &CStr, _: &[u8], _: u32) -> io::Result<()> {
        read_only()
    }
    fn removexattr(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
        read_only()
    }
    /// ENOSYS: a close of a read-only file has nothing to write back, and
    /// at this answer the kernel stops sending FLUSH on this mount (it then
    /// ends every close(2) with success at once), one request fewer per
    /// close: a boot opens thousands of small files.
    fn flush(&self, _: &Context, _: u64, _: u64, _: u64) -> io::Result<()> {
        Err(errno(libc::ENOSYS))
    }
    fn fsync(&self, _: &Context, _: u64, _: bool, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn fsyncdir(&self, _: &Context, _: u64, _: bool, _: u64) -> io::Result<()> {
        Ok(())
    }
}
