//! The access trace of a store path: which files the guest opened, in the
//! order it first opened them, and how far into each it read. Recorded by
//! the daemon as the guest works, kept in this instance's private mappings
//! (it says what a guest did, which nothing can check, so no other daemon
//! may read or write it), and replayed on a later cold start: those files
//! first, in that order.
//!
//! On disk, after the mappings' checksum: a version byte, then one record
//! per file: its blob's digest (32 bytes), size and the end of the furthest
//! read (8 bytes each, little-endian). Files opened but never read are
//! left out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::store::B3Digest;

/// Files one trace holds at most (the first ones opened).
pub const MAX_FILES: usize = 4096;
/// Store paths traced at once at most; more are not traced.
const MAX_STORE_PATHS: usize = 1024;
/// The format's version byte.
const VERSION: u8 = 1;
const RECORD: usize = 48;
/// The longest trace on disk (checksum excluded).
pub const MAX_BYTES: u64 = (1 + MAX_FILES * RECORD) as u64;

/// One file of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracedFile {
    pub digest: B3Digest,
    pub size: u64,
    /// Bytes from the start that the guest's reads reached (≤ size).
    pub extent: u64,
}

/// The traces this daemon is recording.
#[derive(Default)]
pub struct Recorder {
    paths: Mutex<HashMap<[u8; 20], PathTrace>>,
}

#[derive(Default)]
struct PathTrace {
    files: Vec<(B3Digest, u64, Arc<AtomicU64>)>,
    seen: HashSet<B3Digest>,
    /// Changed since it was last taken to be written.
    unsaved: bool,
}

/// What [`Recorder::record`] did.
pub struct Recorded {
    /// Where the reads of this open count how far they got.
    pub extent: Arc<AtomicU64>,
    /// The trace has grown to a size worth writing out now (it is written
    /// again on the way out).
    pub worth_saving: bool,
}

impl Recorder {
    /// Records that the guest opened the blob `digest` of `size` bytes in
    /// the store path `store_path`; `None` if that trace is full or too
    /// many store paths are traced.
    pub fn record(&self, store_path: [u8; 20], digest: B3Digest, size: u64) -> Option<Recorded> {
        let mut paths = self.paths.lock();
        if !paths.contains_key(&store_path) && paths.len() >= MAX_STORE_PATHS {
            return None;
        }
        let trace = paths.entry(store_path).or_default();
        if trace.seen.contains(&digest) {
            // Opened before: the same extent, as far as either open read.
            let (_, _, extent) = trace.files.iter().find(|(d, _, _)| *d == digest)?;
            trace.unsaved = true;
            return Some(Recorded {
                extent: extent.clone(),
                worth_saving: false,
            });
        }
        if trace.files.len() >= MAX_FILES {
            return None;
        }
        trace.seen.insert(digest);
        let extent = Arc::new(AtomicU64::new(0));
        trace.files.push((digest, size, extent.clone()));
        trace.unsaved = true;
        let n = trace.files.len();
        Some(Recorded {
            extent,
            worth_saving: n >= 16 && n.is_power_of_two(),
        })
    }

    /// The encoding of the trace of `store_path`, marked saved.
    pub fn take(&self, store_path: &[u8; 20]) -> Option<Vec<u8>> {
        let mut paths = self.paths.lock();
        let trace = paths.get_mut(store_path)?;
        trace.unsaved = false;
        Some(encode(trace.files.iter().map(|(digest, size, extent)| {
            TracedFile {
                digest: *digest,
                size: *size,
                extent: extent.load(Ordering::Relaxed).min(*size),
            }
        })))
    }

    /// The store paths whose traces changed since they were last taken.
    pub fn unsaved(&self) -> Vec<[u8; 20]> {
        let paths = self.paths.lock();
        paths
            .iter()
            .filter(|(_, t)| t.unsaved)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// The on-disk form of `files` (those never read are left out).
pub fn encode(files: impl Iterator<Item = TracedFile>) -> Vec<u8> {
    let mut out = vec![VERSION];
    for f in files.filter(|f| f.extent > 0).take(MAX_FILES) {
        out.extend_from_slice(f.digest.as_bytes());
        out.extend_from_slice(&f.size.to_le_bytes());
        out.extend_from_slice(&f.extent.to_le_bytes());
    }
    out
}

/// The files of a trace on disk, or `None` if it is not one this version
/// wrote (then it is removed and a new one recorded).
pub fn decode(data: &[u8]) -> Option<Vec<TracedFile>> {
    let (&version, records) = data.split_first()?;
    if version != VERSION || records.len() % RECORD != 0 || records.len() / RECORD > MAX_FILES {
        return None;
    }
    records
        .chunks_exact(RECORD)
        .map(|r| {
            let digest = B3Digest::try_from(&r[..32]).ok()?;
            let size = u64::from_le_bytes(r[32..40].try_into().ok()?);
            let extent = u64::from_le_bytes(r[40..].try_into().ok()?);
            (size > 0 && extent > 0 && extent <= size).then_some(TracedFile {
                digest,
                size,
                extent,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> B3Digest {
        B3Digest::of(&[n])
    }

    #[test]
    fn records_first_opens_in_order_with_the_furthest_read() {
        let recorder = Recorder::default();
        let path = [7; 20];
        let a = recorder.record(path, digest(1), 100).unwrap();
        let b = recorder.record(path, digest(2), 5000).unwrap();
        let unread = recorder.record(path, digest(3), 10).unwrap();
        let a_again = recorder.record(path, digest(1), 100).unwrap();
        a.extent.fetch_max(40, Ordering::Relaxed);
        a_again.extent.fetch_max(100, Ordering::Relaxed);
        b.extent.fetch_max(4096, Ordering::Relaxed);
        drop(unread);
        assert_eq!(recorder.unsaved(), vec![path]);
        let files = decode(&recorder.take(&path).unwrap()).unwrap();
        assert_eq!(
            files,
            vec![
                TracedFile {
                    digest: digest(1),
                    size: 100,
                    extent: 100
                },
                TracedFile {
                    digest: digest(2),
                    size: 5000,
                    extent: 4096
                },
            ]
        );
        assert!(recorder.unsaved().is_empty());
    }

    #[test]
    fn a_trace_is_bounded_and_says_when_to_save() {
        let recorder = Recorder::default();
        let saves: Vec<usize> = (0..MAX_FILES + 10)
            .filter_map(|i| {
                let d = B3Digest::of(&(i as u64).to_le_bytes());
                recorder.record([1; 20], d, 1).map(|r| (i, r.worth_saving))
            })
            .filter(|(_, save)| *save)
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(saves, vec![16, 32, 64, 128, 256, 512, 1024, 2048, 4096]);
        assert!(recorder.record([1; 20], digest(0), 1).is_none());
    }

    #[test]
    fn only_well_formed_traces_decode() {
        let good = encode(
            [TracedFile {
                digest: digest(1),
                size: 10,
                extent: 10,
            }]
            .into_iter(),
        );
        assert_eq!(decode(&good).unwrap().len(), 1);
        assert!(decode(&[]).is_none());
        assert!(decode(&good[..good.len() - 1]).is_none());
        let mut other_version = good.clone();
        other_version[0] = 2;
        assert!(decode(&other_version).is_none());
        let mut past_the_end = good.clone();
        past_the_end[41..49].copy_from_slice(&11u64.to_le_bytes());
        assert!(decode(&past_the_end).is_none());
        assert_eq!(decode(&[VERSION]).unwrap(), vec![]);
    }
}
