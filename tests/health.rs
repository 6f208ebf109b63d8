//! Health for load balancers without FastCGI: `GET /ping` and `GET /ready`
//! over plain HTTP, on the status socket and on the health listener
//! (`health_listen`, here a second loopback address standing for a private
//! interface), against the real daemon with real Julia workers; `/ready`
//! turns 503 the moment a stop begins, while the workers serve on through
//! the drain delay and then drain; many idle health clients do not starve
//! a balancer's check.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fcgi::{self, Addr, Request};
use common::{alive, free_port, page, Daemon, Options};

/// `GET target` on a plain TCP connection: (status code, body).
fn tcp_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: lb\r\n\r\n").unwrap();
    split(read_all(&mut s))
}

fn unix_get(socket: &Path, target: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {target} HTTP/1.0\r\n\r\n").unwrap();
    split(read_all(&mut s))
}

fn read_all(s: &mut impl Read) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn split(response: String) -> (u16, String) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// A daemon whose health listener is on 127.0.0.2 (the "private address"),
/// once `/ready` says so: the status is published at each scan (100 ms),
/// so readiness follows a worker's READY within one.
fn with_health(workers: u32, extra_config: &str) -> (Daemon, SocketAddr) {
    let health: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let d = Daemon::start(Options {
        workers,
        config: Some(format!("health_listen = \"{health}\"\n{extra_config}")),
        ..Options::default()
    });
    let ready_at = Instant::now();
    while tcp_get(health, "/ready").0 != 200 {
        assert!(
            ready_at.elapsed() < Duration::from_millis(500),
            "not ready 500 ms after the workers: {:?}",
            tcp_get(health, "/ready")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (d, health)
}

#[test]
fn ping_and_ready_over_http_on_both_listeners_and_nothing_else_on_health() {
    let (d, health) = with_health(1, "pool = \"blog\"\n");
    d.wait_for_log(
        &format!("health checks (GET /ping, GET /ready) on {health}"),
        Duration::from_secs(5),
    );
    assert_eq!(tcp_get(health, "/ping"), (200, "pong\n".into()));
    assert_eq!(
        tcp_get(health, "/ready"),
        (200, "ready: 1 warm worker(s)\n".into())
    );
    // The status page is not for the network: request URIs, query strings.
    for target in ["/status", "/status?json&full", "/status?openmetrics", "/"] {
        let (code, body) = tcp_get(health, target);
        assert_eq!(code, 404, "{target}: {body}");
        assert!(
            body.contains("answers GET /ping and GET /ready only"),
            "{body}"
        );
    }
    // curl, as a check script would use it: -f fails on 503.
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5"])
        .arg(format!("http://{health}/ready"))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ready: 1 warm worker(s)\n"
    );

    // The status socket answers both, and the whole page with its name.
    let status = d.dir.path().join("status.sock");
    assert_eq!(unix_get(&status, "/julia-fcgi-ping").0, 200);
    assert_eq!(unix_get(&status, "/ready").0, 200);
    let (_, json) = unix_get(&status, "/status?json");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["pool"], "blog", "{json}");
    let listen = format!("unix:{}", d.dir.path().join("fcgi.sock").display());
    assert_eq!(json["listen"], listen.as_str(), "{json}");
    let (_, text) = unix_get(&status, "/status");
    assert!(text.starts_with("pool:                blog\n"), "{text}");
    let (_, metrics) = unix_get(&status, "/status?openmetrics");
    let samples: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(samples.len() > 10, "{metrics}");
    for sample in samples {
        assert!(sample.contains("pool=\"blog\""), "{sample}");
    }

    // FastCGI to the status socket: the same readiness, with its status.
    let mut req = Request::get(Path::new("/ready"), "");
    req.param("SCRIPT_NAME", "/ready");
    let response = fcgi::request(&Addr::Unix(status), &req);
    assert_eq!(response.status(), 200, "{}", response.body_text());
    assert_eq!(response.body_text(), "ready: 1 warm worker(s)\n");
}

