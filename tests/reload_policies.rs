//! A reload applies the supervision policies the file now says, not only
//! what the workers are told: request timeouts and recycling start to
//! apply with the new generation, against the real daemon.

mod common;

use std::time::Duration;

use common::fcgi;
use common::{page, Daemon, Options, READY_TIMEOUT};

const HELLO: &str = r#"print("Content-Type: text/plain\r\n\r\nhello")"#;

#[test]
fn sighup_applies_changed_request_timeouts_and_max_requests() {
    let d = Daemon::start(Options {
        config: Some("max_requests_jitter = 0\n".into()),
        ..Options::default()
    });
    let slow = page(
        d.dir.path(),
        "slow.jl",
        "sleep(1.5)\nprint(\"Content-Type: text/plain\\r\\n\\r\\nslow\")",
    );
    let hello = page(d.dir.path(), "hello.jl", HELLO);

    // As started: no slow-request log, no recycling.
    let mark = d.log_len();
    assert_eq!(fcgi::get(&d.addr, &slow, "").body_text(), "slow");
    for _ in 0..3 {
        assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = d.log()[mark..].join("\n");
    assert!(!before.contains("slow request"), "{before}");
    assert!(!before.contains("recycling worker"), "{before}");

    std::fs::write(
        d.dir.path().join("julia-fcgi.toml"),
        "request_slowlog_timeout = \"500ms\"\nmax_requests = 3\n",
    )
    .unwrap();
    let mark = d.log_len();
    d.signal(libc::SIGHUP);
    d.wait_for_log_after(mark, "reload complete", READY_TIMEOUT);

    let mark = d.log_len();
    assert_eq!(fcgi::get(&d.addr, &slow, "").body_text(), "slow");
    let line = d.wait_for_log_after(mark, "slow request", Duration::from_secs(10));
    assert!(line.contains("request_slowlog_timeout=500ms"), "{line}");
    for _ in 0..2 {
        assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
    }
    let line = d.wait_for_log_after(mark, "recycling worker", Duration::from_secs(10));
    assert!(line.contains("max_requests: served "), "{line}");
    d.wait_for_log_after(mark, "new worker ready", READY_TIMEOUT);
    assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
}
