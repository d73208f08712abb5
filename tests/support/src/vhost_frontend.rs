//! The VMM's side of vhost-user, for tools and tests that talk to the
//! daemon without QEMU: guest memory in a memfd the backend maps too, split
//! virtqueues laid out by hand, eventfds for kick and call.
//!
//! Being the guest driver ourselves lets a test put any descriptor chain,
//! however broken, on a queue and see exactly what the device returns for
//! it, and lets the load generator drive the device with nothing emulated
//! in the way. Each queue carries one chain at a time, so a queue can move
//! to its own thread and needs no lock.
//!
//! [`Connection`] negotiates as QEMU does and reports errors; [`Vmm`], the
//! tests' VMM on top of it, insists on every feature the tests rely on,
//! panics instead, and poisons reply buffers so that what the device wrote
//! can be told from what it did not.

use std::fs::File;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest-physical start of the one memory region. Not 0 (as it is in a
/// real VM), so that small addresses are outside guest memory and
/// translation is really exercised.
pub const MEM_BASE: u64 = 0x1000_0000;
/// Enough for three descriptors per chain, one chain in flight.
pub const QUEUE_SIZE: u16 = 16;
/// Queues, the high-priority one included, that guest memory has room for.
pub const MAX_QUEUES: usize = 64;
/// Each queue's rings live in one page at `MEM_BASE + index * RING_PAGE`.
const RING_PAGE: u64 = 0x1000;
/// Room per queue, after the rings of [`MAX_QUEUES`] queues: requests in
/// the first half, replies in the second (a 1 MiB READ and more).
const DATA_AREA: u64 = 4 << 20;
/// The protocol features taken when offered.
const PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);

/// One buffer of a descriptor chain.
pub enum Buf<B = Vec<u8>> {
    /// Device-readable, holding these bytes (the request).
    Readable(B),
    /// Device-writable room of this many bytes (for the reply).
    Writable(u32),
    /// A descriptor taken as given: wherever it points, nothing is copied.
    Raw { addr: u64, len: u32, writable: bool },
}

/// When a queue kicks the device for a request it made available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kick {
    /// At once, whatever the device asked.
    Always,
    /// Only if the device asked for it, as Linux's virtio driver does: with
    /// EVENT_IDX by its avail_event, without by not setting NO_NOTIFY.
    WhenAsked,
    /// Not at once, as to a device that said it polls: only if no reply
    /// came within this long (counted in [`Queue::late_kicks`]).
    Late(Duration),
}

/// What [`Connection::connect`] asks the backend for.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    /// Queues, the high-priority one first: 2 to [`MAX_QUEUES`]. Fewer are
    /// brought up if the backend offers fewer.
    pub queues: usize,
    /// VIRTIO_RING_F_EVENT_IDX, taken if offered.
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC, taken if offered.
    pub indirect_desc: bool,
    /// Every queue's [`Queue::kick`] to begin with.
    pub kick: Kick,
}

/// What the backend offered during the handshake.
#[derive(Clone, Copy, Debug)]
pub struct Offered {
    /// GET_FEATURES.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES.
    pub protocol_features: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM, or 2 without MQ.
    pub queues: u64,
}

/// A connected frontend with its queues set up and enabled; dropping it
/// closes the socket, which is how a VMM disconnects.
pub struct Connection {
    _frontend: Frontend,
    /// The high-priority queue first, then the request queues.
    pub queues: Vec<Queue>,
    pub offered: Offered,
    /// The virtio features set (SET_FEATURES).
    pub features: u64,
    mem_end: u64,
}

/// One split virtqueue with exactly one chain in flight at a time.
pub struct Queue {
    mem: Arc<GuestMemoryMmap>,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    data: GuestAddress,
    kick_event: EventFd,
    call_event: EventFd,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// Descriptors are taken round-robin, so chains start at different
    /// heads; only one chain is in flight.
    next_desc: u16,
    /// Whether EVENT_IDX was negotiated.
    event_idx: bool,
    pub kick: Kick,
    /// How many requests needed a [`Kick::Late`] kick.
    pub late_kicks: u32,
}

