//! The vhost-user transport: takes FUSE requests off the virtqueues the VMM
//! shares with us, hands them to the FUSE server, and returns the replies.
//! It knows nothing about the store; the filesystem knows nothing about
//! virtqueues.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use std::mem::size_of;

use crate::queue_poll::PollWindow;
use crate::request_guard::{note_panic, serve_or_exit, RequestGuard};
use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringState, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;
type Vring = VringRwLock<Memory>;
type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>;
/// The FUSE server of a filesystem, every request answered even on a panic.
type FsServer<F> = Server<Arc<RequestGuard<Arc<F>>>>;

/// The high-priority queue (FORGET, INTERRUPT) plus this many request queues
/// is what a virtio-fs device has.
const HIPRIO_QUEUES: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("listening on vhost-user socket {path}: {source}")]
    Listen { path: String, source: io::Error },
    // vhost-user-backend's error is not Sync, so it is kept as text.
    #[error("setting up the vhost-user device: {0}")]
    Daemon(String),
    #[error("vhost-user connection failed: {0}")]
    Connection(String),
}

/// Settings of the virtio-fs device we emulate.
#[derive(Clone, Copy, Debug)]
pub struct DeviceConfig {
    pub num_request_queues: usize,
    pub queue_size: usize,
    /// Threads that execute requests besides the queue threads; 0 handles
    /// each request on its queue's own thread.
    pub thread_pool_size: usize,
    /// The longest a queue thread watches its ring for the next request
    /// before it sleeps (see [`crate::queue_poll`]); zero: never.
    pub queue_poll: Duration,
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that run requests taken off the queues, so that a
/// slow store fetch on one request does not hold up the rest of its queue.
struct WorkerPool {
    sender: SyncSender<Job>,
}

impl WorkerPool {
    fn new(threads: usize) -> io::Result<Self> {
        let (sender, receiver) = sync_channel::<Job>(threads * 64);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads {
            let receiver: Arc<Mutex<Receiver<Job>>> = receiver.clone();
            thread::Builder::new()
                .name(format!("fs-worker-{i}"))
                .spawn(move || {
                    crate::sandbox::restrict_serving_thread();
                    loop {
                        // The lock is only held while waiting for the next job.
                        let job = match receiver.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => serve_or_exit("fs-worker", job),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { sender })
    }
}

/// One connection's device state. A new one is made per VMM connection.
struct FsBackend<F: FileSystem + Send + Sync + 'static> {
    server: Arc<FsServer<F>>,
    config: DeviceConfig,
    pool: Option<Arc<WorkerPool>>,
    memory: RwLock<Option<Memory>>,
    /// One per queue, each used only by that queue's thread.
    poll_windows: Vec<parking_lot::Mutex<PollWindow>>,
}

/// Handles one request and returns the number of bytes written to the
/// guest. A malformed chain or message is logged and answered with no data,
/// or with the errno reply the server still managed to write; the daemon
/// goes on.
fn handle_chain<F: FileSystem + Send + Sync>(
    server: &FsServer<F>,
    mem: &GuestMemoryMmap,
    chain: Chain,
) -> u32 {
    let head = chain.head_index();
    let reply_header = ReplyHeaderSlot::prepare(mem, &chain);
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(head, error = %e, "malformed descriptor chain (request side); dropped");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(w) => w.into(),
        Err(e) => {
            tracing::warn!(head, error = %e, "malformed descriptor chain (reply side); dropped");
            return 0;
        }
    };
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _in_service = crate::demand::DEMAND.request();
        server.handle_message(reader, writer, None, None)
    }));
    let result = match handled {
        Ok(result) => result,
        Err(payload) => {
            // Outside the filesystem (decoding the request): answer EIO here.
            note_panic("(decoding a FUSE request)", payload.as_ref());
            return reply_header.map_or(0, |slot| slot.write_error(mem, libc::EIO));
        }
    };
    match result {
        Ok(len) => u32::try_from(len).unwrap_or(u32::MAX),
        Err(e) => {
            // The server answers some malformed requests with an errno and
            // still returns an error (e.g. a name without its NUL): report
            // that reply's length so the guest driver sees it.
            let replied = reply_header.map_or(0, |slot| slot.error_reply_len(mem));
            tracing::warn!(head, error = %e, replied, "malformed FUSE message");
            replied
        }
    }
}

/// Where the reply header of a request goes and what it held before, to
/// tell afterwards whether the server wrote an error reply there. (Guest
/// memory is left untouched: a dropped request must not look answered.)
struct ReplyHeaderSlot {
    addr: GuestAddress,
    unique: u64,
    before: OutHeader,
}

