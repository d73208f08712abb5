//! FUSE requests from fuzz input, handed to the fuse-backend-rs server the
//! way each transport hands them over: as descriptor chains of a split
//! virtqueue over guest memory (vhost-user), or as one buffer (/dev/fuse).
//!
//! The input is a sequence of frames `[shape][length: u16 LE][request]`.
//! The shape byte decides how the request reaches the server:
//!
//! - bits 0-1: the request split over 1 to 4 readable descriptors;
//! - bits 2-4: the reply room, one of [`REPLY_ROOM`];
//! - bits 5-6: the reply room split over 1 to 4 writable descriptors;
//! - bit 7: the /dev/fuse transport instead of the virtqueue.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use fuse_backend_rs::abi::fuse_abi::Opcode;
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader, VirtioFsWriter};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};

/// Requests handled from one input at most, to bound a run's time.
pub const MAX_REQUESTS: usize = 64;
/// Reply room the shape byte chooses from: none, less than a header, a
/// header, small, a page, a READ's usual sizes, and a large one.
pub const REPLY_ROOM: [u32; 8] = [0, 8, 16, 256, 4096, 65536, 132 << 10, 1 << 20];

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
/// Where the queue's rings, the request and the reply live in guest memory.
const QUEUE_ADDR: u64 = 0;
const QUEUE_SIZE: u16 = 16;
const REQUEST_ADDR: u64 = 0x1000;
const REPLY_ADDR: u64 = 0x2_0000;
const GUEST_MEMORY: usize = 2 << 20;

/// One framed request.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub shape: u8,
    pub request: &'a [u8],
}

/// Splits fuzz input into frames; a truncated last frame takes what is left.
pub fn frames(mut data: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    std::iter::from_fn(move || {
        let (&[shape, lo, hi], rest) = data.split_first_chunk::<3>()?;
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(rest.len());
        let (request, rest) = rest.split_at(len);
        data = rest;
        Some(Frame { shape, request })
    })
    .take(MAX_REQUESTS)
}

/// The bytes of one frame, for seed inputs.
pub fn frame(shape: u8, request: &[u8]) -> Vec<u8> {
    let len = u16::try_from(request.len()).expect("a request under 64 KiB");
    let mut out = vec![shape];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(request);
    out
}

/// `total` split into `parts` lengths that add up to it.
fn split(total: u32, parts: u32) -> Vec<u32> {
    (0..parts)
        .map(|i| total * (i + 1) / parts - total * i / parts)
        .collect()
}

/// What the server answered to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The server refused the message itself (no FUSE reply).
    Refused,
    /// No reply, as for FORGET.
    Silent,
    /// A reply of `len` bytes with `error` (0 or a negative errno).
    Sent { len: usize, error: i32 },
}

/// Checks what the server says it wrote against the reply header there.
fn check_reply(written: usize, header: [u8; 16]) -> Reply {
    if written == 0 {
        return Reply::Silent;
    }
    assert!(written >= 16, "a reply of {written} bytes has no header");
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let error = i32::from_le_bytes(header[4..8].try_into().unwrap());
    assert_eq!(len as usize, written, "reply header length");
    assert!((-4095..=0).contains(&error), "reply error {error}");
    Reply::Sent {
        len: written,
        error,
    }
}

thread_local! {
    static MEMORY: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEMORY)]).expect("guest memory");
}

