//! Recycled memory for chunk bytes. A chunk read from disk or received
//! from the store needs room of its size, and fresh memory costs a page
//! fault and the kernel's zeroing per 4 KiB page, more than the read into
//! it; a buffer whose chunk has left the memory cache is used again.
//! Buffers come in size classes an eighth apart, so the memory cache's
//! weight (the chunk's length) undercounts one by less than an eighth.

use bytes::Bytes;
use parking_lot::Mutex;

/// Smaller buffers are cheap enough to allocate.
const MIN_RECYCLED: usize = 64 << 10;
/// At most this many bytes wait for reuse (beyond the memory cache).
const KEPT_BYTES: usize = 16 << 20;

struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = parking_lot::const_mutex(Pool {
    free: Vec::new(),
    bytes: 0,
});

/// `len` rounded up to its size class.
fn class(len: usize) -> usize {
    if len < MIN_RECYCLED {
        return len;
    }
    let step = (1usize << len.ilog2()) / 8;
    len.next_multiple_of(step)
}

/// An empty buffer with room for `len` bytes: a recycled one of its size
/// class if there is one, else fresh memory faulted in with one call.
pub fn take(len: usize) -> Vec<u8> {
    let capacity = class(len);
    if capacity >= MIN_RECYCLED {
        let mut pool = POOL.lock();
        if let Some(i) = pool.free.iter().position(|b| b.capacity() == capacity) {
            let mut buf = pool.free.swap_remove(i);
            pool.bytes -= capacity;
            buf.clear();
            return buf;
        }
    }
    let mut buf = Vec::with_capacity(capacity);
    populate(&mut buf);
    buf
}

/// `buf` as shared bytes whose memory returns for reuse once the last
/// reference is gone.
pub fn freeze(buf: Vec<u8>) -> Bytes {
    if buf.capacity() >= MIN_RECYCLED && buf.capacity() == class(buf.capacity()) {
        Bytes::from_owner(Recycled(buf))
    } else {
        Bytes::from(buf)
    }
}

struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let mut pool = POOL.lock();
        if pool.bytes + buf.capacity() <= KEPT_BYTES {
            pool.bytes += buf.capacity();
            pool.free.push(buf);
        }
    }
}

/// Faults in the spare capacity of `buf` with one call instead of a page
/// fault per 4 KiB page during the read. Best effort (needs Linux 5.14).
fn populate(buf: &mut Vec<u8>) {
    const PAGE: usize = 4096;
    let spare = buf.spare_capacity_mut();
    let start = spare.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(PAGE);
    let end = (start + spare.len()) & !(PAGE - 1);
    if end > aligned {
        // SAFETY: the range lies within this Vec's own allocation, which
        // holds no values yet; populating only faults its pages in.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_an_eighth_apart_and_buffers_come_back() {
        for len in [1, 1000, MIN_RECYCLED - 1] {
            assert_eq!(class(len), len);
        }
        for len in [MIN_RECYCLED, 100_000, 262_144, 262_145, 1 << 22] {
            let c = class(len);
            assert!(c >= len && c - len <= len / 8, "{len} -> {c}");
            assert_eq!(class(c), c);
        }
        // A length of its own class, so no other test's buffer is taken.
        let len = 3 << 20 | 12345;
        let mut buf = take(len);
        assert!(buf.capacity() >= len);
        buf.extend(std::iter::repeat_n(7u8, len));
        let ptr = buf.as_ptr();
        let bytes = freeze(buf);
        assert_eq!(bytes.len(), len);
        assert!(bytes.iter().all(|&b| b == 7));
        let copy = bytes.clone();
        drop(bytes);
        assert_eq!(copy.len(), len, "a clone keeps the memory alive");
        drop(copy);
        let again = take(len);
        assert_eq!(again.as_ptr(), ptr, "the buffer was not reused");
        assert!(again.is_empty());
    }
}
