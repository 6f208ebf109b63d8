//! The template units `julia-fcgi@.socket` and `julia-fcgi@.service` as
//! source: an instance verifies clean, its hardening scores as well as the
//! plain service's (exposure at most 2.0), and each instance has its own
//! file, socket, directories and name, as the daemon and `julia-fcgi status
//! --pool` expect.

mod common;

use std::process::Command;

fn unit(name: &str) -> String {
    std::fs::read_to_string(common::repo().join("systemd").join(name)).unwrap()
}

/// The instance `blog` of both templates, in a temporary directory, with
/// ExecStart pointing at the built binary (verify checks that it exists).
fn blog_instance() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let service = unit("julia-fcgi@.service")
        .replace("/usr/sbin/julia-fcgi", &common::bin().display().to_string());
    std::fs::write(dir.path().join("julia-fcgi@blog.service"), service).unwrap();
    std::fs::write(
        dir.path().join("julia-fcgi@blog.socket"),
        unit("julia-fcgi@.socket"),
    )
    .unwrap();
    dir
}

#[test]
fn an_instance_verifies_clean() {
    let dir = blog_instance();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(dir.path().join("julia-fcgi@blog.socket"))
        .arg(dir.path().join("julia-fcgi@blog.service"))
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

fn exposure(path: &std::path::Path, name: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split(&format!("{name}: ")).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score for {name} in:\n{text}"))
}

#[test]
fn an_instance_is_hardened_like_the_plain_service() {
    let dir = blog_instance();
    let pool = exposure(
        &dir.path().join("julia-fcgi@blog.service"),
        "julia-fcgi@blog.service",
    );
    let plain = exposure(
        &common::repo().join("systemd/julia-fcgi.service"),
        "julia-fcgi.service",
    );
    eprintln!("exposure: julia-fcgi@blog.service {pool}, julia-fcgi.service {plain}");
    assert!(pool <= 2.0, "julia-fcgi@blog.service exposure {pool} > 2.0");
    assert!(
        pool <= plain,
        "the template ({pool}) is less hardened than the plain service ({plain})"
    );
    // Every hardening line of the plain service is in the template too.
    let template = unit("julia-fcgi@.service");
    let plain = unit("julia-fcgi.service");
    let hardening = plain.split_once("## Hardening").unwrap().1;
    let hardening = hardening.split_once("[Install]").unwrap().0;
    // From the line after the heading's.
    let hardening = hardening.split_once('\n').unwrap().1;
    for line in hardening
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(
            template.lines().any(|t| t == line),
            "julia-fcgi@.service lacks {line:?}"
        );
    }
}

#[test]
fn each_instance_has_its_own_file_socket_directories_and_name() {
    let service = unit("julia-fcgi@.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecReload=",
        "Delegate=yes",
        "KillMode=mixed",
        "Documentation=man:julia-fcgi(8)",
        "Requires=julia-fcgi@%i.socket",
        "ExecStart=/usr/sbin/julia-fcgi --config /etc/julia-fcgi/pools/%i.toml",
        // The daemon's default `pool` (JULIA_FCGI_POOL).
        "Environment=JULIA_FCGI_POOL=%i",
        // `julia-fcgi status --pool NAME` asks /run/julia-fcgi/NAME/status.sock.
        "RuntimeDirectory=julia-fcgi/%i",
        "StateDirectory=julia-fcgi/%i",
        "Environment=HOME=/var/lib/julia-fcgi/%i",
        // One uid per pool: pools cannot reach each other's files or workers.
        "DynamicUser=yes",
        "User=julia-fcgi-%i",
        "Also=julia-fcgi@%i.socket",
    ] {
        assert!(
            service
                .lines()
                .any(|l| l == line || (line.ends_with('=') && l.starts_with(line))),
            "julia-fcgi@.service lacks {line:?}"
        );
    }
    // Without a User= of its own, systemd names the dynamic user after the
    // template's prefix and finds the static julia-fcgi, shared by all.
    let users: Vec<&str> = service.lines().filter(|l| l.starts_with("User=")).collect();
    assert_eq!(users, ["User=julia-fcgi-%i"], "one user per pool");
    let socket = unit("julia-fcgi@.socket");
    for line in [
        "ListenStream=/run/julia-fcgi/%i.sock",
        "SocketMode=0660",
        "SocketGroup=www-data",
        "Accept=no",
        "FileDescriptorName=fastcgi",
    ] {
        assert!(
            socket.lines().any(|l| l == line),
            "julia-fcgi@.socket lacks {line:?}"
        );
    }
}
