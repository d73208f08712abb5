//! The VMM's side of vhost-user: guest memory in a memfd the backend maps
//! too, one split virtqueue per queue laid out by hand, kick and call
//! eventfds. Each queue carries one request at a time, so a queue can move
//! to its own thread and needs no lock. Like Linux's virtio driver it uses
//! EVENT_IDX when offered (or honours NO_NOTIFY without it): it kicks only
//! when the device asked to be kicked, and asks for an interrupt for
//! every reply.

use std::fs::File;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest-physical start of guest memory (not 0, as in a real VM).
const MEM_BASE: u64 = 0x1000_0000;
/// Enough for three descriptors per chain, one chain in flight.
const QUEUE_SIZE: u16 = 16;
/// Each queue's rings live in one page at `MEM_BASE + index * RING_PAGE`.
const RING_PAGE: u64 = 0x1000;
const MAX_QUEUES: u64 = 64;
/// Room per queue for one request and its reply (a 1 MiB READ and more).
const DATA_AREA: u64 = 4 << 20;

/// One virtqueue with exactly one chain in flight at a time.
pub struct Queue {
    mem: Arc<GuestMemoryMmap>,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    data: GuestAddress,
    kick: EventFd,
    call: EventFd,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// Whether EVENT_IDX was negotiated.
    event_idx: bool,
    timeout: Duration,
}

/// A connected frontend; dropping it closes the socket (the VMM leaves).
pub struct Connection {
    _frontend: Frontend,
    pub queues: Vec<Queue>,
}

fn host_address(mem: &GuestMemoryMmap, addr: GuestAddress) -> Result<u64> {
    Ok(mem
        .get_host_address(addr)
        .context("ring address outside guest memory")? as u64)
}

impl Connection {
    /// Negotiates as QEMU does and brings up `1 + request_queues` queues
    /// (the high-priority queue first), or fewer if the backend offers
    /// fewer. `timeout` bounds every wait for a reply. EVENT_IDX is taken
    /// if offered and `event_idx`.
    pub fn connect(
        socket: &Path,
        request_queues: usize,
        timeout: Duration,
        event_idx: bool,
    ) -> Result<Self> {
        let wanted_queues = 1 + request_queues as u64;
        ensure!(
            wanted_queues <= MAX_QUEUES,
            "at most {} request queues",
            MAX_QUEUES - 1
        );
        let mut frontend = Frontend::connect(socket, wanted_queues)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        frontend.set_owner().context("SET_OWNER")?;

        let offered = frontend.get_features().context("GET_FEATURES")?;
        let features =
            (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        ensure!(
            offered & features == features,
            "backend offers features {offered:#x}"
        );
        let event_idx = event_idx && offered & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let features = features
            | if event_idx {
                1 << VIRTIO_RING_F_EVENT_IDX
            } else {
                0
            };
        let protocol = frontend
            .get_protocol_features()
            .context("GET_PROTOCOL_FEATURES")?;
        let wanted = protocol
            & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
        frontend
            .set_protocol_features(wanted)
            .context("SET_PROTOCOL_FEATURES")?;
        if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // A request the backend rejects then fails here, not later.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let num_queues = if wanted.contains(VhostUserProtocolFeatures::MQ) {
            frontend.get_queue_num().context("GET_QUEUE_NUM")?
        } else {
            2
        }
        .min(wanted_queues);
        ensure!(num_queues >= 2, "backend offers {num_queues} queues");
        frontend.set_features(features).context("SET_FEATURES")?;

        let mem = Arc::new(shared_memory(
            (MAX_QUEUES * RING_PAGE + num_queues * DATA_AREA) as usize,
        )?);
        let region = mem.iter().next().context("no memory region")?;
        let info = VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|e| anyhow::anyhow!("region info: {e:?}"))?;
        frontend.set_mem_table(&[info]).context("SET_MEM_TABLE")?;

        let mut queues = Vec::new();
        for index in 0..num_queues as usize {
            let rings = MEM_BASE + index as u64 * RING_PAGE;
            let queue = Queue {
                mem: mem.clone(),
                desc: GuestAddress(rings),
                avail: GuestAddress(rings + 0x400),
                used: GuestAddress(rings + 0x800),
                data: GuestAddress(MEM_BASE + MAX_QUEUES * RING_PAGE + index as u64 * DATA_AREA),
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
                next_avail: Wrapping(0),
                next_used: Wrapping(0),
                event_idx,
                timeout,
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
                .set_vring_kick(index, &queue.kick)
                .context("SET_VRING_KICK")?;
            frontend
                .set_vring_call(index, &queue.call)
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
        })
    }
}

