//! The local copy of the served tree: what the workloads look up, list and
//! read, and what every answer is checked against.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

/// One directory of the metadata tree and its files (name, size).
pub struct MetaDir {
    pub name: Vec<u8>,
    pub files: Vec<(Vec<u8>, u64)>,
}

/// The three parts of the benchmark tree (top-level entries of `--tree`).
pub struct Tree {
    /// `meta/`: directories of small files, walked by lookup + getattr.
    pub meta: Vec<MetaDir>,
    /// `flat/`: one large directory, listed with READDIRPLUS; name → size.
    pub flat: BTreeMap<Vec<u8>, u64>,
    /// `big/data.bin`: the file the read workloads read.
    pub big: PathBuf,
    pub big_size: u64,
}

fn sorted_entries(dir: &Path) -> Result<Vec<(Vec<u8>, fs::Metadata)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        entries.push((
            entry.file_name().as_bytes().to_vec(),
            fs::symlink_metadata(entry.path())?,
        ));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

impl Tree {
    pub fn load(root: &Path) -> Result<Self> {
        let mut meta = Vec::new();
        for (name, md) in sorted_entries(&root.join("meta"))? {
            ensure!(md.is_dir(), "meta/ holds only directories");
            let files =
                sorted_entries(&root.join("meta").join(std::ffi::OsStr::from_bytes(&name)))?
                    .into_iter()
                    .map(|(n, m)| (n, m.len()))
                    .collect();
            meta.push(MetaDir { name, files });
        }
        let flat = sorted_entries(&root.join("flat"))?
            .into_iter()
            .map(|(n, m)| (n, m.len()))
            .collect();
        let big = root.join("big").join("data.bin");
        let big_size = fs::metadata(&big)
            .with_context(|| format!("{}", big.display()))?
            .len();
        Ok(Self {
            meta,
            flat,
            big,
            big_size,
        })
    }

    pub fn meta_files(&self) -> usize {
        self.meta.iter().map(|d| d.files.len()).sum()
    }
}
