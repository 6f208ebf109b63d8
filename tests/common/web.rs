//! A real nginx in front of a test daemon, configured with the shipped
//! snippet (`packaging/nginx/julia-fcgi.conf`), and curl to ask it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{examples, free_port, repo};

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub prefix: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// nginx's error log so far.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("error.log")).unwrap_or_default()
    }
}

/// A private nginx on a free port serving `root`, its `.jl` pages through
/// the julia-fcgi socket at `socket`.
pub fn start_nginx(socket: &Path, root: &Path) -> Nginx {
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

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `curl` http://127.0.0.1:PORT/PATH with `extra` arguments; the status and
/// the body as bytes.
pub fn curl(port: u16, path: &str, extra: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    let mut text = out.stdout;
    let nl = text
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("curl printed a status");
    let status = String::from_utf8_lossy(&text[nl + 1..])
        .trim()
        .parse()
        .unwrap_or(0);
    text.truncate(nl);
    Reply { status, body: text }
}
