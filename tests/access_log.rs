//! The optional access log: one entry per request, written by the master
//! from what the worker reports after each response, and off by default.

mod common;

use std::time::{Duration, Instant};

use common::fcgi::{self, Request};
use common::{page, Daemon, Options};

/// The access log entries in the daemon's log (stderr: the message, then the
/// fields).
fn access_entries(d: &Daemon) -> Vec<String> {
    d.log()
        .into_iter()
        .filter(|l| l.contains("http_status="))
        .collect()
}

fn wait_for_entries(d: &Daemon, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let entries = access_entries(d);
        if entries.len() >= n || start.elapsed() > Duration::from_secs(10) {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn request_from(script: &std::path::Path, uri: &str, remote: &str) -> Request {
    let mut req = Request::get(script, "");
    req.param("REQUEST_URI", uri).param("REMOTE_ADDR", remote);
    req
}

#[test]
fn every_request_is_one_entry_with_its_status_and_duration() {
    let d = Daemon::start(Options {
        workers: 2,
        config: Some("access_log = true\nmax_body_bytes = 1000\n".into()),
        ..Options::default()
    });
    let dir = d.dir.path();
    let ok = page(
        dir,
        "ok.jl",
        r#"print("Content-Type: text/plain\r\n\r\nok")"#,
    );
    let missing = page(
        dir,
        "missing.jl",
        r#"print("Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such thing")"#,
    );
    let moved = page(dir, "moved.jl", r#"print("Location: /ok.jl\r\n\r\n")"#);
    let throws = page(dir, "throws.jl", r#"error("boom")"#);
    let slow = page(
        dir,
        "slow.jl",
        r#"sleep(0.3); print("Content-Type: text/plain\r\n\r\nslow")"#,
    );
    // Nothing about warm-up requests: only what clients asked for.
    std::thread::sleep(Duration::from_millis(300));
    assert!(access_entries(&d).is_empty(), "{}", d.log_text());

    // A CGI redirect has no Status header: nginx answers it with 302, and
    // so does the access log.
    let cases = [
        (&ok, "/ok.jl?n=1", "192.0.2.1", 200),
        (&missing, "/missing.jl", "192.0.2.2", 404),
        (&moved, "/moved.jl", "2001:db8::3", 302),
        (&throws, "/throws.jl", "192.0.2.4", 500),
        (&slow, "/slow.jl", "192.0.2.5", 200),
    ];
    for (script, uri, remote, status) in &cases {
        let resp = fcgi::request(&d.addr, &request_from(script, uri, remote));
        match status {
            302 => assert_eq!(resp.header("location").as_deref(), Some("/ok.jl")),
            _ => assert_eq!(resp.status(), *status, "{uri}: {}", resp.body_text()),
        }
    }
    // The body is refused before the page runs: 413, logged all the same.
    let mut big = Request::post(&ok, "text/plain", vec![b'x'; 2000]);
    big.param("REQUEST_URI", "/ok.jl?big")
        .param("REMOTE_ADDR", "192.0.2.6");
    assert_eq!(fcgi::request(&d.addr, &big).status(), 413);

    let entries = wait_for_entries(&d, cases.len() + 1);
    assert_eq!(entries.len(), cases.len() + 1, "{}", d.log_text());
    for (_, uri, remote, status) in &cases {
        let line = entries
            .iter()
            .find(|l| l.contains(&format!("\"GET {uri}\"")))
            .unwrap_or_else(|| panic!("no entry for {uri}: {entries:#?}"));
        assert!(
            line.contains(&format!("{remote} \"GET {uri}\" {status} ")),
            "{line}"
        );
        assert!(line.contains(&format!("http_status={status}")), "{line}");
        assert!(
            line.contains("worker=") && line.contains("worker_pid="),
            "{line}"
        );
        assert!(line.contains(" INFO "), "{line}");
    }
    let slow_line = entries.iter().find(|l| l.contains("/slow.jl")).unwrap();
    let micros: u64 = slow_line
        .split("duration_us=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duration_us in {slow_line}"));
    assert!(
        (300_000..5_000_000).contains(&micros),
        "slow.jl took {micros} µs: {slow_line}"
    );
    assert!(
        entries
            .iter()
            .any(|l| l.contains("\"POST /ok.jl?big\" 413 ")),
        "{entries:#?}"
    );
}

#[test]
fn the_flag_turns_it_on_and_it_is_off_by_default() {
    let off = Daemon::start(Options::default());
    let on = Daemon::start(Options {
        extra_args: vec!["--access-log".into()],
        ..Options::default()
    });
    for d in [&off, &on] {
        let ok = page(
            d.dir.path(),
            "ok.jl",
            r#"print("Content-Type: text/plain\r\n\r\nok")"#,
        );
        for i in 0..3 {
            let resp = fcgi::request(&d.addr, &request_from(&ok, &format!("/ok.jl?{i}"), ""));
            assert_eq!(resp.body_text(), "ok");
        }
    }
    let entries = wait_for_entries(&on, 3);
    assert_eq!(entries.len(), 3, "{}", on.log_text());
    // Without REMOTE_ADDR the entry says "-", as web servers do.
    assert!(entries[0].contains("- \"GET /ok.jl?"), "{}", entries[0]);
    // The same requests, without the setting: no entry at all.
    std::thread::sleep(Duration::from_millis(500));
    assert!(access_entries(&off).is_empty(), "{}", off.log_text());
}
