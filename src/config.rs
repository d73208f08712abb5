//! Command line of the daemon. Flag names follow virtiofsd where the
//! meaning is the same (`--socket-path`, `--fd`, `--thread-pool-size`,
//! `--log-level`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Parser};

use crate::cache::{CacheConfig, CacheLayout, InstanceName, PrefetchGuess};
use crate::fs::{CachePolicy, DigestXattrs, FsConfig, GuestLimits};
use crate::sandbox::landlock::Access;
use crate::sandbox::{LandlockMode, LandlockPolicy, SandboxConfig, SeccompMode};
use crate::store::{StoreAddress, StoreConfig, StoreProtocol, TlsSettings};
use crate::vhost_user::DeviceConfig;

/// Serve a read-only Nix store from a remote tvix-store to a VM over
/// vhost-user (virtio-fs), or on a host mount point through FUSE.
#[derive(Debug, Parser)]
#[command(name = "tvix-virtiofsd", version)]
#[command(group(ArgGroup::new("serve").required(true).args(["socket_path", "fd", "mount", "print_capabilities"])))]
pub struct Cli {
    /// vhost-user socket to listen on for the VMM.
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,

    /// Listening vhost-user socket inherited from the parent (e.g. systemd).
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,

    /// Mount the filesystem here through /dev/fuse instead of serving a VMM.
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,

    /// Print the vhost-user backend capabilities (JSON) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Address of the store for all three services:
    /// grpc+unix:///abs/path.sock or grpc+http://host:port. May be left out
    /// when all three --*-service-addr are given.
    #[arg(long, value_name = "URL")]
    pub store: Option<StoreAddress>,

    /// BlobService address, if not the one of --store.
    #[arg(long, value_name = "URL")]
    pub blob_service_addr: Option<StoreAddress>,

    /// DirectoryService address, if not the one of --store.
    #[arg(long, value_name = "URL")]
    pub directory_service_addr: Option<StoreAddress>,

    /// PathInfoService address, if not the one of --store.
    #[arg(long, value_name = "URL")]
    pub path_info_service_addr: Option<StoreAddress>,

    /// Package names the store speaks: tvix (tvix-store) or snix.
    #[arg(long, value_enum, default_value_t = StoreProtocol::Tvix)]
    pub store_protocol: StoreProtocol,

    /// Seconds to wait for the store to connect, answer, or send the next
    /// message of a stream before the guest gets EIO.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub store_timeout: f64,

    /// Bytes per second a store call must deliver on average (suffixes K,
    /// M, G): a call expecting N bytes fails after --store-timeout plus
    /// N / this, however the store spaces its messages.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub store_min_rate: u64,

    /// CA certificate (PEM) to trust for grpc+https:// stores instead of the
    /// system roots.
    #[arg(long, value_name = "FILE")]
    pub store_ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with the store.
    #[arg(long, value_name = "FILE", requires = "store_key")]
    pub store_cert: Option<PathBuf>,

    /// Client private key (PEM) for mutual TLS with the store.
    #[arg(long, value_name = "FILE", requires = "store_cert")]
    pub store_key: Option<PathBuf>,

    /// List the root directory with PathInfoService.List. Without it the
    /// root lists as empty, but every store path can still be opened by name.
    #[arg(long)]
    pub list_root: bool,

    /// Answer no extended attributes. By default every file and directory
    /// has its castore digest (and a file its size, a store path's root its
    /// NAR size and hash) under `user.tvix.castore.*` or
    /// `user.snix.castore.*`, as the store's own virtiofs names them.
    #[arg(long)]
    pub no_xattrs: bool,

    /// Open file and directory handles the guest may hold at once; more
    /// opens get ENFILE.
    #[arg(long, value_name = "N", default_value_t = GuestLimits::default().max_open_handles)]
    pub max_open_handles: usize,

    /// Inodes the guest may hold at once (what its dentry cache refers
    /// to); more lookups get ENOMEM. Each costs about 280 bytes, so the
    /// default bounds the table at about 280 MiB.
    #[arg(long, value_name = "N", default_value_t = GuestLimits::default().max_inodes)]
    pub max_inodes: usize,

    /// Seconds one root listing (--list-root) serves every OPENDIR of the
    /// root before the store is asked again.
    #[arg(long, value_name = "SECS", default_value_t = GuestLimits::default().root_listing_ttl.as_secs_f64())]
    pub root_listing_ttl: f64,

    /// Request queues of the virtio-fs device (plus one high-priority queue).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub num_request_queues: u16,

