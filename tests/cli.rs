//! The command line: the old tool's flags, and bad input refused with one
//! precise message, the usage hint and exit 2, before anything is spawned.

mod common;

use std::process::Command;

use common::{bin, julia, worker_file};

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Outcome {
    let out = Command::new(bin()).args(args).output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs with a valid julia and worker so that only the flag under test is bad.
fn run_valid_base(extra: &[&str]) -> Outcome {
    let julia = julia();
    let worker = worker_file();
    // Its own runtime directory: tests run in parallel, and only one
    // instance may use a runtime directory.
    let runtime = tempfile::tempdir().unwrap();
    let mut args = vec![
        "-b",
        julia.to_str().unwrap(),
        "-v",
        worker.to_str().unwrap(),
        "--runtime-dir",
        runtime.path().to_str().unwrap(),
    ];
    args.extend(common::root_flag());
    args.extend_from_slice(extra);
    run(&args)
}

fn assert_usage_error(out: &Outcome, needle: &str) {
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains(needle),
        "{needle:?} not in: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Usage: julia-fcgi"),
        "no usage in: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--help"),
        "no help hint in: {}",
        out.stderr
    );
}

#[test]
fn help_is_long_only_and_documents_every_flag() {
    let out = run(&["--help"]);
    assert_eq!(out.code, Some(0));
    for flag in [
        "-l, --listen",
        "-b, --julia",
        "-v, --worker",
        "-h, --home",
        "-s, --socket",
        "-w, --workers",
        "-c, --config",
        "--backlog",
        "--socket-mode",
        "--socket-owner",
        "--log-level",
        "--version",
    ] {
        assert!(
            out.stdout.contains(flag),
            "{flag} missing from --help:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("127.0.0.1:4545"));
    assert!(out.stdout.contains("/usr/bin/julia"));
    assert!(out.stdout.contains("ignored"), "-s must say it is ignored");
    // -h is HOME: it wants a value, it does not print help.
    let out = run(&["-h"]);
    assert_usage_error(&out, "a value is required for '--home <HOME>'");
}

#[test]
fn version_comes_from_cargo_toml() {
    let out = run(&["--version"]);
    assert_eq!(out.code, Some(0));
    assert_eq!(
        out.stdout.trim(),
        format!("julia-fcgi {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    assert_usage_error(
        &run(&["--frobnicate"]),
        "unexpected argument '--frobnicate'",
    );
    assert_usage_error(
        &run(&["-w", "two"]),
        "invalid value 'two' for '--workers <N>'",
    );
    assert_usage_error(
        &run_valid_base(&["-w", "0"]),
        "workers: 0: at least one worker",
    );
    assert_usage_error(
        &run_valid_base(&["-l", "nonsense"]),
        "invalid value for listen",
    );
    assert_usage_error(&run_valid_base(&["-l", "127.0.0.1:99999"]), "port number");
    assert_usage_error(&run_valid_base(&["--socket-mode", "999"]), "socket_mode");
    assert_usage_error(
        &run_valid_base(&["--log-level", "loud=="]),
        "invalid log level",
    );
}

#[test]
fn missing_julia_or_worker_is_refused_before_spawning() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let worker = worker_file();
    let out = run(&[
        "-R",
        "-l",
        sock.to_str().unwrap(),
        "-b",
        "/nonexistent/julia",
        "-v",
        worker.to_str().unwrap(),
    ]);
    assert_usage_error(&out, "/nonexistent/julia is not an executable file");
    assert!(!sock.exists(), "nothing may be bound before validation");

    let julia = julia();
    let out = run(&[
        "-R",
        "-l",
        sock.to_str().unwrap(),
        "-b",
        julia.to_str().unwrap(),
        "-v",
        "/nonexistent/worker.jl",
    ]);
    assert_usage_error(&out, "cannot read worker file /nonexistent/worker.jl");
    assert!(!sock.exists());
}

#[test]
fn config_file_errors_are_precise() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "workers = 2\nlisten = 17\n").unwrap();
    let out = run_valid_base(&["--config", cfg.to_str().unwrap()]);
    assert_usage_error(&out, "invalid config file");
    assert!(out.stderr.contains("listen"), "{}", out.stderr);

    std::fs::write(&cfg, "wrokers = 2\n").unwrap();
    let out = run_valid_base(&["--config", cfg.to_str().unwrap()]);
    assert_usage_error(&out, "unknown field `wrokers`");

    std::fs::write(&cfg, "shutdown_grace = \"soon\"\n").unwrap();
    let out = run_valid_base(&["--config", cfg.to_str().unwrap()]);
    assert_usage_error(&out, "shutdown_grace");

    let out = run_valid_base(&["--config", "/nonexistent.toml"]);
    assert_usage_error(&out, "cannot read config file /nonexistent.toml");
}

#[test]
fn a_socket_file_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let out = run_valid_base(&["-l", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("is not a socket; refusing to replace it"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[test]
fn a_socket_somebody_listens_on_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let out = run_valid_base(&["-l", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("another process is already listening"),
        "{}",
        out.stderr
    );
}
