//! The per-byte bounds of the read paths on this host, on one core: the
//! rate of a memory copy (what every READ costs at least, and all that
//! virtiofsd does), of BLAKE3 in 16 KiB groups at their offsets (how the
//! daemon verifies), and of a read of a file in the page cache into a
//! buffer. Prints one `RATE` line (GB/s); the first argument, optional, is
//! the file to read (read again from its start as often as it takes).

use std::hint::black_box;
use std::io::Read;
use std::time::Instant;

use blake3::hazmat::HasherExt;

const WORKING_SET: usize = 64 << 20;
const PIECE: usize = 256 << 10;
const GROUP: usize = 16 << 10;
const ROUNDS: usize = 8;

/// GB/s of `f` over `ROUNDS` passes of `WORKING_SET` bytes, best of three.
fn rate(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..ROUNDS {
                f();
            }
            (ROUNDS * WORKING_SET) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn main() -> std::io::Result<()> {
    let src: Vec<u8> = (0..WORKING_SET)
        .map(|i| (i * 31 + i / 4096) as u8)
        .collect();
    let mut dst = vec![0u8; WORKING_SET];
    let memcpy = rate(|| {
        for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
            d.copy_from_slice(s);
        }
        black_box(&dst);
    });
    let blake3 = rate(|| {
        for (i, group) in src.chunks(GROUP).enumerate() {
            let cv = blake3::Hasher::new()
                .set_input_offset((i * GROUP) as u64)
                .update(group)
                .finalize_non_root();
            black_box(cv);
        }
    });
    let mut line = format!("RATE memcpy_gb_s={memcpy:.2} blake3_gb_s={blake3:.2}");
    if let Some(path) = std::env::args_os().nth(1) {
        let mut buf = vec![0u8; PIECE];
        let mut failed = None;
        let pread = rate(|| {
            if failed.is_none() {
                failed = read_from_page_cache(&path, &mut buf).err();
            }
        });
        if let Some(e) = failed {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.to_string_lossy()),
            ));
        }
        line += &format!(" page_cache_read_gb_s={pread:.2}");
    }
    println!("{line}");
    Ok(())
}

/// Reads `WORKING_SET` bytes of the file at `path` into `buf`, piece by
/// piece, from its start again whenever it ends.
fn read_from_page_cache(path: &std::ffi::OsStr, buf: &mut [u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut left = WORKING_SET;
    let mut this_pass = 0;
    while left > 0 {
        let n = file.read(buf)?;
        if n == 0 {
            if this_pass == 0 {
                return Err(std::io::Error::other("empty file"));
            }
            file = std::fs::File::open(path)?;
            this_pass = 0;
            continue;
        }
        this_pass += n;
        left = left.saturating_sub(n);
    }
    Ok(())
}
