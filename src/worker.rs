//! One Julia worker process and the actor task that owns it.
//!
//! The actor is the only code that touches the child: it forwards every line
//! the worker prints to the log (tagged with the worker's number and pid),
//! understands its control channel, delivers `STOP`, reaps it, and reports
//! [`Event`]s to the pool. The pool holds a [`Handle`] and never blocks on a
//! worker.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::cgroup::{Limits, MemoryEvents, Tree, WorkerCgroup};
use crate::control::{FromWorker, Level, ToWorker};

mod forward;

use forward::{log_access, log_from_worker};
pub use forward::{log_summary, Limiter as LogLimiter, ACCESS_TARGET, WINDOW as LOG_WINDOW};

/// The longest line forwarded as one log entry; longer output is split, not
/// cut, so nothing a worker prints is lost.
const MAX_LINE: usize = 1 << 20;
/// How many of a worker's last stderr lines are kept to explain a failed
/// start.
const STDERR_TAIL: usize = 30;

/// Everything needed to start a worker; shared by all workers of a pool.
#[derive(Debug)]
pub struct Spec {
    pub julia: PathBuf,
    pub worker_file: PathBuf,
    /// The worker's whole environment (the master's own is not inherited).
    pub env: Vec<(OsString, OsString)>,
    /// The FastCGI listening socket, passed as the worker's fd 0.
    pub listener: Arc<OwnedFd>,
    /// Per-worker cgroups; `None` means process groups and
    /// `PR_SET_PDEATHSIG` instead.
    pub cgroups: Option<Arc<Tree>>,
    pub limits: Limits,
    /// The scoreboard file, passed to each worker with its slot number.
    pub scoreboard: Option<Arc<std::fs::File>>,
}

/// What a worker's actor tells the pool.
#[derive(Debug)]
pub enum Event {
    /// Still starting, busy with `what` (the log has the details).
    Starting {
        slot: u32,
        pid: u32,
        what: String,
    },
    Ready {
        slot: u32,
        pid: u32,
    },
    Exited(Exit),
}

/// How and why a worker ended.
#[derive(Debug)]
pub struct Exit {
    pub slot: u32,
    pub pid: u32,
    pub status: Option<ExitStatus>,
    /// Set when the worker said it was leaving on purpose (`EXITING`).
    pub planned: Option<String>,
    /// Its last stderr lines, to explain a worker that could not start.
    pub stderr_tail: Vec<String>,
    /// Its cgroup's `memory.events` and `memory.max` at the end, to explain
    /// an OOM kill.
    pub memory: Option<(MemoryEvents, Option<String>)>,
}

/// The pool's side of a running worker.
#[derive(Debug)]
pub struct Handle {
    pub slot: u32,
    pub pid: u32,
    /// Its scoreboard slot, if there is a scoreboard.
    pub board_slot: Option<usize>,
    pub cgroup: Option<Arc<WorkerCgroup>>,
    pub started: std::time::Instant,
    commands: mpsc::UnboundedSender<ToWorker>,
}

impl Handle {
    /// Asks the worker to finish its request and leave.
    pub fn stop(&self) {
        // The actor is gone only once the worker exited; nothing to stop then.
        let _ = self.commands.send(ToWorker::Stop);
    }

    /// Ends the worker over an overrun request: `ABORT` (so the request is
    /// not answered as if complete), then SIGTERM once the actor has
    /// delivered it.
    pub fn terminate(&self) {
        let _ = self.commands.send(ToWorker::Abort);
    }

