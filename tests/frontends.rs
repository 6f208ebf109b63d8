//! Every common front end in its documented set-up, in front of the real
//! daemon (2 workers): nginx with the shipped snippet, Apache 2.4
//! `mod_proxy_fcgi` (`SetHandler` and `ProxyPassMatch`), lighttpd
//! `mod_fastcgi`, HAProxy `fcgi-app` with its defaults, and `cgi-fcgi`. Each
//! serves the pages in `tests/frontends/pages/` and is checked byte for byte
//! (status, the page's headers, body). Then kept connections: behind HAProxy
//! and behind nginx with `fastcgi_keep_conn on` + `keepalive 8`, 16 clients
//! on 2 workers never stall (wrk, bounded in time), compared with keep-conn
//! off.
//!
//! Every server runs on 127.0.0.1 on a free port, with its files in a temp
//! dir, and is killed when its test ends. The configurations are
//! `tests/frontends/*.in`: the part under "julia-fcgi" is the README's.

mod common;
#[path = "frontends/load.rs"]
mod load;
#[path = "frontends/servers.rs"]
mod servers;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fcgi, Addr};
use load::wrk;
use servers::{apache, daemon, haproxy, lighttpd, nginx, pages, Server};

const UPLOAD_BYTES: usize = 10 * 1024 * 1024;
const QUERY: &str = "q=%C3%A9t%C3%A9+%E2%9C%93&x=1";

// ------------------------------------------------------------------ the pages

/// An HTTP answer (or a CGI one, from cgi-fcgi): status, headers, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a header block (CRLF lines, `Name: value`) into pairs.
fn header_lines(block: &str) -> Vec<(String, String)> {
    block
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect()
}

