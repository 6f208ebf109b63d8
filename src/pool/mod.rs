//! The supervisor: keeps `N` workers alive, replaces the ones that die, backs
//! off from workers that cannot start, rolls the pool over on reload, and
//! stops it gracefully. It also tells systemd how things are ([`Notifier`]).
//!
//! Each worker's life is one value (`life.rs`: spawning, ready, ending,
//! killed) moved by checked transitions; a slot (`slot.rs`) holds its
//! current worker and the successor warming up to replace it. Worker
//! events, deadlines, reloads and the stop signal move them, all from one
//! loop that never waits on a worker; the loop's timer is the earliest
//! deadline of all the lives. The policies are pure functions that say
//! what to do ([`restart`], `policy.rs`, `scale.rs`, `orphans.rs`), so they
//! are tested without processes; the pool applies what they say.
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

use crate::notify::Notifier;
use crate::scoreboard::Scoreboard;
use crate::signals::Stop;
use crate::status::report::Report;
use crate::status::stats::Stats;
use crate::worker::{self, Event, Handle, LogLimiter};

mod config;
mod exits;
mod health;
mod life;
mod orphans;
mod policy;
mod reload;
pub mod restart;
mod scale;
mod scan;
mod slot;

pub use config::{Config, Options, Shared};
use life::{EndReason, Life, Worker};
use restart::{End, Next};
pub use restart::{MAX_BACKOFF, START_ATTEMPTS};
use slot::{Current, Slot, Successor};

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

/// Where the pool as a whole is.
#[derive(Debug)]
enum Phase {
    /// Not every worker has been ready yet.
    Starting,
    Serving,
    /// Rolling over to a new generation, one slot at a time; `previous` is
    /// the configuration to fall back to if the new one cannot start.
    Reloading {
        previous: Box<Config>,
    },
}

