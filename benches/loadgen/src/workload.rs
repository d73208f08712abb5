//! The workloads, each run by every thread on its own request queue: what a
//! thread does before the clock starts (lookups, opens), what is timed, and
//! what it undoes afterwards (RELEASE, FORGET). Every answer is checked
//! against the local tree; with `verify`, read data is too.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Barrier;

use anyhow::{ensure, Context, Result};
use fuse_backend_rs::abi::fuse_abi::ROOT_ID;

use crate::fuse::Session;
use crate::tree::Tree;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// LOOKUP + GETATTR of every directory and file of meta/.
    Meta,
    /// READDIRPLUS (4 KiB, as Linux sends) of the whole of flat/.
    Readdir,
    /// Sequential 128 KiB READs of big/data.bin.
    Seq,
    /// Sequential 1 MiB READs of big/data.bin.
    Seq1m,
    /// 4 KiB READs at random aligned offsets of big/data.bin.
    Rand,
}

/// The names of the tree's parts under the daemon's root.
pub struct Names {
    pub meta: Vec<u8>,
    pub flat: Vec<u8>,
    pub big: Vec<u8>,
}

/// What one thread did in the timed part.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    /// FUSE requests (for readdir: entries listed).
    pub ops: u64,
    /// Bytes of file data read.
    pub bytes: u64,
}

/// Everything a thread needs to run a workload.
pub struct Job<'a> {
    pub tree: &'a Tree,
    pub names: &'a Names,
    pub threads: usize,
    pub verify: bool,
    pub max_read: u32,
    pub rand_reads: u64,
}

/// One thread's part of a pass.
pub struct Part<'a> {
    pub job: &'a Job<'a>,
    pub thread: usize,
    /// Passed twice: when the clock starts and when this thread is done.
    pub barrier: &'a Barrier,
}

impl<'a> std::ops::Deref for Part<'a> {
    type Target = Job<'a>;
    fn deref(&self) -> &Job<'a> {
        self.job
    }
}

impl Workload {
    pub fn run(self, session: &mut Session, job: &Part) -> Result<Counts> {
        match self {
            Workload::Meta => meta(session, job),
            Workload::Readdir => readdir(session, job),
            Workload::Seq => seq(session, job, 128 << 10),
            Workload::Seq1m => seq(session, job, 1 << 20),
            Workload::Rand => rand(session, job, 4096),
        }
    }
}

/// Waits at the start barrier; when preparing failed, at the end barrier
/// too, so that the other threads and the clock are not left waiting.
fn start<T>(job: &Part, prepared: Result<T>) -> Result<T> {
    job.barrier.wait();
    if prepared.is_err() {
        job.barrier.wait();
    }
    prepared
}

fn finish<T>(job: &Part, result: Result<T>) -> Result<T> {
    job.barrier.wait();
    result
}

fn meta(s: &mut Session, job: &Part) -> Result<Counts> {
    let top = start(job, s.lookup(ROOT_ID, &job.names.meta))?;
    let mut lookups: HashMap<u64, u64> = HashMap::new();
    let walked = (|| {
        let mut c = Counts::default();
        // Thread t walks every threads-th directory.
        for dir in job.tree.meta.iter().skip(job.thread).step_by(job.threads) {
            let d = s.lookup(top.nodeid, &dir.name)?;
            *lookups.entry(d.nodeid).or_default() += 1;
            let attr = s.getattr(d.nodeid)?;
            ensure!(attr.mode & libc::S_IFMT == libc::S_IFDIR, "not a directory");
            c.ops += 2;
            for (name, size) in &dir.files {
                let f = s.lookup(d.nodeid, name)?;
                *lookups.entry(f.nodeid).or_default() += 1;
                ensure!(f.attr.size == *size, "LOOKUP: wrong size");
                let attr = s.getattr(f.nodeid)?;
                ensure!(
                    attr.size == *size && attr.mode & libc::S_IFMT == libc::S_IFREG,
                    "GETATTR of {}: {attr:?}, expected a file of {size} bytes",
                    String::from_utf8_lossy(name)
                );
                c.ops += 2;
            }
        }
        Ok(c)
    })();
    let c = finish(job, walked)?;
    lookups.insert(
        top.nodeid,
        lookups.get(&top.nodeid).copied().unwrap_or(0) + 1,
    );
    s.forget(&lookups.into_iter().collect::<Vec<_>>())?;
    Ok(c)
}