    /// Kills the worker and everything it started: its whole cgroup, or its
    /// process group without cgroups.
    pub fn kill(&self) {
        if let Some(cgroup) = &self.cgroup {
            if std::fs::write(cgroup.path.join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        if let Err(e) = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL) {
            tracing::debug!(worker = self.slot, worker_pid = self.pid, "kill: {e}");
        }
    }
}

#[cfg(test)]
impl Handle {
    /// A handle to no process, for the pool's tests: its pid is beyond
    /// Linux's `PID_MAX_LIMIT`, so no signal reaches anyone, and its
    /// commands go nowhere.
    pub(crate) fn detached(slot: u32, pid: u32) -> Handle {
        assert!(pid > 1 << 22, "a pid no process can have");
        let (commands, _) = mpsc::unbounded_channel();
        Handle {
            slot,
            pid,
            board_slot: None,
            cgroup: None,
            started: std::time::Instant::now(),
            commands,
        }
    }
}

/// Starts worker number `slot` and the actor that owns it; `logs` is the
/// pool's limiter of repeated log entries, shared by all its workers.
pub fn spawn(
    spec: &Spec,
    slot: u32,
    board_slot: Option<usize>,
    events: mpsc::UnboundedSender<Event>,
    logs: Arc<Mutex<LogLimiter>>,
) -> std::io::Result<Handle> {
    let mut cgroup = match &spec.cgroups {
        Some(tree) => Some(tree.create_worker(slot, &spec.limits)?),
        None => None,
    };
    let procs_fd = cgroup.as_ref().and_then(WorkerCgroup::procs_fd);
    let board_fd = spec.scoreboard.as_ref().map(|f| f.as_raw_fd());
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let their_fd = theirs.as_raw_fd();
    let mut command = tokio::process::Command::new(&spec.julia);
    command
        .args(["--startup-file=no", "--history-file=no", "--color=no"])
        .arg(&spec.worker_file)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("JULIA_FCGI_WORKER", slot.to_string())
        .env("JULIA_FCGI_CONTROL_FD", their_fd.to_string())
        .current_dir("/")
        .stdin(Stdio::from(spec.listener.try_clone()?))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let (Some(fd), Some(board_slot)) = (board_fd, board_slot) {
        command
            .env("JULIA_FCGI_SCOREBOARD_FD", fd.to_string())
            .env("JULIA_FCGI_SCOREBOARD_SLOT", board_slot.to_string());
    }
    let fd_limit = descriptor_limit();
    // SAFETY: only async-signal-safe calls (close_range, fcntl, write,
    // prctl) between fork and exec. Our end of the control socket is
    // close-on-exec everywhere else, so the worker gets its own end and no
    // other worker's.
    unsafe {
        command.pre_exec(move || {
            // Only fds 0-2 (set by the Command), the control channel and the
            // scoreboard reach the worker, whatever the master inherited.
            close_on_exec_from(3, fd_limit);
            for fd in [Some(their_fd), board_fd].into_iter().flatten() {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            match procs_fd {
                // Join the worker's cgroup before Julia runs at all.
                Some(fd) => {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // No cgroup to kill it with: die with the master.
                None => {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    if let Some(cgroup) = &mut cgroup {
        cgroup.close_procs();
    }
    let cgroup = cgroup.map(Arc::new);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            if let Some(cgroup) = &cgroup {
                cgroup.kill_and_remove();
            }
            return Err(e);
        }
    };
    drop(theirs);
    let pid = child.id().expect("a just-spawned child has a pid");
    let control = std::os::unix::net::UnixStream::from(ours);
    control.set_nonblocking(true)?;
    let control = UnixStream::from_std(control)?;
    let stdout = child.stdout.take().expect("stdout was set to piped");
    let stderr = child.stderr.take().expect("stderr was set to piped");
    let (commands, inbox) = mpsc::unbounded_channel();
    let actor = Actor {
        slot,
        pid,
        events,
        planned: None,
        stderr_tail: Vec::new(),
        cgroup: cgroup.clone(),
        logs,
    };
    tokio::spawn(actor.run(child, control, stdout, stderr, inbox));
    Ok(Handle {
        slot,
        pid,
        board_slot,
        cgroup,
        started: std::time::Instant::now(),
        commands,
    })
}

/// Marks every descriptor from `first` on close-on-exec, so that what this
/// process inherited (a shell's fd 10, a pipe at 251 from whatever started
/// it) never reaches a Julia worker or the programs its pages run. Marked,
/// not closed: std's spawn reports exec errors through a close-on-exec pipe
/// of its own. Async-signal-safe, so usable between fork and exec; `limit`
/// (from [`descriptor_limit`], taken before the fork) bounds the fallback
/// for kernels before 5.11, which have no `close_range`.
pub fn close_on_exec_from(first: u32, limit: u32) {
    // SAFETY: system calls on descriptor numbers only; none is closed.
    unsafe {
        let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_uint;
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, flags) == 0 {
            return;
        }
        for fd in first..limit {
            let fd = fd as libc::c_int;
            let current = libc::fcntl(fd, libc::F_GETFD);
            if current >= 0 && current & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, current | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The highest descriptor number the fallback of [`close_on_exec_from`]
/// looks at: the hard `RLIMIT_NOFILE`, but at most 2^20.
pub fn descriptor_limit() -> u32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if known {
        limit.rlim_max.min(1 << 20) as u32
    } else {
        1 << 20
    }
}

/// The task that owns one child process.
struct Actor {
    slot: u32,
    pid: u32,
    events: mpsc::UnboundedSender<Event>,
    planned: Option<String>,
    stderr_tail: Vec<String>,
    cgroup: Option<Arc<WorkerCgroup>>,
    logs: Arc<Mutex<LogLimiter>>,
}

impl Actor {
    async fn run(
        mut self,
        mut child: tokio::process::Child,
        control: UnixStream,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
        mut inbox: mpsc::UnboundedReceiver<ToWorker>,
    ) {
        let (control_in, mut control_out) = control.into_split();
        let mut control_in = LineReader::new(BufReader::new(control_in));
        let mut stdout = LineReader::new(BufReader::new(stdout));
        let mut stderr = LineReader::new(BufReader::new(stderr));
        let status = loop {
            tokio::select! {
                line = control_in.next(), if !control_in.done => {
                    if let Some(line) = line { self.on_control(&line) }
                }
                line = stdout.next(), if !stdout.done => {
                    if let Some(line) = line { self.on_output(Stream::Stdout, line) }
                }
                line = stderr.next(), if !stderr.done => {
                    if let Some(line) = line { self.on_output(Stream::Stderr, line) }
                }
                Some(command) = inbox.recv() => {
                    // A worker that already closed its end is leaving anyway.
                    let _ = control_out.write_all(command.line()).await;
                    if command == ToWorker::Abort {
                        let _ = nix::sys::signal::kill(
                            Pid::from_raw(self.pid as i32),
                            Signal::SIGTERM,
                        );
                    }
                }
                status = child.wait() => break status.ok(),
            }
        };
        // Whatever its pages started goes with it, at once: its process
        // group now (so the pipes those programs hold close and the drain
        // below is short), its cgroup after the drain. A pid is not reused
        // while it names a group with members, and this comes microseconds
        // after the reap, so the signal reaches only this worker's own.
        if let Err(e) = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL) {
            if e != nix::errno::Errno::ESRCH {
                tracing::debug!(worker = self.slot, worker_pid = self.pid, "killpg: {e}");
            }
        }
        // What the worker printed just before it died explains the death:
        // read the pipes to their end, but not forever (a process the page
        // forked may still hold them open).
        let drain = async {
            while let Some(line) = control_in.next().await {
                self.on_control(&line);
            }
            while let Some(line) = stdout.next().await {
                self.on_output(Stream::Stdout, line);
            }
            while let Some(line) = stderr.next().await {
                self.on_output(Stream::Stderr, line);
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
        // Whatever the worker forked dies with it; then its cgroup goes.
        let memory = match self.cgroup.take() {
            Some(cgroup) => {
                let memory = (cgroup.memory_events(), cgroup.memory_max());
                let _ = tokio::task::spawn_blocking(move || cgroup.kill_and_remove()).await;
                Some(memory)
            }
            None => None,
        };
        let exit = Exit {
            memory,
            slot: self.slot,
            pid: self.pid,
            status,
            planned: self.planned.take(),
            stderr_tail: std::mem::take(&mut self.stderr_tail),
        };
        let _ = self.events.send(Event::Exited(exit));
    }

    fn on_control(&mut self, line: &str) {
        let (slot, pid) = (self.slot, self.pid);
        match FromWorker::parse(line) {
            Ok(FromWorker::Ready) => {
                let _ = self.events.send(Event::Ready { slot, pid });
            }
            Ok(FromWorker::Starting { what }) => {
                let _ = self.events.send(Event::Starting { slot, pid, what });
            }
            Ok(FromWorker::Exiting { reason }) => {
                tracing::debug!(worker = slot, worker_pid = pid, "leaving: {reason}");
                self.planned = Some(reason);
            }
            Ok(FromWorker::Log {
                level,
                message,
                fields,
            }) => {
                let script = fields
                    .iter()
                    .find(|(key, _)| key == "SCRIPT_FILENAME")
                    .map(|(_, value)| value.as_str());
                if self.may_log(level, &message, script) {
                    log_from_worker(slot, pid, level, &message, &fields);
                }
            }
            Ok(FromWorker::Access(access)) => log_access(slot, pid, &access),
            Err(e) => {
                if self.may_log(Level::Warn, "unreadable control message", None) {
                    tracing::warn!(worker = slot, worker_pid = pid, "{e}");
                }
            }
        }
    }

    /// Asks the pool's limiter whether an entry of this kind may be logged
    /// now (saying what the kind's last window suppressed, if it just ended).
    fn may_log(&self, level: Level, message: &str, script: Option<&str>) -> bool {
        let mut logs = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (show, ended) = logs.check(level, message, script, tokio::time::Instant::now());
        drop(logs);
        if let Some(summary) = ended {
            log_summary(&summary);
        }
        show
    }

    fn on_output(&mut self, stream: Stream, line: String) {
        let (slot, pid) = (self.slot, self.pid);
        match stream {
            Stream::Stdout => tracing::info!(worker = slot, worker_pid = pid, "{line}"),
            Stream::Stderr => {
                tracing::warn!(worker = slot, worker_pid = pid, "{line}");
                if self.stderr_tail.len() == STDERR_TAIL {
                    self.stderr_tail.remove(0);
                }
                self.stderr_tail.push(line);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Reads lines of at most [`MAX_LINE`] bytes (a longer one comes out in
/// pieces) as text, invalid UTF-8 replaced.
struct LineReader<R> {
    reader: R,
    buf: Vec<u8>,
    done: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(reader: R) -> Self {
        LineReader {
            reader,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next line without its newline, or `None` at end of input (or on a
    /// read error, which for a pipe means the same).
    async fn next(&mut self) -> Option<String> {
        self.buf.clear();
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(bytes) => bytes,
                Err(_) => &[],
            };
            if available.is_empty() {
                self.done = true;
                return (!self.buf.is_empty()).then(|| self.take());
            }
            let room = MAX_LINE - self.buf.len();
            let chunk = &available[..available.len().min(room)];
            match chunk.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    self.buf.extend_from_slice(&chunk[..newline]);
                    self.reader.consume(newline + 1);
                    return Some(self.take());
                }
                None => {
                    let n = chunk.len();
                    self.buf.extend_from_slice(chunk);
                    self.reader.consume(n);
                    if self.buf.len() == MAX_LINE {
                        return Some(self.take());
                    }
                }
            }
        }
    }

    fn take(&mut self) -> String {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
