//! A minimal vhost-user frontend, i.e. the VMM side, for tests that talk to
//! the daemon without QEMU: guest memory in a memfd shared with the backend,
//! split virtqueues laid out by hand, eventfds for kick and call. Being the
//! guest driver ourselves lets a test put any descriptor chain, however
//! broken, on a queue and see exactly what the device returns for it.

use std::fs::File;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest-physical start of the one memory region. Not 0, so that small
/// addresses are outside guest memory and translation is really exercised.
pub const MEM_BASE: u64 = 0x1000_0000;
pub const MEM_SIZE: usize = 4 << 20;
pub const QUEUE_SIZE: u16 = 16;
/// Each queue's rings live in one page at `MEM_BASE + index * RING_PAGE`.
const RING_PAGE: u64 = 0x1000;
/// Each queue's buffers live at `MEM_BASE + (index + 1) * DATA_AREA`.
const DATA_AREA: u64 = 1 << 20;
/// Filled into writable buffers before submitting, so that what the device
/// wrote can be told from what it did not.
pub const POISON: u8 = 0xA5;

/// One buffer of a descriptor chain.
pub enum Buf {
    /// Device-readable, holding these bytes (the request).
    Readable(Vec<u8>),
    /// Device-writable room of this many bytes (for the reply).
    Writable(u32),
    /// A descriptor taken as given: wherever it points, nothing is copied.
    Raw { addr: u64, len: u32, writable: bool },
}

/// What the device returned in the used ring for one chain.
pub struct Used {
    /// The used element's length (its id is checked to be the head).
    pub len: u32,
    /// The chain's `Buf::Writable` buffers afterwards, concatenated.
    pub written: Vec<u8>,
}

struct Queue {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    data: GuestAddress,
    kick: EventFd,
    call: EventFd,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    next_desc: u16,
}

/// A connected frontend with its queues set up and enabled.
pub struct Vmm {
    // Dropping it closes the socket, which is how a VMM disconnects.
    _frontend: Frontend,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    event_idx: bool,
    /// `None`: every request is kicked at once. Otherwise requests are
    /// made available without a kick, as to a device that said it polls,
    /// and kicked only if no reply came within this long.
    pub kick_after: Option<Duration>,
    /// How many requests needed that late kick.
    pub late_kicks: u32,
}

fn host_address(mem: &GuestMemoryMmap, addr: GuestAddress) -> u64 {
    mem.get_host_address(addr).expect("address in guest memory") as u64
}

impl Vmm {
    /// Negotiates like QEMU does and brings up `num_queues` queues.
    pub fn connect(socket: &Path, num_queues: usize, event_idx: bool) -> Self {
        let mem = shared_memory();
        let mut frontend = Frontend::connect(socket, num_queues as u64).expect("connecting");
        frontend.set_owner().expect("SET_OWNER");

        let offered = frontend.get_features().expect("GET_FEATURES");
        let protocol_features = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let mut features =
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | protocol_features;
        if event_idx {
            features |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        assert_eq!(offered & features, features, "backend offers {offered:#x}");

        let wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        let protocol = frontend
            .get_protocol_features()
            .expect("GET_PROTOCOL_FEATURES");
        assert!(protocol.contains(wanted), "backend offers {protocol:?}");
        frontend
            .set_protocol_features(wanted)
            .expect("SET_PROTOCOL_FEATURES");
        // From here on the backend acknowledges every request, so a request
        // it rejects fails here instead of later in a confusing way.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        assert_eq!(
            frontend.get_queue_num().expect("GET_QUEUE_NUM"),
            num_queues as u64
        );
        frontend.set_features(features).expect("SET_FEATURES");

        let region = mem.iter().next().expect("one region");
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).expect("region info");
        frontend.set_mem_table(&[info]).expect("SET_MEM_TABLE");

