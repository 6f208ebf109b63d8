//! The actor: the task that owns one worker process. It forwards every
//! line the worker prints to the log (tagged with the worker's number and
//! pid), understands its control channel, delivers the pool's commands,
//! reaps it, and reports [`Event`]s to the pool.

use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::mpsc;

use super::forward::{log_access, log_from_worker, log_summary, Limiter as LogLimiter};
use super::{Event, Exit};
use crate::cgroup::{MemoryEvents, WorkerCgroup};
use crate::control::{FromWorker, Level, ToWorker};

/// The longest line forwarded as one log entry; longer output is split, not
/// cut, so nothing a worker prints is lost.
const MAX_LINE: usize = 1 << 20;
/// How many of a worker's last stderr lines are kept to explain a failed
/// start.
const STDERR_TAIL: usize = 30;
/// How long the pipes of a worker that ended are read for what it said
/// last.
const DRAIN_FOR: Duration = Duration::from_millis(500);

/// The task that owns one child process.
pub(super) struct Actor {
    pub slot: u32,
    pub pid: u32,
    pub events: mpsc::UnboundedSender<Event>,
    /// Why it said it leaves (`EXITING`), if it did.
    pub planned: Option<String>,
    /// Its last stderr lines.
    pub stderr_tail: Vec<String>,
    pub cgroup: Option<Arc<WorkerCgroup>>,
    pub logs: Arc<Mutex<LogLimiter>>,
}

/// A worker's three pipes, read line by line.
struct Pipes {
    control: LineReader<BufReader<OwnedReadHalf>>,
    stdout: LineReader<BufReader<ChildStdout>>,
    stderr: LineReader<BufReader<ChildStderr>>,
}

impl Actor {
    /// Starts the task that owns `child`, whose end of the control channel
    /// is `control`; returns where to send it commands.
    pub(super) fn start(
        self,
        mut child: Child,
        control: OwnedFd,
    ) -> std::io::Result<mpsc::UnboundedSender<ToWorker>> {
        let control = std::os::unix::net::UnixStream::from(control);
        control.set_nonblocking(true)?;
        let (control_in, control_out) = UnixStream::from_std(control)?.into_split();
        let stdout = child.stdout.take().expect("stdout was set to piped");
        let stderr = child.stderr.take().expect("stderr was set to piped");
        let pipes = Pipes {
            control: LineReader::new(BufReader::new(control_in)),
            stdout: LineReader::new(BufReader::new(stdout)),
            stderr: LineReader::new(BufReader::new(stderr)),
        };
        let (commands, inbox) = mpsc::unbounded_channel();
        tokio::spawn(self.run(child, pipes, control_out, inbox));
        Ok(commands)
    }

    async fn run(
        mut self,
        child: Child,
        mut pipes: Pipes,
        control_out: OwnedWriteHalf,
        inbox: mpsc::UnboundedReceiver<ToWorker>,
    ) {
        let status = self.serve(child, &mut pipes, control_out, inbox).await;
        self.kill_group();
        // What the worker printed just before it died explains the death:
        // read the pipes to their end, but not forever (a process the page
        // forked may still hold them open).
        let _ = tokio::time::timeout(DRAIN_FOR, self.drain(&mut pipes)).await;
        let memory = self.remove_cgroup().await;
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

    /// Forwards what the worker says and what the pool commands until the
    /// worker exits; returns how it ended.
    async fn serve(
        &mut self,
        mut child: Child,
        pipes: &mut Pipes,
        mut control_out: OwnedWriteHalf,
        mut inbox: mpsc::UnboundedReceiver<ToWorker>,
    ) -> Option<ExitStatus> {
        loop {
            tokio::select! {
                line = pipes.control.next(), if !pipes.control.done => {
                    if let Some(line) = line { self.on_control(&line) }
                }
                line = pipes.stdout.next(), if !pipes.stdout.done => {
                    if let Some(line) = line { self.on_output(Stream::Stdout, line) }
                }
                line = pipes.stderr.next(), if !pipes.stderr.done => {
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
                status = child.wait() => return status.ok(),
            }
        }
    }

    /// Whatever its pages started goes with it, at once: its process group
    /// now (so the pipes those programs hold close and the drain is short),
    /// its cgroup after the drain. A pid is not reused while it names a
    /// group with members, and this comes microseconds after the reap, so
    /// the signal reaches only this worker's own.
    fn kill_group(&self) {
        if let Err(e) = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL) {
            if e != nix::errno::Errno::ESRCH {
                tracing::debug!(worker = self.slot, worker_pid = self.pid, "killpg: {e}");
            }
        }
    }

    /// Reads what is left in the pipes, to their end.
    async fn drain(&mut self, pipes: &mut Pipes) {
        while let Some(line) = pipes.control.next().await {
            self.on_control(&line);
        }
        while let Some(line) = pipes.stdout.next().await {
            self.on_output(Stream::Stdout, line);
        }
        while let Some(line) = pipes.stderr.next().await {
            self.on_output(Stream::Stderr, line);
        }
    }

    /// Kills whatever the worker forked and removes its cgroup; returns
    /// what `memory.events` and `memory.max` said, to explain an OOM kill.
    async fn remove_cgroup(&mut self) -> Option<(MemoryEvents, Option<String>)> {
        let cgroup = self.cgroup.take()?;
        let memory = (cgroup.memory_events(), cgroup.memory_max());
        let _ = tokio::task::spawn_blocking(move || cgroup.kill_and_remove()).await;
        Some(memory)
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