pub struct Pool {
    config: Config,
    /// The configuration generation new workers are started with.
    generation: u64,
    phase: Phase,
    /// Some worker of this pool was ready once: from now on a start failure
    /// is bad luck, never a setup error.
    ever_ready: bool,
    /// A stop has begun and the workers serve on until then (`drain_delay`).
    drain_until: Option<Instant>,
    slots: Vec<Slot>,
    /// Workers told to leave (rolled over, recycled, scaled down, stopping),
    /// until they exit. Each one is ending or killed.
    leaving: Vec<Worker>,
    board: Option<Scoreboard>,
    scaler: scale::Scaler,
    stats: Stats,
    /// What the status page shows, published after every scan.
    reports: watch::Sender<Arc<Report>>,
    /// Why per-worker cgroups are off, if they are.
    cgroups_off: Option<String>,
    notifier: Arc<Notifier>,
    /// Repeated log entries of all workers, limited together.
    logs: Arc<Mutex<LogLimiter>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Pool {
    pub fn new(
        config: Config,
        board: Option<Scoreboard>,
        cgroups_off: Option<String>,
        notifier: Arc<Notifier>,
        reports: watch::Sender<Arc<Report>>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Pool {
            generation: 1,
            phase: Phase::Starting,
            ever_ready: false,
            drain_until: None,
            slots: (1..=config.options.size).map(Slot::new).collect(),
            leaving: Vec::new(),
            config,
            board,
            scaler: scale::Scaler::default(),
            stats: Stats::default(),
            reports,
            cgroups_off,
            notifier,
            logs: Arc::default(),
            events_tx,
            events,
        }
    }

    /// Runs the pool until `shutdown` says stop (and the drain delay, if
    /// any, is over), then drains it. Each configuration `reloads` brings
    /// is rolled out.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<Stop>,
        mut reloads: mpsc::UnboundedReceiver<Config>,
        watchdog: Option<Duration>,
    ) -> Result<(), PoolError> {
        self.prepare_process();
        tracing::info!(
            "starting {} worker(s) on {}",
            self.config.options.size,
            self.config.options.listening_on
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
                Some(config) = reloads.recv() => self.begin_reload(config),
                _ = tick(&mut watchdog) => self.watchdog(),
                _ = scan.tick() => {
                    self.sweep_orphans();
                    self.flush_logs(Instant::now());
                    self.scan();
                }
                // A reload (RELOADING=1 until READY=1) runs against the same
                // start timeout as a start: both warm workers up. Never
                // while stopping: that would stretch systemd's stop timeout.
                _ = extend.tick(), if !matches!(self.phase, Phase::Serving)
                    && self.drain_until.is_none() => {
                    self.notifier.extend_timeout(EXTEND_BY);
                }
                changed = shutdown.changed() => {
                    // No sender any more: nobody can say stop later.
                    let stop = changed.map_or(Stop::Now, |()| *shutdown.borrow_and_update());
                    if self.stop_now(stop) {
                        break;
                    }
                }
                _ = sleep_until(self.drain_until) => {
                    tracing::info!("drain delay over");
                    break;
                }
            }
        }
        self.drain().await;
        Ok(())
    }

    /// Starts every vacant slot whose pause is over.
    fn start_due(&mut self) -> Result<(), PoolError> {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if self.slots[index].start_at().is_some_and(|at| at <= now) {
                self.start(index)?;
            }
        }
        Ok(())
    }

    fn start(&mut self, index: usize) -> Result<(), PoolError> {
        let number = self.slots[index].number;
        let now = Instant::now();
        let start_at = match self.spawn_worker(number) {
            Ok(worker) => {
                tracing::debug!(
                    worker = number,
                    worker_pid = worker.handle.pid,
                    "worker started"
                );
                self.slots[index].current = Current::Worker(worker);
                return Ok(());
            }
            Err(e) => {
                let cause = format!("cannot start {}: {e}", self.config.spec.julia.display());
                tracing::error!(worker = number, "{cause}");
                let slot = &mut self.slots[index];
                match slot.history.next(End::BeforeReady, now, self.ever_ready) {
                    Next::GiveUp { failures } => {
                        return Err(PoolError::CannotStart {
                            attempts: failures,
                            cause,
                        })
                    }
                    next => now + next.delay(),
                }
            }
        };
        self.slots[index].current = Current::Vacant { start_at };
        Ok(())
    }

    /// Spawns a worker for slot `number`, of the current configuration,
    /// with a scoreboard slot of its own.
    fn spawn_worker(&mut self, number: u32) -> std::io::Result<Worker> {
        let board_slot = self.board.as_mut().and_then(Scoreboard::allocate);
        if self.board.is_some() && board_slot.is_none() {
            tracing::warn!(
                worker = number,
                "scoreboard full; this worker goes unwatched"
            );
        }
        let spawned = worker::spawn(
            &self.config.spec,
            number,
            board_slot,
            self.events_tx.clone(),
            self.logs.clone(),
        );
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                if let (Some(board), Some(i)) = (self.board.as_mut(), board_slot) {
                    board.release(i);
                }
                return Err(e);
            }
        };
        let deadline = Instant::now() + self.config.options.start_timeout;
        Ok(Worker::new(
            handle,
            self.generation,
            self.request_limit(),
            deadline,
        ))
    }

    /// Gives a worker's scoreboard slot back once it has exited.
    fn release(&mut self, handle: &Handle) {
        if let (Some(board), Some(i)) = (self.board.as_mut(), handle.board_slot) {
            board.release(i);
        }
    }

    /// Tells a worker that leaves its slot to finish and go; it is killed
    /// after the grace period. What it served stays counted.
    fn leave(&mut self, mut worker: Worker, why: EndReason) {
        let kill_at = Instant::now() + self.config.options.shutdown_grace;
        // One that is ending already (over its request timeout) or killed
        // goes on as it is.
        let _ = worker.stop(why, kill_at);
        self.stats.worker_left(worker.last.as_ref());
        self.leaving.push(worker);
    }

    /// The earliest deadline of all the lives and vacant slots.
    fn next_deadline(&self) -> Option<Instant> {
        let slots = self.slots.iter().filter_map(Slot::deadline);
        let leaving = self.leaving.iter().filter_map(|w| w.life.deadline());
        slots.chain(leaving).min()
    }

    /// Workers past their deadline are killed: too slow to start, or still
    /// there after their grace. Their exit event then takes them through
    /// the usual path.
    fn on_deadlines(&mut self) {
        let now = Instant::now();
        let timeout = self.config.options.start_timeout;
        for slot in &mut self.slots {
            if let Some(worker) = slot.worker_mut() {
                kill_if_due(worker, Role::Current, now, timeout);
            }
            if let Some(successor) = &mut slot.successor {
                kill_if_due(&mut successor.worker, Role::Successor, now, timeout);
            }
        }
        for worker in &mut self.leaving {
            kill_if_due(worker, Role::Leaving, now, timeout);
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), PoolError> {
        match event {
            Event::Starting { slot, pid, what } => {
                if let Some(worker) = self.worker_mut(slot, pid) {
                    let _ = worker.life.busy_with(what);
                }
                Ok(())
            }
            Event::Ready { slot, pid } => {
                self.on_ready(slot, pid);
                Ok(())
            }
            Event::Exited(exit) => self.on_exit(exit),
        }
    }

    /// Slot `number`'s current worker or successor, if it is `pid`.
    fn worker_mut(&mut self, number: u32, pid: u32) -> Option<&mut Worker> {
        let slot = self.slots.iter_mut().find(|s| s.number == number)?;
        slot.workers_mut().find(|w| w.handle.pid == pid)
    }

    fn on_ready(&mut self, number: u32, pid: u32) {
        let Some(index) = self.slots.iter().position(|s| s.number == number) else {
            return;
        };
        let slot = &mut self.slots[index];
        if let Some(successor) = slot
            .successor
            .as_mut()
            .filter(|s| s.worker.handle.pid == pid)
        {
            if successor.worker.life.ready().is_ok() {
                self.hand_over(index);
            }
            return;
        }
        let Some(worker) = slot.worker_mut().filter(|w| w.handle.pid == pid) else {
            return;
        };
        if worker.life.ready().is_err() {
            // Told to stop or killed for being late meanwhile.
            return;
        }
        slot.history.ready();
        tracing::info!(worker = number, worker_pid = pid, "worker ready");
        self.ever_ready = true;
        if matches!(self.phase, Phase::Starting) && self.slots.iter().all(Slot::is_ready) {
            self.phase = Phase::Serving;
            let status = self.status_text();
            tracing::info!(
                "ready: {} worker(s) serving FastCGI on {}",
                self.config.options.size,
                self.config.options.listening_on
            );
            self.notifier.ready(&status);
        }
    }

    /// Slot `index`'s successor is ready: it serves, and the worker it
    /// replaces leaves.
    fn hand_over(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let Some(Successor { worker, replaces }) = slot.successor.take() else {
            return;
        };
        slot.history.ready();
        tracing::info!(
            worker = slot.number,
            worker_pid = worker.handle.pid,
            "new worker ready"
        );
        if let Current::Worker(old) = std::mem::replace(&mut slot.current, Current::Worker(worker))
        {
            self.leave(old, replaces);
        }
    }
}

