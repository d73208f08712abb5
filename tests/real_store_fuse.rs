//! The daemon against real tvix-store and snix-store daemons, through a
//! real FUSE mount: the trees are imported by the stores' own `import`, so
//! what the daemon meets is what real stores write and send.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::real_store::{RealStore, StoreKind};
use common::*;

/// Every store path of the sample tree, listed with `--list-root` (the
/// store's real `List`) and compared entry by entry with its source.
fn serves_the_sample_tree_exactly(kind: StoreKind, test: &str) {
    let tree = sample_tree();
    let store = real_store_or_skip!(kind, test, &[&tree]);
    let daemon = store.mount(&["--list-root"]);

    let mut listed: Vec<String> = std::fs::read_dir(&daemon.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = store.store_paths().values().cloned().collect();
    expected.sort();
    assert_eq!(listed, expected, "root listing against the real List");
    assert_eq!(listed.len(), 4);

    let mut compared = 0;
    for (source, basename) in store.store_paths() {
        let served = daemon.path(basename);
        compare_entry(source, &served, basename);
        compared += 1;
        if served.is_dir() {
            compared += compare_trees(source, &served);
        }
    }
    assert!(compared > MANY + 20, "compared only {compared} entries");
}

#[test]
fn serves_a_tvix_store_tree_exactly() {
    serves_the_sample_tree_exactly(StoreKind::Tvix, "serves_a_tvix_store_tree_exactly");
}

#[test]
fn serves_a_snix_store_tree_exactly() {
    serves_the_sample_tree_exactly(StoreKind::Snix, "serves_a_snix_store_tree_exactly");
}

/// The wrong `--store-protocol` is refused at start, with the flag to use,
/// both ways round.
#[test]
fn the_wrong_protocol_is_refused_with_the_flag_to_use() {
    let tree = sample_tree();
    for (kind, wrong, hint) in [
        (StoreKind::Tvix, "snix", "pass --store-protocol tvix"),
        (StoreKind::Snix, "tvix", "pass --store-protocol snix"),
    ] {
        let store = real_store_or_skip!(kind, "the_wrong_protocol_is_refused", &[&tree]);
        let log = refused_start(&store.address(), &["--store-protocol", wrong]);
        assert!(
            log.contains(hint),
            "{kind:?} store, --store-protocol {wrong}: {log}"
        );
    }
}

/// Every path below `names` (run in `root`) with its extended attributes,
/// as `getfattr -R -h -d -m -` prints them; entries without any are left
/// out, as getfattr does.
fn getfattr_dump(root: &Path, names: &[&str]) -> Xattrs {
    let out = std::process::Command::new("getfattr")
        .args(["-R", "-h", "-d", "-m", "-", "-e", "text"])
        .args(names)
        .current_dir(root)
        .output()
        .expect("getfattr (Debian's attr package)");
    assert!(
        out.status.success(),
        "getfattr in {}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_getfattr(&String::from_utf8(out.stdout).unwrap())
}

/// Path -> attribute name -> value (unquoted).
type Xattrs = BTreeMap<String, BTreeMap<String, String>>;

fn parse_getfattr(text: &str) -> Xattrs {
    let mut dump = Xattrs::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("# file: ") {
            current = Some(path.to_string());
            dump.entry(path.to_string()).or_default();
        } else if let Some((name, value)) = line.split_once('=') {
            let path = current.clone().expect("an attribute before its file");
            let value = value.trim_matches('"').to_string();
            dump.get_mut(&path).unwrap().insert(name.to_string(), value);
        }
    }
    dump
}

/// The host path a served path (`<basename>/rest`) came from.
fn source_of(store: &RealStore, served: &str) -> PathBuf {
    let (base, rest) = served.split_once('/').unwrap_or((served, ""));
    let top = store
        .store_paths()
        .iter()
        .find(|(_, b)| b.as_str() == base)
        .map(|(source, _)| source.clone())
        .unwrap_or_else(|| panic!("{served}: not under a store path"));
    if rest.is_empty() {
        top
    } else {
        top.join(rest)
    }
}

/// `getfattr` on our mount shows, for every entry of the sample tree, the
/// castore digests the store's own mount (`--show-xattr`) shows for it,
/// under the same names and in the same format; besides them a file's
/// size, and on a store path's root the NAR size and hash of its path
/// info, which must be those of Nix's serialisation of the source.
fn xattrs_are_those_of_the_stores_own_mount(kind: StoreKind, test: &str) {
    let tree = sample_tree();
    let store = real_store_or_skip!(kind, test, &[&tree]);
    let ours = store.mount(&["--list-root"]);
    let theirs = store.own_mount();
    let names: Vec<&str> = store.store_paths().values().map(String::as_str).collect();
    let ours_dump = getfattr_dump(&ours.mountpoint, &names);
    let their_dump = getfattr_dump(&theirs.mountpoint, &names);
    assert!(
        their_dump.len() > MANY,
        "the store's own mount showed only {} entries with attributes",
        their_dump.len()
    );
    assert_eq!(
        ours_dump.keys().collect::<Vec<_>>(),
        their_dump.keys().collect::<Vec<_>>(),
        "the entries with attributes differ"
    );
    let ns = format!("user.{}", kind.protocol());
    let mut roots = 0;
    for (path, their_attrs) in &their_dump {
        let mut mine = ours_dump[path].clone();
        let source = source_of(&store, path);
        let meta = std::fs::symlink_metadata(&source).unwrap();
        if meta.is_file() {
            let size = mine.remove(&format!("{ns}.castore.blob.size"));
            assert_eq!(size, Some(meta.len().to_string()), "{path}: blob size");
        }
        if !path.contains('/') {
            roots += 1;
            let nar = common::nar::nar(&source);
            let nar_size = mine.remove(&format!("{ns}.store.narinfo.nar_size"));
            assert_eq!(nar_size, Some(nar.len().to_string()), "{path}: NAR size");
            let nar_hash = mine.remove(&format!("{ns}.store.narinfo.nar_sha256"));
            let expected = format!(
                "sha256-{}",
                data_encoding::BASE64.encode(&common::nar::sha256(&nar))
            );
            assert_eq!(nar_hash, Some(expected), "{path}: NAR hash");
        }
        assert_eq!(&mine, their_attrs, "{path}: castore attributes");
    }
    let not_symlinks = store
        .store_paths()
        .keys()
        .filter(|source| !source.is_symlink())
        .count();
    assert_eq!(
        roots, not_symlinks,
        "every store path's root has attributes"
    );
    assert!(roots >= 3, "only {roots} store paths' roots compared");
}

#[test]
fn xattrs_are_those_of_tvix_stores_own_mount() {
    xattrs_are_those_of_the_stores_own_mount(
        StoreKind::Tvix,
        "xattrs_are_those_of_tvix_stores_own_mount",
    );
}

#[test]
fn xattrs_are_those_of_snix_stores_own_mount() {
    xattrs_are_those_of_the_stores_own_mount(
        StoreKind::Snix,
        "xattrs_are_those_of_snix_stores_own_mount",
    );
}

/// lgetxattr(2)/llistxattr(2) of `path` into a buffer of `size` bytes
/// (none for 0): the length or the errno.
fn raw_xattr(path: &Path, name: Option<&str>, size: usize) -> Result<Vec<u8>, i32> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: the path and name are NUL-terminated and live across the
    // call; the buffer is `size` bytes (or null with size 0).
    let n = unsafe {
        match name {
            Some(name) => {
                let c_name = std::ffi::CString::new(name).unwrap();
                libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), ptr, size)
            }
            None => libc::llistxattr(c_path.as_ptr(), ptr.cast(), size),
        }
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(if size == 0 { 0 } else { n as usize });
    Ok(if size == 0 { vec![0; n as usize] } else { buf })
}

