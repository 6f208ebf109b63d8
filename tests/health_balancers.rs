//! The README's many-hosts recipe, tested: three julia-fcgi daemons stand
//! for three hosts, each serving FastCGI over TCP on its own loopback
//! address (127.0.0.2-4, loopback only) with its health listener on the
//! same address, behind one HAProxy with `examples/deploy/haproxy.cfg`
//! (FastCGI to each host, `option httpchk GET /ready` on port 9001's
//! stand-in). Under a bounded load of plain HTTP clients: a host drained
//! with SIGTERM costs no request; a host killed with SIGKILL (master and
//! workers) costs at most the requests in flight on it and is routed around
//! within the check interval; a host started again gets traffic back.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fcgi::Addr;
use common::{free_port, page, Daemon};

/// Load clients: bounded, on loopback only.
const CLIENTS: usize = 3;

/// One "host": a daemon on `ip:fcgi_port` with its health listener on
/// `ip:health_port`, serving pages from `root`.
fn host(ip: &str, fcgi_port: u16, health_port: u16, root: &Path) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "health_listen = \"{ip}:{health_port}\"\ndocument_roots = [{:?}]\n\
             shutdown_grace = \"10s\"\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    let listen: SocketAddr = format!("{ip}:{fcgi_port}").parse().unwrap();
    let mut cmd = Command::new(common::bin());
    cmd.arg("-l")
        .arg(listen.to_string())
        .arg("-b")
        .arg(common::julia())
        .arg("-v")
        .arg(common::worker_file())
        .arg("-w")
        .arg("1")
        .arg("-h")
        .arg(dir.path())
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("-c")
        .arg(&config)
        .args(common::root_flag());
    let d = Daemon::spawn(cmd, Addr::Tcp(listen), dir);
    d.wait_for_log("ready:", Duration::from_secs(180));
    d
}

/// HAProxy with the shipped recipe, its hosts' addresses put in.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy(hosts: &[&str], fcgi_port: u16, health_port: u16, root: &Path) -> Haproxy {
    let recipe =
        std::fs::read_to_string(common::repo().join("examples/deploy/haproxy.cfg")).unwrap();
    let port = free_port();
    let mut conf = recipe
        .replace("    log stdout format raw local0\n", "")
        .replace("bind :80", &format!("bind 127.0.0.1:{port}"))
        .replace(
            "docroot /var/www/html",
            &format!("docroot {}", root.display()),
        )
        .replace("check port 9001", &format!("check port {health_port}"));
    for (i, ip) in hosts.iter().enumerate() {
        let shipped = format!("10.0.0.{}:4545", 5 + i);
        assert!(conf.contains(&shipped), "the recipe's {shipped} moved");
        conf = conf.replace(&shipped, &format!("{ip}:{fcgi_port}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (Debian's haproxy package)");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "haproxy did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Haproxy {
        child,
        port,
        _dir: dir,
    }
}

/// One GET through the balancer: the status code (0: no response at all).
fn get(port: u16, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Clients in a loop until stopped: requests answered 200, and the others.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let threads = (0..CLIENTS)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match get(port, "/hello.jl") {
                            200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// (ok, failed) so far.
    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Requests a host has accepted, from its status socket.
fn accepted(d: &Daemon) -> u64 {
    let mut s = std::os::unix::net::UnixStream::connect(d.dir.path().join("status.sock")).unwrap();
    s.write_all(b"GET /status?json HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
    json["accepted conn"].as_u64().unwrap()
}

fn kill_host(d: &mut Daemon) {
    let workers = d.worker_pids();
    unsafe {
        libc::kill(d.pid(), libc::SIGKILL);
        for pid in workers {
            // Each worker is its own process group.
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    d.wait_exit(Duration::from_secs(5));
}

#[test]
fn haproxy_routes_around_a_drained_host_a_killed_host_and_takes_one_back() {
    let root = tempfile::tempdir().unwrap();
    page(
        root.path(),
        "hello.jl",
        r#"print("Content-Type: text/plain\r\n\r\nhi")"#,
    );
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (fcgi_port, health_port) = (free_port(), free_port());
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let mut hosts: Vec<Daemon> = ips
        .iter()
        .map(|ip| host(ip, fcgi_port, health_port, root.path()))
        .collect();
    let lb = haproxy(&ips, fcgi_port, health_port, root.path());
    // rise 2, inter 1s: every host is up within a few seconds.
    let start = Instant::now();
    while get(lb.port, "/hello.jl") != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "haproxy never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let load = Load::start(lb.port);
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<u64> = hosts.iter().map(accepted).collect();
    assert!(
        before.iter().all(|&n| n > 0),
        "every host serves: {before:?}"
    );

    // 1. Drain host 3 (systemctl stop): /ready 503, then gone; no failure.
    let (ok0, failed0) = load.counts();
    hosts[2].signal(libc::SIGTERM);
    assert_eq!(hosts[2].wait_exit(Duration::from_secs(20)), Some(0));
    std::thread::sleep(Duration::from_secs(2));
    let (ok1, failed1) = load.counts();
    eprintln!(
        "drain of host 3: {} ok, {} failed",
        ok1 - ok0,
        failed1 - failed0
    );
    assert_eq!(failed1, failed0, "a drained host cost requests");
    assert!(ok1 > ok0 + 10, "the load went on: {ok0} → {ok1}");

    // 2. Kill host 2 outright: at most what was in flight on it fails, and
    // after one check interval (inter 1s, fall 1) nothing more.
    kill_host(&mut hosts[1]);
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let (ok2, failed2) = load.counts();
    eprintln!(
        "kill -9 of host 2: {} failed within {:?}",
        failed2 - failed1,
        killed_at.elapsed()
    );
    assert!(
        failed2 - failed1 <= CLIENTS as u64,
        "{} requests failed: more than the {CLIENTS} that can be in flight",
        failed2 - failed1
    );
    std::thread::sleep(Duration::from_secs(2));
    let (ok3, failed3) = load.counts();
    assert_eq!(
        failed3, failed2,
        "host 2 still gets requests after its check"
    );
    assert!(ok3 > ok2 + 10, "host 1 serves alone: {ok2} → {ok3}");

    // 3. Host 3 back: once its checks pass (rise 2), it serves again.
    hosts[2] = host(ips[2], fcgi_port, health_port, root.path());
    std::thread::sleep(Duration::from_secs(4));
    let back = accepted(&hosts[2]);
    let (ok4, failed4) = load.finish();
    eprintln!(
        "host 3 back: {back} requests; in all {ok4} ok, {failed4} failed \
         ({} ok before the kill)",
        ok1
    );
    assert!(back > 0, "traffic did not return to host 3");
    assert_eq!(failed4, failed3, "its return cost requests");
}
