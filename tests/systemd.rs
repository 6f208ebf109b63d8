//! systemd integration on the host, with systemd's own tools where they
//! exist: the notify protocol (READY, STATUS, WATCHDOG, STOPPING) on a test
//! socket, socket activation by `systemd-socket-activate`, privilege drop
//! checked from /proc, and reload under load.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fcgi;
use common::{bin, julia, page, root_flag, worker_file, Addr, Daemon, Options, READY_TIMEOUT};

const HELLO: &str = r#"print("Content-Type: text/plain\r\n\r\nhello")"#;

/// Every datagram received on a test NOTIFY_SOCKET, with its arrival time.
fn collect_notifications(socket: UnixDatagram) -> Arc<std::sync::Mutex<Vec<(Instant, String)>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            sink.lock().unwrap().push((Instant::now(), text));
        }
    });
    seen
}

#[test]
fn notify_ready_status_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let seen = collect_notifications(UnixDatagram::bind(&notify_path).unwrap());
    let sock = dir.path().join("fcgi.sock");
    // Packages to load before ready: what a worker is busy with shows.
    let config = dir.path().join("julia-fcgi.toml");
    std::fs::write(&config, "preload = [\"Dates\", \"Printf\"]\n").unwrap();
    // WATCHDOG_PID must be the daemon's own pid: exec keeps the shell's.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$@\"")
        .arg("sh")
        .arg(bin())
        .args(root_flag())
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("-l")
        .arg(&sock)
        .arg("-b")
        .arg(julia())
        .arg("-v")
        .arg(worker_file())
        .arg("-w")
        .arg("2")
        .arg("-c")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "2000000");
    let mut d = Daemon::spawn(cmd, Addr::Unix(sock), dir);
    d.wait_for_log("ready:", READY_TIMEOUT);
    std::thread::sleep(Duration::from_secs(4));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));

    let seen = seen.lock().unwrap().clone();
    let messages: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    let index = |needle: &str| {
        messages
            .iter()
            .position(|m| m.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {messages:#?}"))
    };
    let starting = index("STATUS=starting workers: 0/2 ready");
    let loading = index("loading package Printf (2 of 2)");
    let ready = index("READY=1");
    assert!(starting < ready && loading < ready);
    assert!(
        messages[ready].contains("STATUS=2/2 workers ready"),
        "{}",
        messages[ready]
    );
    let stopping = index("STOPPING=1");
    assert!(ready < stopping);
    // Watchdog pings at half of WATCHDOG_USEC: ~1 s apart.
    let pings: Vec<Instant> = seen
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 4, "{messages:#?}");
    for pair in pings.windows(2).skip(1) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(700) && gap < Duration::from_millis(1500),
            "watchdog gap {gap:?}"
        );
    }
}

fn socket_activate(sockets: &[(&Path, &str)], runtime: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("systemd-socket-activate");
    for (path, _) in sockets {
        cmd.arg("-l").arg(path);
    }
    let names: Vec<&str> = sockets.iter().map(|(_, name)| *name).collect();
    cmd.arg(format!("--fdname={}", names.join(":")));
    cmd.arg(bin())
        .args(root_flag())
        .arg("--runtime-dir")
        .arg(runtime)
        .arg("-b")
        .arg(julia())
        .arg("-v")
        .arg(worker_file())
        .args(extra);
    cmd
}

#[test]
fn socket_activation_with_one_and_two_named_sockets() {
    for with_status in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let fcgi_path = dir.path().join("activated.sock");
        let status_path = dir.path().join("status.sock");
        let p = page(dir.path(), "hello.jl", HELLO);
        let mut sockets = vec![(fcgi_path.as_path(), "julia-fcgi.socket")];
        if with_status {
            sockets.push((status_path.as_path(), "status"));
        }
        // -l here is ignored: the activated socket wins.
        let cmd = socket_activate(&sockets, dir.path(), &["-l", "127.0.0.1:1"]);
        let d = Daemon::spawn(cmd, Addr::Unix(fcgi_path.clone()), dir);
        let start = Instant::now();
        while !fcgi_path.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        // systemd-socket-activate starts the program on the first connection.
        let resp = fcgi::get(&d.addr, &p, "");
        assert_eq!(resp.body_text(), "hello");
        let line = d.wait_for_log("ready:", READY_TIMEOUT);
        assert!(line.contains(&fcgi_path.display().to_string()), "{line}");
        // The workers never see the activation variables.
        for pid in d.worker_pids() {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            let env = String::from_utf8_lossy(&env);
            assert!(!env.contains("LISTEN_"), "worker {pid} environment: {env}");
        }
    }
}

