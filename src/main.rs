//! tvix-virtiofsd: the daemon. The start-up order is all here, in one
//! screen: parse the command line, set up logging, open the vhost-user
//! socket or mount (the only steps that need privilege), enter the sandbox
//! (before any thread exists), connect the store client, build the
//! filesystem, then serve it over vhost-user or FUSE.

use std::io::IsTerminal;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tvix_virtiofsd::cache::{CachedStore, StatsReporter};
use tvix_virtiofsd::config::Cli;
use tvix_virtiofsd::fs::StoreFs;
use tvix_virtiofsd::fuse::FuseMount;
use tvix_virtiofsd::metrics::{self, MetricsFile, MetricsListener};
use tvix_virtiofsd::notify::Notifier;
use tvix_virtiofsd::sandbox;
use tvix_virtiofsd::store::{StoreClient, StoreError};
use tvix_virtiofsd::vhost_user::VhostUserServer;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_capabilities {
        // The vhost-user backend description a VMM management layer reads.
        println!("{{\n  \"type\": \"fs\",\n  \"features\": []\n}}");
        return Ok(());
    }
    init_logging(&cli.log_level)?;
    tvix_virtiofsd::log_limit::set_window(cli.log_repeat_window()?);
    tvix_virtiofsd::request_guard::install_panic_hook();
    // systemd's NOTIFY_SOCKET (Type=notify): READY=1 only once serving.
    let notify = Arc::new(Notifier::from_env());

    let store_config = cli.store_config()?;
    let fs_config = cli.fs_config()?;
    let cache_config = cli.cache_config()?;

    // What needs privilege or a path outside the sandbox, while the process
    // has one thread: the socket, or the mount (its unmount is handed to a
    // helper process that keeps CAP_SYS_ADMIN).
    let transport = match (&cli.mount, &cli.socket_path, cli.fd) {
        (Some(mountpoint), _, _) => Transport::Fuse(Box::new(FuseMount::mount_for_sandbox(
            mountpoint,
            cli.seccomp,
        )?)),
        (None, Some(path), _) => Transport::VhostUser(listen(path)?),
        // SAFETY: the caller handed us this descriptor to own (--fd).
        (None, None, Some(fd)) => Transport::VhostUser(unsafe { UnixListener::from_raw_fd(fd) }),
        (None, None, None) => unreachable!("clap requires one of --socket-path, --fd, --mount"),
    };
    // Bound before the sandbox, which allows accepting only (after the
    // mount, so that the unmount helper does not inherit the socket).
    let metrics_listener = match &cli.metrics_listen {
        Some(address) => Some(
            MetricsListener::bind(address)
                .with_context(|| format!("listening for metrics on {address}"))?,
        ),
        None => None,
    };
    // From here on, for every thread: no capabilities, no_new_privs, the
    // seccomp allowlist, and (Landlock) only the cache, spool and stats
    // paths and the store's ports.
    let sandbox =
        sandbox::enter(&cli.sandbox_config(&store_config)).context("entering the sandbox")?;
    tracing::info!(%sandbox, "sandboxed");

    // The runtime only drives gRPC; the filesystem's callers block on it
    // from the transport's own threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("store-client")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = {
        let _guard = runtime.enter();
        StoreClient::new(&store_config, metrics::global().store_calls())
            .context("setting up the store client")?
    };
    tracing::info!(
        blob = %store_config.blob_service,
        directory = %store_config.directory_service,
        path_info = %store_config.path_info_service,
        protocol = ?store_config.protocol,
        "store"
    );
    check_store_protocol(&runtime, &client, store_config.timeout)?;
    let store = CachedStore::new(Arc::new(client), runtime.handle().clone(), cache_config)
        .context("opening the cache")?;
    if let Some(disk) = store.disk() {
        tracing::info!(dir = %disk.root().display(), bound = cli.disk_cache_size, "disk cache");
    }
    let cache_stats = store.stats().clone();
    let cache = store.clone();
    metrics::global().watch_cache(store.clone());
    let fs = Arc::new(StoreFs::new(fs_config, store));
    let stats = Arc::new(StatsReporter::start(
        cache_stats,
        vec![Box::new({
            let fs = fs.clone();
            move || fs.limit_counters().render() + &metrics::fuse::render_request_panics()
        })],
        cli.stats_file.clone(),
    ));
    metrics::global().watch_fs(fs.clone());
    if let (Some(listener), Some(address)) = (metrics_listener, &cli.metrics_listen) {
        listener
            .serve(runtime.handle())
            .context("serving the metrics")?;
        tracing::info!(%address, "serving metrics");
    }
    let metrics_file = MetricsFile::start(cli.metrics_file.clone());

    let listener = match transport {
        Transport::VhostUser(listener) => listener,
        Transport::Fuse(mut mount) => {
            let mountpoint = cli.mount.as_deref().unwrap_or(Path::new("?"));
            mount.serve(fs, cli.fuse_threads)?;
            tracing::info!(mountpoint = %mountpoint.display(), "mounted; serving until SIGINT or SIGTERM");
            notify.ready(&format!("serving on {}", mountpoint.display()));
            let unmounted_outside = runtime.block_on(async {
                tokio::select! {
                    signal = wait_for_termination() => signal.map(|()| false),
                    () = mount.closed() => Ok(true),
                }
            })?;
            if unmounted_outside {
                tracing::info!("the filesystem was unmounted; exiting");
                notify.stopping("unmounted from outside; exiting");
                mount.finish_unmounted();
            } else {
                notify.stopping("unmounting");
                mount.unmount()?;
                tracing::info!("unmounted");
            }
            cache.finish_writes();
            stats.finish();
            metrics_file.finish();
            return Ok(());
        }
    };
    let mut server = VhostUserServer::from_listener(fs, cli.device_config(), listener)?;
    tracing::info!(
        socket = ?cli.socket_path,
        queues = cli.num_request_queues,
        "waiting for the VMM"
    );
    let listening_on = match (&cli.socket_path, cli.fd) {
        (Some(path), _) => path.display().to_string(),
        (None, fd) => format!("inherited fd {}", fd.unwrap_or(-1)),
    };
    notify.ready(&format!("waiting for the VMM on {listening_on}"));
    // The queue threads serve until the VMM goes; SIGTERM or SIGINT ends
    // the process from here, cleanly: counters written, socket removed.
    runtime.spawn(stop_on_termination(
        cli.socket_path.clone(),
        notify.clone(),
        stats.clone(),
        cache.clone(),
    ));
    loop {
        server.serve_one()?;
        tracing::info!("VMM disconnected");
        if !cli.persistent {
            notify.stopping("VMM disconnected; exiting");
            cache.finish_writes();
            stats.finish();
            metrics_file.finish();
            return Ok(());
        }
        notify.status(&format!(
            "VMM disconnected; waiting for the next on {listening_on}"
        ));
    }
}