impl ReplyHeaderSlot {
    fn prepare(mem: &GuestMemoryMmap, chain: &Chain) -> Option<Self> {
        let request = chain.clone().find(|d| !d.is_write_only())?;
        let reply = chain.clone().find(|d| d.is_write_only())?;
        if (request.len() as usize) < size_of::<InHeader>()
            || (reply.len() as usize) < size_of::<OutHeader>()
        {
            return None;
        }
        let header: InHeader = mem.read_obj(request.addr()).ok()?;
        Some(Self {
            addr: reply.addr(),
            unique: header.unique,
            before: mem.read_obj(reply.addr()).ok()?,
        })
    }

    /// Writes an errno-only reply; returns its length (0 if it could not).
    fn write_error(&self, mem: &GuestMemoryMmap, errno: i32) -> u32 {
        let len = size_of::<OutHeader>() as u32;
        let header = OutHeader {
            len,
            error: -errno,
            unique: self.unique,
        };
        match mem.write_obj(header, self.addr) {
            Ok(()) => len,
            Err(_) => 0,
        }
    }

    /// The length of an errno-only reply written to this request, or 0.
    fn error_reply_len(&self, mem: &GuestMemoryMmap) -> u32 {
        let Ok(now) = mem.read_obj::<OutHeader>(self.addr) else {
            return 0;
        };
        let changed = now.as_slice() != self.before.as_slice();
        if changed
            && now.unique == self.unique
            && now.error < 0
            && now.len as usize == size_of::<OutHeader>()
        {
            now.len
        } else {
            0
        }
    }
}

/// Returns a finished request to the guest and interrupts it if needed.
fn complete(vring: &Vring, head: u16, len: u32) {
    let mut state = vring.get_mut();
    if let Err(e) = state.add_used(head, len) {
        tracing::error!(head, error = %e, "returning a descriptor to the guest failed");
        return;
    }
    notify(&mut state);
}

fn notify(state: &mut VringState<Memory>) {
    match state.needs_notification() {
        Ok(true) => {
            if let Err(e) = state.signal_used_queue() {
                tracing::error!(error = %e, "interrupting the guest failed");
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "checking whether to interrupt the guest failed"),
    }
}

impl<F: FileSystem + Send + Sync + 'static> FsBackend<F> {
    /// Takes every available request off `vring` and handles or dispatches
    /// it. Returns whether there were any.
    fn process_queue(&self, vring: &Vring) -> io::Result<bool> {
        let Some(memory) = self.memory.read().ok().and_then(|m| m.clone()) else {
            return Err(io::Error::other("no guest memory configured"));
        };
        let mem = memory.memory();
        let chains: Vec<Chain> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(|e| io::Error::other(format!("reading the available ring: {e}")))?
            .collect();
        let any = !chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            match &self.pool {
                None => {
                    let len = handle_chain(&self.server, &mem, chain);
                    complete(vring, head, len);
                }
                Some(pool) => {
                    let server = self.server.clone();
                    let vring = vring.clone();
                    let mem = mem.clone();
                    let job: Job = Box::new(move || {
                        let len = handle_chain(&server, &mem, chain);
                        complete(&vring, head, len);
                    });
                    if pool.sender.send(job).is_err() {
                        tracing::error!("worker pool is gone; request dropped");
                    }
                }
            }
        }
        Ok(any)
    }
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserBackend for FsBackend<F> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        HIPRIO_QUEUES + self.config.num_request_queues
    }

    fn max_queue_size(&self) -> usize {
        self.config.queue_size
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    /// Each vring is told about EVENT_IDX by vhost-user-backend itself,
    /// and the notification calls follow it there.
    fn set_event_idx(&self, _enabled: bool) {}

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        *self
            .memory
            .write()
            .map_err(|_| io::Error::other("memory lock poisoned"))? = Some(mem);
        Ok(())
    }

    /// One worker thread per queue, so request queues run in parallel.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::error!(error = %e, "creating a worker exit event failed");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // A queue thread that died would leave its queue unserved while
        // all looks well: a panic escaping a request ends the process.
        serve_or_exit("vhost-user queue", || {
            crate::sandbox::restrict_serving_thread();
            self.handle_queue_event(device_event, evset, vrings, thread_id)
        })
    }
}

