//! The sample tree every end-to-end test serves: what a Nix store holds,
//! plus the awkward cases (empty files, a file spanning hundreds of chunks,
//! a directory with 10,000 entries, dangling links, odd names).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Chunk size the fixture store is started with (what tvix-store averages).
pub const CHUNK_SIZE: u64 = 256 << 10;
/// Size of the big file: 64 MiB and an odd tail, so chunks do not divide it.
pub const BIG_FILE_SIZE: u64 = (64 << 20) + 12_345;
/// Entries in the big directory.
pub const MANY: usize = 10_000;
/// The store path holding them (as `entries/file-NNNNN`).
pub const MANY_FILES: &str = "many-files-1.0";

/// Deterministic pseudo-random bytes (xorshift), so content is checkable.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(path: &Path, data: &[u8], executable: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn link(target: &str, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

fn generate(root: &Path) {
    let pkg = root.join("hello-2.12");
    write(&pkg.join("bin/hello"), b"#!/bin/sh\necho hello\n", true);
    write(&pkg.join("share/empty"), b"", false);
    write(
        &pkg.join("share/doc/name with spaces.txt"),
        b"spaces\n",
        false,
    );
    write(
        &pkg.join("share/grüße/äöü 漢字.txt"),
        "unicode\n".as_bytes(),
        false,
    );
    write(
        &pkg.join("lib/libbig.so"),
        &pseudo_random(1, BIG_FILE_SIZE as usize),
        false,
    );
    // Over the in-memory limit and (with chunking off) a single blob.
    write(
        &pkg.join("lib/medium.bin"),
        &pseudo_random(2, (5 << 20) + 7),
        false,
    );
    write(&pkg.join("lib/small.bin"), &pseudo_random(3, 100_000), true);
    write(&pkg.join("deep/a/b/c/d/e/f.txt"), b"deep\n", false);
    std::fs::create_dir_all(pkg.join("share/empty-dir")).unwrap();
    link("../bin/hello", &pkg.join("links/relative"));
    link(
        "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-other/bin/x",
        &pkg.join("links/absolute"),
    );
    link("does-not-exist", &pkg.join("links/dangling"));

    let many = root.join(MANY_FILES).join("entries");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..MANY {
        let data = format!("entry {i}\n");
        write(
            &many.join(format!("file-{i:05}")),
            data.as_bytes(),
            i % 7 == 0,
        );
    }

    write(
        &root.join("single-file.txt"),
        b"a store path that is a file\n",
        false,
    );
    link(
        "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-other",
        &root.join("top-link"),
    );

    // Directories get the modes a Nix store has (r-x), files keep theirs.
    for entry in walk(root) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        if meta.is_dir() {
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// Every path below `root` (not `root` itself), depth first, sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        out.push(path.clone());
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

/// The sample tree, generated once per build directory and shared by all
/// tests (generation writes to a temporary name, then renames into place).
pub fn sample_tree() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let root = base.join("sample-tree-v1");
    if root.exists() {
        return root;
    }
    let staging = tempfile::Builder::new()
        .prefix("sample-tree-staging-")
        .tempdir_in(base)
        .unwrap()
        .keep();
    generate(&staging);
    // Another test process may have won the race; either copy is identical.
    if std::fs::rename(&staging, &root).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    root
}

fn hash_file(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    std::io::copy(&mut file, &mut hasher)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hasher.finalize()
}

/// Compares one served entry with its source: type, mode (as the store
/// presents it), size, content or link target, ownership.
pub fn compare_entry(s: &Path, m: &Path, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let sm = std::fs::symlink_metadata(s).unwrap();
    let mm = std::fs::symlink_metadata(m).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(sm.file_type(), mm.file_type(), "{what}: type");
    let mode = mm.mode() & 0o7777;
    if sm.is_dir() {
        assert_eq!(mode, 0o555, "{what}: directory mode");
    } else if sm.is_file() {
        let expected = if sm.mode() & 0o111 != 0 { 0o555 } else { 0o444 };
        assert_eq!(mode, expected, "{what}: file mode");
        assert_eq!(sm.len(), mm.len(), "{what}: size");
        assert_eq!(hash_file(s), hash_file(m), "{what}: content");
    } else {
        assert_eq!(mode, 0o777, "{what}: symlink mode");
        assert_eq!(
            std::fs::read_link(s).unwrap(),
            std::fs::read_link(m).unwrap(),
            "{what}: symlink target"
        );
        assert_eq!(sm.len(), mm.len(), "{what}: symlink size");
    }
    assert_eq!(mm.uid(), 0, "{what}: uid");
    assert_eq!(mm.gid(), 0, "{what}: gid");
}

/// Compares everything below `served` with everything below `source`: the
/// same names, and each entry as [`compare_entry`] checks it. Returns the
/// number of entries compared.
pub fn compare_trees(source: &Path, served: &Path) -> usize {
    let rel = |base: &Path, p: &PathBuf| p.strip_prefix(base).unwrap().to_path_buf();
    let src_names: Vec<_> = walk(source).iter().map(|p| rel(source, p)).collect();
    let served_names: Vec<_> = walk(served).iter().map(|p| rel(served, p)).collect();
    assert_eq!(src_names, served_names, "the served tree lists other names");
    for name in &src_names {
        compare_entry(
            &source.join(name),
            &served.join(name),
            &name.display().to_string(),
        );
    }
    src_names.len()
}
