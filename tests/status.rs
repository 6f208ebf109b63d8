//! The status page the master serves itself: every format checked against
//! the live pool, and answering fast while every worker is stuck.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fcgi::{self, Addr, Request};
use common::{bin, page, Daemon, Options};

fn http_get(socket: &Path, target: &str) -> (String, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {target} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

fn json(socket: &Path, target: &str) -> serde_json::Value {
    serde_json::from_str(&http_get(socket, target).1).unwrap()
}

#[test]
fn every_format_reports_the_live_pool() {
    let d = Daemon::start(Options {
        workers: 2,
        ..Options::default()
    });
    let status = d.dir.path().join("status.sock");
    let hello = page(
        d.dir.path(),
        "hello.jl",
        r#"print("Content-Type: text/plain\r\n\r\nhi")"#,
    );
    for _ in 0..7 {
        assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hi");
    }
    std::thread::sleep(Duration::from_millis(300));

    let j = json(&status, "/status?json");
    assert_eq!(j["accepted conn"], 7, "{j}");
    assert_eq!(j["total processes"], 2);
    assert_eq!(j["idle processes"], 2);
    assert_eq!(j["active processes"], 0);
    assert_eq!(j["process manager"], "static");
    assert_eq!(j["listen queue len"], 511);
    assert!(j["cgroups"].as_str().unwrap().starts_with("off"), "{j}");
    assert!(j.get("processes").is_none(), "workers only with full");

    let (head, text) = http_get(&status, "/status");
    assert!(
        head.contains("200 OK") && head.contains("text/plain"),
        "{head}"
    );
    assert!(text.contains("accepted conn:       7"), "{text}");
    assert!(text.contains("process manager:     static"), "{text}");

    let (head, metrics) = http_get(&status, "/status?openmetrics");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(
        metrics.contains("julia_fcgi_accepted_connections_total 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("julia_fcgi_total_processes 2"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    let full = json(&status, "/status?json&full");
    let workers = full["processes"].as_array().unwrap();
    let mut pids: Vec<i64> = workers.iter().map(|w| w["pid"].as_i64().unwrap()).collect();
    let mut live: Vec<i64> = d.worker_pids().into_iter().map(i64::from).collect();
    pids.sort();
    live.sort();
    assert_eq!(pids, live);
    let served: u64 = workers
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 7);

    assert_eq!(http_get(&status, "/ping").1, "pong\n");
    // Over FastCGI too, as nginx would ask.
    let mut req = Request::get(Path::new("/unused"), "json");
    req.param("SCRIPT_NAME", "/julia-fcgi-status");
    let resp = fcgi::request(&Addr::Unix(status.clone()), &req);
    let j: serde_json::Value = serde_json::from_slice(&resp.http().2).unwrap();
    assert_eq!(j["accepted conn"], 7);
    req.param("SCRIPT_NAME", "/julia-fcgi-ping");
    assert_eq!(
        fcgi::request(&Addr::Unix(status), &req).body_text(),
        "pong\n"
    );
}

#[test]
fn status_answers_fast_while_every_worker_is_stuck() {
    let d = Daemon::start(Options::default());
    let status = d.dir.path().join("status.sock");
    let slow = page(
        d.dir.path(),
        "slow.jl",
        r#"sleep(8); print("Content-Type: text/plain\r\n\r\nok")"#,
    );
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let (addr, p) = (d.addr.clone(), slow.clone());
            std::thread::spawn(move || {
                let mut req = Request::get(&p, "");
                req.param("REQUEST_URI", &format!("/slow.jl?client={i}"));
                fcgi::request(&addr, &req).body_text()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let j = json(&status, "/status?json&full");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "status took {took:?}");
    assert_eq!(j["active processes"], 1, "{j}");
    assert_eq!(j["idle processes"], 0, "{j}");
    // Two wait for the one worker: in the kernel's queue, or parked by the
    // worker (it accepted one between its client's connect and its write
    // and set it aside for the one whose request was there).
    let (queued, parked) = (&j["listen queue"], &j["parked connections"]);
    assert_eq!(
        queued.as_u64().unwrap() + parked.as_u64().unwrap(),
        2,
        "two connections wait for the one worker: {j}"
    );
    let worker = &j["processes"][0];
    assert_eq!(&worker["parked connections"], parked, "{j}");
    assert_eq!(worker["state"], "busy");
    assert!(
        worker["request uri"]
            .as_str()
            .unwrap()
            .starts_with("/slow.jl?client="),
        "{worker}"
    );
    assert!(
        worker["request duration"].as_u64().unwrap() > 1_000_000,
        "{worker}"
    );
    for c in clients {
        assert_eq!(c.join().unwrap(), "ok");
    }
}

/// Connections straight to the socket that send nothing, with a request
/// behind them, are parked by the worker (julia/INTERFACE.md, "Deadlines"):
/// they are in no listen queue and on no busy worker, and the status page
/// counts them, per worker and in all, in every format, until
/// first_byte_timeout closes them.
#[test]
fn parked_connections_are_counted_on_the_status_page() {
    const N: usize = 5;
    let d = Daemon::start(Options {
        config: Some("first_byte_timeout = \"6s\"\n".into()),
        ..Options::default()
    });
    let status = d.dir.path().join("status.sock");
    let hello = page(
        d.dir.path(),
        "hello.jl",
        r#"print("Content-Type: text/plain\r\n\r\nhi")"#,
    );
    // Compiled before the clock starts (a first request compiles the page).
    assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hi");
    let idle: Vec<_> = (0..N).map(|_| fcgi::connect(&d.addr)).collect();
    let connected = Instant::now();
    // The request behind them is served long before their timeout: they
    // hold no worker.
    let asked = Instant::now();
    assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hi");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let parked = |j: &serde_json::Value| j["parked connections"].as_u64();
    let mut j = json(&status, "/status?json&full");
    while parked(&j) != Some(N as u64) && connected.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        j = json(&status, "/status?json&full");
    }
    assert_eq!(parked(&j), Some(N as u64), "{j}");
    assert_eq!(j["processes"][0]["parked connections"], N, "{j}");
    assert_eq!(j["listen queue"], 0, "{j}");
    assert_eq!(j["idle processes"], 1, "{j}");
    assert_eq!(j["active processes"], 0, "{j}");
    let text = http_get(&status, "/status?full").1;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("parked connections:"))
        .collect();
    let line = format!("parked connections:  {N}");
    assert_eq!(
        lines,
        [line.as_str(), line.as_str()],
        "the pool's and the worker's: {text}"
    );
    let metrics = http_get(&status, "/status?openmetrics").1;
    assert!(
        metrics.contains("# TYPE julia_fcgi_parked_connections gauge")
            && metrics.contains(&format!("\njulia_fcgi_parked_connections {N}\n")),
        "{metrics}"
    );

    // first_byte_timeout from their accept: closed, and no longer counted.
    for mut conn in idle {
        assert!(fcgi::closed(&mut *conn), "an idle connection left open");
    }
    let closed = connected.elapsed();
    assert!(closed > Duration::from_secs(5), "closed after {closed:?}");
    let start = Instant::now();
    while parked(&json(&status, "/status?json")) != Some(0) {
        assert!(start.elapsed() < Duration::from_secs(2), "still counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_status_command_prints_a_table_or_says_why_not() {
    let d = Daemon::start(Options::default());
    let status = || {
        let out = Command::new(bin())
            .arg("status")
            .arg("--runtime-dir")
            .arg(d.dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    // The report is refreshed every 100 ms: right after "ready:" it may
    // still show the worker starting.
    let mut text = status();
    let start = std::time::Instant::now();
    while !text.contains("1 total, 1 idle, 0 busy") && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        text = status();
    }
    assert!(text.contains("1 total, 1 idle, 0 busy"), "{text}");
    assert!(text.contains(&d.worker_pids()[0].to_string()), "{text}");
    let out = Command::new(bin())
        .args(["status", "--json", "--status-socket"])
        .arg(d.dir.path().join("status.sock"))
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["total processes"], 1);

    let nowhere = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["status", "--status-socket"])
        .arg(nowhere.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach julia-fcgi's status socket"),
        "{err}"
    );
    assert!(err.contains("Is julia-fcgi running"), "{err}");
}
