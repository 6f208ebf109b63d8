//! The README's many-hosts recipe, tested: three julia-fcgi daemons stand
//! for three hosts, each serving FastCGI over TCP on its own loopback
//! address (127.0.0.2-4, loopback only) with its health listener on the
//! same address, behind one HAProxy with `examples/deploy/haproxy.cfg`
//! (FastCGI to each host, `option httpchk GET /ready` on port 9001's
//! stand-in), or one nginx with `examples/deploy/nginx-upstream.conf`
//! (passive checks). Under a bounded load of plain HTTP clients: a host
//! drained with SIGTERM costs no request; a host killed with SIGKILL
//! (master and workers) costs at most the requests in flight on it and is
//! routed around within the check interval; a host started again gets
//! traffic back.

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
                            code => {
                                if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                                    eprintln!("first failure: HTTP {code}");
                                }
                                0
                            }
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

/// A balancer in front of the hosts, by the port it serves HTTP on.
trait Balancer {
    fn port(&self) -> u16;
}

impl Balancer for Haproxy {
    fn port(&self) -> u16 {
        self.port
    }
}

/// nginx with the shipped upstream recipe, its hosts' addresses put in.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let log = std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("[error]")).collect();
        eprintln!(
            "nginx: {} errors, the first: {:?}",
            errors.len(),
            errors.first()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Balancer for Nginx {
    fn port(&self) -> u16 {
        self.port
    }
}

fn nginx(hosts: &[&str], fcgi_port: u16, root: &Path) -> Nginx {
    let recipe =
        std::fs::read_to_string(common::repo().join("examples/deploy/nginx-upstream.conf"))
            .unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut conf = recipe
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("root /var/www/html;", &format!("root {};", root.display()))
        .replace(
            "include fastcgi_params;",
            "include /etc/nginx/fastcgi_params;",
        );
    for (i, ip) in hosts.iter().enumerate() {
        let shipped = format!("10.0.0.{}:4545", 5 + i);
        assert!(conf.contains(&shipped), "the recipe's {shipped} moved");
        conf = conf.replace(&shipped, &format!("{ip}:{fcgi_port}"));
    }
    let prefix = dir.path().display();
    std::fs::write(dir.path().join("upstream.conf"), conf).unwrap();
    let main = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n\
         error_log {prefix}/error.log info;\nevents {{ worker_connections 1024; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {prefix}/body;\n    \
         fastcgi_temp_path {prefix}/fastcgi;\n    proxy_temp_path {prefix}/proxy;\n    \
         uwsgi_temp_path {prefix}/uwsgi;\n    scgi_temp_path {prefix}/scgi;\n    \
         include {prefix}/upstream.conf;\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (Debian's nginx package)");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        child,
        port,
        _dir: dir,
    }
}

/// The three hosts on one FastCGI port and one health port, each on its
/// own loopback address, serving `root`.
struct Hosts {
    root: tempfile::TempDir,
    ips: [&'static str; 3],
    fcgi_port: u16,
    health_port: u16,
    daemons: Vec<Daemon>,
}

impl Hosts {
    fn start() -> Hosts {
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
        let daemons = ips
            .iter()
            .map(|ip| host(ip, fcgi_port, health_port, root.path()))
            .collect();
        Hosts {
            root,
            ips,
            fcgi_port,
            health_port,
            daemons,
        }
    }
}

/// Drain host 3, kill host 2, bring host 3 back, under load through `lb`;
/// a returning host gets requests within `back_within`.
fn drain_kill_return(hosts: &mut Hosts, lb: &dyn Balancer, back_within: Duration) {
    // Every host is up within a few seconds (HAProxy: rise 2, inter 1s).
    let start = Instant::now();
    while get(lb.port(), "/hello.jl") != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the balancer never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let load = Load::start(lb.port());
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<u64> = hosts.daemons.iter().map(accepted).collect();
    assert!(
        before.iter().all(|&n| n > 0),
        "every host serves: {before:?}"
    );

    // 1. Drain host 3 (systemctl stop): /ready 503, then gone; no failure.
    let (ok0, failed0) = load.counts();
    hosts.daemons[2].signal(libc::SIGTERM);
    assert_eq!(hosts.daemons[2].wait_exit(Duration::from_secs(20)), Some(0));
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
    // after one check interval nothing more.
    kill_host(&mut hosts.daemons[1]);
    std::thread::sleep(Duration::from_millis(2500));
    let (ok2, failed2) = load.counts();
    eprintln!(
        "kill -9 of host 2: {} failed within 2.5 s",
        failed2 - failed1
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
        "host 2 still fails requests after its check"
    );
    assert!(ok3 > ok2 + 10, "host 1 serves alone: {ok2} → {ok3}");

    // 3. Host 3 back: it serves again once the balancer tries it.
    hosts.daemons[2] = host(
        hosts.ips[2],
        hosts.fcgi_port,
        hosts.health_port,
        hosts.root.path(),
    );
    let back_at = Instant::now();
    while accepted(&hosts.daemons[2]) == 0 {
        assert!(
            back_at.elapsed() < back_within,
            "no traffic to host 3 within {back_within:?} of its return"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("host 3 back: traffic after {:?}", back_at.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let (ok4, failed4) = load.finish();
    eprintln!("in all {ok4} ok, {failed4} failed");
    assert_eq!(failed4, failed3, "its return cost requests");
}

#[test]
fn haproxy_routes_around_a_drained_host_a_killed_host_and_takes_one_back() {
    let mut hosts = Hosts::start();
    let lb = haproxy(
        &hosts.ips,
        hosts.fcgi_port,
        hosts.health_port,
        hosts.root.path(),
    );
    // Checks every second, rise 2.
    drain_kill_return(&mut hosts, &lb, Duration::from_secs(5));
}

#[test]
fn nginx_routes_around_a_drained_host_a_killed_host_and_takes_one_back() {
    let mut hosts = Hosts::start();
    let lb = nginx(&hosts.ips, hosts.fcgi_port, hosts.root.path());
    // A failed server is tried again after fail_timeout (10 s).
    drain_kill_return(&mut hosts, &lb, Duration::from_secs(15));
}
