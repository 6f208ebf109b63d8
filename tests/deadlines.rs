//! A request has deadlines from its accept (julia/INTERFACE.md,
//! "Deadlines"; README, "Slow and idle clients"), against the real daemon:
//! idle and byte-a-second connections straight to the socket do not hold
//! the pool and are closed at their deadlines; a slow body holds a worker
//! for `body_timeout` at most and is answered 408; a front end that reads
//! none of a response holds one for `read_timeout`; the dynamic pool grows
//! while workers are stuck reading; a worker SIGSTOPped while reading is
//! busy on the status page and replaced by `request_terminate_timeout`.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::fcgi::{self, begin, stream, Addr, RecordType, Request, Role};
use common::{page, Daemon, Options};

const HELLO: &str = r#"print("Content-Type: text/plain\r\n\r\nhello")"#;

fn socket(d: &Daemon) -> PathBuf {
    match &d.addr {
        Addr::Unix(path) => path.clone(),
        Addr::Tcp(_) => unreachable!("these tests use the unix socket"),
    }
}

/// A POST request's head (BEGIN_REQUEST and the params, no body) that says
/// a body of `len` bytes follows.
fn head(script: &Path, len: usize) -> Vec<u8> {
    let mut req = Request::post(script, "text/plain", vec![b'x'; len]);
    req.param("REQUEST_URI", "/slow-body");
    let mut out = begin(1, Role::Responder, false);
    out.extend(stream(
        RecordType::Params,
        1,
        &fcgi::pairs(&req.params),
        65535,
    ));
    out
}

/// A connection that sends `bytes` one a second from a thread; the thread
/// returns how long after the connect the pool closed it (None: it did not
/// within `limit`).
struct Drip {
    stream: UnixStream,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Option<Duration>>,
}

fn drip(socket: &Path, first: &[u8], bytes: Vec<u8>, limit: Duration) -> Drip {
    let mut s = UnixStream::connect(socket).unwrap();
    let t0 = Instant::now();
    s.write_all(first).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (mut w, flag) = (s.try_clone().unwrap(), stop.clone());
    let thread = std::thread::spawn(move || {
        for b in bytes {
            if flag.load(Ordering::Relaxed) || t0.elapsed() > limit {
                return None;
            }
            if w.write_all(&[b]).is_err() {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        None
    });
    Drip {
        stream: s,
        stop,
        thread,
    }
}

/// How long after `t0` the pool closed `s` (None: not within `limit`).
fn closed_after(s: &mut UnixStream, t0: Instant, limit: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {} // an answer (408): the close follows
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(t0.elapsed()),
            Err(_) => {}
        }
    }
    None
}

fn hello_within(d: &Daemon, hello: &Path, limit: Duration) -> Duration {
    let t = Instant::now();
    assert_eq!(fcgi::get(&d.addr, hello, "").body_text(), "hello");
    let took = t.elapsed();
    assert!(took < limit, "hello.jl took {took:?}\n{}", d.log_text());
    took
}

