//! The guest kernel's FUSE driver, reduced to what the workloads send:
//! requests laid out as Linux's virtio-fs driver lays them out (the request
//! in one readable buffer, the reply header and body in writable ones), and
//! every reply checked (length, `unique`, errno) before it is believed.

use std::mem::size_of;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fuse_backend_rs::abi::fuse_abi::{
    Attr, AttrOut, BatchForgetIn, Direntplus, EntryOut, ForgetOne, FsOptions, GetattrIn, InHeader,
    InitIn, InitOut, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn,
};
use test_support::fuse_guest::try_decode;
use test_support::vhost_frontend::{Buf, Queue};
use vm_memory::ByteValued;

const OUT_HEADER: u32 = size_of::<OutHeader>() as u32;
/// Linux sends at most this many forgets in one BATCH_FORGET.
const FORGET_BATCH: usize = 256;

/// Reads a FUSE struct from the front of `bytes` (no alignment needed).
pub fn decode<T: ByteValued + Default>(bytes: &[u8]) -> Result<T> {
    try_decode(bytes).context("reply too short")
}

/// One directory entry of a READDIRPLUS reply.
pub struct DirEntry {
    pub name: Vec<u8>,
    pub entry: EntryOut,
    pub offset: u64,
}

/// The high-priority queue, where FORGETs go; shared by every session.
pub type Hiprio = Arc<Mutex<Queue>>;

