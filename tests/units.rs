//! The systemd units as source: `systemd-analyze verify` clean, the
//! hardening scored by `systemd-analyze security`, and the settings the
//! daemon relies on present.

mod common;

use std::process::Command;

fn unit(name: &str) -> String {
    std::fs::read_to_string(common::repo().join("systemd").join(name)).unwrap()
}

#[test]
fn units_verify_clean() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the built binary.
    let service = unit("julia-fcgi.service")
        .replace("/usr/sbin/julia-fcgi", &common::bin().display().to_string());
    std::fs::write(dir.path().join("julia-fcgi.service"), service).unwrap();
    std::fs::write(
        dir.path().join("julia-fcgi.socket"),
        unit("julia-fcgi.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(dir.path().join("julia-fcgi.socket"))
        .arg(dir.path().join("julia-fcgi.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn service_exposure_score_is_at_most_3() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(common::repo().join("systemd/julia-fcgi.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("julia-fcgi.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    eprintln!("exposure score: {score}");
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{text}");
}

#[test]
fn units_say_what_the_daemon_relies_on() {
    let service = unit("julia-fcgi.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecReload=",
        "Delegate=yes",
        "KillMode=mixed",
        "Documentation=man:julia-fcgi(8)",
        "RuntimeDirectory=julia-fcgi",
        "RuntimeDirectoryPreserve=yes",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(service.contains(line), "service lacks {line:?}");
    }
    assert!(
        !service.contains("\nMemoryDenyWriteExecute"),
        "Julia's JIT needs W+X memory"
    );
    let socket = unit("julia-fcgi.socket");
    for line in [
        "ListenStream=/run/julia-fcgi/julia-fcgi.sock",
        "#ListenStream=127.0.0.1:4545",
        "SocketMode=0660",
        "SocketGroup=www-data",
        "Accept=no",
    ] {
        assert!(socket.contains(line), "socket lacks {line:?}");
    }
}