        let mut queues = Vec::new();
        for index in 0..num_queues {
            let rings = MEM_BASE + index as u64 * RING_PAGE;
            let queue = Queue {
                desc: GuestAddress(rings),
                avail: GuestAddress(rings + 0x400),
                used: GuestAddress(rings + 0x800),
                data: GuestAddress(MEM_BASE + (index as u64 + 1) * DATA_AREA),
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
                next_avail: Wrapping(0),
                next_used: Wrapping(0),
                next_desc: 0,
            };
            // Ring addresses are given in the VMM's address space.
            let config = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: host_address(&mem, queue.desc),
                used_ring_addr: host_address(&mem, queue.used),
                avail_ring_addr: host_address(&mem, queue.avail),
                log_addr: None,
            };
            frontend
                .set_vring_num(index, QUEUE_SIZE)
                .expect("SET_VRING_NUM");
            frontend.set_vring_base(index, 0).expect("SET_VRING_BASE");
            frontend
                .set_vring_addr(index, &config)
                .expect("SET_VRING_ADDR");
            frontend
                .set_vring_kick(index, &queue.kick)
                .expect("SET_VRING_KICK");
            frontend
                .set_vring_call(index, &queue.call)
                .expect("SET_VRING_CALL");
            queues.push(queue);
        }
        for index in 0..num_queues {
            frontend
                .set_vring_enable(index, true)
                .expect("SET_VRING_ENABLE");
        }
        Self {
            _frontend: frontend,
            mem,
            queues,
            event_idx,
            kick_after: None,
            late_kicks: 0,
        }
    }

    /// Puts `bufs` on `queue` as one chain, waits (at most `timeout`) for
    /// the device to return it and interrupt us, and returns what it used.
    pub fn call(&mut self, queue: usize, bufs: &[Buf], timeout: Duration) -> Used {
        self.call_chain(queue, bufs, false, timeout)
    }

    /// Like [`Vmm::call`], but the last descriptor's `next` points back to
    /// the head: a chain that never ends.
    pub fn call_looped(&mut self, queue: usize, bufs: &[Buf], timeout: Duration) -> Used {
        self.call_chain(queue, bufs, true, timeout)
    }

    /// Publishes an available index `ahead` entries past what was made
    /// available, and kicks: a driver bug the device has to survive. The
    /// next [`Vmm::call`] writes a sane index again.
    pub fn publish_bogus_avail_idx(&mut self, queue: usize, ahead: u16) {
        let q = &mut self.queues[queue];
        let idx = q.next_avail + Wrapping(ahead);
        fence(Ordering::SeqCst);
        self.mem
            .store(idx.0, q.avail.unchecked_add(2), Ordering::Release)
            .unwrap();
        fence(Ordering::SeqCst);
        q.kick.write(1).expect("kick");
    }

    /// Puts one chain on `queue` through an indirect descriptor table: the
    /// `request`, then `copies` writable descriptors that all point at the
    /// same `reply_len` bytes, so the device sees `copies * reply_len`
    /// bytes of room backed by far less memory. Returns the used length.
    pub fn call_aliased_indirect(
        &mut self,
        queue: usize,
        request: &[u8],
        reply_len: u32,
        copies: u16,
        timeout: Duration,
    ) -> u32 {
        let mem = &self.mem;
        let q = &mut self.queues[queue];
        let request_addr = q.data;
        mem.write_slice(request, request_addr).unwrap();
        let reply_addr = GuestAddress((q.data.0 + request.len() as u64 + 4095) & !4095);
        let table = GuestAddress(reply_addr.0 + u64::from(reply_len));
        let entries = u64::from(copies) + 1;
        assert!(
            table.0 + entries * 16 <= q.data.0 + DATA_AREA,
            "indirect table too large"
        );
        let write_desc = |index: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let desc = descriptor(addr, len, flags, next);
            mem.write_slice(&desc, table.unchecked_add(index * 16))
                .unwrap();
        };
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        write_desc(0, request_addr.0, request.len() as u32, next, 1);
        for i in 1..entries {
            let last = i + 1 == entries;
            let flags = if last { write } else { write | next };
            write_desc(i, reply_addr.0, reply_len, flags, (i + 1) as u16);
        }
        // The head descriptor in the ring refers to the table.
        let head = q.next_desc;
        q.next_desc = (q.next_desc + 1) % QUEUE_SIZE;
        let desc = descriptor(
            table.0,
            (entries * 16) as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        mem.write_slice(&desc, q.desc.unchecked_add(u64::from(head) * 16))
            .unwrap();
        let kicks = Kicks {
            after: self.kick_after,
            late: &mut self.late_kicks,
        };
        let (used_head, len) = publish_and_wait(mem, q, head, self.event_idx, kicks, timeout);
        assert_eq!(used_head, head, "used element is not the chain we sent");
        len
    }

    fn call_chain(&mut self, queue: usize, bufs: &[Buf], looped: bool, timeout: Duration) -> Used {
        let mem = &self.mem;
        let q = &mut self.queues[queue];
        assert!(!bufs.is_empty() && bufs.len() <= usize::from(QUEUE_SIZE));

        // Descriptors are taken round-robin: only one chain is in flight.
        let ids: Vec<u16> = (0..bufs.len() as u16)
            .map(|i| (q.next_desc + i) % QUEUE_SIZE)
            .collect();
        q.next_desc = (q.next_desc + bufs.len() as u16) % QUEUE_SIZE;
        let mut free = q.data.0;
        let mut alloc = |len: u32| {
            let addr = free;
            free = (free + u64::from(len) + 7) & !7;
            assert!(free <= q.data.0 + DATA_AREA, "test buffers too large");
            GuestAddress(addr)
        };
        let mut writable = Vec::new();
        for (i, buf) in bufs.iter().enumerate() {
            let (addr, len, mut flags) = match buf {
                Buf::Readable(bytes) => {
                    let addr = alloc(bytes.len() as u32);
                    mem.write_slice(bytes, addr).unwrap();
                    (addr.0, bytes.len() as u32, 0)
                }
                Buf::Writable(len) => {
                    let addr = alloc(*len);
                    mem.write_slice(&vec![POISON; *len as usize], addr).unwrap();
                    writable.push((addr, *len as usize));
                    (addr.0, *len, VRING_DESC_F_WRITE as u16)
                }
                Buf::Raw {
                    addr,
                    len,
                    writable,
                } => (
                    *addr,
                    *len,
                    if *writable {
                        VRING_DESC_F_WRITE as u16
                    } else {
                        0
                    },
                ),
            };
            let next = match ids.get(i + 1) {
                Some(next) => Some(*next),
                None if looped => Some(ids[0]),
                None => None,
            };
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = descriptor(addr, len, flags, next.unwrap_or(0));
            mem.write_slice(&desc, q.desc.unchecked_add(u64::from(ids[i]) * 16))
                .unwrap();
        }

        let kicks = Kicks {
            after: self.kick_after,
            late: &mut self.late_kicks,
        };
        let (head, len) = publish_and_wait(mem, q, ids[0], self.event_idx, kicks, timeout);
        let mut written = Vec::new();
        for (addr, len) in writable {
            let mut buf = vec![0u8; len];
            mem.read_slice(&mut buf, addr).unwrap();
            written.extend_from_slice(&buf);
        }
        assert_eq!(head, ids[0], "used element is not the chain we sent");
        Used { len, written }
    }
}