fn host_address(mem: &GuestMemoryMmap, addr: GuestAddress) -> Result<u64> {
    Ok(mem
        .get_host_address(addr)
        .context("ring address outside guest memory")? as u64)
}

impl Connection {
    /// Negotiates as QEMU does and brings up the queues of `wanted`, or as
    /// many as the backend offers if fewer (at least 2). VERSION_1 and
    /// PROTOCOL_FEATURES are required; everything else is taken if offered
    /// ([`Connection::offered`] says what was).
    pub fn connect(socket: &Path, wanted: Wanted) -> Result<Self> {
        ensure!(
            (2..=MAX_QUEUES).contains(&wanted.queues),
            "2 to {MAX_QUEUES} queues, the high-priority one included"
        );
        let wanted_queues = wanted.queues as u64;
        let mut frontend = Frontend::connect(socket, wanted_queues)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        frontend.set_owner().context("SET_OWNER")?;

        let offered_features = frontend.get_features().context("GET_FEATURES")?;
        let mut features =
            (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        ensure!(
            offered_features & features == features,
            "backend offers features {offered_features:#x}"
        );
        if wanted.indirect_desc {
            features |= offered_features & (1 << VIRTIO_RING_F_INDIRECT_DESC);
        }
        if wanted.event_idx {
            features |= offered_features & (1 << VIRTIO_RING_F_EVENT_IDX);
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let offered_protocol = frontend
            .get_protocol_features()
            .context("GET_PROTOCOL_FEATURES")?;
        let protocol = offered_protocol & PROTOCOL_FEATURES;
        frontend
            .set_protocol_features(protocol)
            .context("SET_PROTOCOL_FEATURES")?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // From here on the backend acknowledges every request, so a
            // request it rejects fails here instead of later in a
            // confusing way.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let offered_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            frontend.get_queue_num().context("GET_QUEUE_NUM")?
        } else {
            2
        };
        let num_queues = offered_queues.min(wanted_queues);
        ensure!(num_queues >= 2, "backend offers {num_queues} queues");
        frontend.set_features(features).context("SET_FEATURES")?;

        let size = MAX_QUEUES as u64 * RING_PAGE + num_queues * DATA_AREA;
        let mem = Arc::new(shared_memory(size as usize)?);
        let region = mem.iter().next().context("no memory region")?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|e| anyhow::anyhow!("region info: {e:?}"))?;
        frontend.set_mem_table(&[info]).context("SET_MEM_TABLE")?;

        let mut queues = Vec::new();
        for index in 0..num_queues as usize {
            let rings = MEM_BASE + index as u64 * RING_PAGE;
            let data = MEM_BASE + MAX_QUEUES as u64 * RING_PAGE + index as u64 * DATA_AREA;
            let queue = Queue {
                mem: mem.clone(),
                desc: GuestAddress(rings),
                avail: GuestAddress(rings + 0x400),
                used: GuestAddress(rings + 0x800),
                data: GuestAddress(data),
                kick_event: EventFd::new(EFD_NONBLOCK)?,
                call_event: EventFd::new(EFD_NONBLOCK)?,
                next_avail: Wrapping(0),
                next_used: Wrapping(0),
                next_desc: 0,
                event_idx,
                kick: wanted.kick,
                late_kicks: 0,
            };
            // Ring addresses are given in the VMM's own address space.
            let config = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: host_address(&mem, queue.desc)?,
                used_ring_addr: host_address(&mem, queue.used)?,
                avail_ring_addr: host_address(&mem, queue.avail)?,
                log_addr: None,
            };
            frontend
                .set_vring_num(index, QUEUE_SIZE)
                .context("SET_VRING_NUM")?;
            frontend
                .set_vring_base(index, 0)
                .context("SET_VRING_BASE")?;
            frontend
                .set_vring_addr(index, &config)
                .context("SET_VRING_ADDR")?;
            frontend
                .set_vring_kick(index, &queue.kick_event)
                .context("SET_VRING_KICK")?;
            frontend
                .set_vring_call(index, &queue.call_event)
                .context("SET_VRING_CALL")?;
            queues.push(queue);
        }
        for index in 0..num_queues as usize {
            frontend
                .set_vring_enable(index, true)
                .context("SET_VRING_ENABLE")?;
        }
        Ok(Self {
            _frontend: frontend,
            queues,
            offered: Offered {
                features: offered_features,
                protocol_features: offered_protocol,
                queues: offered_queues,
            },
            features,
            mem_end: MEM_BASE + size,
        })
    }

    /// The guest-physical address just past the end of guest memory.
    pub fn mem_end(&self) -> u64 {
        self.mem_end
    }
}

