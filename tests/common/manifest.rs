//! The guest tests' manifests: what `scripts/vm/tree-manifest.sh` prints
//! for a host tree, turned into what a guest must see through the daemon,
//! and the comparison with what the guest printed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::{repo_root, MANY};

/// Runs scripts/vm/tree-manifest.sh on the host over `root` and turns it
/// into what the guest must see: modes become the store's (r-x dirs, r-- or
/// r-x files) and, with `store_path_of` given, each top-level name becomes
/// the store path name it returns for it. With `no_content_in`, files below
/// a directory of that name are listed without content, as the guest's
/// `tree-manifest --no-content-in NAME` lists them.
pub fn expected_manifest(
    root: &Path,
    store_path_of: Option<&dyn Fn(&str) -> String>,
    no_content_in: Option<&str>,
) -> BTreeMap<String, String> {
    let mut command = Command::new("sh");
    command.arg(repo_root().join("scripts/vm/tree-manifest.sh"));
    if let Some(name) = no_content_in {
        command.args(["--no-content-in", name]);
    }
    let output = command.arg(root).output().unwrap();
    assert!(output.status.success());
    let mut out = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let f: Vec<&str> = line.splitn(5, ' ').collect();
        let (kind, mode, size, content, path) = (f[0], f[1], f[2], f[3], f[4]);
        let mode = match kind {
            "d" => "0555",
            "l" => "0777",
            _ if u32::from_str_radix(mode, 8).unwrap() & 0o111 != 0 => "0555",
            _ => "0444",
        };
        let path = match store_path_of {
            Some(store_path_of) => {
                let (top, rest) = path.split_once('/').unwrap_or((path, ""));
                let store_path = store_path_of(top);
                if rest.is_empty() {
                    store_path
                } else {
                    format!("{store_path}/{rest}")
                }
            }
            None => path.to_string(),
        };
        out.insert(
            path.clone(),
            format!("{kind} {mode} {size} {content} {path}"),
        );
    }
    out
}

/// Asserts that the manifest the guest printed equals `expected`.
pub fn assert_same_manifest(expected: &BTreeMap<String, String>, guest_stdout: &str) {
    let seen = parse_manifest(guest_stdout);
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = seen
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    let differing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| seen.get(*k) != Some(v))
        .map(|(k, v)| format!("expected {v}\n     got {}", seen[k]))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "entries differ:\n{}",
        differing.join("\n")
    );
}

pub fn parse_manifest(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| l.len() > 10)
        .map(|l| (l.splitn(5, ' ').nth(4).unwrap().to_string(), l.to_string()))
        .collect()
}

/// The guest printed the manifest of the whole sample tree (so `expected`
/// must hold its big directory), entry for entry.
pub fn assert_guest_saw_the_whole_tree(expected: &BTreeMap<String, String>, guest_stdout: &str) {
    assert!(
        expected.len() > MANY,
        "expected manifest too small: {}",
        expected.len()
    );
    assert_same_manifest(expected, guest_stdout);
}