/// A FUSE session on one request queue.
pub struct Session {
    queue: Queue,
    hiprio: Hiprio,
    /// How long a reply may take.
    timeout: Duration,
    unique: u64,
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Session {
    /// `id` keeps the `unique` numbers of sessions apart; `timeout` bounds
    /// every wait for a reply.
    pub fn new(queue: Queue, hiprio: Hiprio, id: u64, timeout: Duration) -> Self {
        Self {
            queue,
            hiprio,
            timeout,
            unique: id << 48,
            request: Vec::with_capacity(4096),
            reply: Vec::with_capacity(64 << 10),
        }
    }

    fn build(&mut self, opcode: Opcode, nodeid: u64, parts: &[&[u8]]) -> u64 {
        self.unique += 1;
        let len = size_of::<InHeader>() + parts.iter().map(|p| p.len()).sum::<usize>();
        let header = InHeader {
            len: len as u32,
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        self.request.clear();
        self.request.extend_from_slice(header.as_slice());
        for part in parts {
            self.request.extend_from_slice(part);
        }
        self.unique
    }

    /// Sends a request with room for a `room`-byte reply body and checks
    /// the reply header. Returns the body length; the body itself is only
    /// copied out when `copy` (into `self.reply`).
    fn call(
        &mut self,
        opcode: Opcode,
        nodeid: u64,
        parts: &[&[u8]],
        room: u32,
        copy: bool,
    ) -> Result<usize> {
        let unique = self.build(opcode, nodeid, parts);
        // The reply header and the body in writable buffers of their own,
        // as Linux's virtio-fs driver lays them out.
        let with_body = [
            Buf::Readable(self.request.as_slice()),
            Buf::Writable(OUT_HEADER),
            Buf::Writable(room),
        ];
        let chain = if room > 0 {
            &with_body[..]
        } else {
            &with_body[..2]
        };
        let used = self
            .queue
            .submit(chain, self.timeout)
            .with_context(|| format!("{opcode:?} of node {nodeid}"))?;
        ensure!(
            used >= OUT_HEADER && used <= OUT_HEADER + room,
            "{opcode:?}: used length {used} for {room} bytes of room"
        );
        let mut header = OutHeader::default();
        self.queue.read_reply(0, header.as_mut_slice())?;
        ensure!(
            header.len == used && header.unique == unique,
            "{opcode:?}: used length {used}, reply {header:?} for unique {unique}"
        );
        if header.error != 0 {
            bail!(
                "{opcode:?} of node {nodeid}: {}",
                std::io::Error::from_raw_os_error(-header.error)
            );
        }
        let body = (used - OUT_HEADER) as usize;
        if copy {
            self.reply.resize(body, 0);
            self.queue
                .read_reply(u64::from(OUT_HEADER), &mut self.reply)?;
        }
        Ok(body)
    }

    fn call_copy(&mut self, opcode: Opcode, nodeid: u64, parts: &[&[u8]]) -> Result<&[u8]> {
        let len = self.call(opcode, nodeid, parts, 4096, true)?;
        Ok(&self.reply[..len])
    }

    /// INIT as Linux sends it; returns the largest READ the daemon takes.
    pub fn init(&mut self) -> Result<u32> {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 << 10,
            flags: (FsOptions::ASYNC_READ | FsOptions::DO_READDIRPLUS | FsOptions::MAX_PAGES).bits()
                as u32,
        };
        let reply: InitOut = decode(self.call_copy(Opcode::Init, 0, &[init.as_slice()])?)?;
        ensure!(reply.major == 7, "FUSE major {}", reply.major);
        let pages = if reply.flags & FsOptions::MAX_PAGES.bits() as u32 != 0 {
            u32::from(reply.max_pages)
        } else {
            32
        };
        Ok((pages * 4096).min(self.queue.max_reply()))
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<EntryOut> {
        let entry: EntryOut = decode(self.call_copy(Opcode::Lookup, parent, &[name, b"\0"])?)?;
        ensure!(
            entry.nodeid != 0,
            "{} not found",
            String::from_utf8_lossy(name)
        );
        Ok(entry)
    }

    pub fn getattr(&mut self, nodeid: u64) -> Result<Attr> {
        let body = GetattrIn::default();
        let out: AttrOut = decode(self.call_copy(Opcode::Getattr, nodeid, &[body.as_slice()])?)?;
        ensure!(out.attr.ino != 0, "GETATTR of node {nodeid}: inode 0");
        Ok(out.attr)
    }

    fn open_as(&mut self, opcode: Opcode, nodeid: u64, flags: i32) -> Result<u64> {
        let body = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let out: OpenOut = decode(self.call_copy(opcode, nodeid, &[body.as_slice()])?)?;
        Ok(out.fh)
    }

    pub fn open(&mut self, nodeid: u64) -> Result<u64> {
        self.open_as(Opcode::Open, nodeid, libc::O_RDONLY)
    }

    pub fn opendir(&mut self, nodeid: u64) -> Result<u64> {
        self.open_as(Opcode::Opendir, nodeid, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    fn release_as(&mut self, opcode: Opcode, nodeid: u64, fh: u64) -> Result<()> {
        let body = ReleaseIn {
            fh,
            flags: libc::O_RDONLY as u32,
            ..Default::default()
        };
        self.call(opcode, nodeid, &[body.as_slice()], 0, false)?;
        Ok(())
    }

    pub fn release(&mut self, nodeid: u64, fh: u64) -> Result<()> {
        self.release_as(Opcode::Release, nodeid, fh)
    }

    pub fn releasedir(&mut self, nodeid: u64, fh: u64) -> Result<()> {
        self.release_as(Opcode::Releasedir, nodeid, fh)
    }

    /// READ of `size` bytes at `offset`; returns how many came back. With
    /// `copy`, the data is in [`Session::data`] afterwards (a guest copies
    /// it to user space too); without, it stays in guest memory.
    pub fn read(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        copy: bool,
    ) -> Result<usize> {
        let body = ReadIn {
            fh,
            offset,
            size,
            flags: libc::O_RDONLY as u32,
            ..Default::default()
        };
        self.call(Opcode::Read, nodeid, &[body.as_slice()], size, copy)
    }

    /// The body of the last reply copied out.
    pub fn data(&self) -> &[u8] {
        &self.reply
    }

    /// One READDIRPLUS of `size` bytes from `offset`: its entries, in
    /// order. An empty result is the end of the directory.
    pub fn readdirplus(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntry>> {
        let body = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let len = self.call(Opcode::Readdirplus, nodeid, &[body.as_slice()], size, true)?;
        parse_direntplus(&self.reply[..len])
    }

    /// Drops the daemon's lookup counts, in batches, on the hiprio queue.
    pub fn forget(&mut self, nodes: &[(u64, u64)]) -> Result<()> {
        for batch in nodes.chunks(FORGET_BATCH) {
            let head = BatchForgetIn {
                count: batch.len() as u32,
                dummy: 0,
            };
            let mut parts = vec![head.as_slice().to_vec()];
            for (nodeid, nlookup) in batch {
                let one = ForgetOne {
                    nodeid: *nodeid,
                    nlookup: *nlookup,
                };
                parts.push(one.as_slice().to_vec());
            }
            let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            self.build(Opcode::BatchForget, 0, &slices);
            let mut hiprio = self
                .hiprio
                .lock()
                .map_err(|_| anyhow::anyhow!("hiprio queue lock poisoned"))?;
            // No reply: Linux gives forgets no writable buffer.
            let used = hiprio.submit(&[Buf::Readable(self.request.as_slice())], self.timeout)?;
            ensure!(used == 0, "BATCH_FORGET: used length {used}");
        }
        Ok(())
    }
}

/// Splits a READDIRPLUS reply into its entries (each 8-byte aligned).
fn parse_direntplus(mut bytes: &[u8]) -> Result<Vec<DirEntry>> {
    let fixed = size_of::<Direntplus>();
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let plus: Direntplus = decode(bytes)?;
        let namelen = plus.dirent.namelen as usize;
        let end = fixed + namelen;
        ensure!(
            namelen > 0 && end <= bytes.len(),
            "malformed READDIRPLUS entry"
        );
        entries.push(DirEntry {
            name: bytes[fixed..end].to_vec(),
            entry: plus.entry_out,
            offset: plus.dirent.off,
        });
        bytes = &bytes[((end + 7) & !7).min(bytes.len())..];
    }
    Ok(entries)
}