impl Queue {
    /// The largest reply body one chain can carry.
    pub fn max_reply(&self) -> u32 {
        (DATA_AREA / 2) as u32
    }

    /// Sends `request` as one device-readable descriptor followed by
    /// device-writable descriptors of the sizes in `reply` (none for
    /// requests without a reply), kicks, and waits for the device to
    /// return the chain. Returns the used length; the reply bytes start at
    /// [`Queue::read_reply`] offset 0, contiguous across the descriptors.
    pub fn submit(&mut self, request: &[u8], reply: &[u32]) -> Result<u32> {
        ensure!(
            request.len() as u64 <= DATA_AREA / 2
                && reply.iter().map(|r| u64::from(*r)).sum::<u64>() <= DATA_AREA / 2
                && reply.len() < usize::from(QUEUE_SIZE),
            "request or reply too large for the queue's buffers"
        );
        let mem = &*self.mem;
        let request_addr = self.data;
        mem.write_slice(request, request_addr)?;
        let mut descriptors = vec![(request_addr.0, request.len() as u32, 0u16)];
        let mut at = self.reply_base().0;
        for len in reply {
            descriptors.push((at, *len, VRING_DESC_F_WRITE as u16));
            at += u64::from(*len);
        }
        let count = descriptors.len();
        for (i, (addr, len, mut flags)) in descriptors.into_iter().enumerate() {
            let next = if i + 1 < count {
                flags |= VRING_DESC_F_NEXT as u16;
                i as u16 + 1
            } else {
                0
            };
            // struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
            let mut desc = [0u8; 16];
            desc[0..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&desc, self.desc.unchecked_add(i as u64 * 16))?;
        }
        // struct virtq_avail { le16 flags; le16 idx; le16 ring[N]; le16 used_event; }
        let slot = u64::from(self.next_avail.0 % QUEUE_SIZE);
        mem.write_obj(0u16, self.avail.unchecked_add(4 + 2 * slot))?;
        if self.event_idx {
            // An interrupt for the next reply, as Linux asks for one when
            // it waits (virtqueue_enable_cb).
            mem.store(
                self.next_used.0,
                self.avail.unchecked_add(4 + 2 * u64::from(QUEUE_SIZE)),
                Ordering::Release,
            )?;
        }
        let old = self.next_avail;
        self.next_avail += 1;
        fence(Ordering::SeqCst);
        mem.store(
            self.next_avail.0,
            self.avail.unchecked_add(2),
            Ordering::Release,
        )?;
        fence(Ordering::SeqCst);
        if self.needs_kick(old)? {
            self.kick.write(1).context("kick")?;
        }
        self.wait_used()
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

    /// Copies reply bytes (from the first writable descriptor on) into `buf`.
    pub fn read_reply(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(buf, self.reply_base().unchecked_add(offset))?;
        Ok(())
    }

    fn reply_base(&self) -> GuestAddress {
        self.data.unchecked_add(DATA_AREA / 2)
    }

    /// Waits for the call eventfd, then takes the next used element.
    fn wait_used(&mut self) -> Result<u32> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let used_idx: u16 = self
                .mem
                .load(self.used.unchecked_add(2), Ordering::Acquire)?;
            if used_idx != self.next_used.0 {
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
                ensure!(id == 0, "device used descriptor {id}, not the chain's head");
                return Ok(len);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no reply within {:?}", self.timeout);
            }
            let mut pollfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let ready = unsafe { libc::poll(&mut pollfd, 1, left.as_millis().max(1) as i32) };
            if ready > 0 {
                // Signals coalesce; what counts is the used index.
                let _ = self.call.read();
            }
        }
    }
}

/// Guest memory the backend can map too: one memfd-backed region.
fn shared_memory(size: usize) -> Result<GuestMemoryMmap> {
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"loadgen-guest-memory".as_ptr(), libc::MFD_CLOEXEC) };
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