/// What the daemon serves on, set up before the sandbox.
enum Transport {
    Fuse(Box<FuseMount>),
    VhostUser(UnixListener),
}

/// Listens on the vhost-user socket `path`, replacing a stale socket file.
/// A stop on SIGTERM removes it (the sandbox allows just that there); after
/// a crash the next start replaces it.
fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
        .with_context(|| format!("listening on vhost-user socket {}", path.display()))
}

/// Waits for SIGTERM or SIGINT in vhost-user mode, then exits 0 after
/// removing the socket we listen on (`socket`; not an inherited one).
async fn stop_on_termination(
    socket: Option<std::path::PathBuf>,
    notify: Arc<Notifier>,
    stats: Arc<StatsReporter>,
    cache: Arc<CachedStore>,
) {
    if let Err(e) = wait_for_termination().await {
        tracing::error!(error = %e, "SIGTERM will not stop the daemon cleanly");
        return;
    }
    tracing::info!("SIGTERM or SIGINT: stopping");
    notify.stopping("stopping on a signal");
    if let Some(path) = socket {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(socket = %path.display(), error = %e, "could not remove the socket");
        }
    }
    // On a runtime thread, which the writes do not need.
    cache.finish_writes();
    stats.finish();
    std::process::exit(0);
}

async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .with_context(|| format!("invalid --log-level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// Refuses to serve a store that speaks the other protocol: every request
/// would fail, so the operator hears it now, in one line. A store that is
/// down or slow is only a warning: the disk cache may serve without it.
fn check_store_protocol(
    runtime: &tokio::runtime::Runtime,
    client: &StoreClient,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let bound = timeout.min(std::time::Duration::from_secs(3));
    let answer =
        runtime.block_on(async { tokio::time::timeout(bound, client.check_protocol()).await });
    match answer {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e @ StoreError::WrongProtocol { .. })) => {
            Err(e).context("the store speaks another protocol")
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "store not usable at start; serving what the cache holds until it is");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(
                ?bound,
                "store did not answer at start; serving what the cache holds until it does"
            );
            Ok(())
        }
    }
}
