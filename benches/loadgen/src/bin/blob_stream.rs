//! The limit for cold reads: a plain gRPC client streaming one blob
//! (BlobService.Read) from the store, with no cache, no FUSE and no
//! verification unless asked. Prints one `RESULT` line.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use tvix_virtiofsd::proto::castore::blob_service_client::BlobServiceClient;
use tvix_virtiofsd::proto::castore::stat_blob_response::ChunkMeta;
use tvix_virtiofsd::proto::castore::{ReadBlobRequest, StatBlobRequest};
use tvix_virtiofsd::store::address::{StoreAddress, TlsSettings};

#[derive(Parser)]
#[command(about)]
struct Args {
    /// The store's address (grpc+unix:///abs/path.sock, grpc+http://host:port).
    #[arg(long)]
    store: String,
    /// The local copy of the blob: its BLAKE3 digest names the blob, and
    /// its size is what must arrive.
    #[arg(long)]
    file: PathBuf,
    /// Also hash what arrives and compare (the hashing then counts in the time).
    #[arg(long)]
    verify: bool,
    #[arg(long, default_value = "plain-client")]
    label: String,
    /// Read the blob chunk by chunk instead (Stat with its chunk list, then
    /// one Read per chunk), with up to this many Reads at once: what a
    /// per-chunk reader costs the store and itself.
    #[arg(long)]
    per_chunk: Option<usize>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let data = std::fs::read(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let digest = blake3::hash(&data);
    let size = data.len() as u64;
    drop(data);
    let address = StoreAddress::from_str(&args.store).map_err(|e| anyhow::anyhow!("{e}"))?;
    let channel = address
        .channel(Duration::from_secs(10), &TlsSettings::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut client = BlobServiceClient::new(channel).max_decoding_message_size(64 << 20);

    if let Some(parallel) = args.per_chunk {
        return per_chunk(
            client,
            digest,
            size,
            parallel.max(1),
            args.verify,
            &args.label,
        )
        .await;
    }
    let t0 = Instant::now();
    let cpu0 = process_cpu_secs();
    let mut stream = client
        .read(ReadBlobRequest {
            digest: digest.as_bytes().to_vec().into(),
        })
        .await
        .context("BlobService.Read")?
        .into_inner();
    let mut hasher = blake3::Hasher::new();
    let mut received = 0u64;
    let mut messages = 0u64;
    while let Some(chunk) = stream.message().await.context("BlobService.Read stream")? {
        received += chunk.data.len() as u64;
        messages += 1;
        if args.verify {
            hasher.update(&chunk.data);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_secs() - cpu0;
    ensure!(
        received == size,
        "received {received} bytes, expected {size}"
    );
    if args.verify {
        ensure!(hasher.finalize() == digest, "the blob's BLAKE3 differs");
    }
    println!(
        "RESULT label={} workload=blob pass=timed threads=1 verified={} ops=1 bytes={received} secs={secs:.6} cpu={cpu:.6} ops_per_s=0 mb_per_s={:.1} messages={messages}",
        args.label,
        args.verify as u8,
        received as f64 / secs / 1e6
    );
    Ok(())
}

async fn per_chunk(
    mut client: BlobServiceClient<tonic::transport::Channel>,
    digest: blake3::Hash,
    size: u64,
    parallel: usize,
    verify: bool,
    label: &str,
) -> Result<()> {
    use futures::stream::{StreamExt, TryStreamExt};
    let t0 = Instant::now();
    let cpu0 = process_cpu_secs();
    let mut chunks = client
        .stat(StatBlobRequest {
            digest: digest.as_bytes().to_vec().into(),
            send_chunks: true,
            send_bao: false,
        })
        .await
        .context("BlobService.Stat")?
        .into_inner()
        .chunks;
    // A store that keeps the blob in one piece sends no list: one Read.
    if chunks.is_empty() {
        chunks.push(ChunkMeta {
            digest: digest.as_bytes().to_vec().into(),
            size,
        });
    }
    let n = chunks.len();
    let counts: Vec<(u64, u64)> = futures::stream::iter(chunks)
        .map(|c| {
            let mut client = client.clone();
            async move {
                let mut stream = client
                    .read(ReadBlobRequest {
                        digest: c.digest.clone(),
                    })
                    .await
                    .context("BlobService.Read of a chunk")?
                    .into_inner();
                let (mut bytes, mut messages) = (0u64, 0u64);
                let mut hasher = blake3::Hasher::new();
                while let Some(m) = stream.message().await.context("chunk stream")? {
                    bytes += m.data.len() as u64;
                    messages += 1;
                    if verify {
                        hasher.update(&m.data);
                    }
                }
                ensure!(
                    bytes == c.size,
                    "a chunk of {bytes} bytes, expected {}",
                    c.size
                );
                ensure!(
                    !verify || hasher.finalize().as_bytes()[..] == c.digest[..],
                    "a chunk's BLAKE3 differs"
                );
                anyhow::Ok((bytes, messages))
            }
        })
        .buffered(parallel)
        .try_collect()
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_secs() - cpu0;
    let received: u64 = counts.iter().map(|c| c.0).sum();
    let messages: u64 = counts.iter().map(|c| c.1).sum();
    ensure!(
        received == size,
        "received {received} bytes, expected {size}"
    );
    println!(
        "RESULT label={label} workload=blob pass=timed threads=1 verified={} ops={n} bytes={received} secs={secs:.6} cpu={cpu:.6} ops_per_s=0 mb_per_s={:.1} messages={messages}",
        verify as u8,
        received as f64 / secs / 1e6
    );
    Ok(())
}

/// This process's CPU time so far, in seconds.
fn process_cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}
