//! A guest-free load generator for vhost-user virtio-fs daemons: it is the
//! VMM and the guest's FUSE driver at once, drives N request queues from N
//! threads, and prints one `RESULT` line per timed pass with the daemon's
//! CPU time from /proc, so daemons can be compared without an emulated
//! guest in the way.

mod cpu;
mod fuse;
mod tree;
mod workload;

use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;

use fuse::Session;
use test_support::vhost_frontend::{Connection, Kick, Wanted, MAX_QUEUES};
use tree::Tree;
use workload::{Counts, Job, Names, Part, Workload};

/// Later options override earlier ones, so scripts can pass defaults first.
#[derive(Parser)]
#[command(about, args_override_self = true)]
struct Args {
    /// The daemon's vhost-user socket.
    #[arg(long)]
    socket: PathBuf,
    /// Local copy of the served tree (meta/, flat/, big/data.bin): what is
    /// walked, and what every answer is checked against.
    #[arg(long)]
    tree: PathBuf,
    /// Name of meta/ under the daemon's root (a store path name).
    #[arg(long, default_value = "meta")]
    name_meta: String,
    #[arg(long, default_value = "flat")]
    name_flat: String,
    #[arg(long, default_value = "big")]
    name_big: String,
    /// Request queues, one thread each (fewer if the daemon offers fewer).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Workloads to run, in order, on one connection.
    #[arg(long, value_delimiter = ',', required = true)]
    workload: Vec<Workload>,
    /// Run each workload once untimed before the timed pass.
    #[arg(long)]
    warm: bool,
    /// Check read data against the local copy: in no pass, the warm-up
    /// pass only, or every pass (the check's CPU then counts in the time).
    #[arg(long, value_enum, default_value = "warm")]
    verify: Verify,
    /// READs per thread in the random-read workload.
    #[arg(long, default_value_t = 20_000)]
    rand_reads: u64,
    /// The daemon's PID, for its CPU seconds.
    #[arg(long)]
    daemon_pid: u32,
    /// Label for the RESULT lines.
    #[arg(long, default_value = "daemon")]
    label: String,
    /// Seconds to wait for any one reply.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Leave EVENT_IDX out of the negotiation even if offered (Linux
    /// takes it; kicks then follow the device's NO_NOTIFY flag).
    #[arg(long)]
    no_event_idx: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Verify {
    None,
    Warm,
    All,
}

/// One timed (or warm-up) pass of a workload over every session.
fn pass(
    workload: Workload,
    sessions: &mut [Session],
    job: &Job,
    pid: u32,
) -> Result<(Counts, f64, f64)> {
    let barrier = Barrier::new(sessions.len() + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter_mut()
            .enumerate()
            .map(|(t, session)| {
                let part = Part {
                    job,
                    thread: t,
                    barrier: &barrier,
                };
                scope.spawn(move || workload.run(session, &part))
            })
            .collect();
        barrier.wait();
        let (t0, cpu0) = (Instant::now(), cpu::seconds(pid)?);
        barrier.wait();
        let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu::seconds(pid)? - cpu0);
        let mut total = Counts::default();
        for (t, handle) in handles.into_iter().enumerate() {
            let c = handle
                .join()
                .map_err(|_| anyhow::anyhow!("thread {t} panicked"))?
                .with_context(|| format!("{workload:?}, thread {t}"))?;
            total.ops += c.ops;
            total.bytes += c.bytes;
        }
        Ok((total, secs, cpu))
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        (1..MAX_QUEUES).contains(&args.threads),
        "--threads must be 1 to {}",
        MAX_QUEUES - 1
    );
    let tree = Tree::load(&args.tree)?;
    let names = Names {
        meta: args.name_meta.into_bytes(),
        flat: args.name_flat.into_bytes(),
        big: args.name_big.into_bytes(),
    };
    let timeout = Duration::from_secs(args.timeout);
    // As Linux's virtio driver: EVENT_IDX when offered (or NO_NOTIFY
    // honoured without it), a kick only when the device asked for one.
    let wanted = Wanted {
        queues: 1 + args.threads,
        event_idx: !args.no_event_idx,
        indirect_desc: false,
        kick: Kick::WhenAsked,
    };
    let mut conn = Connection::connect(&args.socket, wanted)?;
    let hiprio = Arc::new(Mutex::new(conn.queues.remove(0)));
    let mut sessions: Vec<Session> = conn
        .queues
        .drain(..)
        .enumerate()
        .map(|(i, q)| Session::new(q, hiprio.clone(), i as u64 + 1, timeout))
        .collect();
    if sessions.len() < args.threads {
        eprintln!(
            "loadgen: the daemon offers {} request queues; running {} threads",
            sessions.len(),
            sessions.len()
        );
    }
    let max_read = sessions[0].init()?;
    let threads = sessions.len();
    eprintln!(
        "loadgen: {} ({threads} queues, READs up to {} KiB; tree: {} files in meta/, {} in flat/, data.bin {} bytes)",
        args.label,
        max_read >> 10,
        tree.meta_files(),
        tree.flat.len(),
        tree.big_size
    );
    for workload in &args.workload {
        let passes: &[bool] = if args.warm { &[false, true] } else { &[true] };
        for &timed in passes {
            let verify = match args.verify {
                Verify::None => false,
                Verify::Warm => !timed,
                Verify::All => true,
            };
            let job = Job {
                tree: &tree,
                names: &names,
                threads,
                verify,
                max_read,
                rand_reads: args.rand_reads,
            };
            let (c, secs, cpu) = pass(*workload, &mut sessions, &job, args.daemon_pid)?;
            println!(
                "RESULT label={} workload={} pass={} threads={threads} verified={} ops={} bytes={} secs={secs:.6} cpu={cpu:.4} ops_per_s={:.0} mb_per_s={:.1}",
                args.label,
                format!("{workload:?}").to_lowercase(),
                if timed { "timed" } else { "warm" },
                verify as u8,
                c.ops,
                c.bytes,
                c.ops as f64 / secs,
                c.bytes as f64 / secs / 1e6
            );
        }
    }
    Ok(())
}
