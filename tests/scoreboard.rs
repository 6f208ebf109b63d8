//! The scoreboard and the policies on top of it, with real Julia workers:
//! the workers' slots read back from the shared file, request timeouts,
//! recycling, and a worker killed under load.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fcgi::{self, Request};
use common::{page, Daemon, Options};
use julia_fcgi::scoreboard::{decode, State, HEADER_SIZE, MAGIC, SLOT_SIZE};

const HELLO: &str = r#"print("Content-Type: text/plain\r\n\r\nhello")"#;

/// Every slot of the daemon's scoreboard file that a worker uses.
fn slots(d: &Daemon) -> Vec<julia_fcgi::scoreboard::Snapshot> {
    let bytes = std::fs::read(d.dir.path().join("scoreboard")).unwrap();
    assert_eq!(&bytes[..8], MAGIC);
    bytes[HEADER_SIZE..]
        .chunks(SLOT_SIZE)
        .map(decode)
        .filter(|s| s.state != State::Free)
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn workers_report_their_requests_on_the_scoreboard() {
    let d = Daemon::start(Options {
        workers: 2,
        ..Options::default()
    });
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let slow = page(
        d.dir.path(),
        "slow.jl",
        r#"sleep(3); print("Content-Type: text/plain\r\n\r\nslow")"#,
    );
    let board = slots(&d);
    assert_eq!(board.len(), 2, "{board:?}");
    let mut pids: Vec<i32> = board.iter().map(|s| s.pid as i32).collect();
    let mut workers = d.worker_pids();
    pids.sort();
    workers.sort();
    assert_eq!(pids, workers);
    assert!(board.iter().all(|s| s.state == State::Idle), "{board:?}");

    for _ in 0..10 {
        assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
    }
    wait_until("10 requests counted", Duration::from_secs(5), || {
        slots(&d).iter().map(|s| s.requests).sum::<u64>() == 10
    });

    let addr = d.addr.clone();
    let client = std::thread::spawn(move || {
        let mut req = Request::get(&slow, "wait=1");
        req.param("REQUEST_URI", "/slow.jl?wait=1");
        fcgi::request(&addr, &req).body_text()
    });
    wait_until("a busy slot", Duration::from_secs(5), || {
        slots(&d).iter().any(|s| s.state == State::Busy)
    });
    let busy = slots(&d)
        .into_iter()
        .find(|s| s.state == State::Busy)
        .unwrap();
    assert_eq!(busy.method, "GET");
    assert_eq!(busy.uri, "/slow.jl?wait=1");
    assert_eq!(client.join().unwrap(), "slow");
    let done = slots(&d);
    assert_eq!(done.iter().map(|s| s.requests).sum::<u64>(), 11);
    assert!(
        done.iter()
            .any(|s| s.last_duration >= Duration::from_secs(3)),
        "{done:?}"
    );
}

#[test]
fn a_request_past_the_terminate_timeout_loses_its_worker() {
    let d = Daemon::start(Options {
        config: Some(
            "request_terminate_timeout = \"2s\"\nrequest_slowlog_timeout = \"1s\"\n".into(),
        ),
        ..Options::default()
    });
    let forever = page(d.dir.path(), "forever.jl", "while true; end");
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let before = d.worker_pids();
    let mark = d.log_len();
    let mut s = fcgi::connect(&d.addr);
    let mut req = Request::get(&forever, "");
    req.param("REQUEST_URI", "/forever.jl");
    s.write_all(&req.encode()).unwrap();
    // The client (nginx) sees the connection closed, or at most an error
    // the dying worker managed to send: never a success.
    let mut got = Vec::new();
    while let Some(record) = fcgi::read_record(&mut *s) {
        got.extend(record.content);
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || got.contains("Status: 500"), "{got}");
    let slow = d.wait_for_log_after(mark, "slow request", Duration::from_secs(10));
    assert!(slow.contains("/forever.jl"), "{slow}");
    let line = d.wait_for_log_after(mark, "request_terminate_timeout", Duration::from_secs(10));
    assert!(
        line.contains("/forever.jl") && line.contains("ran 2."),
        "{line}"
    );
    d.wait_for_new_workers(1, &before, Duration::from_secs(120));
    d.wait_for_log_after(mark, "worker ready", Duration::from_secs(120));
    assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
    assert!(
        !d.log_text().contains("worker died"),
        "a policy kill is not a crash"
    );
}

#[test]
fn max_requests_recycles_workers_without_failing_a_request() {
    let d = Daemon::start(Options {
        config: Some("max_requests = 5\n".into()),
        ..Options::default()
    });
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let first = d.worker_pids();
    let mark = d.log_len();
    let start = Instant::now();
    while d.worker_pids().iter().any(|p| first.contains(p)) || d.worker_pids().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "never recycled:\n{}",
            d.log_text()
        );
        assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
    }
    let line = d.wait_for_log_after(mark, "recycling worker", Duration::from_secs(1));
    assert!(line.contains("max_requests"), "{line}");
    assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
}

#[test]
fn kill_9_under_load_fails_at_most_the_request_in_flight() {
    let d = Daemon::start(Options {
        workers: 2,
        ..Options::default()
    });
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let last_ok = Arc::new(std::sync::Mutex::new(Instant::now()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (addr, p, stop, ok, failed, last_ok) = (
                d.addr.clone(),
                hello.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                last_ok.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = std::panic::catch_unwind(|| fcgi::get(&addr, &p, "").body_text());
                    if matches!(&result, Ok(body) if body == "hello") {
                        ok.fetch_add(1, Ordering::Relaxed);
                        *last_ok.lock().unwrap() = Instant::now();
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let victim = d.worker_pids()[0];
    let mark = d.log_len();
    let killed_at = Instant::now();
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    // Requests are answered again within 2 s (by the survivor at once).
    wait_until(
        "a request served after the kill",
        Duration::from_secs(2),
        || *last_ok.lock().unwrap() > killed_at + Duration::from_millis(50),
    );
    d.wait_for_log_after(mark, "worker ready", Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failed = failed.load(Ordering::Relaxed);
    assert!(failed <= 1, "{failed} requests failed");
    assert!(ok.load(Ordering::Relaxed) > 50);
}

#[test]
fn a_dynamic_pool_grows_under_load_and_shrinks_when_idle() {
    let d = Daemon::start(Options {
        config: Some(
            "pm = \"dynamic\"\nmax_children = 2\nmin_spare = 0\nmax_spare = 0\nidle_timeout = \"1s\"\n"
                .into(),
        ),
        ..Options::default()
    });
    let slow = page(
        d.dir.path(),
        "slow.jl",
        r#"sleep(parse(Float64, ENV["QUERY_STRING"])); print("Content-Type: text/plain\r\n\r\ndone")"#,
    );
    assert_eq!(d.worker_pids().len(), 1);
    // Three long requests for one worker: the pool grows to max_children,
    // and says once that it cannot grow further.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (addr, p) = (d.addr.clone(), slow.clone());
            std::thread::spawn(move || fcgi::get(&addr, &p, "25").body_text())
        })
        .collect();
    d.wait_for_log("starting worker 2 (2/2)", Duration::from_secs(20));
    d.wait_for_log("max_children reached (2)", Duration::from_secs(120));
    for c in clients {
        assert_eq!(c.join().unwrap(), "done");
    }
    assert_eq!(d.log_text().matches("max_children reached").count(), 1);
    // Idle again: the extra worker is retired after idle_timeout.
    d.wait_for_log("retiring idle worker 2", Duration::from_secs(30));
    wait_until("one worker left", Duration::from_secs(30), || {
        d.worker_pids().len() == 1
    });
}
