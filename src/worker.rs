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
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::cgroup::{Limits, MemoryEvents, Tree, WorkerCgroup};
use crate::control::ToWorker;

mod actor;
mod exec;
mod forward;

use actor::Actor;
pub use exec::{close_on_exec_from, descriptor_limit};
pub use forward::{log_summary, Limiter as LogLimiter, ACCESS_TARGET, WINDOW as LOG_WINDOW};

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
    /// The pool sysimage the workers start from (chosen once per
    /// configuration), and the settings that add the trace file.
    pub image: Option<crate::sysimage::Image>,
    pub sysimage: crate::sysimage::Config,
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
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let (child, cgroup) = start_child(spec, slot, board_slot, &theirs)?;
    drop(theirs);
    let pid = child.id().expect("a just-spawned child has a pid");
    let actor = Actor {
        slot,
        pid,
        events,
        planned: None,
        stderr_tail: Vec::new(),
        cgroup: cgroup.clone(),
        logs,
    };
    let commands = actor.start(child, ours)?;
    Ok(Handle {
        slot,
        pid,
        board_slot,
        cgroup,
        started: std::time::Instant::now(),
        commands,
    })
}

/// Creates the worker's cgroup (with cgroups) and starts the process in
/// it, with `control` as its end of the control channel; a cgroup whose
/// process could not start is removed again.
fn start_child(
    spec: &Spec,
    slot: u32,
    board_slot: Option<usize>,
    control: &OwnedFd,
) -> std::io::Result<(tokio::process::Child, Option<Arc<WorkerCgroup>>)> {
    let mut cgroup = match &spec.cgroups {
        Some(tree) => Some(tree.create_worker(slot, &spec.limits)?),
        None => None,
    };
    let plumbing = exec::Plumbing {
        control: control.as_raw_fd(),
        board: spec
            .scoreboard
            .as_ref()
            .map(|f| f.as_raw_fd())
            .zip(board_slot),
        procs: cgroup.as_ref().and_then(WorkerCgroup::procs_fd),
    };
    let spawned = exec::command(spec, slot, plumbing).and_then(|mut c| c.spawn());
    if let Some(cgroup) = &mut cgroup {
        cgroup.close_procs();
    }
    let cgroup = cgroup.map(Arc::new);
    match spawned {
        Ok(child) => Ok((child, cgroup)),
        Err(e) => {
            if let Some(cgroup) = &cgroup {
                cgroup.kill_and_remove();
            }
            Err(e)
        }
    }
}