    /// Largest virtqueue size offered to the VMM.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub queue_size: u16,

    /// Threads that run requests in parallel with their queue's thread
    /// (0: each queue's own thread runs its requests in order).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub thread_pool_size: usize,

    /// Microseconds a queue thread keeps watching its ring for the guest's
    /// next request before it sleeps, so that a guest sending requests
    /// back to back needs no kick. Adaptive: it polls only while requests
    /// come that close together, never longer than this (0: never poll).
    #[arg(long, value_name = "US", default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub queue_poll_us: u32,

    /// After the VMM disconnects, wait for the next connection instead of
    /// exiting.
    #[arg(long)]
    pub persistent: bool,

    /// Threads serving /dev/fuse in --mount mode.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub fuse_threads: usize,

    /// What the guest may cache: never (direct I/O, no name or attribute
    /// caching), auto (page cache within an open, 1 s timeouts) or always
    /// (page cache kept across opens, long timeouts: store content never
    /// changes).
    #[arg(long, value_enum, default_value_t = CachePolicy::Always)]
    pub cache: CachePolicy,

    /// Seconds the guest may cache names and attributes (default by
    /// --cache: never 0, auto 1, always 86400).
    #[arg(long, value_name = "SECS")]
    pub entry_timeout: Option<f64>,

    /// Seconds the guest may remember that a store path does not exist.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub negative_timeout: f64,

    /// Bytes of memory for verified chunks, Directories, chunk lists and
    /// path infos (suffixes K, M, G).
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_size)]
    pub memory_cache_size: u64,

    /// Persistent disk cache directory, shareable by every daemon on the
    /// host. Without it, only memory is used.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// This daemon's name among those sharing --cache-dir (systemd units
    /// pass %i): its store path and chunk-list mappings are kept in
    /// DIR/v2/instances/NAME, which no other instance reads or writes.
    /// Without it, mappings stay in memory and only the shared objects
    /// (DIR/v2/objects) are kept on disk.
    #[arg(long, value_name = "NAME")]
    pub instance: Option<InstanceName>,

    /// Bound of the disk cache directory as a whole (suffixes K, M, G).
    #[arg(long, value_name = "SIZE", default_value = "10G", value_parser = parse_size)]
    pub disk_cache_size: u64,

    /// Chunks fetched ahead of a sequential reader, one by one or in one
    /// stream of the whole blob (0: no readahead).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub readahead_chunks: usize,

    /// Bytes fetched ahead per store path at most, in the background and
    /// only while the guest waits for nothing else: the files of the
    /// store path's access trace (what a guest opened before, recorded
    /// per instance), else what --prefetch-guess names (suffixes K, M, G;
    /// 0: no prefetch and no trace).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub prefetch_bytes: u64,

    /// What to prefetch of a store path that has no access trace yet:
    /// `directory`, the small files of a directory once the guest opens a
    /// file in it; `tree`, every small file of the store path when it is
    /// first looked up; `none`.
    #[arg(long, value_name = "GUESS", value_enum, default_value_t = PrefetchGuess::Directory)]
    pub prefetch_guess: PrefetchGuess,

    /// Directory for large blobs the store does not chunk, when there is no
    /// --cache-dir (they are fetched whole, verified, then read from
    /// there). Default: $TMPDIR.
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Write cache and fetch counters here (`name value` lines), once a
    /// second while they change and at exit.
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,

    /// Serve Prometheus metrics (GET /metrics) on this unix socket path or
    /// TCP host:port. Bound at start-up, before the sandbox.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<crate::metrics::MetricsAddress>,

    /// Write Prometheus metrics to this file (node_exporter textfile),
    /// replaced atomically every 5 seconds and at exit.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// Seconds within which a repeated error (same operation, digest or
    /// store path, and error) is logged once, with a count of the others.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub log_repeat_window: f64,

    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Syscalls outside the allowlist (seccomp/<arch>.json): kill the
    /// daemon, log them (dmesg/audit, type=1326) and go on, or no filter.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = SeccompMode::Kill)]
    pub seccomp: SeccompMode,

    /// Confine file access to the cache/spool/stats paths and TCP to the
    /// store's ports with Landlock: where the kernel supports it (auto),
    /// always (require), or not at all (off).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = LandlockMode::Auto)]
    pub landlock: LandlockMode,
}

/// Parses `1024`, `64K`, `128M`, `2G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use e.g. 512M"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn seconds(secs: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("--{flag} must be a non-negative number of seconds"))
}

