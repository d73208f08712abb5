//! The guest's side of FUSE over the test VMM, for the integration tests:
//! requests as a guest kernel writes them, and replies checked against what
//! the device wrote (a reply that breaks the protocol fails the test).

use std::mem::size_of;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    EntryOut, GetattrIn, InHeader, InitIn, Opcode, OutHeader, ReadIn, ReleaseIn,
};
use vm_memory::ByteValued;

use crate::vhost_frontend::{Buf, Used, Vmm, POISON};

pub const REQUESTS: usize = 1;
/// Generous: every request is answered from the local fixture store.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Reads a FUSE struct from the front of `bytes` (no alignment needed);
/// `None` if `bytes` is too short.
pub fn try_decode<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let mut value = T::default();
    value
        .as_mut_slice()
        .copy_from_slice(bytes.get(..size_of::<T>())?);
    Some(value)
}

/// As [`try_decode`], for replies the test has checked the length of.
pub fn decode<T: ByteValued + Default>(bytes: &[u8]) -> T {
    try_decode(bytes).unwrap_or_else(|| {
        panic!(
            "{} bytes, too short for a {}",
            bytes.len(),
            std::any::type_name::<T>()
        )
    })
}

/// A FUSE request as a guest kernel writes it: header, then `body`.
pub fn message(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (size_of::<InHeader>() + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        ..Default::default()
    };
    [header.as_slice(), body].concat()
}

pub fn with_nul(name: &str) -> Vec<u8> {
    [name.as_bytes(), b"\0"].concat()
}

/// How the device answered one request.
#[derive(Debug)]
pub enum Outcome {
    /// A reply: `error` is 0 or a negative errno.
    Reply { error: i32, body: Vec<u8> },
    /// Returned with used length 0 and nothing written.
    Dropped,
}

impl Outcome {
    pub fn ok(self) -> Vec<u8> {
        match self {
            Outcome::Reply { error: 0, body } => body,
            other => panic!("expected a successful reply, got {other:?}"),
        }
    }

    pub fn errno(self) -> i32 {
        match self {
            Outcome::Reply { error, .. } if error < 0 => -error,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
}

/// The guest's FUSE driver: numbers requests and checks every used element
/// against what the device actually wrote.
pub struct Guest {
    pub vmm: Vmm,
    pub unique: u64,
}

impl Guest {
    /// Connects to the device at `socket` (one request queue besides the
    /// high-priority one) and sends FUSE INIT with `flags`; returns the
    /// guest and INIT's reply body.
    pub fn connect(socket: &std::path::Path, flags: u32) -> (Self, Vec<u8>) {
        let mut guest = Guest {
            vmm: Vmm::connect(socket, 2, false),
            unique: 0,
        };
        let reply = guest.init(flags);
        (guest, reply)
    }

    /// FUSE INIT (protocol 7.31) with `flags`; its reply body.
    pub fn init(&mut self, flags: u32) -> Vec<u8> {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 << 10,
            flags,
        };
        self.request(REQUESTS, Opcode::Init, 0, init.as_slice())
            .ok()
    }

    /// RELEASE of handle `fh`.
    pub fn release(&mut self, nodeid: u64, fh: u64) -> Outcome {
        let body = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.request(REQUESTS, Opcode::Release, nodeid, body.as_slice())
    }

    pub fn next_unique(&mut self) -> u64 {
        self.unique += 1;
        self.unique
    }

    /// Sends a well-formed request with room for a 4 KiB reply.
    pub fn request(&mut self, queue: usize, opcode: Opcode, nodeid: u64, body: &[u8]) -> Outcome {
        let unique = self.next_unique();
        let chain = [
            Buf::Readable(message(opcode as u32, unique, nodeid, body)),
            Buf::Writable(4096),
        ];
        check(
            &format!("{opcode:?}"),
            unique,
            self.vmm.call(queue, &chain, TIMEOUT),
        )
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Outcome {
        self.request(REQUESTS, Opcode::Lookup, parent, &with_nul(name))
    }

    pub fn lookup_ok(&mut self, parent: u64, name: &str) -> EntryOut {
        let entry: EntryOut = decode(&self.lookup(parent, name).ok());
        assert_ne!(entry.nodeid, 0, "{name} not found");
        entry
    }

    pub fn getattr(&mut self, nodeid: u64) -> Outcome {
        let body = GetattrIn::default();
        self.request(REQUESTS, Opcode::Getattr, nodeid, body.as_slice())
    }

    pub fn read(&mut self, nodeid: u64, fh: u64) -> Outcome {
        let body = read_in(fh);
        self.request(REQUESTS, Opcode::Read, nodeid, body.as_slice())
    }

    /// READ of `size` bytes at `offset`, with room for all of them.
    pub fn read_at(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Outcome {
        let unique = self.next_unique();
        let body = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let chain = [
            Buf::Readable(message(
                Opcode::Read as u32,
                unique,
                nodeid,
                body.as_slice(),
            )),
            Buf::Writable(size + size_of::<OutHeader>() as u32),
        ];
        check("READ", unique, self.vmm.call(REQUESTS, &chain, TIMEOUT))
    }
}

pub fn read_in(fh: u64) -> ReadIn {
    ReadIn {
        fh,
        size: 4096,
        ..Default::default()
    }
}

/// Interprets a used element. The used length must be exactly what the
/// device wrote: 0 with the buffers untouched, or the length its reply
/// header gives, for this request's `unique`.
pub fn check(what: &str, unique: u64, used: Used) -> Outcome {
    if used.len == 0 {
        assert!(
            used.written.iter().all(|b| *b == POISON),
            "{what}: used length 0, but the device wrote {:?}",
            (used.written.len() >= size_of::<OutHeader>())
                .then(|| decode::<OutHeader>(&used.written))
        );
        return Outcome::Dropped;
    }
    let len = used.len as usize;
    assert!(
        len >= size_of::<OutHeader>() && len <= used.written.len(),
        "{what}: used length {len} with {} writable bytes",
        used.written.len()
    );
    let header: OutHeader = decode(&used.written);
    assert_eq!(
        header.len, used.len,
        "{what}: used length {len}, reply {header:?}"
    );
    assert_eq!(header.unique, unique, "{what}: reply to another request");
    assert!(header.error <= 0, "{what}: {header:?}");
    if header.error != 0 {
        assert_eq!(
            len,
            size_of::<OutHeader>(),
            "{what}: error reply with a body"
        );
    }
    Outcome::Reply {
        error: header.error,
        body: used.written[size_of::<OutHeader>()..len].to_vec(),
    }
}