#[test]
fn ready_is_503_from_sigterm_while_the_workers_still_drain() {
    let (mut d, health) = with_health(1, "shutdown_grace = \"20s\"\n");
    let slow = page(
        d.dir.path(),
        "slow.jl",
        r#"sleep(4); print("Content-Type: text/plain\r\n\r\nfinished")"#,
    );
    let addr = d.addr.clone();
    let request = std::thread::spawn(move || fcgi::get(&addr, &slow, ""));
    let status = d.dir.path().join("status.sock");
    let start = Instant::now();
    loop {
        let (_, json) = unix_get(&status, "/status?json");
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        if json["active processes"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never busy: {json}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Busy is still ready: requests wait in the queue.
    assert_eq!(tcp_get(health, "/ready").0, 200);
    let workers = d.worker_pids();
    assert_eq!(workers.len(), 1, "{workers:?}");
    d.signal(libc::SIGTERM);
    let stopped_at = Instant::now();
    let (code, body) = loop {
        let answer = tcp_get(health, "/ready");
        if answer.0 != 200 {
            break answer;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(1),
            "still ready after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready: stopping"), "{body}");
    assert!(
        alive(workers[0]),
        "the worker is still finishing its request"
    );
    assert_eq!(unix_get(&status, "/ready").0, 503);
    // Alive while draining: ping is liveness, not readiness.
    assert_eq!(tcp_get(health, "/ping").0, 200);
    let response = request.join().unwrap();
    assert_eq!(response.body_text(), "finished");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(TcpStream::connect_timeout(&health, Duration::from_secs(1)).is_err());
}

/// Waits (briefly) for `/ready` on `health` to say 503, and returns its body.
fn wait_not_ready(health: SocketAddr) -> String {
    let since = Instant::now();
    loop {
        let (code, body) = tcp_get(health, "/ready");
        if code != 200 {
            assert_eq!(code, 503, "{body}");
            return body;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "still ready 1 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn through_the_drain_delay_ready_is_503_and_pages_are_still_served() {
    let (mut d, health) = with_health(1, "drain_delay = \"3s\"\n");
    let hello = page(
        d.dir.path(),
        "hello.jl",
        r#"print("Content-Type: text/plain\r\n\r\nhello")"#,
    );
    assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
    let workers = d.worker_pids();
    d.signal(libc::SIGTERM);
    let stopped_at = Instant::now();
    let body = wait_not_ready(health);
    assert!(body.starts_with("not ready: stopping"), "{body}");
    d.wait_for_log(
        "the workers serve on for 3s (drain_delay)",
        Duration::from_secs(2),
    );
    // The balancer sees 503 while the pool still answers what reaches it.
    let mut served = 0;
    while stopped_at.elapsed() < Duration::from_millis(2500) {
        let response = fcgi::get(&d.addr, &hello, "");
        assert_eq!(response.body_text(), "hello", "during the drain delay");
        served += 1;
        assert_eq!(tcp_get(health, "/ready").0, 503);
        assert_eq!(tcp_get(health, "/ping").0, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served >= 10, "{served} requests in 2.5 s");
    assert_eq!(
        d.worker_pids(),
        workers,
        "the same worker, never told to stop"
    );
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "exited before the delay was over"
    );
    assert_eq!(d.wait_exit(Duration::from_secs(15)), Some(0));
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "stopped {took:?} after SIGTERM with drain_delay = 3s"
    );
    let log = d.log_text();
    let (delay, rest) = log
        .split_once("drain delay over")
        .expect("the delay's end said");
    assert!(!delay.contains("stopping 1 worker(s)"), "{log}");
    assert!(rest.contains("stopping 1 worker(s)"), "{log}");
}

#[test]
fn a_second_signal_cuts_the_drain_delay_short() {
    // 25 s + 10 s of grace: past the units' TimeoutStopSec, and said so.
    let (mut d, health) = with_health(1, "drain_delay = \"25s\"\n");
    d.wait_for_log(
        "drain_delay (25s) + shutdown_grace (10s) = 35s, not under the units' TimeoutStopSec=30s",
        Duration::from_secs(2),
    );
    let hello = page(
        d.dir.path(),
        "hello.jl",
        r#"print("Content-Type: text/plain\r\n\r\nhello")"#,
    );
    d.signal(libc::SIGTERM);
    wait_not_ready(health);
    d.wait_for_log("serve on for 25s", Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
    let status = d.dir.path().join("status.sock");
    assert_eq!(unix_get(&status, "/ready").0, 503);
    d.signal(libc::SIGINT);
    let second = Instant::now();
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
    let log = d.log_text();
    assert!(log.contains("SIGINT again: stopping now"), "{log}");
    assert!(log.contains("drain delay cut short"), "{log}");
}

/// The daemon's open file descriptors.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn idle_clients_are_capped_and_do_not_keep_a_check_from_its_answer() {
    let (d, health) = with_health(1, "");
    let before = open_fds(d.pid());
    // Far more idle connections than the cap (64), kept open, sending nothing.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect_timeout(&health, Duration::from_secs(5)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let held = open_fds(d.pid()) - before;
    assert!(
        held <= 64,
        "the daemon holds {held} more descriptors with 300 idle health clients"
    );
    // A check is answered at once, again and again, while they stay open.
    for _ in 0..20 {
        let asked = Instant::now();
        assert_eq!(tcp_get(health, "/ping"), (200, "pong\n".into()));
        assert_eq!(tcp_get(health, "/ready").0, 200);
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
    }
    // The oldest idle ones were closed to make room (the newest are still
    // waiting for their request).
    let closed = idle
        .iter()
        .filter(|s| {
            let mut s: &TcpStream = s;
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            match s.read(&mut [0u8; 1]) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .count();
    assert!(closed >= 300 - 64, "{closed} of 300 idle clients closed");
    assert!(
        d.log_text()
            .contains("health listener: more than 64 clients at once; ended the"),
        "{}",
        d.log_text()
    );
    drop(idle);
}

#[test]
fn ready_is_503_until_a_worker_is_warm() {
    let dir = tempfile::tempdir().unwrap();
    // A "julia" that starts and never says READY.
    let julia = dir.path().join("julia");
    std::fs::write(&julia, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&julia, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let health: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("health_listen = \"{health}\"\n")).unwrap();
    let sock = dir.path().join("fcgi.sock");
    let mut cmd = Command::new(common::bin());
    cmd.arg("-l")
        .arg(&sock)
        .arg("-b")
        .arg(&julia)
        .arg("-v")
        .arg(common::worker_file())
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("-h")
        .arg(dir.path())
        .arg("-c")
        .arg(&config)
        .args(common::root_flag());
    let d = Daemon::spawn(cmd, Addr::Unix(sock), dir);
    d.wait_for_log("health checks", Duration::from_secs(10));
    let start = Instant::now();
    let (code, body) = loop {
        // Before the first report the pool has no worker at all; then one
        // that is starting.
        let answer = tcp_get(health, "/ready");
        if answer.1.contains("starting") || start.elapsed() > Duration::from_secs(5) {
            break answer;
        }
        assert_eq!(answer.0, 503, "{}", answer.1);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body,
        "not ready: no warm worker (1 starting or restarting)\n"
    );
    assert_eq!(tcp_get(health, "/ping"), (200, "pong\n".into()));
    // A stop neither waits out a drain delay (no worker could serve) nor
    // the grace period (a worker still starting holds no request).
    let mut d = d;
    d.signal(libc::SIGTERM);
    let stopped_at = Instant::now();
    assert_eq!(d.wait_exit(Duration::from_secs(15)), Some(0));
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    let log = d.log_text();
    assert!(
        log.contains("worker still starting: killed, it holds no request"),
        "{log}"
    );
    assert!(!log.contains("drain_delay"), "{log}");
}

#[test]
fn a_bad_health_listen_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    for (toml, needle) in [
        (
            "health_listen = \"9001\"\n",
            "invalid value for health_listen: \"9001\": expected HOST:PORT",
        ),
        (
            "pool = \"a/b\"\n",
            "invalid value for pool: \"a/b\" has a character",
        ),
    ] {
        std::fs::write(&config, toml).unwrap();
        let out = Command::new(common::bin())
            .arg("-c")
            .arg(&config)
            .arg("--runtime-dir")
            .arg(dir.path())
            .args(common::root_flag())
            .arg("-v")
            .arg(common::worker_file())
            .arg("-b")
            .arg(common::julia())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(needle), "{toml}: {stderr}");
    }
}
