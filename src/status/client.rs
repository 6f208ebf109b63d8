//! `julia-fcgi status`: asks a running instance over its status socket and
//! prints a table, a person's first stop when something looks wrong.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

/// Fetches `/status?json&full` from `addr` (a unix socket path, or
/// HOST:PORT) over plain HTTP.
pub fn fetch(addr: &str) -> Result<Value, String> {
    let request = b"GET /status?json&full HTTP/1.0\r\n\r\n";
    let timeout = Some(Duration::from_secs(5));
    let mut response = Vec::new();
    let io = |e: std::io::Error| {
        format!(
            "cannot reach julia-fcgi's status socket at {addr}: {e}\n\
             Is julia-fcgi running (systemctl status julia-fcgi)? Give another socket with --status-socket."
        )
    };
    if addr.starts_with('/') || addr.starts_with('.') {
        let mut s = std::os::unix::net::UnixStream::connect(addr).map_err(io)?;
        s.set_read_timeout(timeout).map_err(io)?;
        s.write_all(request).map_err(io)?;
        s.read_to_end(&mut response).map_err(io)?;
    } else {
        let mut s = std::net::TcpStream::connect(addr).map_err(io)?;
        s.set_read_timeout(timeout).map_err(io)?;
        s.write_all(request).map_err(io)?;
        s.read_to_end(&mut response).map_err(io)?;
    }
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or_else(|| format!("{addr} answered something that is not HTTP"))?;
    serde_json::from_str(body)
        .map_err(|e| format!("{addr} answered something that is not status JSON: {e}"))
}

/// A person's view of a status report.
pub fn table(status: &Value) -> String {
    let field = |k: &str| match &status[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = format!(
        "pool {}  ({} process manager, up {} s, cgroups {})\n\
         workers: {} total, {} idle, {} busy (most busy at once: {})\n\
         requests: {} accepted, {} slow; listen queue {} of {} (max seen {})\n",
        field("pool"),
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