/// Hands one request to `server` over a virtqueue descriptor chain.
fn over_virtqueue<F: FileSystem + Sync>(server: &Server<F>, frame: Frame<'_>) -> Reply {
    MEMORY.with(|mem| {
        let readable = u32::from(frame.shape & 3) + 1;
        let room = REPLY_ROOM[usize::from(frame.shape >> 2 & 7)];
        let writable = if room == 0 {
            0
        } else {
            u32::from(frame.shape >> 5 & 3) + 1
        };

        mem.write_slice(frame.request, GuestAddress(REQUEST_ADDR))
            .expect("request fits the guest memory");
        let mut descriptors = Vec::new();
        let mut addr = REQUEST_ADDR;
        for len in split(frame.request.len() as u32, readable) {
            descriptors.push((addr, len, 0));
            addr += u64::from(len);
        }
        let mut addr = REPLY_ADDR;
        for len in split(room, writable) {
            descriptors.push((addr, len, VRING_DESC_F_WRITE));
            addr += u64::from(len);
        }
        let count = descriptors.len();
        let descriptors: Vec<RawDescriptor> = descriptors
            .into_iter()
            .enumerate()
            .map(|(i, (addr, len, flags))| {
                let next = if i + 1 < count { VRING_DESC_F_NEXT } else { 0 };
                SplitDescriptor::new(addr, len, flags | next, i as u16 + 1).into()
            })
            .collect();
        let queue = MockSplitQueue::create(mem, GuestAddress(QUEUE_ADDR), QUEUE_SIZE);
        let chain = queue
            .build_desc_chain(&descriptors)
            .expect("a chain within the queue");
        let (Ok(reader), Ok(writer)) = (
            Reader::from_descriptor_chain(mem, chain.clone()),
            VirtioFsWriter::new(mem, chain),
        ) else {
            return Reply::Refused;
        };
        let Ok(written) = server.handle_message(reader, writer.into(), None, None) else {
            return Reply::Refused;
        };
        let mut header = [0u8; 16];
        if written > 0 {
            mem.read_slice(&mut header, GuestAddress(REPLY_ADDR))
                .expect("reply header in guest memory");
        }
        check_reply(written, header)
    })
}

thread_local! {
    /// Where /dev/fuse replies go: a file read back after each request.
    static DEVICE: File = tempfile::tempfile().expect("a temporary file");
}

/// Takes what the server wrote to the device since the last call.
fn take_device_output(device: &File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut reader = device;
    reader.seek(SeekFrom::Start(0)).expect("seek");
    reader
        .read_to_end(&mut out)
        .expect("reading the device file");
    device.set_len(0).expect("truncating the device file");
    reader.seek(SeekFrom::Start(0)).expect("seek");
    out
}

/// Whether `request` is a FUSE_DESTROY (the opcode follows the length).
fn is_destroy(request: &[u8]) -> bool {
    request.get(4..8).is_some_and(|op| {
        u32::from_le_bytes(op.try_into().expect("4 bytes")) == Opcode::Destroy as u32
    })
}

/// Hands one request to `server` as /dev/fuse does: one buffer each way.
fn over_fuse_device<F: FileSystem + Sync>(server: &Server<F>, frame: Frame<'_>) -> Reply {
    DEVICE.with(|device| {
        let room = REPLY_ROOM[usize::from(frame.shape >> 2 & 7)] as usize;
        let mut request = frame.request.to_vec();
        let mut reply = vec![0u8; room];
        let Ok(reader) = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut request)) else {
            return Reply::Refused;
        };
        let Ok(writer) = FuseDevWriter::<()>::new(device.as_raw_fd(), &mut reply) else {
            return Reply::Refused;
        };
        let result = server.handle_message(reader, writer.into(), None, None);
        let out = take_device_output(device);
        let Ok(written) = result else {
            return Reply::Refused;
        };
        let mut header = [0u8; 16];
        let n = out.len().min(16);
        header[..n].copy_from_slice(&out[..n]);
        if written == 0 && is_destroy(frame.request) {
            // fuse-backend-rs writes DESTROY's reply (a bare success
            // header, which the kernel waits for) but counts it as 0 bytes,
            // as it does on the virtqueue, where it is reported as silent.
            let reply = check_reply(out.len(), header);
            assert_eq!(reply, Reply::Sent { len: 16, error: 0 }, "DESTROY reply");
            return Reply::Silent;
        }
        assert_eq!(out.len(), written, "bytes on the device");
        check_reply(written, header)
    })
}

/// Hands every request of `data` to `server`, in order, and says what it
/// answered to each.
pub fn serve<F: FileSystem + Sync>(server: &Server<F>, data: &[u8]) -> Vec<Reply> {
    frames(data)
        .map(|frame| {
            if frame.shape & 0x80 == 0 {
                over_virtqueue(server, frame)
            } else {
                over_fuse_device(server, frame)
            }
        })
        .collect()
}