impl Cli {
    pub fn store_config(&self) -> anyhow::Result<StoreConfig> {
        let store = self.store.clone();
        let pick = |specific: &Option<StoreAddress>, name: &str| {
            specific.clone().or_else(|| store.clone()).ok_or_else(|| {
                anyhow::anyhow!("no address for the {name}: give --store or --{name}-addr")
            })
        };
        Ok(StoreConfig {
            blob_service: pick(&self.blob_service_addr, "blob-service")?,
            directory_service: pick(&self.directory_service_addr, "directory-service")?,
            path_info_service: pick(&self.path_info_service_addr, "path-info-service")?,
            protocol: self.store_protocol,
            timeout: seconds(self.store_timeout, "store-timeout")?,
            min_rate: self.store_min_rate.max(1),
            tls: TlsSettings {
                ca: self.store_ca.clone(),
                cert: self.store_cert.clone(),
                key: self.store_key.clone(),
            },
        })
    }

    pub fn fs_config(&self) -> anyhow::Result<FsConfig> {
        Ok(FsConfig {
            list_root: self.list_root,
            cache: self.cache,
            entry_timeout: match self.entry_timeout {
                Some(secs) => seconds(secs, "entry-timeout")?,
                None => self.cache.default_entry_timeout(),
            },
            negative_root_timeout: seconds(self.negative_timeout, "negative-timeout")?,
            readahead_chunks: self.readahead_chunks,
            limits: GuestLimits {
                max_open_handles: self.max_open_handles,
                max_inodes: self.max_inodes,
                root_listing_ttl: seconds(self.root_listing_ttl, "root-listing-ttl")?,
            },
            digest_xattrs: (!self.no_xattrs).then(|| DigestXattrs::of(self.store_protocol)),
        })
    }

    pub fn cache_config(&self) -> anyhow::Result<CacheConfig> {
        Ok(CacheConfig {
            memory_bytes: self.memory_cache_size,
            disk_dir: self.cache_dir.clone(),
            instance: self.instance.clone(),
            disk_bytes: self.disk_cache_size,
            negative_ttl: seconds(self.negative_timeout, "negative-timeout")?,
            readahead_chunks: self.readahead_chunks,
            spool_dir: self.spool_dir.clone(),
            prefetch_bytes: self.prefetch_bytes,
            prefetch_guess: self.prefetch_guess,
        })
    }

    /// What the sandbox allows once start-up is done.
    pub fn sandbox_config(&self, store: &StoreConfig) -> SandboxConfig {
        let mut policy = LandlockPolicy::for_daemon(
            self.cache_dir
                .as_deref()
                .map(|dir| CacheLayout::new(dir, self.instance.as_ref()))
                .as_ref(),
            self.spool_dir.as_deref(),
            self.stats_file.as_deref(),
            store,
        );
        crate::metrics::textfile::allow_in_sandbox(&mut policy, self.metrics_file.as_deref());
        // SIGTERM removes the socket it listens on (not one inherited).
        if let Some(dir) = self.socket_path.as_deref().and_then(Path::parent) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            policy.allow(dir, Access::RemoveFiles);
        }
        SandboxConfig {
            seccomp: self.seccomp,
            landlock: self.landlock,
            policy,
        }
    }

    pub fn log_repeat_window(&self) -> anyhow::Result<Duration> {
        seconds(self.log_repeat_window, "log-repeat-window")
    }

    pub fn device_config(&self) -> DeviceConfig {
        DeviceConfig {
            num_request_queues: usize::from(self.num_request_queues),
            queue_size: usize::from(self.queue_size),
            thread_pool_size: self.thread_pool_size,
            queue_poll: Duration::from_micros(u64::from(self.queue_poll_us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("128m"), Ok(128 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn per_service_addresses_override_the_store() {
        let cli = Cli::parse_from([
            "tvix-virtiofsd",
            "--socket-path",
            "/tmp/s",
            "--store",
            "grpc+unix:///a.sock",
            "--blob-service-addr",
            "grpc+http://127.0.0.1:1",
        ]);
        let c = cli.store_config().unwrap();
        assert_eq!(
            c.blob_service,
            StoreAddress::Http("http://127.0.0.1:1".into())
        );
        assert_eq!(c.directory_service, StoreAddress::Unix("/a.sock".into()));
        assert_eq!(c.path_info_service, StoreAddress::Unix("/a.sock".into()));
    }

    #[test]
    fn requires_a_way_to_serve() {
        assert!(Cli::try_parse_from(["tvix-virtiofsd", "--store", "grpc+unix:///a.sock"]).is_err());
    }
}
