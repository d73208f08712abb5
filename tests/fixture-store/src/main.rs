//! tvix-fixture-store: a small tvix-store for tests.
//!
//! It imports a host directory (each top-level entry becomes a store path),
//! then serves BlobService, DirectoryService and PathInfoService over gRPC
//! exactly as the protocol doc describes, so that a real tvix-store can take
//! its place. On request it misbehaves (corrupt data, latency, dead
//! connections) so tests can check how the daemon copes.
//!
//! stdout carries a machine-readable protocol for the test harness:
//! `STORE_PATH <basename>` per store path, then `LISTENING <address>` per
//! listener once it accepts connections.

mod adversarial;
mod import;
mod nar;
mod proto;
mod protocol;
mod service;
mod stats;

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::proto::castore::blob_service_server::BlobServiceServer;
use crate::proto::castore::directory_service_server::DirectoryServiceServer;
use crate::proto::store::path_info_service_server::PathInfoServiceServer;
use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::import::{node_name, Digest};
use crate::protocol::{Protocol, ProtocolLayer};
use crate::service::{Blobs, Directories, Misbehaviour, PathInfos, State};
use crate::stats::Stats;

/// A test tvix-store serving the contents of a host directory.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory whose top-level entries become store paths.
    #[arg(long, value_name = "DIR")]
    import: PathBuf,

    /// Where to listen: grpc+unix:///abs/path.sock or grpc+http://HOST:PORT
    /// (port 0 picks a free port; the LISTENING line shows it). Repeatable.
    #[arg(long, value_name = "ADDR", required = true, value_parser = parse_listen)]
    listen: Vec<ListenAddr>,

    /// Split blobs larger than this into fixed-size chunks of this size.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    chunk_size: Option<u64>,

    /// Largest BlobChunk message Read sends.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    read_piece_size: u64,

    /// Read of this blob (hex digest), and of its chunks, flips one byte.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_digest)]
    corrupt_blob: Vec<Digest>,

    /// Read of this whole blob (hex digest) flips its last byte; Reads of
    /// its chunks do not.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_digest)]
    corrupt_whole_read: Vec<Digest>,

    /// Get of this Directory (hex digest) returns one that does not hash to it.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_digest)]
    corrupt_directory: Vec<Digest>,

    /// Sleep this long before answering every RPC.
    #[arg(long, value_name = "N", default_value_t = 0)]
    latency_ms: u64,

    /// Add the `adv-*` store paths a hostile store would send (see
    /// adversarial.rs): one digest with three sizes, a dripping and an
    /// endless blob, a huge symlink target, chunk lists that do not add up
    /// or are huge, a Directory that resolves to itself.
    #[arg(long)]
    adversarial: bool,

    /// Milliseconds between the bytes of the `adv-drip` blob.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    drip_interval_ms: u64,

    /// Bind the listeners but close every accepted connection at once.
    #[arg(long)]
    refuse_connections: bool,

    /// Package names to serve the services under.
    #[arg(long, value_enum, default_value_t = Protocol::Tvix)]
    protocol: Protocol,

    /// Write `<kind>\t<hex digest>\t<size>\t<relative path>` per imported node.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,

    /// Keep per-method call counts in this file (`name value` lines).
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,

    /// Server certificate (PEM) for grpc+https:// listeners.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Server private key (PEM) for grpc+https:// listeners.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug)]
enum ListenAddr {
    Unix(PathBuf),
    Tcp(String),
    /// TCP with TLS (`grpc+https://`).
    Tls(String),
}

fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("grpc+unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "{s}: the socket path must be absolute (grpc+unix:///abs/path.sock)"
            ));
        }
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    } else if let Some(host_port) = s
        .strip_prefix("grpc+http://")
        .or_else(|| s.strip_prefix("grpc+https://"))
    {
        let host_port = host_port.trim_end_matches('/');
        if host_port.is_empty() {
            return Err(format!("{s}: missing HOST:PORT"));
        }
        if s.starts_with("grpc+https://") {
            Ok(ListenAddr::Tls(host_port.to_string()))
        } else {
            Ok(ListenAddr::Tcp(host_port.to_string()))
        }
    } else {
        Err(format!(
            "{s}: expected grpc+unix:///abs/path.sock, grpc+http://HOST:PORT or grpc+https://HOST:PORT"
        ))
    }
}

fn parse_hex_digest(s: &str) -> Result<Digest, String> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .ok()
        .and_then(|bytes| Digest::try_from(bytes).ok())
        .ok_or_else(|| format!("{s}: expected a 64-character hex BLAKE3 digest"))
}

/// A bound listener.
enum Listener {
    Unix(UnixListener, PathBuf),
    /// A TCP listener; `tls` when it speaks grpc+https.
    Tcp {
        listener: TcpListener,
        tls: bool,
    },
}

impl Listener {
    async fn bind(addr: &ListenAddr) -> Result<Self> {
        match addr {
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)
                    .with_context(|| format!("binding {}", path.display()))?;
                Ok(Self::Unix(listener, path.clone()))
            }
            ListenAddr::Tcp(host_port) | ListenAddr::Tls(host_port) => {
                let listener = TcpListener::bind(host_port.as_str())
                    .await
                    .with_context(|| format!("binding {host_port}"))?;
                let tls = matches!(addr, ListenAddr::Tls(_));
                Ok(Self::Tcp { listener, tls })
            }
        }
    }

    /// The address clients can use, with the real port.
    fn address(&self) -> Result<String> {
        Ok(match self {
            Self::Unix(_, path) => format!("grpc+unix://{}", path.display()),
            Self::Tcp { listener, tls } => format!(
                "grpc+{}://{}",
                if *tls { "https" } else { "http" },
                listener.local_addr()?
            ),
        })
    }
}