fn readdir(s: &mut Session, job: &Part) -> Result<Counts> {
    let prepared = (|| {
        let top = s.lookup(ROOT_ID, &job.names.flat)?;
        let fh = s.opendir(top.nodeid)?;
        Ok((top, fh))
    })();
    let (top, fh) = start(job, prepared)?;
    let mut forgets = Vec::new();
    let listed = (|| {
        let mut c = Counts::default();
        let mut offset = 0;
        let mut seen = 0usize;
        loop {
            let entries = s.readdirplus(top.nodeid, fh, offset, 4096)?;
            c.ops += 1;
            let Some(last) = entries.last() else { break };
            offset = last.offset;
            for e in entries {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let size = job.tree.flat.get(&e.name).with_context(|| {
                    format!("unexpected entry {}", String::from_utf8_lossy(&e.name))
                })?;
                ensure!(e.entry.attr.size == *size, "READDIRPLUS: wrong size");
                if e.entry.nodeid != 0 {
                    forgets.push((e.entry.nodeid, 1));
                }
                seen += 1;
            }
        }
        ensure!(
            seen == job.tree.flat.len(),
            "READDIRPLUS listed {seen} entries, the directory has {}",
            job.tree.flat.len()
        );
        // Entries listed is the figure that compares across block sizes.
        c.ops = seen as u64;
        Ok(c)
    })();
    let c = finish(job, listed)?;
    s.releasedir(top.nodeid, fh)?;
    forgets.push((top.nodeid, 1));
    s.forget(&forgets)?;
    Ok(c)
}

/// Opens big/data.bin (and, to verify, the local copy).
fn open_big(s: &mut Session, job: &Part) -> Result<(u64, u64, u64, u64, Option<File>)> {
    let dir = s.lookup(ROOT_ID, &job.names.big)?;
    let file = s.lookup(dir.nodeid, b"data.bin")?;
    ensure!(
        file.attr.size == job.tree.big_size,
        "data.bin: {} bytes, expected {}",
        file.attr.size,
        job.tree.big_size
    );
    let fh = s.open(file.nodeid)?;
    let local = if job.verify {
        Some(File::open(&job.tree.big)?)
    } else {
        None
    };
    Ok((dir.nodeid, file.nodeid, fh, file.attr.size, local))
}

fn close_big(s: &mut Session, dir: u64, file: u64, fh: u64) -> Result<()> {
    s.release(file, fh)?;
    s.forget(&[(file, 1), (dir, 1)])
}

/// Thread t reads the t-th of `threads` contiguous slices, `block` bytes
/// per READ (at most what the daemon takes).
fn seq(s: &mut Session, job: &Part, block: u32) -> Result<Counts> {
    let (dir, file, fh, size, local) = start(job, open_big(s, job))?;
    let block = block.min(job.max_read);
    let slice = size.div_ceil(job.threads as u64);
    let (from, to) = (
        (slice * job.thread as u64).min(size),
        (slice * (job.thread as u64 + 1)).min(size),
    );
    let read = (|| {
        let mut c = Counts::default();
        let mut hasher = blake3::Hasher::new();
        let mut at = from;
        while at < to {
            let want = u64::from(block).min(to - at) as u32;
            let got = s.read(file, fh, at, want, local.is_some())?;
            ensure!(got == want as usize, "READ at {at}: {got} of {want} bytes");
            if local.is_some() {
                hasher.update(s.data());
            }
            at += u64::from(want);
            c.ops += 1;
            c.bytes += u64::from(want);
        }
        Ok((c, hasher))
    })();
    let (c, hasher) = finish(job, read)?;
    if let Some(local) = local {
        let mut expected = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = from;
        while at < to {
            let n = (buf.len() as u64).min(to - at) as usize;
            local.read_exact_at(&mut buf[..n], at)?;
            expected.update(&buf[..n]);
            at += n as u64;
        }
        ensure!(
            hasher.finalize() == expected.finalize(),
            "data.bin bytes {from}..{to}: BLAKE3 differs from the local copy"
        );
    }
    close_big(s, dir, file, fh)?;
    Ok(c)
}

/// `rand_reads` READs of `block` bytes at pseudo-random aligned offsets
/// (xorshift64, seeded by the thread).
fn rand(s: &mut Session, job: &Part, block: u32) -> Result<Counts> {
    let (dir, file, fh, size, local) = start(job, open_big(s, job))?;
    let blocks = size / u64::from(block);
    let read = (|| {
        ensure!(blocks > 0, "data.bin is smaller than {block} bytes");
        let mut c = Counts::default();
        let mut x = (job.thread as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut expected = vec![0u8; block as usize];
        for _ in 0..job.rand_reads {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % blocks) * u64::from(block);
            let got = s.read(file, fh, at, block, local.is_some())?;
            ensure!(
                got == block as usize,
                "READ at {at}: {got} of {block} bytes"
            );
            if let Some(local) = &local {
                local.read_exact_at(&mut expected, at)?;
                ensure!(
                    s.data() == expected,
                    "data.bin at {at}: differs from the local copy"
                );
            }
            c.ops += 1;
            c.bytes += u64::from(block);
        }
        Ok(c)
    })();
    let c = finish(job, read)?;
    close_big(s, dir, file, fh)?;
    Ok(c)
}
