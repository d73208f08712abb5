//! `--metrics-file`: the metrics as a node_exporter textfile, rewritten
//! every few seconds and at exit. Each write goes to a hidden temporary
//! file in the same directory (which node_exporter's `*.prom` glob skips)
//! and is renamed over the file, so a reader never sees half of one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sandbox::{Access, LandlockPolicy};

/// How often the file is rewritten.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Writes the metrics to `path` atomically.
pub fn write(path: &Path) -> std::io::Result<()> {
    let tmp = temporary_path(path);
    std::fs::write(&tmp, super::global().render())?;
    std::fs::rename(&tmp, path)
}

/// `DIR/.NAME.tmp` for `DIR/NAME`.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

/// The directory the file is replaced in, which the sandbox must leave
/// writable: create, write and remove regular files, nothing else.
pub fn allow_in_sandbox(policy: &mut LandlockPolicy, path: Option<&Path>) {
    let Some(path) = path else { return };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    policy.allow(dir, Access::Files);
}

/// The thread that rewrites the file.
pub struct MetricsFile {
    path: Option<PathBuf>,
}

impl MetricsFile {
    /// Writes the metrics to `path` now and then every [`INTERVAL`] (a no-op
    /// without a path).
    pub fn start(path: Option<PathBuf>) -> Self {
        if let Some(path) = path.clone() {
            let spawned = std::thread::Builder::new()
                .name("metrics-file".into())
                .spawn(move || loop {
                    if let Err(e) = write(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "writing the metrics file failed");
                    }
                    std::thread::sleep(INTERVAL);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "starting the metrics file thread failed; written at exit only");
            }
        }
        Self { path }
    }

    /// Writes the final metrics.
    pub fn finish(&self) {
        if let Some(path) = &self.path {
            if let Err(e) = write(path) {
                tracing::warn!(path = %path.display(), error = %e, "writing the metrics file failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_file_is_hidden_beside_the_file() {
        assert_eq!(
            temporary_path(Path::new("/var/lib/node/tvix.prom")),
            Path::new("/var/lib/node/.tvix.prom.tmp")
        );
    }

    #[test]
    fn writes_a_parseable_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# TYPE tvix_virtiofsd_store_up gauge"),
            "{text}"
        );
        assert!(!temporary_path(&path).exists());
    }
}