fn curl(port: u16, path: &str, upload: Option<&Path>) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-H", "Expect:", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head);
    if let Some(file) = upload {
        cmd.arg("--data-binary").arg(format!("@{}", file.display()));
        cmd.args(["-H", "Content-Type: application/octet-stream"]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(head).unwrap();
    let mut lines = head.splitn(2, "\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers: header_lines(lines.next().unwrap_or_default()),
        body: std::fs::read(body).unwrap(),
    }
}

/// What big.jl prints: 16384 numbered lines of 64 bytes.
fn big_body() -> Vec<u8> {
    (0..16384)
        .flat_map(|i| format!("{i:08}{}\n", ".".repeat(55)).into_bytes())
        .collect()
}

/// The 10 MiB upload (not a repeating pattern, so a lost chunk shows) and
/// what upload.jl answers for it.
fn upload_body() -> (Vec<u8>, String) {
    let body: Vec<u8> = (0..UPLOAD_BYTES)
        .map(|i| ((i * 7 + (i >> 9)) % 251) as u8)
        .collect();
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in &body {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (body.clone(), format!("{} {h:016x}\n", body.len()))
}

/// One page, what to ask and what must come back.
struct Case {
    path: String,
    upload: bool,
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

fn cases(root: &Path) -> Vec<Case> {
    let text = "text/plain";
    let case = |path: &str, status, headers: &[(&'static str, &'static str)], body: &[u8]| Case {
        path: path.to_string(),
        upload: false,
        status,
        headers: headers.to_vec(),
        body: body.to_vec(),
    };
    let pathinfo = format!(
        "SCRIPT_FILENAME={}/pathinfo.jl\nSCRIPT_NAME=/pathinfo.jl\nPATH_INFO=/extra/path\n",
        root.display()
    );
    let query = format!("QUERY_STRING={QUERY}\nq=été ✓\n");
    let mut upload = case(
        "/upload.jl",
        200,
        &[("Content-Type", text)],
        upload_body().1.as_bytes(),
    );
    upload.upload = true;
    vec![
        case(
            "/hello.jl",
            200,
            &[("Content-Type", text), ("X-Page", "hello")],
            b"Hello, world!\n",
        ),
        case(
            "/status404.jl",
            404,
            &[("Content-Type", text)],
            b"no such thing\n",
        ),
        case(
            "/redirect.jl",
            302,
            &[("Location", "http://example.com/elsewhere")],
            b"",
        ),
        case("/big.jl", 200, &[("Content-Type", text)], &big_body()),
        upload,
        case(
            "/pathinfo.jl/extra/path",
            200,
            &[("Content-Type", text)],
            pathinfo.as_bytes(),
        ),
        case(
            &format!("/query.jl?{QUERY}"),
            200,
            &[("Content-Type", "text/plain; charset=utf-8")],
            query.as_bytes(),
        ),
        case(
            "/throws.jl",
            500,
            &[("Content-Type", "text/plain; charset=utf-8")],
            b"500 Internal Server Error\n",
        ),
    ]
}

fn check(front: &str, case: &Case, r: &Reply) {
    let what = format!("{front} {}", case.path);
    assert_eq!(
        r.status,
        case.status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    for (name, value) in &case.headers {
        assert_eq!(
            r.header(name),
            Some(*value),
            "{what}: header {name} in {:?}",
            r.headers
        );
    }
    if r.body != case.body {
        let shown = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
        panic!(
            "{what}: body of {} bytes, expected {}:\n{}\n--- expected:\n{}",
            r.body.len(),
            case.body.len(),
            shown(&r.body),
            shown(&case.body)
        );
    }
}

/// Every page through the server, byte for byte.
fn serves_every_page(server: &Server, root: &Path) {
    let upload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(upload.path(), upload_body().0).unwrap();
    let cases = cases(root);
    // Twice: the second time every page is a cached one.
    for case in cases.iter().chain(&cases) {
        let file = case.upload.then(|| upload.path());
        let r = curl(server.port, &case.path, file);
        check(server.name, case, &r);
    }
}

#[test]
fn nginx_with_the_shipped_snippet() {
    let (_d, sock, _s) = daemon();
    let root = pages();
    let server = nginx(&sock, root.path(), false);
    serves_every_page(&server, root.path());
    // A missing page is nginx's own 404 (the snippet's try_files).
    assert_eq!(curl(server.port, "/missing.jl", None).status, 404);
}

#[test]
fn apache_sethandler() {
    let (_d, sock, _s) = daemon();
    let root = pages();
    let server = apache("apache-sethandler.conf.in", &sock, root.path());
    serves_every_page(&server, root.path());
}

#[test]
fn apache_proxypassmatch() {
    let (_d, sock, _s) = daemon();
    let root = pages();
    let server = apache("apache-proxypassmatch.conf.in", &sock, root.path());
    serves_every_page(&server, root.path());
}

#[test]
fn lighttpd_mod_fastcgi() {
    let (_d, sock, _s) = daemon();
    let root = pages();
    let server = lighttpd(&sock, root.path());
    serves_every_page(&server, root.path());
}

#[test]
fn haproxy_fcgi_app() {
    let (_d, sock, _s) = daemon();
    let root = pages();
    let server = haproxy(&sock, root.path(), true);
    serves_every_page(&server, root.path());
}

/// `cgi-fcgi -bind -connect`: the test is the CGI server, giving it the
/// request's CGI environment and body; its output is the page's CGI response.
fn cgi_fcgi(sock: &Path, root: &Path, case: &Case, body: &[u8]) -> Reply {
    let (path, query) = case.path.split_once('?').unwrap_or((&case.path, ""));
    let (script, path_info) = match path.find(".jl/") {
        Some(i) => (&path[..i + 3], &path[i + 3..]),
        None => (path, ""),
    };
    let mut cmd = Command::new("cgi-fcgi");
    cmd.arg("-bind").arg("-connect").arg(sock).env_clear();
    cmd.env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env(
            "REQUEST_METHOD",
            if body.is_empty() { "GET" } else { "POST" },
        )
        .env("REQUEST_URI", &case.path)
        .env("SCRIPT_NAME", script)
        .env("SCRIPT_FILENAME", format!("{}{script}", root.display()))
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("DOCUMENT_ROOT", root)
        .env("CONTENT_LENGTH", body.len().to_string());
    if !body.is_empty() {
        cmd.env("CONTENT_TYPE", "application/octet-stream");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cgi-fcgi (libfcgi-bin)");
    let mut stdin = child.stdin.take().unwrap();
    let input = body.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    // cgi-fcgi exits with END_REQUEST's app status: 1 for a page that threw.
    let app_status = if case.status == 500 { 1 } else { 0 };
    assert_eq!(
        out.status.code(),
        Some(app_status),
        "cgi-fcgi {}: {}",
        case.path,
        String::from_utf8_lossy(&out.stderr)
    );
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a CGI header block");
    let headers = header_lines(&String::from_utf8_lossy(&out.stdout[..split]));
    let status = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Status"))
        .and_then(|(_, v)| v.split(' ').next()?.parse().ok())
        .unwrap_or(200);
    Reply {
        status,
        headers,
        body: out.stdout[split + 4..].to_vec(),
    }
}

#[test]
fn cgi_fcgi_bind_connect() {
    let (_d, sock, _s) = daemon();
    let root = pages();
    let upload = upload_body().0;
    for case in cases(root.path()) {
        let body: &[u8] = if case.upload { &upload } else { b"" };
        let r = cgi_fcgi(&sock, root.path(), &case, body);
        check("cgi-fcgi", &case, &r);
    }
}

// ------------------------------------------------------------------ kept connections

/// The same load with keep-conn on and off: on must not stall (no 504, no
/// timeout, a bounded p99), and a request straight to the socket right after
/// the traffic stops (the workers then sit on idle kept connections) is
/// served at once.
fn kept_connections_never_starve(
    front: &str,
    start: impl Fn(bool) -> Server,
    sock: &Path,
    root: &Path,
) {
    const SECS: u64 = 5;
    let on = {
        let server = start(true);
        let load = wrk(server.port, SECS);
        let t = Instant::now();
        let r = fcgi::get(&Addr::Unix(sock.to_owned()), &root.join("hello.jl"), "");
        let direct = t.elapsed();
        assert_eq!(r.body_text(), "Hello, world!\n");
        eprintln!("{front}: a direct request after the traffic: {direct:?}");
        assert!(
            direct < Duration::from_secs(1),
            "{front}: a direct request waited {direct:?}"
        );
        load
    };
    let off = {
        let server = start(false);
        wrk(server.port, SECS)
    };
    for (name, l) in [("keep-conn on", &on), ("keep-conn off", &off)] {
        eprintln!(
            "{front} {name}: {} requests, p99 {:.2} ms, max {:.1} ms, {} socket errors, {} timeouts, {} non-2xx",
            l.requests, l.p99_ms, l.max_ms, l.errors, l.timeouts, l.non_2xx
        );
    }
    assert_eq!(
        on.non_2xx, 0,
        "{front}: 5xx (504: a stalled pool) with keep-conn on: {on:?}"
    );
    assert_eq!(
        on.timeouts, 0,
        "{front}: requests waited 10 s with keep-conn on: {on:?}"
    );
    assert!(
        on.p99_ms < 1000.0,
        "{front}: p99 {} ms with keep-conn on: {on:?}",
        on.p99_ms
    );
    // Closing a kept connection races with a front end reusing it at that
    // moment (HAProxy then drops its client, README "Front ends"): rare,
    // never a stall.
    assert!(on.errors * 100 <= on.requests * 2, "{front}: {on:?}");
    assert_eq!(
        off.non_2xx + off.timeouts,
        0,
        "{front}: keep-conn off: {off:?}"
    );
}

#[test]
fn kept_connections_never_starve_behind_haproxy() {
    let (_d, sock, _s) = daemon();
    let root = pages();
    kept_connections_never_starve(
        "haproxy",
        |keep| haproxy(&sock, root.path(), keep),
        &sock,
        root.path(),
    );
}

#[test]
fn kept_connections_never_starve_behind_nginx() {
    let (_d, sock, _s) = daemon();
    let root = pages();
    kept_connections_never_starve(
        "nginx",
        |keep| nginx(&sock, root.path(), keep),
        &sock,
        root.path(),
    );
}
