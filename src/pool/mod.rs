//! The supervisor: keeps `N` workers alive, replaces the ones that die, backs
//! off from workers that cannot start, rolls the pool over on reload, and
//! stops it gracefully. It also tells systemd how things are ([`Notifier`]).
//!
//! Each worker slot is a small state machine ([`SlotState`]); worker events,
//! timers, reloads and the stop signal move it, all from one loop that never
//! waits on a worker.
//!
//! Failure policy ([`restart`] has the rules and why):
//! - A worker that dies after it was ready is replaced at once, every time:
//!   a page that crashes its worker must not cost the other requests
//!   capacity. Only a slot dying more often than a worker can warm up and
//!   serve (a fork storm) waits, seconds at most, said in the log. The
//!   master never exits over crashes: systemd would only restart it into the
//!   same storm.
//! - A worker that cannot start (bad worker file, broken Julia) is reported
//!   with its stderr and retried with exponential back-off. Before any worker
//!   was ever ready that is a setup error: after [`START_ATTEMPTS`] failures
//!   the master exits with the cause rather than retrying silently forever.
//! - Whatever a worker started dies with it: its cgroup is killed, or
//!   without cgroups its process group, and the master (a child subreaper
//!   then) kills and reaps the orphans that left the group (`orphans.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Supervision;
use crate::notify::Notifier;
use crate::scoreboard::{Scoreboard, Snapshot};
use crate::status::report::{Report, Restarts};
use crate::worker::{self, Event, Handle, LogLimiter, Spec};

mod exits;
mod health;
mod orphans;
mod policy;
mod reload;
pub mod restart;

use restart::{End, History, Next};
pub use restart::{MAX_BACKOFF, START_ATTEMPTS};
/// While starting or reloading, systemd's timeout is pushed this far ahead…
const EXTEND_BY: Duration = Duration::from_secs(30);
/// …this often, for as long as workers are still warming up.
const EXTEND_EVERY: Duration = Duration::from_secs(10);
/// A deadline the pool's own timers overran by more than this means the
/// supervisor is not doing its job: the watchdog is then withheld.
const OVERDUE: Duration = Duration::from_secs(5);

/// Why the pool gave up.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("workers cannot start (tried {attempts} times): {cause}")]
    CannotStart { attempts: u32, cause: String },
}

/// The pool's shape; a reload may change every field but `listening_on`.
#[derive(Debug, Clone)]
pub struct Options {
    pub size: u32,
    pub start_timeout: Duration,
    pub shutdown_grace: Duration,
    /// For the log: what the pool serves on.
    pub listening_on: String,
}

/// A new configuration to roll the pool over to.
#[derive(Debug)]
pub struct Reload {
    pub spec: Spec,
    pub options: Options,
}

/// Where one worker slot is in its life.
#[derive(Debug)]
enum SlotState {
    /// Spawned, warming up; must say READY before `deadline`.
    Starting { handle: Handle, deadline: Instant },
    /// Ready and accepting connections.
    Running { handle: Handle },
    /// Waiting out a back-off (or nothing: `until` is now) before the next
    /// start.
    Waiting { until: Instant },
}

#[derive(Debug)]
struct Slot {
    number: u32,
    state: SlotState,
    /// The configuration generation its current worker was started with.
    generation: u64,
    /// A new-generation worker warming up to take this slot over (reload).
    successor: Option<(Handle, Instant)>,
    /// Its failed starts and recent deaths, for the restart policy.
    history: History,
    /// What the current worker's scoreboard slot said last.
    last: Option<Snapshot>,
    /// The policy that is ending the current worker on purpose (request
    /// timeout, recycling), so its death is not counted as a crash.
    ending: Option<Ending>,
    /// `started_ns` of the request already logged as slow.
    slow_logged: Option<u64>,
    /// Requests after which the current worker is recycled (0: never).
    request_limit: u64,
}