impl<F: FileSystem + Send + Sync + 'static> FsBackend<F> {
    fn handle_queue_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        // Each thread owns exactly one queue, so `device_event` is 0.
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io::Error::other(format!(
                "event for unknown queue {device_event} on thread {thread_id}"
            )));
        };
        // A failure here is the guest's doing (e.g. an available index more
        // than a queue ahead) and lasts until it rewrites its ring: log it
        // and wait for the next kick. Returning an error would end this
        // queue's worker thread for good; retrying at once would spin.
        let mut poll = self.poll_windows.get(thread_id).map(|w| w.lock());
        if let Some(w) = poll.as_mut() {
            w.woken(Instant::now());
        }
        // Notifications stay off while we work and while we watch the ring
        // for more: the guest does not kick for requests that arrive then,
        // so drain until the queue stays empty.
        loop {
            vring
                .disable_notification()
                .map_err(|e| io::Error::other(e.to_string()))?;
            let processed = self.process_queue(vring);
            let window = poll.as_ref().map_or(Duration::ZERO, |w| w.window());
            if processed.is_ok() && !window.is_zero() && self.request_within(vring, window) {
                continue;
            }
            let more = vring
                .enable_notification()
                .map_err(|e| io::Error::other(e.to_string()))?;
            if let Err(e) = processed {
                tracing::warn!(queue = thread_id, error = %e, "malformed queue; waiting for the next kick");
                break;
            }
            if !more {
                break;
            }
        }
        if let Some(w) = poll.as_mut() {
            w.sleeping(Instant::now());
        }
        Ok(())
    }

    /// Watches `vring` for up to `window` and says whether the guest made a
    /// request available meanwhile.
    fn request_within(&self, vring: &Vring, window: Duration) -> bool {
        let Some(memory) = self.memory.read().ok().and_then(|m| m.clone()) else {
            return false;
        };
        let mem = memory.memory();
        let deadline = Instant::now() + window;
        loop {
            {
                let state = vring.get_ref();
                let queue = state.get_queue();
                if !queue.ready() {
                    return false;
                }
                match queue.avail_idx(&*mem, Ordering::Acquire) {
                    Ok(idx) if idx.0 != queue.next_avail() => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }
}

/// Serves `fs` to VMMs connecting on a vhost-user socket.
pub struct VhostUserServer<F: FileSystem + Send + Sync + 'static> {
    server: Arc<FsServer<F>>,
    config: DeviceConfig,
    pool: Option<Arc<WorkerPool>>,
    listener: Listener,
}

impl<F: FileSystem + Send + Sync + 'static> VhostUserServer<F> {
    /// Listens on `path` (a stale socket file is replaced).
    pub fn bind(fs: Arc<F>, config: DeviceConfig, path: &Path) -> Result<Self, VhostUserError> {
        let listener = Listener::new(path, true).map_err(|e| VhostUserError::Listen {
            path: path.display().to_string(),
            source: io::Error::other(e.to_string()),
        })?;
        Self::with_listener(fs, config, listener)
    }

    /// Serves on an already listening socket (e.g. from systemd).
    pub fn from_listener(
        fs: Arc<F>,
        config: DeviceConfig,
        listener: UnixListener,
    ) -> Result<Self, VhostUserError> {
        Self::with_listener(fs, config, Listener::from(listener))
    }

    fn with_listener(
        fs: Arc<F>,
        config: DeviceConfig,
        listener: Listener,
    ) -> Result<Self, VhostUserError> {
        let pool = match config.thread_pool_size {
            0 => None,
            n => Some(Arc::new(WorkerPool::new(n).map_err(|source| {
                VhostUserError::Listen {
                    path: "(worker pool)".into(),
                    source,
                }
            })?)),
        };
        Ok(Self {
            server: Arc::new(Server::new(Arc::new(RequestGuard::new(fs)))),
            config,
            pool,
            listener,
        })
    }

    /// Accepts one VMM connection and serves it until the VMM disconnects.
    pub fn serve_one(&mut self) -> Result<(), VhostUserError> {
        let backend = Arc::new(FsBackend {
            server: self.server.clone(),
            config: self.config,
            pool: self.pool.clone(),
            memory: RwLock::new(None),
            poll_windows: (0..HIPRIO_QUEUES + self.config.num_request_queues)
                .map(|_| parking_lot::Mutex::new(PollWindow::new(self.config.queue_poll)))
                .collect(),
        });
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("tvix-virtiofsd".into(), backend, memory)
            .map_err(|e| VhostUserError::Daemon(e.to_string()))?;
        daemon
            .start(&mut self.listener)
            .map_err(|e| VhostUserError::Connection(e.to_string()))?;
        tracing::info!("VMM connected");
        let result = daemon.wait();
        // Stop this connection's queue threads whatever the outcome.
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        match result {
            Ok(()) => Ok(()),
            Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(e) => Err(VhostUserError::Connection(e.to_string())),
        }
    }
}
