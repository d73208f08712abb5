//! The FUSE transport: serves the filesystem on a host mount point through
//! /dev/fuse, for machines without a VMM and for tests. Knows nothing about
//! the store.

use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseChannel, FuseSession};
use tokio::sync::watch;

use crate::request_guard::{note_panic, serve_or_exit, RequestGuard};
use crate::sandbox::unmount::UnmountHelper;
use crate::sandbox::SeccompMode;

#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("mounting at {mountpoint}: {detail} (is /dev/fuse present and are we root?)")]
    Mount { mountpoint: String, detail: String },
    #[error("starting FUSE worker threads: {0}")]
    Spawn(String),
    #[error("unmounting {mountpoint}: {detail}")]
    Unmount { mountpoint: String, detail: String },
}

/// A mounted filesystem and the threads serving it. Unmounts when dropped.
pub struct FuseMount {
    /// Dropping a session unmounts it from this process, which a sandboxed
    /// daemon may not do: with an unmount helper it is never dropped (the
    /// descriptor closes at exit).
    session: ManuallyDrop<FuseSession>,
    unmount_helper: Option<UnmountHelper>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// How many workers still serve; 0 once the kernel closed the channel.
    live_workers: Arc<watch::Sender<usize>>,
    mounted: bool,
}

impl FuseMount {
    /// Mounts `fs` read-only at `mountpoint` and serves it with `threads`
    /// worker threads. Unmounting needs CAP_SYS_ADMIN then too.
    pub fn mount<F: FileSystem + Send + Sync + 'static>(
        fs: Arc<F>,
        mountpoint: &Path,
        threads: usize,
    ) -> Result<Self, FuseError> {
        let mut mount = Self::mount_session(mountpoint)?;
        mount.serve(fs, threads)?;
        Ok(mount)
    }

    /// Mounts read-only at `mountpoint` without serving yet, and hands the
    /// unmount to a helper process that keeps CAP_SYS_ADMIN (see
    /// [`crate::sandbox::unmount`]), so that the daemon can drop every
    /// capability before [`FuseMount::serve`]. Call while the process has
    /// a single thread.
    pub fn mount_for_sandbox(mountpoint: &Path, seccomp: SeccompMode) -> Result<Self, FuseError> {
        let mut mount = Self::mount_session(mountpoint)?;
        let helper = UnmountHelper::spawn(mount.session.mountpoint(), seccomp).map_err(|e| {
            FuseError::Mount {
                mountpoint: mountpoint.display().to_string(),
                detail: e.to_string(),
            }
        })?;
        mount.unmount_helper = Some(helper);
        Ok(mount)
    }

    fn mount_session(mountpoint: &Path) -> Result<Self, FuseError> {
        let mount_error = |e: &dyn std::fmt::Display| FuseError::Mount {
            mountpoint: mountpoint.display().to_string(),
            detail: e.to_string(),
        };
        let mut session = FuseSession::new(mountpoint, "tvix-virtiofsd", "tvix", true)
            .map_err(|e| mount_error(&e))?;
        session.mount().map_err(|e| mount_error(&e))?;
        Ok(Self {
            session: ManuallyDrop::new(session),
            unmount_helper: None,
            stopping: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            live_workers: Arc::new(watch::Sender::new(0)),
            mounted: true,
        })
    }

    /// Serves `fs` with `threads` worker threads.
    pub fn serve<F: FileSystem + Send + Sync + 'static>(
        &mut self,
        fs: Arc<F>,
        threads: usize,
    ) -> Result<(), FuseError> {
        let server = Arc::new(Server::new(Arc::new(RequestGuard::new(fs))));
        for i in 0..threads.max(1) {
            let channel = self
                .session
                .new_channel()
                .map_err(|e| FuseError::Spawn(e.to_string()))?;
            let server = server.clone();
            let stopping = self.stopping.clone();
            let live = LiveWorker::new(self.live_workers.clone());
            let worker = thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || {
                    // A worker that dies while the others serve must not
                    // look like an unmount: the process ends instead.
                    serve_or_exit(&format!("fuse-{i}"), || {
                        crate::sandbox::restrict_serving_thread();
                        serve_channel(&server, channel, &stopping)
                    });
                    drop(live);
                })
                .map_err(|e| FuseError::Spawn(e.to_string()))?;
            self.workers.push(worker);
        }
        Ok(())
    }

    /// Resolves once every worker has stopped serving by itself: the
    /// kernel closed the channel because someone unmounted the filesystem
    /// (or reading /dev/fuse failed). Never resolves before [`Self::serve`].
    pub async fn closed(&self) {
        let mut live = self.live_workers.subscribe();
        if *live.borrow() == 0 {
            // Not serving yet: nothing can close.
            std::future::pending::<()>().await;
        }
        let _ = live.wait_for(|n| *n == 0).await;
    }

    /// Unmounts and waits for the worker threads to finish.
    pub fn unmount(mut self) -> Result<(), FuseError> {
        self.shutdown()
    }

    /// Cleans up after [`Self::closed`]: the filesystem is already gone,
    /// so the unmount helper is dismissed instead of asked to unmount
    /// whatever is mounted at the path now.
    pub fn finish_unmounted(mut self) {
        self.mounted = false;
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(helper) = &mut self.unmount_helper {
            if let Err(e) = helper.dismiss() {
                tracing::warn!(error = %e, "dismissing the unmount helper failed");
            }
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }

    fn shutdown(&mut self) -> Result<(), FuseError> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        self.stopping.store(true, Ordering::SeqCst);
        let mountpoint = self.session.mountpoint().display().to_string();
        let unmount_error = |detail: String| FuseError::Unmount {
            mountpoint: mountpoint.clone(),
            detail,
        };
        let result = match &mut self.unmount_helper {
            Some(helper) => helper.unmount().map_err(|e| unmount_error(e.to_string())),
            None => self
                .session
                .umount()
                .map_err(|e| unmount_error(e.to_string())),
        };
        if let Err(e) = self.session.wake() {
            tracing::warn!(error = %e, "waking FUSE workers failed");
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        result
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "unmount failed");
        }
        if self.unmount_helper.is_none() {
            // SAFETY: the session is dropped here only, once.
            unsafe { ManuallyDrop::drop(&mut self.session) };
        }
    }
}

