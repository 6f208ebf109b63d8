//! wrk as the load of the kept-connection tests, bounded in time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one wrk run measured.
#[derive(Debug)]
pub struct Load {
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub non_2xx: u64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn millis(text: &str) -> f64 {
    let (num, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn parse_wrk(out: &str) -> Load {
    let number = |s: &str| s.trim_end_matches(',').parse::<u64>().unwrap_or(0);
    let mut load = Load {
        requests: 0,
        errors: 0,
        timeouts: 0,
        non_2xx: 0,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
    };
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, max, ..] => load.max_ms = millis(max),
            ["99%", p99] => load.p99_ms = millis(p99),
            [n, "requests", "in", ..] => load.requests = number(n),
            ["Socket", "errors:", "connect", c, "read", r, "write", w, "timeout", t] => {
                load.errors = number(c) + number(r) + number(w);
                load.timeouts = number(t);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => load.non_2xx = number(n),
            _ => {}
        }
    }
    load
}

/// wrk -t2 -c16 for `secs` seconds; a run that outlives its time by 30 s is
/// killed and fails the test, so a stall never hangs the suite.
pub fn wrk(port: u16, secs: u64) -> Load {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("wrk")
        .args(["-t2", "-c16", "--latency", "--timeout", "10s"])
        .arg(format!("-d{secs}s"))
        .arg(format!("http://127.0.0.1:{port}/hello.jl"))
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("wrk (scripts/setup-deps installs it)");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(secs + 30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wrk stalled for {:?}", t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(out.path()).unwrap();
    let load = parse_wrk(&text);
    assert!(load.requests > 0, "wrk measured nothing:\n{text}");
    load
}
