//! Nix's NAR serialisation of a host tree, written here from the format
//! (not by any store), to check what the real stores claim about a path.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().div_ceil(8) * 8, 0);
}

fn nar_node(out: &mut Vec<u8>, path: &Path) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    nar_str(out, b"(");
    nar_str(out, b"type");
    if meta.file_type().is_symlink() {
        nar_str(out, b"symlink");
        nar_str(out, b"target");
        let target = std::fs::read_link(path).unwrap();
        nar_str(out, target.as_os_str().as_encoded_bytes());
    } else if meta.is_dir() {
        nar_str(out, b"directory");
        let mut names: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for name in names {
            nar_str(out, b"entry");
            nar_str(out, b"(");
            nar_str(out, b"name");
            nar_str(out, name.as_encoded_bytes());
            nar_str(out, b"node");
            nar_node(out, &path.join(&name));
            nar_str(out, b")");
        }
    } else {
        nar_str(out, b"regular");
        if meta.permissions().mode() & 0o100 != 0 {
            nar_str(out, b"executable");
            nar_str(out, b"");
        }
        nar_str(out, b"contents");
        nar_str(out, &std::fs::read(path).unwrap());
    }
    nar_str(out, b")");
}

/// The NAR serialisation of `path`, as Nix writes it.
pub fn nar(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    nar_str(&mut out, b"nix-archive-1");
    nar_node(&mut out, path);
    out
}
