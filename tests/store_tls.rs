//! The store over TLS (`grpc+https://`): the fixture store serves with a
//! certificate from a test CA generated here; the daemon must trust exactly
//! that CA (or the system roots), and can present a client certificate.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

const PKG: &str = "hello-2.12";

/// PEM files of a CA, a server certificate for localhost/127.0.0.1 and a
/// client certificate, all written to `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn write(dir: &Path, name: &str, pem: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

fn generate_pki(dir: &Path, prefix: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["tvix-virtiofsd-client".into()]);
    Pki {
        ca: write(dir, &format!("{prefix}-ca.pem"), ca.pem()),
        server_cert: write(dir, &format!("{prefix}-server.pem"), server_cert),
        server_key: write(dir, &format!("{prefix}-server.key"), server_key),
        client_cert: write(dir, &format!("{prefix}-client.pem"), client_cert),
        client_key: write(dir, &format!("{prefix}-client.key"), client_key),
    }
}

fn tls_fixture(pki: &Pki, client_ca: bool) -> (Fixture, String) {
    let (cert, key, ca) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    );
    let mut args = vec![
        "--listen",
        "grpc+https://127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    if client_ca {
        args.extend(["--tls-client-ca", &ca]);
    }
    let fixture = Fixture::start(&sample_tree(), &args);
    let address = fixture
        .listening
        .iter()
        .find(|a| a.starts_with("grpc+https://"))
        .expect("no TLS listener announced")
        .clone();
    (fixture, address)
}

fn hello(daemon: &Daemon, fixture: &Fixture) -> std::io::Result<Vec<u8>> {
    std::fs::read(daemon.path(&fixture.store_path(PKG)).join("bin/hello"))
}

fn expected_hello() -> Vec<u8> {
    std::fs::read(sample_tree().join(PKG).join("bin/hello")).unwrap()
}

#[test]
fn trusts_the_given_ca_and_refuses_another() {
    let dir = scratch("tls");
    let pki = generate_pki(&dir, "good");
    let other = generate_pki(&dir, "other");
    let (fixture, address) = tls_fixture(&pki, false);

    let daemon = Daemon::mount(&address, &["--store-ca", pki.ca.to_str().unwrap()]);
    assert_eq!(hello(&daemon, &fixture).unwrap(), expected_hello());

    let wrong = Daemon::mount(
        &address,
        &[
            "--store-ca",
            other.ca.to_str().unwrap(),
            "--store-timeout",
            "3",
        ],
    );
    assert_eq!(
        hello(&wrong, &fixture).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    let log = wrong.log();
    assert!(
        log.to_lowercase().contains("certificate"),
        "no clear TLS error in the log:\n{log}"
    );

    // Without --store-ca only the system roots count: the test CA is not one.
    let system = Daemon::mount(&address, &["--store-timeout", "3"]);
    assert_eq!(
        hello(&system, &fixture).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
}

#[test]
fn presents_a_client_certificate_for_mutual_tls() {
    let dir = scratch("mtls");
    let pki = generate_pki(&dir, "m");
    let (fixture, address) = tls_fixture(&pki, true);
    let ca = pki.ca.to_str().unwrap();

    let with = Daemon::mount(
        &address,
        &[
            "--store-ca",
            ca,
            "--store-cert",
            pki.client_cert.to_str().unwrap(),
            "--store-key",
            pki.client_key.to_str().unwrap(),
        ],
    );
    assert_eq!(hello(&with, &fixture).unwrap(), expected_hello());
    let key = std::fs::read_to_string(&pki.client_key).unwrap();
    let secret_line = key.lines().nth(1).unwrap();
    assert!(
        !with.log().contains(secret_line),
        "the log shows key material"
    );

    let without = Daemon::mount(&address, &["--store-ca", ca, "--store-timeout", "3"]);
    assert_eq!(
        hello(&without, &fixture).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
}
