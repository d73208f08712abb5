//! The limit for cold reads: a plain gRPC client streaming one blob
//! (BlobService.Read) from the store, with no cache, no FUSE and no
//! verification unless asked. Prints one `RESULT` line.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use tvix_virtiofsd::proto::castore::blob_service_client::BlobServiceClient;
use tvix_virtiofsd::proto::castore::ReadBlobRequest;
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

    let t0 = Instant::now();
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
    ensure!(
        received == size,
        "received {received} bytes, expected {size}"
    );
    if args.verify {
        ensure!(hasher.finalize() == digest, "the blob's BLAKE3 differs");
    }
    println!(
        "RESULT label={} workload=blob pass=timed threads=1 verified={} ops=1 bytes={received} secs={secs:.6} cpu=0 ops_per_s=0 mb_per_s={:.1} messages={messages}",
        args.label,
        args.verify as u8,
        received as f64 / secs / 1e6
    );
    Ok(())
}
