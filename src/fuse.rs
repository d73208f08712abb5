//! The FUSE transport: serves the filesystem on a host mount point through
//! /dev/fuse, for machines without a VMM and for tests. Knows nothing about
//! the store.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseChannel, FuseSession};

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
    session: FuseSession,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    mounted: bool,
}

impl FuseMount {
    /// Mounts `fs` read-only at `mountpoint` and serves it with `threads`
    /// worker threads.
    pub fn mount<F: FileSystem + Send + Sync + 'static>(
        fs: Arc<F>,
        mountpoint: &Path,
        threads: usize,
    ) -> Result<Self, FuseError> {
        let mount_error = |e: &dyn std::fmt::Display| FuseError::Mount {
            mountpoint: mountpoint.display().to_string(),
            detail: e.to_string(),
        };
        let mut session = FuseSession::new(mountpoint, "tvix-virtiofsd", "tvix", true)
            .map_err(|e| mount_error(&e))?;
        session.mount().map_err(|e| mount_error(&e))?;
        let mut mount = Self {
            session,
            stopping: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            mounted: true,
        };
        let server = Arc::new(Server::new(fs));
        for i in 0..threads.max(1) {
            let channel = mount
                .session
                .new_channel()
                .map_err(|e| FuseError::Spawn(e.to_string()))?;
            let server = server.clone();
            let stopping = mount.stopping.clone();
            let worker = thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || serve_channel(&server, channel, &stopping))
                .map_err(|e| FuseError::Spawn(e.to_string()))?;
            mount.workers.push(worker);
        }
        Ok(mount)
    }

    /// Unmounts and waits for the worker threads to finish.
    pub fn unmount(mut self) -> Result<(), FuseError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), FuseError> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        self.stopping.store(true, Ordering::SeqCst);
        let result = self.session.umount().map_err(|e| FuseError::Unmount {
            mountpoint: self.session.mountpoint().display().to_string(),
            detail: e.to_string(),
        });
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
    }
}

/// One worker: reads requests from /dev/fuse and answers them until the
/// session is unmounted.
fn serve_channel<F: FileSystem + Send + Sync>(
    server: &Server<Arc<F>>,
    mut channel: FuseChannel,
    stopping: &AtomicBool,
) {
    loop {
        match channel.get_request() {
            Ok(Some((reader, writer))) => {
                if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
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
                    tracing::error!(error = %e, "reading /dev/fuse failed; worker exits");
                }
                return;
            }
        }
    }
}
