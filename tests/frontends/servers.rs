//! The front ends of tests/frontends.rs, each a real server on a loopback
//! port with its files in a temp dir, and the daemon they stand in front of.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, repo, Daemon, Options};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// ------------------------------------------------------------------ set-up

/// The daemon (2 workers) on a unix socket in a directory Apache's user can
/// reach; as root the socket is given to www-data (Apache's `User`).
pub fn daemon() -> (Daemon, PathBuf, tempfile::TempDir) {
    let sockdir = tempfile::tempdir().unwrap();
    chmod(sockdir.path(), 0o755);
    let sock = sockdir.path().join("julia-fcgi.sock");
    let mut extra_args = Vec::new();
    if is_root() {
        extra_args.extend([
            "--socket-owner".to_string(),
            "www-data:www-data".to_string(),
        ]);
    }
    let d = Daemon::start(Options {
        workers: 2,
        unix_path: Some(sock.clone()),
        extra_args,
        ..Options::default()
    });
    (d, sock, sockdir)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A document root with the test pages, readable by any front end's user.
pub fn pages() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    chmod(root.path(), 0o755);
    for entry in std::fs::read_dir(repo().join("tests/frontends/pages")).unwrap() {
        let from = entry.unwrap().path();
        let to = root.path().join(from.file_name().unwrap());
        std::fs::copy(&from, &to).unwrap();
        chmod(&to, 0o644);
    }
    root
}

/// A front end we started; killed (and reaped) when dropped.
pub struct Server {
    child: Child,
    pub name: &'static str,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Renders `tests/frontends/NAME.in` with `vars` into the server's dir.
fn render(template: &str, dir: &Path, vars: &[(&str, String)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("tests/frontends").join(template)).unwrap();
    for (name, value) in vars {
        text = text.replace(&format!("@{name}@"), value);
    }
    if let Some(i) = text
        .find('@')
        .filter(|&i| text[i + 1..].starts_with(char::is_uppercase))
    {
        panic!(
            "{template}: {} left unfilled",
            &text[i..text.len().min(i + 12)]
        );
    }
    let path = dir.join(template.trim_end_matches(".in"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `cmd` (its output into the server's dir) and waits for its port.
fn start(name: &'static str, mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Server {
    let out = std::fs::File::create(dir.path().join("output.log")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {name} (scripts/setup-deps installs it): {e}"));
    let mut server = Server {
        child,
        name,
        port,
        dir,
    };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let output =
            std::fs::read_to_string(server.dir.path().join("output.log")).unwrap_or_default();
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("{name} exited ({status}): {output}\n{}", server.log());
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} did not listen: {output}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn scaffold(sock: &Path, root: &Path) -> (tempfile::TempDir, u16, Vec<(&'static str, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let vars = vec![
        ("DIR", dir.path().display().to_string()),
        ("PORT", port.to_string()),
        ("SOCK", sock.display().to_string()),
        ("ROOT", root.display().to_string()),
    ];
    (dir, port, vars)
}

pub fn apache(template: &str, sock: &Path, root: &Path) -> Server {
    let (dir, port, mut vars) = scaffold(sock, root);
    let user = if is_root() {
        "User www-data\nGroup www-data"
    } else {
        ""
    };
    vars.push(("USER", user.to_string()));
    let conf = render(template, dir.path(), &vars);
    let mut cmd = Command::new("apache2");
    cmd.arg("-f").arg(&conf).arg("-DFOREGROUND");
    start("apache2", cmd, port, dir)
}

pub fn lighttpd(sock: &Path, root: &Path) -> Server {
    let (dir, port, vars) = scaffold(sock, root);
    let conf = render("lighttpd.conf.in", dir.path(), &vars);
    let mut cmd = Command::new("lighttpd");
    cmd.arg("-D").arg("-f").arg(&conf);
    start("lighttpd", cmd, port, dir)
}

pub fn haproxy(sock: &Path, root: &Path, keep_conn: bool) -> Server {
    let (dir, port, mut vars) = scaffold(sock, root);
    let keep = if keep_conn {
        ""
    } else {
        "    no option keep-conn"
    };
    vars.push(("KEEP", keep.to_string()));
    let conf = render("haproxy.cfg.in", dir.path(), &vars);
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&conf);
    start("haproxy", cmd, port, dir)
}

/// nginx with the shipped snippet; `keep_conn` adds the README's keep-alive
/// upstream (`keepalive 8`, `fastcgi_keep_conn on`).
pub fn nginx(sock: &Path, root: &Path, keep_conn: bool) -> Server {
    let (dir, port, mut vars) = scaffold(sock, root);
    let shipped = "fastcgi_pass unix:/run/julia-fcgi/julia-fcgi.sock;";
    let snippet = std::fs::read_to_string(repo().join("packaging/nginx/julia-fcgi.conf")).unwrap();
    assert!(
        snippet.contains(shipped),
        "the snippet's fastcgi_pass changed"
    );
    let (snippet, upstream) = if keep_conn {
        let upstream = format!(
            "    upstream julia_fcgi {{\n        server unix:{};\n        keepalive 8;\n    }}",
            sock.display()
        );
        let pass = "fastcgi_keep_conn on;\n    fastcgi_pass julia_fcgi;";
        (snippet.replace(shipped, pass), upstream)
    } else {
        let pass = format!("fastcgi_pass unix:{};", sock.display());
        (snippet.replace(shipped, &pass), String::new())
    };
    // The snippet includes fastcgi_params next to the config, as in /etc/nginx.
    std::fs::copy(
        "/etc/nginx/fastcgi_params",
        dir.path().join("fastcgi_params"),
    )
    .expect("/etc/nginx/fastcgi_params (Debian's nginx package)");
    let snippet_path = dir.path().join("julia-fcgi.conf");
    std::fs::write(&snippet_path, snippet).unwrap();
    vars.push(("SNIPPET", snippet_path.display().to_string()));
    vars.push(("UPSTREAM", upstream));
    let conf = render("nginx.conf.in", dir.path(), &vars);
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("error.log"));
    start("nginx", cmd, port, dir)
}
