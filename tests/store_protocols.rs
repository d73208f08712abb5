//! The store client against the fixture store over every supported way of
//! reaching it: unix and TCP sockets, tvix and snix package names, and
//! per-service addresses.

mod common;

use common::*;

const PKG: &str = "hello-2.12";

fn read_hello(daemon: &Daemon, fixture: &Fixture) -> std::io::Result<Vec<u8>> {
    std::fs::read(daemon.path(&fixture.store_path(PKG)).join("bin/hello"))
}

fn expected_hello() -> Vec<u8> {
    std::fs::read(sample_tree().join(PKG).join("bin/hello")).unwrap()
}

#[test]
fn speaks_grpc_over_tcp() {
    let fixture = Fixture::start(&sample_tree(), &["--listen", "grpc+http://127.0.0.1:0"]);
    let tcp = fixture
        .listening
        .iter()
        .find(|a| a.starts_with("grpc+http://"))
        .expect("no TCP listener announced")
        .clone();
    let daemon = Daemon::mount(&tcp, &[]);
    assert_eq!(read_hello(&daemon, &fixture).unwrap(), expected_hello());
    assert!(
        daemon.log().contains(&tcp),
        "log does not show the store address"
    );
}

#[test]
fn speaks_snix_when_asked_and_only_then() {
    let fixture = Fixture::start(&sample_tree(), &["--protocol", "snix"]);
    let snix = Daemon::mount(&fixture.address(), &["--store-protocol", "snix"]);
    assert_eq!(read_hello(&snix, &fixture).unwrap(), expected_hello());

    // A tvix client gets "unimplemented" from a snix-only store: the daemon
    // refuses to start and says which flag to change.
    let log = refused_start(&fixture.address(), &["--store-protocol", "tvix"]);
    assert!(log.contains("pass --store-protocol snix"), "{log}");
}

#[test]
fn tvix_is_the_default_protocol() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    let daemon = Daemon::mount(&fixture.address(), &[]);
    assert_eq!(read_hello(&daemon, &fixture).unwrap(), expected_hello());
}

#[test]
fn per_service_addresses_override_the_store_address() {
    let fixture = Fixture::start(&sample_tree(), &[]);
    let dead = format!("grpc+unix://{}/nothing.sock", fixture.dir.display());

    // Blobs from a dead address: metadata works, contents do not.
    let daemon = Daemon::mount(
        &fixture.address(),
        &["--blob-service-addr", &dead, "--store-timeout", "2"],
    );
    let hello = daemon.path(&fixture.store_path(PKG)).join("bin/hello");
    assert_eq!(
        std::fs::metadata(&hello).unwrap().len(),
        expected_hello().len() as u64
    );
    assert_eq!(
        std::fs::read(&hello).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    drop(daemon);

    // Path infos from a dead address: nothing resolves.
    let daemon = Daemon::mount(
        &fixture.address(),
        &["--path-info-service-addr", &dead, "--store-timeout", "2"],
    );
    let err = read_hello(&daemon, &fixture).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    drop(daemon);

    // Without --store, every service must be named.
    let live = fixture.address();
    let status = std::process::Command::new(DAEMON_BIN)
        .args(["--mount", "/nonexistent", "--blob-service-addr", &live])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "started without all service addresses"
    );
    assert!(String::from_utf8_lossy(&status.stderr).contains("--store"));

    // Every service named explicitly and no --store: all works.
    let dir = scratch("per-service");
    let mountpoint = dir.join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mut child = std::process::Command::new(DAEMON_BIN)
        .arg("--mount")
        .arg(&mountpoint)
        .args([
            "--blob-service-addr",
            &live,
            "--directory-service-addr",
            &live,
        ])
        .args(["--path-info-service-addr", &live])
        .spawn()
        .unwrap();
    let hello = mountpoint.join(fixture.store_path(PKG)).join("bin/hello");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read(&hello).ok() != Some(expected_hello()) {
        assert!(
            std::time::Instant::now() < deadline,
            "not served with per-service addresses"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