impl Queue {
    /// The largest reply one chain can carry (its writable buffers).
    pub fn max_reply(&self) -> u32 {
        (DATA_AREA / 2) as u32
    }

    /// Puts `chain` on the queue as one descriptor chain, kicks as
    /// [`Queue::kick`] says, and waits (at most `timeout`) for the device
    /// to return the chain and interrupt us. Returns the used length.
    /// `Readable` bytes are copied into the queue's request half;
    /// `Writable` buffers follow one another in its reply half, so the
    /// reply reads contiguously at [`Queue::read_reply`] offset 0.
    pub fn submit<B: AsRef<[u8]>>(&mut self, chain: &[Buf<B>], timeout: Duration) -> Result<u32> {
        self.submit_chain(chain, false, timeout)
    }

    /// Like [`Queue::submit`], but the last descriptor's `next` points
    /// back to the head: a chain that never ends.
    pub fn submit_looped<B: AsRef<[u8]>>(
        &mut self,
        chain: &[Buf<B>],
        timeout: Duration,
    ) -> Result<u32> {
        self.submit_chain(chain, true, timeout)
    }

    fn submit_chain<B: AsRef<[u8]>>(
        &mut self,
        chain: &[Buf<B>],
        looped: bool,
        timeout: Duration,
    ) -> Result<u32> {
        ensure!(
            !chain.is_empty() && chain.len() <= usize::from(QUEUE_SIZE),
            "a chain of {} buffers on a queue of {QUEUE_SIZE}",
            chain.len()
        );
        let ids = self.take_descriptors(chain.len() as u16);
        let mut request_at = self.data.0;
        let mut reply_at = self.reply_base().0;
        for (i, buf) in chain.iter().enumerate() {
            let (addr, len, mut flags) = match buf {
                Buf::Readable(bytes) => {
                    let bytes = bytes.as_ref();
                    let addr = request_at;
                    ensure!(
                        addr + bytes.len() as u64 <= self.reply_base().0,
                        "request too large for the queue's buffers"
                    );
                    self.mem.write_slice(bytes, GuestAddress(addr))?;
                    request_at = (addr + bytes.len() as u64 + 7) & !7;
                    (addr, bytes.len() as u32, 0)
                }
                Buf::Writable(len) => {
                    let addr = reply_at;
                    reply_at += u64::from(*len);
                    ensure!(
                        reply_at <= self.data.0 + DATA_AREA,
                        "reply too large for the queue's buffers"
                    );
                    (addr, *len, VRING_DESC_F_WRITE as u16)
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
            self.write_descriptor(
                self.desc,
                u64::from(ids[i]),
                addr,
                len,
                flags,
                next.unwrap_or(0),
            )?;
        }
        self.publish_and_wait(ids[0], timeout)
    }

    /// Puts one chain on the queue through an indirect descriptor table:
    /// the `request`, then `copies` writable descriptors that all point at
    /// the same `reply_len` bytes, so the device sees `copies * reply_len`
    /// bytes of room backed by far less memory. Returns the used length.
    pub fn submit_aliased_indirect(
        &mut self,
        request: &[u8],
        reply_len: u32,
        copies: u16,
        timeout: Duration,
    ) -> Result<u32> {
        let request_addr = self.data;
        ensure!(
            request.len() as u64 <= DATA_AREA / 2,
            "request too large for the queue's buffers"
        );
        self.mem.write_slice(request, request_addr)?;
        let reply_addr = self.reply_base();
        let table = reply_addr.unchecked_add(u64::from(reply_len));
        let entries = u64::from(copies) + 1;
        ensure!(
            table.0 + entries * 16 <= self.data.0 + DATA_AREA,
            "indirect table too large"
        );
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        self.write_descriptor(table, 0, request_addr.0, request.len() as u32, next, 1)?;
        for i in 1..entries {
            let last = i + 1 == entries;
            let flags = if last { write } else { write | next };
            self.write_descriptor(table, i, reply_addr.0, reply_len, flags, (i + 1) as u16)?;
        }
        // The head descriptor in the ring refers to the table.
        let head = self.take_descriptors(1)[0];
        let indirect = VRING_DESC_F_INDIRECT as u16;
        self.write_descriptor(
            self.desc,
            u64::from(head),
            table.0,
            (entries * 16) as u32,
            indirect,
            0,
        )?;
        self.publish_and_wait(head, timeout)
    }

    /// Publishes an available index `ahead` entries past what was made
    /// available, and kicks: a driver bug the device has to survive. The
    /// next request writes a sane index again.
    pub fn publish_bogus_avail_idx(&mut self, ahead: u16) -> Result<()> {
        let idx = self.next_avail + Wrapping(ahead);
        fence(Ordering::SeqCst);
        self.mem
            .store(idx.0, self.avail.unchecked_add(2), Ordering::Release)?;
        fence(Ordering::SeqCst);
        self.kick_event.write(1).context("kick")?;
        Ok(())
    }

    /// Fills the first `len` bytes of the reply half with `byte`.
    pub fn fill_reply(&self, byte: u8, len: usize) -> Result<()> {
        ensure!(len as u64 <= DATA_AREA / 2, "fill past the reply half");
        self.mem.write_slice(&vec![byte; len], self.reply_base())?;
        Ok(())
    }

    /// Copies reply bytes (from the first writable buffer on) into `buf`.
    pub fn read_reply(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(buf, self.reply_base().unchecked_add(offset))?;
        Ok(())
    }

    fn reply_base(&self) -> GuestAddress {
        self.data.unchecked_add(DATA_AREA / 2)
    }

    /// The next `count` descriptor indices, round-robin.
    fn take_descriptors(&mut self, count: u16) -> Vec<u16> {
        let ids = (0..count)
            .map(|i| (self.next_desc + i) % QUEUE_SIZE)
            .collect();
        self.next_desc = (self.next_desc + count) % QUEUE_SIZE;
        ids
    }

    /// Writes entry `index` of the descriptor table at `table`:
    /// `struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }`.
    fn write_descriptor(
        &self,
        table: GuestAddress,
        index: u64,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&addr.to_le_bytes());
        desc[8..12].copy_from_slice(&len.to_le_bytes());
        desc[12..14].copy_from_slice(&flags.to_le_bytes());
        desc[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&desc, table.unchecked_add(index * 16))?;
        Ok(())
    }

    /// Makes the chain at `head` available, kicks (see [`Kick`]) and waits
    /// for the used element, which must be that chain. Returns its length.
    fn publish_and_wait(&mut self, head: u16, timeout: Duration) -> Result<u32> {
        // struct virtq_avail { le16 flags; le16 idx; le16 ring[N]; le16 used_event; }
        let slot = u64::from(self.next_avail.0 % QUEUE_SIZE);
        self.mem
            .write_obj(head, self.avail.unchecked_add(4 + 2 * slot))?;
        if self.event_idx {
            // An interrupt for the next reply, as Linux asks for one when
            // it waits (virtqueue_enable_cb).
            self.mem.store(
                self.next_used.0,
                self.avail.unchecked_add(4 + 2 * u64::from(QUEUE_SIZE)),
                Ordering::Release,
            )?;
        }
        let old = self.next_avail;
        self.next_avail += 1;
        fence(Ordering::SeqCst);
        self.mem.store(
            self.next_avail.0,
            self.avail.unchecked_add(2),
            Ordering::Release,
        )?;
        fence(Ordering::SeqCst);
        let mut late_kick = None;
        match self.kick {
            Kick::Always => self.kick_event.write(1).context("kick")?,
            Kick::WhenAsked => {
                if self.needs_kick(old)? {
                    self.kick_event.write(1).context("kick")?;
                }
            }
            Kick::Late(after) => late_kick = Some(Instant::now() + after),
        }
        let late = late_kick.is_some();
        let (id, len) = self.wait_used(timeout, &mut late_kick)?;
        if late && late_kick.is_none() {
            self.late_kicks += 1;
        }
        ensure!(
            id == u32::from(head),
            "device used descriptor {id}, not the chain's head {head}"
        );
        Ok(len)
    }

    /// Whether the device wants a kick for the requests after `old`, as
    /// Linux's virtqueue_kick_prepare decides: with EVENT_IDX, if the
    /// device's avail_event lies in `old..next_avail`; without, unless the
    /// device set NO_NOTIFY (it is looking at the ring anyway).
    fn needs_kick(&self, old: Wrapping<u16>) -> Result<bool> {
        // struct virtq_used { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[N]; le16 avail_event; }
        if self.event_idx {
            let avail_event: u16 = self.mem.load(
                self.used.unchecked_add(4 + 8 * u64::from(QUEUE_SIZE)),
                Ordering::Acquire,
            )?;
            let new = self.next_avail;
            Ok(new - Wrapping(avail_event) - Wrapping(1) < new - old)
        } else {
            let flags: u16 = self.mem.load(self.used, Ordering::Acquire)?;
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// Waits for the call eventfd, then takes the next used element (its
    /// id and length): a used element without an interrupt does not count,
    /// as for a driver that sleeps until it is interrupted. Kicks once
    /// `late_kick` has passed (and clears it). Fails after `timeout`,
    /// saying whether the device used the chain at all.
    fn wait_used(
        &mut self,
        timeout: Duration,
        late_kick: &mut Option<Instant>,
    ) -> Result<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = *late_kick {
                if Instant::now() >= at {
                    self.kick_event.write(1).context("kick")?;
                    *late_kick = None;
                }
            }
            let until = late_kick.map_or(deadline, |at| at.min(deadline));
            let left = until.saturating_duration_since(Instant::now());
            // Rounded up: never wake before `until`, never spin.
            let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            let mut pollfd = libc::pollfd {
                fd: self.call_event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
            let used_idx: u16 = self
                .mem
                .load(self.used.unchecked_add(2), Ordering::Acquire)?;
            if ready <= 0 {
                ensure!(
                    Instant::now() < deadline,
                    "no interrupt within {timeout:?}: used index {used_idx}, expected past {}",
                    self.next_used.0
                );
                continue;
            }
            // Signals coalesce; what counts is the used index.
            let _ = self.call_event.read();
            if used_idx == self.next_used.0 {
                continue;
            }
            // struct virtq_used { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[N]; }
            let slot = u64::from(self.next_used.0 % QUEUE_SIZE);
            let elem = self.used.unchecked_add(4 + 8 * slot);
            let id: u32 = self.mem.read_obj(elem)?;
            let len: u32 = self.mem.read_obj(elem.unchecked_add(4))?;
            self.next_used += 1;
            ensure!(
                used_idx == self.next_used.0,
                "device used more chains than were sent"
            );
            return Ok((id, len));
        }
    }
}

/// Guest memory the backend can map too: one memfd-backed region.
fn shared_memory(size: usize) -> Result<GuestMemoryMmap> {
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vmm-guest-memory".as_ptr(), libc::MFD_CLOEXEC) };
    ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(MEM_BASE),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .context("mapping guest memory")
}

/// Filled into writable buffers before submitting, so that what the device
/// wrote can be told from what it did not.
pub const POISON: u8 = 0xA5;

/// What the device returned in the used ring for one chain.
pub struct Used {
    /// The used element's length (its id is checked to be the head).
    pub len: u32,
    /// The chain's `Buf::Writable` buffers afterwards, concatenated.
    pub written: Vec<u8>,
}

/// The tests' VMM: a [`Connection`] that must get everything the tests
/// rely on (the queue count asked for, MQ, REPLY_ACK, CONFIGURE_MEM_SLOTS,
/// INDIRECT_DESC, and EVENT_IDX if asked), kicks every request at once
/// unless a queue's [`Queue::kick`] is changed, poisons reply room, and
/// panics on any failure.
pub struct Vmm {
    conn: Connection,
}

/// The result, or a panic with the whole error.
fn or_panic<T>(result: Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

impl Vmm {
    /// Negotiates like QEMU does and brings up `num_queues` queues.
    pub fn connect(socket: &Path, num_queues: usize, event_idx: bool) -> Self {
        let wanted = Wanted {
            queues: num_queues,
            event_idx,
            indirect_desc: true,
            kick: Kick::Always,
        };
        let conn = or_panic(Connection::connect(socket, wanted));
        let offered = conn.offered;
        let mut features = 1 << VIRTIO_RING_F_INDIRECT_DESC;
        if event_idx {
            features |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        assert_eq!(
            offered.features & features,
            features,
            "backend offers {:#x}",
            offered.features
        );
        assert!(
            offered.protocol_features.contains(PROTOCOL_FEATURES),
            "backend offers {:?}",
            offered.protocol_features
        );
        assert_eq!(offered.queues, num_queues as u64, "GET_QUEUE_NUM");
        Self { conn }
    }

    /// Queue `index`, e.g. to change its [`Queue::kick`].
    pub fn queue(&mut self, index: usize) -> &mut Queue {
        &mut self.conn.queues[index]
    }

    /// The guest-physical address just past the end of guest memory.
    pub fn mem_end(&self) -> u64 {
        self.conn.mem_end()
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

    fn call_chain(&mut self, queue: usize, bufs: &[Buf], looped: bool, timeout: Duration) -> Used {
        let q = self.queue(queue);
        let room: usize = bufs
            .iter()
            .map(|buf| match buf {
                Buf::Writable(len) => *len as usize,
                _ => 0,
            })
            .sum();
        or_panic(q.fill_reply(POISON, room));
        let len = or_panic(if looped {
            q.submit_looped(bufs, timeout)
        } else {
            q.submit(bufs, timeout)
        });
        let mut written = vec![0u8; room];
        or_panic(q.read_reply(0, &mut written));
        Used { len, written }
    }

    /// See [`Queue::publish_bogus_avail_idx`].
    pub fn publish_bogus_avail_idx(&mut self, queue: usize, ahead: u16) {
        or_panic(self.queue(queue).publish_bogus_avail_idx(ahead));
    }

    /// See [`Queue::submit_aliased_indirect`].
    pub fn call_aliased_indirect(
        &mut self,
        queue: usize,
        request: &[u8],
        reply_len: u32,
        copies: u16,
        timeout: Duration,
    ) -> u32 {
        or_panic(
            self.queue(queue)
                .submit_aliased_indirect(request, reply_len, copies, timeout),
        )
    }
}