fn status_json(d: &Daemon) -> serde_json::Value {
    let mut s = UnixStream::connect(d.dir.path().join("status.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /status?json&full HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn idle_and_byte_a_second_connections_never_hold_the_pool() {
    let d = Daemon::start(Options {
        workers: 2,
        config: Some("first_byte_timeout = \"1s\"\nheader_timeout = \"3s\"\n".into()),
        ..Options::default()
    });
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let sock = socket(&d);
    hello_within(&d, &hello, Duration::from_secs(5));
    let t0 = Instant::now();
    let mut idle: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let request = Request::get(&hello, "").encode();
    let slow: Vec<Drip> = (0..4)
        .map(|_| drip(&sock, &[], request.clone(), Duration::from_secs(20)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Twice as many idle and slow connections as workers: every page is
    // served at once all the same.
    for _ in 0..20 {
        hello_within(&d, &hello, Duration::from_secs(1));
    }
    // Each is closed at its deadline, counted from its accept.
    for s in &mut idle {
        let after = closed_after(s, t0, Duration::from_secs(10)).expect("idle connection closed");
        assert!(
            Duration::from_millis(900) < after && after < Duration::from_secs(4),
            "idle connection closed after {after:?}"
        );
    }
    for s in slow {
        let after = s.thread.join().unwrap().expect("slow connection closed");
        assert!(
            Duration::from_millis(2900) < after && after < Duration::from_secs(7),
            "byte-a-second connection closed after {after:?}"
        );
    }
    hello_within(&d, &hello, Duration::from_secs(1));
    let log = d.log_text();
    assert!(
        log.contains("nothing received within first_byte_timeout (1000 ms)"),
        "{log}"
    );
    assert!(
        log.contains("params were not complete within header_timeout (3000 ms)"),
        "{log}"
    );
}

#[test]
fn a_slow_body_holds_a_worker_for_body_timeout_at_most_and_is_answered_408() {
    let d = Daemon::start(Options {
        workers: 2,
        config: Some("body_timeout = \"2s\"\nbody_min_rate = 0\n".into()),
        ..Options::default()
    });
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let sock = socket(&d);
    hello_within(&d, &hello, Duration::from_secs(5));
    let body = stream(RecordType::Stdin, 1, &[b'x'; 100], 65535);
    let mut slow: Vec<Drip> = (0..2)
        .map(|_| {
            drip(
                &sock,
                &head(&hello, 100),
                body.clone(),
                Duration::from_secs(20),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Both workers read a body a byte a second: a page waits for the
    // first of them to give up, at body_timeout.
    let took = hello_within(&d, &hello, Duration::from_secs(6));
    assert!(took > Duration::from_millis(1000), "served in {took:?}");
    for s in &mut slow {
        let r = fcgi::read_response(&mut s.stream, 1);
        assert_eq!(r.status(), 408, "{}", String::from_utf8_lossy(&r.stdout));
        s.stop.store(true, Ordering::Relaxed);
    }
    for s in slow {
        s.thread.join().unwrap();
    }
    assert!(
        d.log_text()
            .contains("request body not complete within body_timeout (2000 ms; "),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_front_end_that_reads_no_response_holds_a_worker_for_read_timeout_at_most() {
    let d = Daemon::start(Options {
        workers: 1,
        config: Some("read_timeout = \"1s\"\n".into()),
        ..Options::default()
    });
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let big = page(
        d.dir.path(),
        "big.jl",
        r#"print("Content-Type: text/plain\r\n\r\n", repeat("z", 8_000_000))"#,
    );
    hello_within(&d, &hello, Duration::from_secs(5));
    let pids = d.worker_pids();
    // The request goes out whole; then the client keeps the connection
    // open and reads nothing, so the response fills the socket's buffers.
    let mut stuck = UnixStream::connect(socket(&d)).unwrap();
    stuck.write_all(&Request::get(&big, "").encode()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The one worker gives the response up after read_timeout (1 s) with
    // nothing taken, and serves the next request.
    let took = hello_within(&d, &hello, Duration::from_secs(5));
    assert!(took > Duration::from_millis(500), "served in {took:?}");
    wait_until("the log entry", Duration::from_secs(5), || {
        d.log_text().contains(
            "closing FastCGI connection: the front end read none of the response for 1000 ms \
             (read_timeout)",
        )
    });
    // The connection was closed: what is left in it ends.
    assert!(
        closed_after(&mut stuck, Instant::now(), Duration::from_secs(5)).is_some(),
        "the stuck connection stays open"
    );
    assert_eq!(d.worker_pids(), pids, "no worker may have died");
}

#[test]
fn the_dynamic_pool_grows_while_workers_are_stuck_reading() {
    let d = Daemon::start(Options {
        workers: 1,
        config: Some(
            "pm = \"dynamic\"\nmax_children = 3\nmin_spare = 0\nmax_spare = 1\n\
             body_timeout = \"60s\"\nbody_min_rate = 0\n"
                .into(),
        ),
        ..Options::default()
    });
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let sock = socket(&d);
    hello_within(&d, &hello, Duration::from_secs(5));
    // Idle and slow-head connections wait aside: nothing to grow for.
    let _idle: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let request = Request::get(&hello, "").encode();
    let quiet: Vec<Drip> = (0..2)
        .map(|_| drip(&sock, &[], request.clone(), Duration::from_secs(3)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    hello_within(&d, &hello, Duration::from_secs(1));
    assert_eq!(status_json(&d)["total processes"], 1);
    for q in quiet {
        q.thread.join().unwrap();
    }
    // Two bodies that never come: the worker is busy reading one, the other
    // waits, and the pool grows.
    let body = stream(RecordType::Stdin, 1, &[b'x'; 100], 65535);
    let stuck: Vec<Drip> = (0..2)
        .map(|_| {
            drip(
                &sock,
                &head(&hello, 100),
                body.clone(),
                Duration::from_secs(60),
            )
        })
        .collect();
    wait_until(
        "the first worker busy reading",
        Duration::from_secs(10),
        || status_json(&d)["active processes"] == 1,
    );
    d.wait_for_log(
        "connection(s) waiting: starting worker 2",
        Duration::from_secs(10),
    );
    wait_until("two busy workers", Duration::from_secs(120), || {
        status_json(&d)["active processes"] == 2
    });
    let j = status_json(&d);
    let uris: Vec<&str> = j["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "busy")
        .map(|w| w["request uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris, ["/slow-body", "/slow-body"], "{j}");
    // A page now makes the third.
    hello_within(&d, &hello, Duration::from_secs(120));
    assert_eq!(status_json(&d)["total processes"], 3);
    for s in stuck {
        s.stop.store(true, Ordering::Relaxed);
        s.thread.join().unwrap();
    }
}

#[test]
fn a_worker_sigstopped_while_reading_is_busy_and_replaced() {
    let d = Daemon::start(Options {
        workers: 1,
        config: Some("request_terminate_timeout = \"4s\"\nbody_timeout = \"60s\"\n".into()),
        ..Options::default()
    });
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let sock = socket(&d);
    hello_within(&d, &hello, Duration::from_secs(5));
    let old = d.worker_pids();
    // The request starts at the accept: its head comes 1.2 s later, its
    // body never.
    let mut s = UnixStream::connect(&sock).unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    s.write_all(&head(&hello, 10)).unwrap();
    let mut worker = serde_json::Value::Null;
    wait_until("a busy worker", Duration::from_secs(5), || {
        worker = status_json(&d)["processes"][0].clone();
        worker["state"] == "busy"
    });
    assert_eq!(worker["request uri"], "/slow-body", "{worker}");
    assert!(
        worker["request duration"].as_u64().unwrap() >= 1_100_000,
        "counted from the accept: {worker}"
    );
    let pid = worker["pid"].as_i64().unwrap() as i32;
    assert_eq!(old, [pid]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let j = status_json(&d);
    assert_eq!(j["processes"][0]["state"], "busy", "{j}");
    assert_eq!(j["active processes"], 1, "{j}");
    // request_terminate_timeout from the accept: SIGTERM, then SIGKILL,
    // which a stopped process cannot ignore.
    let mark = d.log_len();
    d.wait_for_log("past request_terminate_timeout", Duration::from_secs(10));
    let waited = t0.elapsed();
    assert!(waited > Duration::from_secs(4), "{waited:?}");
    let new = d.wait_for_new_workers(1, &old, Duration::from_secs(120));
    assert_ne!(new, old);
    assert!(closed_after(&mut s, t0, Duration::from_secs(20)).is_some());
    d.wait_for_log_after(mark, "worker ready", Duration::from_secs(120));
    hello_within(&d, &hello, Duration::from_secs(5));
}
