//! FUSE requests as the Linux kernel sends them (protocol 7.31+), built
//! from fuse-backend-rs's wire structures, for the FUSE target's seeds.

use fuse_backend_rs::abi::fuse_abi::{
    FlushIn, ForgetIn, GetattrIn, GetxattrIn, InHeader, InitIn, InitIn2, Opcode, OpenIn, ReadIn,
    ReleaseIn,
};
use vm_memory::ByteValued;

/// Builds requests with increasing `unique` numbers.
#[derive(Default)]
pub struct Requests {
    unique: u64,
}

impl Requests {
    /// A request of `opcode` on `node` with `body` after its header.
    pub fn request(&mut self, opcode: Opcode, node: u64, body: &[u8]) -> Vec<u8> {
        self.unique += 2;
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique: self.unique,
            nodeid: node,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let mut out = header.as_slice().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// INIT of a protocol 7.38 kernel offering every capability (with
    /// FUSE_INIT_EXT, so the second flags word follows).
    pub fn init(&mut self) -> Vec<u8> {
        let init = InitIn {
            major: 7,
            minor: 38,
            max_readahead: 128 << 10,
            flags: u32::MAX,
        };
        let mut body = init.as_slice().to_vec();
        body.extend_from_slice(InitIn2::default().as_slice());
        self.request(Opcode::Init, 0, &body)
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Vec<u8> {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        self.request(Opcode::Lookup, parent, &body)
    }

    pub fn forget(&mut self, node: u64, nlookup: u64) -> Vec<u8> {
        self.request(Opcode::Forget, node, ForgetIn { nlookup }.as_slice())
    }

    pub fn getattr(&mut self, node: u64) -> Vec<u8> {
        self.request(Opcode::Getattr, node, GetattrIn::default().as_slice())
    }

    pub fn readlink(&mut self, node: u64) -> Vec<u8> {
        self.request(Opcode::Readlink, node, &[])
    }

    pub fn open(&mut self, opcode: Opcode, node: u64) -> Vec<u8> {
        // O_RDONLY is 0.
        let open = OpenIn::default();
        self.request(opcode, node, open.as_slice())
    }

    /// READ, READDIR or READDIRPLUS of `size` bytes at `offset`.
    pub fn read(&mut self, opcode: Opcode, node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let read = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.request(opcode, node, read.as_slice())
    }

    pub fn flush(&mut self, node: u64, fh: u64) -> Vec<u8> {
        let flush = FlushIn {
            fh,
            ..Default::default()
        };
        self.request(Opcode::Flush, node, flush.as_slice())
    }

    /// RELEASE or RELEASEDIR.
    pub fn release(&mut self, opcode: Opcode, node: u64, fh: u64) -> Vec<u8> {
        let release = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.request(opcode, node, release.as_slice())
    }

    pub fn getxattr(&mut self, node: u64, name: &str, size: u32) -> Vec<u8> {
        let mut body = GetxattrIn { size, padding: 0 }.as_slice().to_vec();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        self.request(Opcode::Getxattr, node, &body)
    }

    pub fn listxattr(&mut self, node: u64, size: u32) -> Vec<u8> {
        let body = GetxattrIn { size, padding: 0 };
        self.request(Opcode::Listxattr, node, body.as_slice())
    }

    pub fn statfs(&mut self) -> Vec<u8> {
        self.request(Opcode::Statfs, 1, &[])
    }
}