/// The size probe as the kernel passes it on: size 0 asks for the length,
/// a short buffer gets ERANGE, an unknown name ENODATA; `--no-xattrs`
/// lists none and answers ENODATA to the names it would have.
#[test]
fn xattr_sizes_follow_the_probe_protocol_and_can_be_turned_off() {
    let tree = sample_tree();
    let Some(store) = RealStore::with_trees(
        StoreKind::Snix,
        "xattr_sizes_follow_the_probe_protocol_and_can_be_turned_off",
        &[&tree],
    ) else {
        return;
    };
    let pkg = store.store_path_of(&tree.join("hello-2.12"));
    let name = "user.snix.castore.blob.digest";
    let daemon = store.mount(&[]);
    let file = daemon.path(&format!("{pkg}/bin/hello"));
    let len = raw_xattr(&file, Some(name), 0).unwrap().len();
    let digest = raw_xattr(&file, Some(name), len).unwrap();
    assert!(digest.starts_with(b"blake3-"), "{digest:?}");
    assert_eq!(digest.len(), "blake3-".len() + 44);
    assert_eq!(raw_xattr(&file, Some(name), len - 1), Err(libc::ERANGE));
    assert_eq!(raw_xattr(&file, Some("user.other"), 64), Err(libc::ENODATA));
    let listed_len = raw_xattr(&file, None, 0).unwrap().len();
    let listed = raw_xattr(&file, None, listed_len).unwrap();
    assert_eq!(
        listed,
        b"user.snix.castore.blob.digest\0user.snix.castore.blob.size\0"
    );
    assert_eq!(raw_xattr(&file, None, listed_len - 1), Err(libc::ERANGE));
    drop(daemon);

    let quiet = store.mount(&["--no-xattrs"]);
    let file = quiet.path(&format!("{pkg}/bin/hello"));
    assert_eq!(raw_xattr(&file, None, 0).unwrap().len(), 0);
    assert_eq!(raw_xattr(&file, Some(name), 64), Err(libc::ENODATA));
}
