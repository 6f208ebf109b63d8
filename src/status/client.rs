//! `julia-fcgi status`: asks a running instance over its status socket and
//! prints a table, a person's first stop when something looks wrong.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::config::{ConfigError, ListenAddr, PoolName};

/// How `julia-fcgi status` shows what it fetched.
#[derive(Debug, Clone, Copy, Default)]
pub struct Show {
    /// The report as JSON rather than a table.
    pub json: bool,
    /// Again every second, on a cleared screen, like watch(1).
    pub watch: bool,
}

/// `julia-fcgi status`: asks the instance at `addr` and prints what it says
/// (every second with `watch`, until it fails). `unit` is the systemd unit
/// to look at when nobody answers.
pub fn run(addr: &ListenAddr, unit: &str, show: Show) -> ExitCode {
    loop {
        match fetch_from(addr, unit) {
            Ok(report) => {
                if show.watch {
                    // Clear the screen and go home, like watch(1).
                    print!("\x1b[2J\x1b[H");
                }
                if show.json {
                    println!("{report}");
                } else {
                    print!("{}", table(&report));
                }
            }
            Err(e) => {
                eprintln!("julia-fcgi status: {e}");
                return ExitCode::FAILURE;
            }
        }
        if !show.watch {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `julia-fcgi status --all`: asks every pool in `pools` where it is (or
/// says why not), one after the other, and prints each (`json`: one JSON
/// array). A pool that does not answer, or whose socket is not known, is
/// said on stderr and makes the exit status 1; the others are printed all
/// the same.
pub fn run_all(pools: &[(PoolName, Result<ListenAddr, ConfigError>)], json: bool) -> ExitCode {
    let mut failed = false;
    let mut reports = Vec::new();
    for (name, target) in pools {
        let fetched = match target {
            Ok(addr) => fetch_from(addr, &format!("julia-fcgi@{name}")),
            Err(e) => Err(e.to_string()),
        };
        match fetched {
            Ok(report) if json => reports.push(report),
            Ok(report) => println!("{}", table(&report)),
            Err(e) => {
                eprintln!("julia-fcgi status: pool {name}: {e}");
                failed = true;
            }
        }
    }
    if json {
        println!("{}", Value::Array(reports));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Fetches `/status?json&full` from the status socket at `addr` over plain
/// HTTP.
pub fn fetch(addr: &ListenAddr) -> Result<Value, String> {
    fetch_from(addr, "julia-fcgi")
}

/// [`fetch`], naming `unit` in the advice when nobody answers.
pub fn fetch_from(addr: &ListenAddr, unit: &str) -> Result<Value, String> {
    let response = exchange(addr, b"GET /status?json&full HTTP/1.0\r\n\r\n").map_err(|e| {
        format!(
            "cannot reach julia-fcgi's status socket at {addr}: {e}\n\
             Is julia-fcgi running (systemctl status {unit})? Point at its status socket \
             with --status-listen ADDR, or -c FILE for the status_listen of its config."
        )
    })?;
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or_else(|| format!("{addr} answered something that is not HTTP"))?;
    serde_json::from_str(body)
        .map_err(|e| format!("{addr} answered something that is not status JSON: {e}"))
}

/// One request, the whole answer.
fn exchange(addr: &ListenAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    fn over(mut stream: impl Read + Write, request: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(request)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response)
    }
    let timeout = Some(Duration::from_secs(5));
    match addr {
        ListenAddr::Unix(path) => {
            let stream = UnixStream::connect(path)?;
            stream.set_read_timeout(timeout)?;
            stream.set_write_timeout(timeout)?;
            over(stream, request)
        }
        ListenAddr::Tcp { addr, .. } => {
            let stream = TcpStream::connect_timeout(addr, Duration::from_secs(5))?;
            stream.set_read_timeout(timeout)?;
            stream.set_write_timeout(timeout)?;
            over(stream, request)
        }
    }
}

/// A person's view of a status report.
pub fn table(status: &Value) -> String {
    let field = |k: &str| match &status[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = format!(
        "pool {} on {}  ({} process manager, up {} s, cgroups {})\n\
         workers: {} total, {} idle, {} busy (most busy at once: {})\n\
         requests: {} accepted, {} slow; listen queue {} of {} (max seen {}), {} parked\n",
        field("pool"),
        field("listen"),
        field("process manager"),
        field("start since"),
        field("cgroups"),
        field("total processes"),
        field("idle processes"),
        field("active processes"),
        field("max active processes"),
        field("accepted conn"),
        field("slow requests"),
        field("listen queue"),
        field("listen queue len"),
        field("max listen queue"),
        field("parked connections"),
    );
    let r = &status["restarts"];
    out.push_str(&format!(
        "restarts: exit {} crash {} timeout {} oom {} recycle {}\n\n",
        r["exit"], r["crash"], r["timeout"], r["oom"], r["recycle"]
    ));
    out.push_str(&format!(
        "{:>3} {:>8} {:<9} {:>8} {:>8} {:>9} {:>10}  {}\n",
        "#", "PID", "STATE", "REQS", "UP(s)", "MEM(MiB)", "REQ(ms)", "REQUEST"
    ));
    for w in status["processes"].as_array().into_iter().flatten() {
        let mem = w["memory current"]
            .as_u64()
            .map(|m| format!("{:.1}", m as f64 / 1048576.0))
            .unwrap_or_else(|| "-".into());
        let ms = w["request duration"].as_u64().unwrap_or(0) as f64 / 1000.0;
        out.push_str(&format!(
            "{:>3} {:>8} {:<9} {:>8} {:>8} {:>9} {:>10.1}  {} {}\n",
            w["number"].to_string(),
            w["pid"].to_string(),
            w["state"].as_str().unwrap_or("?"),
            w["requests"].to_string(),
            w["start since"].to_string(),
            mem,
            ms,
            w["request method"].as_str().unwrap_or(""),
            w["request uri"].as_str().unwrap_or(""),
        ));
    }
    out
}
