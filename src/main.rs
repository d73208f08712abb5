//! tvix-virtiofsd: the daemon. The start-up order is all here, in one
//! screen: parse the command line, set up logging, connect the store client,
//! build the filesystem, then serve it over vhost-user or FUSE.

use std::io::IsTerminal;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tvix_virtiofsd::cache::{CachedStore, StatsReporter};
use tvix_virtiofsd::config::Cli;
use tvix_virtiofsd::fs::StoreFs;
use tvix_virtiofsd::fuse::FuseMount;
use tvix_virtiofsd::store::StoreClient;
use tvix_virtiofsd::vhost_user::VhostUserServer;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_capabilities {
        // The vhost-user backend description a VMM management layer reads.
        println!("{{\n  \"type\": \"fs\",\n  \"features\": []\n}}");
        return Ok(());
    }
    init_logging(&cli.log_level)?;

    let store_config = cli.store_config()?;
    let fs_config = cli.fs_config()?;
    let cache_config = cli.cache_config()?;

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
        StoreClient::new(&store_config).context("setting up the store client")?
    };
    tracing::info!(
        blob = %store_config.blob_service,
        directory = %store_config.directory_service,
        path_info = %store_config.path_info_service,
        protocol = ?store_config.protocol,
        "store"
    );
    let store = CachedStore::new(client, runtime.handle().clone(), cache_config)
        .context("opening the cache")?;
    if let Some(disk) = store.disk() {
        tracing::info!(dir = %disk.root().display(), bound = cli.disk_cache_size, "disk cache");
    }
    let stats = StatsReporter::start(store.stats().clone(), cli.stats_file.clone());
    let fs = Arc::new(StoreFs::new(fs_config, store));

    if let Some(mountpoint) = &cli.mount {
        let mount = FuseMount::mount(fs, mountpoint, cli.fuse_threads)?;
        tracing::info!(mountpoint = %mountpoint.display(), "mounted; serving until SIGINT or SIGTERM");
        runtime.block_on(wait_for_termination())?;
        mount.unmount()?;
        tracing::info!("unmounted");
        stats.finish();
        return Ok(());
    }

    let mut server = match (&cli.socket_path, cli.fd) {
        (Some(path), _) => VhostUserServer::bind(fs, cli.device_config(), path)?,
        (None, Some(fd)) => {
            // SAFETY: the caller handed us this descriptor to own (--fd).
            let listener = unsafe { UnixListener::from_raw_fd(fd) };
            VhostUserServer::from_listener(fs, cli.device_config(), listener)?
        }
        (None, None) => unreachable!("clap requires one of --socket-path, --fd, --mount"),
    };
    tracing::info!(
        socket = ?cli.socket_path,
        queues = cli.num_request_queues,
        "waiting for the VMM"
    );
    loop {
        server.serve_one()?;
        tracing::info!("VMM disconnected");
        if !cli.persistent {
            stats.finish();
            return Ok(());
        }
    }
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
