//! Supervision: dead workers are replaced, broken workers are reported,
//! stopping drains requests in progress.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::fcgi::{self, Request};
use common::{alive, bin, julia, page, Addr, Daemon, Options};

const HELLO: &str = r#"print("Content-Type: text/plain\r\n\r\nhello")"#;

#[test]
fn a_killed_worker_is_replaced_and_the_others_keep_serving() {
    let d = Daemon::start(Options {
        workers: 2,
        ..Options::default()
    });
    let p = page(d.dir.path(), "hello.jl", HELLO);
    let pids = d.worker_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let mark = d.log_len();
    unsafe {
        libc::kill(pids[0], libc::SIGKILL);
    }
    // The survivor answers while the replacement warms up.
    for _ in 0..20 {
        assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "hello");
    }
    assert!(alive(pids[1]));
    let line = d.wait_for_log_after(mark, "worker died", Duration::from_secs(10));
    assert!(line.contains("SIGKILL"), "{line}");
    assert!(line.contains(&pids[0].to_string()), "{line}");
    d.wait_for_log_after(mark, "worker ready", Duration::from_secs(120));
    let now = d.worker_pids();
    assert_eq!(now.len(), 2);
    assert!(!now.contains(&pids[0]) && now.contains(&pids[1]), "{now:?}");
    for _ in 0..20 {
        assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "hello");
    }
}

/// A worker that was ready and then died of a page is replaced at once,
/// every time: back-off is for workers that cannot start (below).
#[test]
fn a_page_that_kills_its_worker_does_not_slow_its_replacement() {
    let d = Daemon::start(Options::default());
    let p = page(d.dir.path(), "crash.jl", "ccall(:abort, Cvoid, ())");
    for crash in 1..=3 {
        let before = d.worker_pids();
        // The request dies with its worker; nginx would answer 502.
        let mut s = fcgi::connect(&d.addr);
        s.write_all(&Request::get(&p, "").encode()).unwrap();
        let _ = fcgi::read_record(&mut *s);
        d.wait_for_new_workers(1, &before, Duration::from_secs(120));
        while d.log_text().matches("worker ready").count() <= crash {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let log = d.log_text();
    assert!(
        !log.contains("next start in") && !log.contains("crash loop"),
        "{log}"
    );
    assert_eq!(log.matches("replacing it").count(), 3, "{log}");
}

#[test]
fn a_worker_that_cannot_start_is_reported_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let worker = page(
        dir.path(),
        "worker.jl",
        "error(\"this worker is broken\")\n",
    );
    let sock = dir.path().join("s.sock");
    let mut cmd = Command::new(bin());
    cmd.args(common::root_flag())
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("-l")
        .arg(&sock)
        .arg("-b")
        .arg(julia())
        .arg("-v")
        .arg(&worker);
    let mut d = Daemon::spawn(cmd, Addr::Unix(sock.clone()), dir);
    let code = d.wait_exit(Duration::from_secs(300));
    assert_eq!(code, Some(1));
    let log = d.log_text();
    assert!(log.contains("worker failed to start"), "{log}");
    assert!(
        log.contains("this worker is broken"),
        "stderr must be shown:\n{log}"
    );
    assert!(
        log.contains("workers cannot start (tried 3 times)"),
        "{log}"
    );
    assert!(
        log.contains("next start in 1s") && log.contains("next start in 2s"),
        "{log}"
    );
    assert!(!sock.exists(), "the socket file is removed on exit");
}

#[test]
fn sigterm_lets_requests_in_progress_finish() {
    let mut d = Daemon::start(Options::default());
    let slow = page(
        d.dir.path(),
        "slow.jl",
        r#"sleep(2); print("Content-Type: text/plain\r\n\r\nfinished")"#,
    );
    let addr = d.addr.clone();
    let client = std::thread::spawn(move || fcgi::get(&addr, &slow, "").body_text());
    std::thread::sleep(Duration::from_millis(700));
    let workers = d.worker_pids();
    d.signal(libc::SIGTERM);
    assert_eq!(client.join().unwrap(), "finished");
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        workers.iter().all(|&pid| !alive(pid)),
        "workers left behind"
    );
    let Addr::Unix(sock) = &d.addr else {
        unreachable!()
    };
    assert!(!sock.exists(), "the socket file is removed on exit");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let d = Daemon::start(Options {
        unix_path: Some(sock.clone()),
        ..Options::default()
    });
    let p = page(d.dir.path(), "hello.jl", HELLO);
    assert_eq!(
        fcgi::get(&Addr::Unix(sock.clone()), &p, "").body_text(),
        "hello"
    );
    assert!(d.log_text().contains("replaced stale socket file"));
}
