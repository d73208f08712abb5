//! The shipped units' mount view, built as systemd builds it (bind sources
//! taken from the host, then the empty tmpfs, then the binds into it) in a
//! mount namespace of its own with `unshare -m`: a second instance sees
//! the shared objects and its own directories, and neither the first
//! instance's socket nor its private mappings.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

use common::{repo_root, scratch};

/// The values of `key=` lines of a unit, split on white space, with
/// `%i` replaced and `:ro` suffixes dropped.
fn unit_paths(unit: &str, key: &str, instance: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key))
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_end_matches(":ro").replace("%i", instance))
        .collect()
}

/// What instance `instance` of `service` sees at each of `probes` (host
/// paths below `root`), as "present" or "absent", plus whether it can
/// write beside them.
fn probe(service: &str, root: &Path, instance: &str, probes: &[&str]) -> Vec<String> {
    let unit = std::fs::read_to_string(repo_root().join("systemd").join(service)).unwrap();
    let tmpfs = unit_paths(&unit, "TemporaryFileSystem=", instance);
    let binds = unit_paths(&unit, "BindPaths=", instance);
    assert!(
        !tmpfs.is_empty() && !binds.is_empty(),
        "{service} has no mount view"
    );
    let r = root.display();
    let mut script = String::from("set -e\nmount --make-rprivate /\n");
    for (i, src) in binds.iter().enumerate() {
        script += &format!("mkdir -p {r}/.stage/{i}\nmount --bind {r}{src} {r}/.stage/{i}\n");
    }
    for path in &tmpfs {
        script += &format!("mount -t tmpfs tmpfs {r}{path}\n");
    }
    for (i, dst) in binds.iter().enumerate() {
        script += &format!("mkdir -p {r}{dst}\nmount --bind {r}/.stage/{i} {r}{dst}\n");
    }
    for path in &tmpfs {
        script += &format!("mount -o remount,ro,bind {r}{path}\n");
    }
    script += "set +e\n";
    for p in probes {
        script += &format!("if [ -e {r}{p} ]; then echo present; else echo absent; fi\n");
    }
    for path in &tmpfs {
        script += &format!(
            "if touch {r}{path}/planted 2>/dev/null; then echo writable; else echo read-only; fi\n"
        );
    }
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    assert!(
        out.status.success(),
        "unshare -m failed (run as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_second_instance_sees_neither_the_first_ones_socket_nor_its_mappings() {
    let root = scratch("mount-view");
    let cache = "/var/cache/tvix-virtiofsd/v2";
    for dir in [
        "objects/chunks",
        "instances/vm1/path_infos",
        "instances/vm2/path_infos",
    ] {
        std::fs::create_dir_all(root.join(format!(".{cache}/{dir}"))).unwrap();
    }
    std::fs::create_dir_all(root.join("var/cache/tvix-virtiofsd/v1")).unwrap();
    for vm in ["vm1", "vm2"] {
        std::fs::create_dir_all(root.join(format!("run/tvix-virtiofsd/{vm}"))).unwrap();
    }
    let _vm1 = UnixListener::bind(root.join("run/tvix-virtiofsd/vm1/vhost-user.sock")).unwrap();
    let probes = [
        "/run/tvix-virtiofsd/vm1/vhost-user.sock",
        "/var/cache/tvix-virtiofsd/v2/instances/vm1",
        "/var/cache/tvix-virtiofsd/v1",
        "/var/cache/tvix-virtiofsd/v2/objects/chunks",
        "/var/cache/tvix-virtiofsd/v2/instances/vm2/path_infos",
        "/run/tvix-virtiofsd/vm2",
    ];
    let seen = probe("tvix-virtiofsd@.service", &root, "vm2", &probes);
    assert_eq!(
        seen,
        [
            "absent",
            "absent",
            "absent",
            "present",
            "present",
            "present",
            "read-only",
            "read-only"
        ],
        "vm2's view of {probes:?}, then whether the tmpfs are writable"
    );
    // The socket-activated instance gets its socket as fd 3: no socket
    // directory at all.
    let seen = probe("tvix-virtiofsd-activated@.service", &root, "vm2", &probes);
    assert_eq!(
        seen,
        [
            "absent",
            "absent",
            "absent",
            "present",
            "present",
            "absent",
            "read-only",
            "read-only"
        ]
    );
    // The host's view is untouched.
    assert!(root.join("run/tvix-virtiofsd/vm1/vhost-user.sock").exists());
    assert!(!root.join("var/cache/tvix-virtiofsd/planted").exists());
}