/// One split-ring descriptor:
/// `struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }`.
fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut desc = [0u8; 16];
    desc[0..8].copy_from_slice(&addr.to_le_bytes());
    desc[8..12].copy_from_slice(&len.to_le_bytes());
    desc[12..14].copy_from_slice(&flags.to_le_bytes());
    desc[14..16].copy_from_slice(&next.to_le_bytes());
    desc
}

/// When to kick, and the count of late kicks (see [`Vmm::kick_after`]).
struct Kicks<'a> {
    after: Option<Duration>,
    late: &'a mut u32,
}

/// Makes the chain at `head` available, kicks the device (at once, or
/// late if it did not answer by itself) and waits for the used element
/// (see [`wait_used`]).
fn publish_and_wait(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    head: u16,
    event_idx: bool,
    kicks: Kicks,
    timeout: Duration,
) -> (u16, u32) {
    // struct virtq_avail { le16 flags; le16 idx; le16 ring[N]; le16 used_event; }
    let slot = u64::from(q.next_avail.0 % QUEUE_SIZE);
    mem.write_obj(head, q.avail.unchecked_add(4 + 2 * slot))
        .unwrap();
    if event_idx {
        // Interrupt us as soon as the used index moves past this.
        let used_event = q.avail.unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));
        mem.write_obj(q.next_used.0, used_event).unwrap();
    }
    q.next_avail += 1;
    fence(Ordering::SeqCst);
    mem.store(q.next_avail.0, q.avail.unchecked_add(2), Ordering::Release)
        .unwrap();
    fence(Ordering::SeqCst);
    let mut late_kick = match kicks.after {
        None => {
            q.kick.write(1).expect("kick");
            None
        }
        Some(after) => Some(Instant::now() + after),
    };
    let used = wait_used(mem, q, timeout, &mut late_kick);
    if late_kick.is_none() && kicks.after.is_some() {
        *kicks.late += 1;
    }
    used
}

/// Waits for the call eventfd, then takes the next used element; kicks
/// once `late_kick` has passed without one (and clears it). Panics after
/// `timeout`, saying whether the device used the chain at all.
fn wait_used(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    timeout: Duration,
    late_kick: &mut Option<Instant>,
) -> (u16, u32) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(at) = *late_kick {
            if Instant::now() >= at {
                q.kick.write(1).expect("kick");
                *late_kick = None;
            }
        }
        let until = late_kick.map_or(deadline, |at| at.min(deadline));
        let left = until.saturating_duration_since(Instant::now());
        let mut pollfd = libc::pollfd {
            fd: q.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pollfd, 1, left.as_millis() as libc::c_int) };
        let used_idx: u16 = mem
            .load(q.used.unchecked_add(2), Ordering::Acquire)
            .unwrap();
        if ready <= 0 {
            assert!(
                Instant::now() < deadline,
                "no interrupt within {timeout:?}: used index {used_idx}, expected past {}",
                q.next_used.0
            );
            continue;
        }
        // Signals coalesce; what counts is the used index.
        let _ = q.call.read();
        if used_idx == q.next_used.0 {
            continue;
        }
        // struct virtq_used { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[N]; }
        let slot = u64::from(q.next_used.0 % QUEUE_SIZE);
        let elem = q.used.unchecked_add(4 + 8 * slot);
        let id: u32 = mem.read_obj(elem).unwrap();
        let len: u32 = mem.read_obj(elem.unchecked_add(4)).unwrap();
        q.next_used += 1;
        assert_eq!(
            used_idx, q.next_used.0,
            "device used more chains than we sent"
        );
        return (u16::try_from(id).expect("used id fits a queue"), len);
    }
}

/// Guest memory a backend can map too: one memfd-backed region.
fn shared_memory() -> GuestMemoryMmap {
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vmm-guest-memory".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(MEM_BASE),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .expect("mapping guest memory")
}