/// Which of the pool's workers a deadline is about, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Current,
    Successor,
    Leaving,
}

/// Kills `worker` if its deadline has passed, saying why.
fn kill_if_due(worker: &mut Worker, role: Role, now: Instant, start_timeout: Duration) {
    if worker.life.deadline().is_none_or(|deadline| deadline > now) {
        return;
    }
    let (number, pid) = (worker.handle.slot, worker.handle.pid);
    match (&worker.life, role) {
        (Life::Spawning { .. }, Role::Successor) => tracing::error!(
            worker = number,
            worker_pid = pid,
            "new worker did not report ready within {start_timeout:?}; killing it"
        ),
        (Life::Spawning { .. }, _) => tracing::error!(
            worker = number,
            worker_pid = pid,
            "worker did not report ready within {start_timeout:?}; killing it"
        ),
        (
            Life::Ending {
                why: EndReason::TerminateTimeout,
                ..
            },
            _,
        ) => tracing::debug!(
            worker = number,
            worker_pid = pid,
            "still there {:?} after SIGTERM; killing it",
            policy::TERMINATE_GRACE
        ),
        _ => tracing::warn!(
            worker = number,
            worker_pid = pid,
            "worker still busy after the grace period; killing it"
        ),
    }
    let _ = worker.kill(now);
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

#[cfg(test)]
mod tests;
