//! End to end: a real nginx, configured with the README's snippet
//! (`packaging/nginx/julia-fcgi.conf`), in front of the real daemon serving
//! the example pages, driven by curl.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{examples, free_port, repo, Addr, Daemon, Options};

struct Nginx {
    child: Child,
    port: u16,
    prefix: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders the shipped nginx config for a private nginx on a free port.
fn start_nginx(socket: &Path, root: &Path) -> Nginx {
    let prefix = tempfile::tempdir().unwrap();
    let port = free_port();
    let snippet = std::fs::read_to_string(repo().join("packaging/nginx/julia-fcgi.conf"))
        .unwrap()
        .replace(
            "unix:/run/julia-fcgi/julia-fcgi.sock",
            &format!("unix:{}", socket.display()),
        );
    // The snippet includes `fastcgi_params` relative to the config, as in
    // /etc/nginx; a private config needs its own copy next to it.
    std::fs::copy(
        "/etc/nginx/fastcgi_params",
        prefix.path().join("fastcgi_params"),
    )
    .expect("/etc/nginx/fastcgi_params (Debian's nginx package)");
    let snippet_path = prefix.path().join("julia-fcgi.conf");
    std::fs::write(&snippet_path, snippet).unwrap();
    let conf = std::fs::read_to_string(examples().join("nginx/nginx.conf.in"))
        .unwrap()
        .replace("@MASTER@", "off")
        .replace("@USER_LINE@", "")
        .replace("@PREFIX@", &prefix.path().display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@ROOT@", &root.display().to_string())
        .replace("@SNIPPET@", &snippet_path.display().to_string());
    let conf_path = prefix.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.path().join("error.log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start nginx (scripts/setup-deps installs it)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nginx did not start: {}",
            std::fs::read_to_string(prefix.path().join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        child,
        port,
        prefix,
    }
}

struct Reply {
    status: u16,
    body: String,
}

fn curl(port: u16, path: &str, extra: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("curl printed a status");
    Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}

#[test]
fn nginx_serves_the_example_pages() {
    let d = Daemon::start(Options {
        workers: 2,
        ..Options::default()
    });
    let Addr::Unix(sock) = &d.addr else {
        unreachable!()
    };
    let nginx = start_nginx(sock, &examples());
    let port = nginx.port;

    let r = curl(port, "/hello.jl", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Hello, world!"), "{}", r.body);

    let r = curl(port, "/form.jl?name=Ada", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Ada"), "{}", r.body);
    let r = curl(port, "/form.jl", &["--data", "name=Grace+%3Cb%3E"]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("Grace &lt;b&gt;"),
        "escaped form input: {}",
        r.body
    );

    let r = curl(port, "/cgi_env.jl?x=1", &["--data-binary", "raw body"]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("QUERY_STRING") && r.body.contains("raw body"),
        "{}",
        r.body
    );

    let first = curl(port, "/handler.jl", &[]);
    assert_eq!(first.status, 200, "{}", first.body);

    let r = curl(port, "/throws.jl", &[]);
    assert_eq!(r.status, 500, "{}", r.body);

    // nginx's own 404 for a page that does not exist (the snippet's try_files).
    assert_eq!(curl(port, "/missing.jl", &[]).status, 404);

    // Many requests over several connections: no 502 from lost workers.
    for i in 0..50 {
        let r = curl(port, &format!("/hello.jl?i={i}"), &[]);
        assert_eq!(r.status, 200);
    }
    let errors = std::fs::read_to_string(nginx.prefix.path().join("error.log")).unwrap_or_default();
    assert!(
        !errors.contains("connect() to unix"),
        "nginx could not reach julia-fcgi:\n{errors}"
    );
}