/// One worker: reads requests from /dev/fuse and answers them until the
/// session is unmounted.
/// Counts a worker as live from creation until dropped, which also
/// covers a worker that panics.
struct LiveWorker(Arc<watch::Sender<usize>>);

impl LiveWorker {
    fn new(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for LiveWorker {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

fn serve_channel<F: FileSystem + Send + Sync>(
    server: &Server<Arc<RequestGuard<Arc<F>>>>,
    mut channel: FuseChannel,
    stopping: &AtomicBool,
) {
    loop {
        match channel.get_request() {
            Ok(Some((reader, writer))) => {
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _in_service = crate::demand::DEMAND.request();
                    server.handle_message(reader, writer.into(), None, None)
                }));
                let result = match handled {
                    Ok(result) => result,
                    Err(payload) => {
                        // Outside the filesystem (decoding the request):
                        // no reply can be written, but the worker goes on.
                        note_panic("(decoding a FUSE request)", payload.as_ref());
                        continue;
                    }
                };
                if let Err(e) = result {
                    match e {
                        // The kernel went away (unmounted): we are done.
                        fuse_backend_rs::Error::EncodeMessage(ref io)
                            if io.raw_os_error() == Some(libc::ENODEV) =>
                        {
                            return
                        }
                        e => tracing::warn!(error = %e, "malformed FUSE request; dropped"),
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                if !stopping.load(Ordering::SeqCst) {
                    // Also what an unmount from outside looks like.
                    tracing::info!(error = %e, "FUSE channel closed; worker exits");
                }
                return;
            }
        }
    }
}
