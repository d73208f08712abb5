//! Nix archive (NAR) hashing and the store path Nix and the real importers
//! give an imported tree, so the fixture names store paths exactly as
//! `tvix-store import` and `snix-store import` do.
//!
//! The archive is never built: its bytes go straight into SHA-256, file
//! contents streamed from disk.

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use tvix_virtiofsd::store::nixbase32;

/// SHA-256 and length of a NAR, as a PathInfo's `narinfo` carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NarHash {
    pub sha256: [u8; 32],
    pub size: u64,
}

/// A SHA-256 that counts what it was fed.
struct NarWriter {
    hasher: Sha256,
    len: u64,
}

impl NarWriter {
    fn bytes(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    fn padding(&mut self, len: u64) {
        let pad = (8 - len % 8) % 8;
        self.bytes(&[0u8; 8][..pad as usize]);
    }

    /// A NAR string: little-endian u64 length, the bytes, zero padding to 8.
    fn string(&mut self, s: &[u8]) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s);
        self.padding(s.len() as u64);
    }

    fn node(&mut self, path: &Path) -> Result<()> {
        let meta =
            fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
        self.string(b"(");
        self.string(b"type");
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target =
                fs::read_link(path).with_context(|| format!("readlink {}", path.display()))?;
            self.string(b"symlink");
            self.string(b"target");
            self.string(target.as_os_str().as_bytes());
        } else if file_type.is_dir() {
            self.string(b"directory");
            let mut names: Vec<_> = fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .with_context(|| format!("reading directory {}", path.display()))?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                self.string(b"entry");
                self.string(b"(");
                self.string(b"name");
                self.string(name.as_bytes());
                self.string(b"node");
                self.node(&path.join(&name))?;
                self.string(b")");
            }
        } else {
            self.string(b"regular");
            if meta.permissions().mode() & 0o111 != 0 {
                self.string(b"executable");
                self.string(b"");
            }
            self.string(b"contents");
            self.bytes(&meta.len().to_le_bytes());
            let copied = read_in_pieces(path, |piece| self.bytes(piece))?;
            anyhow::ensure!(
                copied == meta.len(),
                "{} changed while hashing",
                path.display()
            );
            self.padding(copied);
        }
        self.string(b")");
        Ok(())
    }
}

/// Feeds a file's bytes to `sink` in 1 MiB pieces; returns how many there
/// were (the caller compares with the size it announced).
pub fn read_in_pieces(path: &Path, mut sink: impl FnMut(&[u8])) -> Result<u64> {
    let mut file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        sink(&buf[..n]);
        total += n as u64;
    }
}

/// The NAR hash of the file, directory or symlink at `path`.
pub fn nar_hash(path: &Path) -> Result<NarHash> {
    let mut w = NarWriter {
        hasher: Sha256::new(),
        len: 0,
    };
    w.string(b"nix-archive-1");
    w.node(path)?;
    Ok(NarHash {
        sha256: w.hasher.finalize().into(),
        size: w.len,
    })
}

/// The 20-byte hash of the content-addressed store path `name` whose NAR
/// has `nar_sha256` and which has no references: Nix's fixed-output path
/// for a recursive SHA-256 (what `nix-store --add` and both real importers
/// compute), SHA-256 of `source:sha256:<hex>:/nix/store:<name>` folded to
/// 20 bytes.
pub fn store_path_hash(name: &str, nar_sha256: &[u8; 32]) -> [u8; 20] {
    let fingerprint = format!(
        "source:sha256:{}:/nix/store:{name}",
        data_encoding::HEXLOWER.encode(nar_sha256)
    );
    let digest: [u8; 32] = Sha256::digest(fingerprint.as_bytes()).into();
    let mut folded = [0u8; 20];
    for (i, b) in digest.iter().enumerate() {
        folded[i % 20] ^= b;
    }
    folded
}

/// `<nixbase32 hash>-<name>`.
pub fn store_path_basename(name: &str, nar_sha256: &[u8; 32]) -> ([u8; 20], String) {
    let hash = store_path_hash(name, nar_sha256);
    (hash, format!("{}-{name}", nixbase32::encode(&hash)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nix-store --dump` of a file holding "hello\n" is 120 bytes.
    #[test]
    fn a_regular_file_has_the_nar_layout_nix_writes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"hello\n").unwrap();
        let h = nar_hash(&f).unwrap();
        // "nix-archive-1" (8+16), "(" "type" "regular" "contents" (4 × 16),
        // length 8, data padded to 8, ")" 16.
        assert_eq!(h.size, 24 + 64 + 8 + 8 + 16);
    }
}
