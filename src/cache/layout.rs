//! Where the disk cache keeps what, under `--cache-dir DIR`:
//!
//! ```text
//! DIR/v2/objects/            shared by every daemon on the host
//!     chunks/ab/<digest>     chunks and small whole blobs
//!     blobs/ab/<digest>      large whole blobs
//!     outboards/ab/<digest>  group chaining values of a chunk or blob
//!     directories/ab/<digest>
//!     tmp/                   files being written (then renamed into place)
//!     lock                   taken (with a bounded wait) to evict
//! DIR/v2/instances/<NAME>/   private to the daemon run with --instance NAME
//!     pathinfos/ab/<hash>    store path -> root node
//!     chunklists/ab/<digest> blob -> chunks
//! ```
//!
//! Objects are named by the BLAKE3 digest of their content, so a reader
//! can check every byte against its name: anyone may write them. Mappings
//! cannot be checked from their name, so only their own daemon reads or
//! writes them; the sandbox and the service's mount view keep the others
//! out. Without `--instance` mappings stay in memory only. Layout `v1`
//! (mappings shared with every daemon) is never read.

use std::path::{Path, PathBuf};

/// The on-disk layout version: a new layout gets a new directory.
pub const LAYOUT: &str = "v2";

/// The longest instance name (systemd's escaped `%i` of a VM name).
const MAX_INSTANCE_NAME: usize = 200;

/// The two directories a daemon uses below `--cache-dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheLayout {
    /// Shared, content-addressed objects.
    pub objects: PathBuf,
    /// This instance's private mappings, if it has a name.
    pub instance: Option<PathBuf>,
}

impl CacheLayout {
    pub fn new(cache_dir: &Path, instance: Option<&InstanceName>) -> Self {
        let root = cache_dir.join(LAYOUT);
        Self {
            objects: root.join("objects"),
            instance: instance.map(|name| root.join("instances").join(&name.0)),
        }
    }
}

/// An instance name that is safe as one path component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceName(String);

impl InstanceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for InstanceName {
    type Err = String;

    /// ASCII letters, digits and `_ - . : @ \` (what systemd's escaped
    /// instance names consist of), not starting with a dot, at most 200
    /// bytes.
    fn from_str(s: &str) -> Result<Self, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:@\\".contains(c);
        if s.is_empty()
            || s.len() > MAX_INSTANCE_NAME
            || s.starts_with('.')
            || !s.chars().all(allowed)
        {
            return Err(format!(
                "invalid instance name {s:?}: use 1 to {MAX_INSTANCE_NAME} of A-Z a-z 0-9 _ - . : @ \\, \
                 not starting with a dot"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_one_safe_path_component() {
        for good in ["vm1", "my-vm_2", "a.b", "x\\x2dy", "vm@host:1"] {
            assert!(good.parse::<InstanceName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(201),
        ] {
            assert!(bad.parse::<InstanceName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mappings_live_apart_from_objects() {
        let name: InstanceName = "vm1".parse().unwrap();
        let l = CacheLayout::new(Path::new("/c"), Some(&name));
        assert_eq!(l.objects, Path::new("/c/v2/objects"));
        assert_eq!(
            l.instance.as_deref(),
            Some(Path::new("/c/v2/instances/vm1"))
        );
        assert_eq!(CacheLayout::new(Path::new("/c"), None).instance, None);
    }
}