/// Removes a socket left behind by an earlier run. A socket someone still
/// listens on is not stale and is left alone, and so is anything that is not
/// a socket, so a typo cannot delete a file or steal another store's address.
fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use by another process", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(_) => Ok(()),
    }
}

/// Serves all three services on one listener, until it fails.
async fn serve(
    listener: Listener,
    state: Arc<State>,
    protocol: Protocol,
    tls: Option<ServerTlsConfig>,
) -> Result<()> {
    let mut builder = Server::builder();
    if let (Listener::Tcp { tls: true, .. }, Some(config)) = (&listener, tls) {
        builder = builder.tls_config(config).context("TLS setup")?;
    }
    let router = builder
        .layer(ProtocolLayer(protocol))
        .add_service(BlobServiceServer::from_arc(Arc::new(Blobs(state.clone()))))
        .add_service(DirectoryServiceServer::from_arc(Arc::new(Directories(
            state.clone(),
        ))))
        .add_service(PathInfoServiceServer::from_arc(Arc::new(PathInfos(state))));
    match listener {
        Listener::Unix(listener, _) => {
            router
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await?
        }
        Listener::Tcp { listener, .. } => {
            // Without TCP_NODELAY, small gRPC frames can wait for delayed
            // ACKs, which would add tens of milliseconds to every call.
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                let conn = conn?;
                conn.set_nodelay(true)?;
                Ok::<_, std::io::Error>(conn)
            });
            router.serve_with_incoming(incoming).await?
        }
    }
    Ok(())
}

/// `--refuse-connections`: accept and drop every connection, so clients see
/// a store that is there but dead.
async fn refuse(listener: Listener) -> Result<()> {
    loop {
        let accepted = match &listener {
            Listener::Unix(l, _) => l.accept().await.map(drop),
            Listener::Tcp { listener: l, .. } => l.accept().await.map(drop),
        };
        match accepted {
            Ok(()) => info!("misbehaving: closed an accepted connection"),
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The TLS settings of grpc+https listeners, from --tls-cert, --tls-key and
/// --tls-client-ca.
fn server_tls(args: &Args) -> Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// Prints one protocol line on stdout and flushes it, so a harness reading a
/// pipe sees it at once.
fn announce(line: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

async fn run(args: Args, state: Arc<State>) -> Result<()> {
    let mut sockets = Vec::new();
    let mut servers = JoinSet::new();
    let result = async {
        let tls = server_tls(&args)?;
        if tls.is_none() && args.listen.iter().any(|a| matches!(a, ListenAddr::Tls(_))) {
            bail!("grpc+https:// listeners need --tls-cert and --tls-key");
        }
        for addr in &args.listen {
            let listener = Listener::bind(addr).await?;
            if let Listener::Unix(_, path) = &listener {
                sockets.push(path.clone());
            }
            let address = listener.address()?;
            if args.refuse_connections {
                servers.spawn(refuse(listener));
            } else {
                servers.spawn(serve(listener, state.clone(), args.protocol, tls.clone()));
            }
            info!(%address, "listening");
            announce(&format!("LISTENING {address}"))?;
        }
        wait_for_end(&mut servers).await
    }
    .await;
    for socket in &sockets {
        if let Err(e) = std::fs::remove_file(socket) {
            warn!(socket = %socket.display(), error = %e, "could not remove socket");
        }
    }
    result
}

/// Waits for SIGTERM or SIGINT (a clean exit), or for a server to fail.
async fn wait_for_end(servers: &mut JoinSet<Result<()>>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: exiting"),
        _ = int.recv() => info!("SIGINT: exiting"),
        Some(ended) = servers.join_next() => {
            ended.context("server task failed")??;
            bail!("a server stopped unexpectedly");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let read_piece_size =
        usize::try_from(args.read_piece_size).context("--read-piece-size is too large")?;

    let mut imported = import::import(&args.import, args.chunk_size)
        .with_context(|| format!("importing {}", args.import.display()))?;
    info!(
        store_paths = imported.path_infos.len(),
        directories = imported.directories.len(),
        blobs = imported.blobs.len(),
        "imported"
    );
    let adversarial = if args.adversarial {
        adversarial::add(&mut imported, Duration::from_millis(args.drip_interval_ms))
    } else {
        adversarial::Adversarial::default()
    };
    if let Some(manifest) = &args.manifest {
        let text: String = imported
            .manifest
            .iter()
            .map(|entry| entry.line() + "\n")
            .collect();
        std::fs::write(manifest, text)
            .with_context(|| format!("writing manifest {}", manifest.display()))?;
    }
    let mut basenames: Vec<String> = imported
        .path_infos
        .values()
        .filter_map(|info| info.node.as_ref()?.node.as_ref())
        .map(|node| String::from_utf8_lossy(node_name(node)).into_owned())
        .collect();
    basenames.sort();
    for basename in basenames {
        announce(&format!("STORE_PATH {basename}"))?;
    }

    let misbehaviour = Misbehaviour {
        corrupt_blobs: args.corrupt_blob.iter().copied().collect(),
        corrupt_whole_reads: args.corrupt_whole_read.iter().copied().collect(),
        corrupt_directories: args.corrupt_directory.iter().copied().collect(),
        latency: Duration::from_millis(args.latency_ms),
        adversarial,
    };
    let state = Arc::new(State::new(
        imported,
        read_piece_size,
        misbehaviour,
        Stats::new(args.stats_file.clone()),
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(args, state));
    // Dropping the runtime cancels the connections; blob readers (blocking
    // tasks) then fail to send and end, so this does not hang.
    drop(runtime);
    result
}