#[test]
fn inconsistent_activation_variables_are_refused() {
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(root_flag())
        .arg("--runtime-dir")
        .arg(runtime.path())
        .arg("-b")
        .arg(julia())
        .arg("-v")
        .arg(worker_file())
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LISTEN_FDS=1 is set but LISTEN_PID is not"),
        "{stderr}"
    );
}

fn proc_status(pid: i32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// A copy of the worker readable by an unprivileged user (the checkout may
/// live under a private home directory).
fn public_worker(dir: &Path) -> PathBuf {
    let target = dir.join("julia");
    let status = Command::new("cp")
        .arg("-r")
        .arg(common::repo().join("julia"))
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success());
    Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(dir)
        .status()
        .unwrap();
    target.join("worker.jl")
}

#[test]
fn root_drops_every_privilege_for_good() {
    if !nix::unistd::geteuid().is_root() {
        // Only root has privileges to drop; CI runs as root.
        eprintln!("not root: checking that no drop is attempted instead");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let worker = public_worker(dir.path());
    let sock = dir.path().join("fcgi.sock");
    let p = page(
        dir.path(),
        "whoami.jl",
        r#"print("Content-Type: text/plain\r\n\r\n", ccall(:getuid, UInt32, ()))"#,
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("-l")
        .arg(&sock)
        .arg("--runtime-dir")
        .arg(dir.path())
        .arg("-b")
        .arg(julia())
        .arg("-v")
        .arg(&worker)
        .arg("-h")
        .arg(dir.path());
    let root = nix::unistd::geteuid().is_root();
    if root {
        cmd.arg("--user")
            .arg("nobody")
            .arg("--socket-mode")
            .arg("0666");
    }
    let d = Daemon::spawn(cmd, Addr::Unix(sock), tempfile::tempdir().unwrap());
    d.wait_for_log("ready:", READY_TIMEOUT);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let expected_uid = if root {
        nobody.uid.as_raw()
    } else {
        nix::unistd::getuid().as_raw()
    };
    assert_eq!(
        fcgi::get(&d.addr, &p, "").body_text(),
        expected_uid.to_string()
    );
    let mut pids = vec![d.pid()];
    pids.extend(d.worker_pids());
    assert_eq!(pids.len(), 2);
    for pid in pids {
        let status = proc_status(pid);
        let ids = |key: &str| {
            status[key]
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert!(
            ids("Uid").iter().all(|id| *id == expected_uid.to_string()),
            "{pid}: {:?}",
            ids("Uid")
        );
        assert_eq!(status["NoNewPrivs"], "1", "{pid}");
        if root {
            assert!(
                ids("Gid")
                    .iter()
                    .all(|id| *id == nobody.gid.as_raw().to_string()),
                "{pid}"
            );
            assert_eq!(status["Groups"], nobody.gid.as_raw().to_string(), "{pid}");
            for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                assert_eq!(status[set], "0000000000000000", "{pid} {set}");
            }
        }
    }
    assert!(d.log_text().contains("running as user nobody") || !root);
}

#[test]
fn pages_never_run_as_root_unless_asked() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: nothing to refuse");
        return;
    }
    let out = Command::new(bin())
        .args([
            "-b",
            julia().to_str().unwrap(),
            "-v",
            worker_file().to_str().unwrap(),
        ])
        .args(["--user", "root"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to run pages as root"), "{stderr}");
    assert!(stderr.contains("--allow-to-run-as-root"), "{stderr}");
}

#[test]
fn sighup_rolls_the_pool_over_under_load_without_failing_a_request() {
    let config = "workers = 2\n";
    let d = Daemon::start(Options {
        workers: 2,
        config: Some(config.into()),
        ..Options::default()
    });
    // `-w 2` on the command line wins over the file; the file's other
    // settings still reload.
    let p = page(d.dir.path(), "hello.jl", HELLO);
    let old = d.worker_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (addr, p, stop, ok, failed) = (
                d.addr.clone(),
                p.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = std::panic::catch_unwind(|| fcgi::get(&addr, &p, "").body_text());
                    match result {
                        Ok(body) if body == "hello" => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // A broken config is refused and changes nothing.
    std::fs::write(d.dir.path().join("julia-fcgi.toml"), "workers = \"many\"\n").unwrap();
    let mark = d.log_len();
    d.signal(libc::SIGHUP);
    d.wait_for_log_after(mark, "reload refused", Duration::from_secs(10));

    std::fs::write(d.dir.path().join("julia-fcgi.toml"), config).unwrap();
    let mark = d.log_len();
    d.signal(libc::SIGHUP);
    d.wait_for_log_after(mark, "reload complete", READY_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let new = d.wait_for_new_workers(2, &old, Duration::from_secs(30));
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert!(old.iter().all(|pid| !new.contains(pid)));
}
