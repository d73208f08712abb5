//! The Debian package under a real systemd: QEMU boots a Debian 12 guest
//! whose PID 1 is systemd (scripts/systemd-guest/), installs the package as
//! docs/deploying.md says, runs the units against a real tvix-store started
//! as a unit, then purges the package and runs the manual steps of
//! docs/deploying.md. The guest reports one line per check; every check
//! must be there and pass.
//! TCG unless ACCEL=kvm; a few minutes.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::real_store::StoreKind;
use common::repo_root;

/// Every check scripts/systemd-guest/guest/checks.sh reports, in order.
const CHECKS: &[&str] = &[
    "store_import",
    "readme_package_install",
    "static_user",
    "active_only_after_ready",
    "store_answered",
    "status_text",
    "service_socket_mode",
    "no_capabilities",
    "no_new_privs",
    "seccomp_filter",
    "security_score",
    "journal_lines",
    "package_reinstall_keeps_instance",
    "kill9_restarted",
    "second_instance_isolated",
    "stop_clean",
    "socket_activation_starts",
    "socket_activation_exit0",
    "package_purge",
    "readme_manual_install",
    "manual_install_serves",
];

/// Bound on the guest's boot, checks and power-off.
const GUEST_TIMEOUT_SECS: u32 = 900;

/// `scripts/build-deb.sh --dev`: the package of the debug build.
fn build_package() -> PathBuf {
    let output = Command::new(repo_root().join("scripts/build-deb.sh"))
        .arg("--dev")
        .output()
        .expect("running scripts/build-deb.sh");
    assert!(
        output.status.success(),
        "building the package failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(deb.is_file(), "build-deb.sh printed no package: {deb:?}");
    deb
}

/// `CHECK <name> ok|FAIL <detail>` lines, by name.
fn parse_results(results: &str) -> BTreeMap<String, (String, String)> {
    results
        .lines()
        .filter_map(|line| line.strip_prefix("CHECK "))
        .filter_map(|rest| {
            let mut fields = rest.splitn(3, ' ');
            let name = fields.next()?.to_string();
            let verdict = fields.next()?.to_string();
            Some((name, (verdict, fields.next().unwrap_or("").to_string())))
        })
        .collect()
}

#[test]
fn package_and_units_under_a_real_systemd() {
    let Some(store_bin) = StoreKind::Tvix.require("package_and_units_under_a_real_systemd") else {
        return;
    };
    let deb = build_package();
    let started = Instant::now();
    let output = Command::new(repo_root().join("scripts/systemd-guest/run.sh"))
        .arg(&deb)
        .arg(&store_bin)
        .arg(GUEST_TIMEOUT_SECS.to_string())
        .output()
        .expect("running scripts/systemd-guest/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "systemd guest: {:.0} s\n{stderr}\n{stdout}",
        started.elapsed().as_secs_f64()
    );

    let results = parse_results(&stdout);
    let mut failed = Vec::new();
    for name in CHECKS {
        match results.get(*name) {
            Some((verdict, _)) if verdict == "ok" => {}
            Some((verdict, detail)) => failed.push(format!("{name}: {verdict} {detail}")),
            None => failed.push(format!("{name}: not reported")),
        }
    }
    let unknown: Vec<_> = results
        .keys()
        .filter(|name| !CHECKS.contains(&name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "checks this test does not know: {unknown:?}"
    );
    assert!(
        failed.is_empty(),
        "systemd guest checks failed (console: target/systemd-guest/console.log):\n{}",
        failed.join("\n")
    );
    assert!(
        stdout.lines().any(|line| line == "DONE"),
        "the guest did not finish its checks"
    );
    assert!(
        output.status.success(),
        "the guest did not power off by itself:\n{stderr}"
    );
}
