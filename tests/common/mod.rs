//! Test support: the real `julia-fcgi` binary with real Julia workers on a
//! temporary socket, and helpers to find what the tests need.
#![allow(dead_code)]

pub mod cgroup;
pub mod fcgi;
pub mod sysimage;
pub mod web;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use fcgi::Addr;

/// How long a daemon may take to report ready: Julia start-up plus the
/// worker's warm-up, on a loaded 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_julia-fcgi"))
}

/// Copies the tree `from` to `to` (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file and directory under `dir` (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        }
        out.push(path);
    }
    out
}

pub fn worker_file() -> PathBuf {
    repo().join("julia/worker.jl")
}

pub fn examples() -> PathBuf {
    repo().join("examples")
}

/// The Julia to test with: `JULIA_FCGI_TEST_JULIA`, else the wrapper that
/// `scripts/setup-deps` installs, else `julia` on PATH.
pub fn julia() -> PathBuf {
    if let Some(path) = std::env::var_os("JULIA_FCGI_TEST_JULIA") {
        return PathBuf::from(path);
    }
    let wrapper = Path::new("/usr/local/bin/julia");
    if wrapper.exists() {
        return wrapper.to_owned();
    }
    PathBuf::from("julia")
}

/// Tests run as root in CI; pages may run as root only when asked.
pub fn root_flag() -> Vec<&'static str> {
    if nix::unistd::geteuid().is_root() {
        vec!["-R"]
    } else {
        vec![]
    }
}

/// A running `julia-fcgi` whose log the test can read.
pub struct Daemon {
    pub child: Child,
    pub addr: Addr,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

pub struct Options {
    pub workers: u32,
    /// Lines of a TOML config file (written to the temp dir), if any.
    pub config: Option<String>,
    pub extra_args: Vec<String>,
    /// Listen on TCP 127.0.0.1:free port instead of a unix socket.
    pub tcp: bool,
    /// Listen on this unix socket path instead of one in the temp dir.
    pub unix_path: Option<PathBuf>,
    /// Extra environment variables of the daemon.
    pub env: Vec<(String, String)>,
    /// Another julia (`-b`) or worker file (`-v`) than the tests' own.
    pub julia: Option<PathBuf>,
    pub worker_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            config: None,
            extra_args: Vec::new(),
            tcp: false,
            unix_path: None,
            env: Vec::new(),
            julia: None,
            worker_file: None,
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    pub fn start(options: Options) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let (listen, addr) = if options.tcp {
            let port = free_port();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            (addr.to_string(), Addr::Tcp(addr))
        } else {
            let path = options
                .unix_path
                .clone()
                .unwrap_or_else(|| dir.path().join("fcgi.sock"));
            (path.display().to_string(), Addr::Unix(path))
        };
        let mut cmd = Command::new(bin());
        cmd.arg("-l")
            .arg(&listen)
            .arg("-b")
            .arg(options.julia.clone().unwrap_or_else(julia))
            .arg("-v")
            .arg(options.worker_file.clone().unwrap_or_else(worker_file))
            .arg("-w")
            .arg(options.workers.to_string())
            .arg("-h")
            .arg(dir.path())
            .arg("--socket-mode")
            .arg("0600")
            .arg("--runtime-dir")
            .arg(dir.path())
            .args(root_flag())
            .args(&options.extra_args)
            .envs(options.env.iter().map(|(k, v)| (k, v)));
        if let Some(config) = &options.config {
            let path = dir.path().join("julia-fcgi.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        let daemon = Daemon::spawn(cmd, addr, dir);
        daemon.wait_for_log("ready:", READY_TIMEOUT);
        daemon
    }

    /// Starts `cmd` with stderr captured, without waiting for anything.
    pub fn spawn(mut cmd: Command, addr: Addr, dir: tempfile::TempDir) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info");
        let mut child = cmd.spawn().expect("spawn julia-fcgi");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[daemon] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            addr,
            dir,
            log,
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// Waits until a log line contains `needle`; panics with the log if the
    /// daemon exits or the time runs out.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_after(0, needle, timeout)
    }

    /// Like [`wait_for_log`], looking only at lines after the first `skip`.
    pub fn wait_for_log_after(&self, skip: usize, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.log().iter().skip(skip).find(|l| l.contains(needle)) {
                return line.clone();
            }
            if start.elapsed() > timeout {
                panic!(
                    "no log line with {needle:?} within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            if !alive(self.pid()) {
                // Give the log thread a moment, then look one last time.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(line) = self.log().iter().skip(skip).find(|l| l.contains(needle)) {
                    return line.clone();
                }
                panic!(
                    "daemon exited before logging {needle:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log entry containing `needle` with its continuation lines (a
    /// multi-line message such as a backtrace, up to the next entry).
    pub fn log_entry(&self, needle: &str) -> Option<String> {
        let log = self.log();
        let start = log.iter().position(|l| l.contains(needle))?;
        let is_entry =
            |l: &String| l.len() > 20 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T';
        let end = log[start + 1..]
            .iter()
            .position(is_entry)
            .map_or(log.len(), |i| start + 1 + i);
        Some(log[start..end].join("\n"))
    }

    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Pids of the master's direct children (the workers).
    pub fn worker_pids(&self) -> Vec<i32> {
        children(self.pid())
    }

    /// Waits until the workers are exactly `n` processes, none of them in
    /// `old`, and returns them.
    pub fn wait_for_new_workers(&self, n: usize, old: &[i32], timeout: Duration) -> Vec<i32> {
        let start = Instant::now();
        loop {
            let pids = self.worker_pids();
            if pids.len() == n && pids.iter().all(|p| !old.contains(p)) {
                return pids;
            }
            assert!(
                start.elapsed() < timeout,
                "workers now {pids:?}, old {old:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the log thread catch up.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            if start.elapsed() > timeout {
                panic!(
                    "daemon did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let workers = self.worker_pids();
            self.signal(libc::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            for pid in workers {
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = self.child.wait();
        }
    }
}

/// Direct children of `pid`, from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn alive(pid: i32) -> bool {
    // A zombie is not alive for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Writes a page into `dir` and returns its path.
pub fn page(dir: &Path, name: &str, code: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, code).unwrap();
    path
}
