//! spawn-fcgi compatibility, both ways: the master takes the listening
//! socket spawn-fcgi puts on its fd 0, and a worker alone runs under
//! spawn-fcgi without any master.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::fcgi;
use common::{bin, julia, page, worker_file, Addr, Daemon, READY_TIMEOUT};

fn spawn_fcgi(sock: &std::path::Path) -> Command {
    let mut cmd = Command::new("spawn-fcgi");
    // -n: exec the program in place, so its pid is the one we started.
    cmd.arg("-n")
        .arg("-s")
        .arg(sock)
        .arg("-M")
        .arg("0600")
        .arg("--");
    cmd
}

#[test]
fn the_master_runs_under_spawn_fcgi() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spawned.sock");
    let p = page(
        dir.path(),
        "hello.jl",
        r#"print("Content-Type: text/plain\r\n\r\nunder spawn-fcgi")"#,
    );
    let mut cmd = spawn_fcgi(&sock);
    cmd.arg(bin())
        .args(common::root_flag())
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("-b")
        .arg(julia())
        .arg("-v")
        .arg(worker_file())
        .arg("-w")
        .arg("2");
    let d = Daemon::spawn(cmd, Addr::Unix(sock.clone()), dir);
    let line = d.wait_for_log("ready:", READY_TIMEOUT);
    assert!(line.contains(&sock.display().to_string()), "{line}");
    assert_eq!(d.worker_pids().len(), 2);
    for _ in 0..10 {
        assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "under spawn-fcgi");
    }
}

#[test]
fn a_worker_alone_runs_under_spawn_fcgi() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("alone.sock");
    let p = page(
        dir.path(),
        "hello.jl",
        r#"print("Content-Type: text/plain\r\n\r\nno master")"#,
    );
    let mut cmd = spawn_fcgi(&sock);
    cmd.arg(julia()).arg("--startup-file=no").arg(worker_file());
    let d = Daemon::spawn(cmd, Addr::Unix(sock.clone()), dir);
    let start = Instant::now();
    // No master reports readiness here: the socket exists at once and
    // connections queue until the worker accepts.
    // spawn-fcgi binds (the file appears) a moment before it listens.
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < READY_TIMEOUT,
            "no socket:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..10 {
        assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "no master");
    }
}