/// A worker being ended by a policy.
#[derive(Debug, Clone)]
struct Ending {
    reason: String,
    /// When to escalate to killing its whole cgroup.
    kill_at: Option<Instant>,
}

impl Slot {
    fn new(number: u32, generation: u64) -> Self {
        Slot {
            number,
            state: SlotState::Waiting {
                until: Instant::now(),
            },
            generation,
            successor: None,
            history: History::default(),
            last: None,
            ending: None,
            slow_logged: None,
            request_limit: 0,
        }
    }

    fn handle(&self) -> Option<&Handle> {
        match &self.state {
            SlotState::Starting { handle, .. } | SlotState::Running { handle } => Some(handle),
            SlotState::Waiting { .. } => None,
        }
    }
}

/// A worker told to leave (rolled over or scaled down); killed at `deadline`.
#[derive(Debug)]
struct Retiring {
    handle: Handle,
    deadline: Instant,
    killed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not every worker has been ready yet.
    Starting,
    Serving,
    /// Rolling over to a new generation, one slot at a time.
    Reloading,
}

pub struct Pool {
    spec: Arc<Spec>,
    board: Option<Scoreboard>,
    supervision: Supervision,
    /// Requests served by workers that have since left.
    retired_requests: u64,
    /// Why per-worker cgroups are off, if they are.
    cgroups_off: Option<String>,
    /// Dynamic pool: inside a "max_children reached" episode (logged once).
    at_max_children: bool,
    max_children_reached: u64,
    /// What the status page shows, published after every scan.
    reports: watch::Sender<Arc<Report>>,
    restarts: Restarts,
    slow_requests: u64,
    max_listen_queue: u32,
    max_active: u32,
    started_at: std::time::SystemTime,
    /// The spec before a reload, to fall back to if the new one cannot start.
    previous: Option<(Arc<Spec>, Options)>,
    generation: u64,
    options: Options,
    slots: Vec<Slot>,
    retiring: Vec<Retiring>,
    phase: Phase,
    ever_ready: bool,
    notifier: Arc<Notifier>,
    /// Repeated log entries of all workers, limited together.
    logs: Arc<Mutex<LogLimiter>>,
    /// What workers not ready yet said they are busy with, by slot number
    /// (shown in `STATUS=`: loading packages can take minutes).
    starting: std::collections::BTreeMap<u32, String>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Pool {
    pub fn new(
        spec: Spec,
        options: Options,
        supervision: Supervision,
        board: Option<Scoreboard>,
        cgroups_off: Option<String>,
        notifier: Arc<Notifier>,
        reports: watch::Sender<Arc<Report>>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Pool {
            spec: Arc::new(spec),
            board,
            supervision,
            retired_requests: 0,
            cgroups_off,
            at_max_children: false,
            max_children_reached: 0,
            reports,
            restarts: Restarts::default(),
            slow_requests: 0,
            max_listen_queue: 0,
            max_active: 0,
            started_at: std::time::SystemTime::now(),
            previous: None,
            generation: 1,
            slots: (1..=options.size).map(|n| Slot::new(n, 1)).collect(),
            options,
            retiring: Vec::new(),
            phase: Phase::Starting,
            ever_ready: false,
            notifier,
            logs: Arc::default(),
            starting: std::collections::BTreeMap::new(),
            events_tx,
            events,
        }
    }

    /// Runs the pool until `shutdown` turns true, then drains it.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut reloads: mpsc::UnboundedReceiver<Reload>,
        watchdog: Option<Duration>,
    ) -> Result<(), PoolError> {
        self.prepare_process();
        tracing::info!(
            "starting {} worker(s) on {}",
            self.options.size,
            self.options.listening_on
        );
        let mut watchdog = watchdog.map(tokio::time::interval);
        let mut extend = tokio::time::interval(EXTEND_EVERY);
        let mut scan = tokio::time::interval(policy::SCAN_EVERY);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.start_due()?;
            self.advance_reload();
            self.update_status();
            let deadline = self.next_deadline();
            tokio::select! {
                Some(event) = self.events.recv() => self.on_event(event)?,
                _ = sleep_until(deadline) => self.on_deadlines(),
                Some(reload) = reloads.recv() => self.begin_reload(reload),
                _ = tick(&mut watchdog) => self.watchdog(),
                _ = scan.tick() => {
                    self.sweep_orphans();
                    self.flush_logs(Instant::now());
                    self.scan();
                }
                // A reload (RELOADING=1 until READY=1) runs against the same
                // start timeout as a start: both warm workers up.
                _ = extend.tick(), if self.phase != Phase::Serving => {
                    self.notifier.extend_timeout(EXTEND_BY);
                }
                _ = shutdown.changed() => break,
            }
        }
        self.drain().await;
        Ok(())
    }

    /// Starts every slot whose back-off is over.
    fn start_due(&mut self) -> Result<(), PoolError> {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if matches!(self.slots[index].state, SlotState::Waiting { until } if until <= now) {
                self.start(index)?;
            }
        }
        Ok(())
    }

    /// Spawns a worker for slot `number` with a scoreboard slot of its own.
    pub(super) fn spawn_worker(&mut self, number: u32) -> std::io::Result<Handle> {
        let board_slot = self.board.as_mut().and_then(Scoreboard::allocate);
        if self.board.is_some() && board_slot.is_none() {
            tracing::warn!(
                worker = number,
                "scoreboard full; this worker goes unwatched"
            );
        }
        let spawned = worker::spawn(
            &self.spec,
            number,
            board_slot,
            self.events_tx.clone(),
            self.logs.clone(),
        );
        if let (Err(_), Some(board), Some(i)) = (&spawned, self.board.as_mut(), board_slot) {
            board.release(i);
        }
        spawned
    }

    /// Gives a worker's scoreboard slot back once it has exited.
    fn release(&mut self, handle: &Handle) {
        if let (Some(board), Some(i)) = (self.board.as_mut(), handle.board_slot) {
            board.release(i);
        }
    }

    fn start(&mut self, index: usize) -> Result<(), PoolError> {
        let number = self.slots[index].number;
        match self.spawn_worker(number) {
            Ok(handle) => {
                tracing::debug!(worker = number, worker_pid = handle.pid, "worker started");
                let request_limit = self.request_limit();
                let slot = &mut self.slots[index];
                slot.generation = self.generation;
                slot.request_limit = request_limit;
                slot.last = None;
                slot.ending = None;
                slot.slow_logged = None;
                slot.state = SlotState::Starting {
                    handle,
                    deadline: Instant::now() + self.options.start_timeout,
                };
            }
            Err(e) => {
                let cause = format!("cannot start {}: {e}", self.spec.julia.display());
                tracing::error!(worker = number, "{cause}");
                let now = Instant::now();
                let slot = &mut self.slots[index];
                let next = slot.history.next(End::BeforeReady, now, self.ever_ready);
                if let Next::GiveUp { failures } = next {
                    return Err(PoolError::CannotStart {
                        attempts: failures,
                        cause,
                    });
                }
                slot.state = SlotState::Waiting {
                    until: now + next.delay(),
                };
            }
        }
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let slots = self.slots.iter().flat_map(|slot| {
            let own = match &slot.state {
                SlotState::Starting { deadline, .. } => Some(*deadline),
                SlotState::Waiting { until } => Some(*until),
                SlotState::Running { .. } => None,
            };
            own.into_iter()
                .chain(slot.successor.as_ref().map(|(_, d)| *d))
        });
        let retiring = self
            .retiring
            .iter()
            .filter(|r| !r.killed)
            .map(|r| r.deadline);
        slots.chain(retiring).min()
    }

    /// Workers that overran their start-up or stop deadline are killed; their
    /// exit event then takes them through the usual path.
    pub(super) fn on_deadlines(&mut self) {
        let now = Instant::now();
        let timeout = self.options.start_timeout;
        for slot in &mut self.slots {
            if let SlotState::Starting { handle, deadline } = &mut slot.state {
                if *deadline <= now {
                    tracing::error!(
                        worker = slot.number,
                        worker_pid = handle.pid,
                        "worker did not report ready within {timeout:?}; killing it"
                    );
                    handle.kill();
                    // Reaped soon; its exit event counts the failure.
                    *deadline = now + Duration::from_secs(3600);
                }
            }
            if let Some((handle, deadline)) = &mut slot.successor {
                if *deadline <= now {
                    tracing::error!(
                        worker = slot.number,
                        worker_pid = handle.pid,
                        "new worker did not report ready within {timeout:?}; killing it"
                    );
                    handle.kill();
                    *deadline = now + Duration::from_secs(3600);
                }
            }
        }
        for retiring in &mut self.retiring {
            if !retiring.killed && retiring.deadline <= now {
                tracing::warn!(
                    worker = retiring.handle.slot,
                    worker_pid = retiring.handle.pid,
                    "worker still busy after the grace period; killing it"
                );
                retiring.handle.kill();
                retiring.killed = true;
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), PoolError> {
        match event {
            Event::Starting { slot, what } => {
                self.starting.insert(slot, what);
                Ok(())
            }
            Event::Ready { slot, pid } => {
                self.starting.remove(&slot);
                self.on_ready(slot, pid);
                Ok(())
            }
            Event::Exited(exit) => {
                self.starting.remove(&exit.slot);
                self.on_exit(exit)
            }
        }
    }

    fn on_ready(&mut self, number: u32, pid: u32) {
        let grace = self.options.shutdown_grace;
        let generation = self.generation;
        let request_limit = self.request_limit();
        let Some(slot) = self.slots.iter_mut().find(|s| s.number == number) else {
            return;
        };
        if slot.successor.as_ref().is_some_and(|(h, _)| h.pid == pid) {
            // Rolling over: the new worker serves, then the old one leaves.
            let (successor, _) = slot.successor.take().expect("checked just above");
            let old = std::mem::replace(&mut slot.state, SlotState::Running { handle: successor });
            slot.generation = generation;
            slot.history.ready();
            slot.ending = None;
            slot.slow_logged = None;
            if let Some(last) = slot.last.take() {
                self.retired_requests += last.requests;
            }
            slot.request_limit = request_limit;
            tracing::info!(worker = number, worker_pid = pid, "new worker ready");
            if let SlotState::Running { handle } | SlotState::Starting { handle, .. } = old {
                self.retire(handle, grace);
            }
            return;
        }
        if let SlotState::Starting { handle, .. } = &slot.state {
            if handle.pid != pid {
                return;
            }
            let handle = take_handle(&mut slot.state);
            slot.state = SlotState::Running { handle };
            slot.history.ready();
            tracing::info!(worker = number, worker_pid = pid, "worker ready");
        }
        self.ever_ready = true;
        if self.phase == Phase::Starting && self.all_running() {
            self.phase = Phase::Serving;
            let status = self.status_text();
            tracing::info!(
                "ready: {} worker(s) serving FastCGI on {}",
                self.options.size,
                self.options.listening_on
            );
            self.notifier.ready(&status);
        }
    }

    fn all_running(&self) -> bool {
        self.slots
            .iter()
            .all(|slot| matches!(slot.state, SlotState::Running { .. }))
    }

    pub(super) fn retire(&mut self, handle: Handle, grace: Duration) {
        handle.stop();
        self.retiring.push(Retiring {
            handle,
            deadline: Instant::now() + grace,
            killed: false,
        });
    }
}

fn take_handle(state: &mut SlotState) -> Handle {
    let placeholder = SlotState::Waiting {
        until: Instant::now(),
    };
    match std::mem::replace(state, placeholder) {
        SlotState::Starting { handle, .. } | SlotState::Running { handle } => handle,
        SlotState::Waiting { .. } => {
            unreachable!("take_handle is only called on states with a worker")
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
