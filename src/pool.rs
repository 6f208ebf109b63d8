//! The supervisor: keeps `N` workers alive, replaces the ones that die, backs
//! off from crash loops, rolls the pool over on reload, and stops it
//! gracefully. It also tells systemd how things are ([`Notifier`]).
//!
//! Each worker slot is a small state machine ([`SlotState`]); worker events,
//! timers, reloads and the stop signal move it, all from one loop that never
//! waits on a worker.
//!
//! Failure policy, and why:
//! - A worker that dies after it was ready is replaced at once the first
//!   time: one crash must not cost capacity. Repeated crashes of a slot within
//!   [`CRASH_WINDOW`] back off exponentially up to [`MAX_BACKOFF`], said in
//!   the log and in `STATUS=`, so a page that kills its worker cannot make a
//!   restart storm. The master never exits over crashes: systemd would only
//!   restart it into the same storm.
//! - A worker that cannot start (bad worker file, broken Julia) is reported
//!   with its stderr. Before any worker was ever ready that is a setup error:
//!   after [`START_ATTEMPTS`] failures the master exits with the cause rather
//!   than retrying silently forever. Once the pool has served, start failures
//!   are retried with back-off while the others keep serving.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::notify::Notifier;
use crate::worker::{self, Event, Exit, Handle, Spec};

/// Crashes of one slot counted together for back-off.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The longest pause before a replacement is started.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Failed starts in a row, before the pool ever was ready, that end the master.
pub const START_ATTEMPTS: u32 = 3;
/// While starting, systemd's start timeout is pushed this far ahead…
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
    /// Waiting out a back-off before the next start.
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
    /// When this slot's recent unplanned deaths happened.
    crashes: VecDeque<Instant>,
    /// Failed starts since the last successful one.
    start_failures: u32,
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
            crashes: VecDeque::new(),
            start_failures: 0,
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
    /// The spec before a reload, to fall back to if the new one cannot start.
    previous: Option<(Arc<Spec>, Options)>,
    generation: u64,
    options: Options,
    slots: Vec<Slot>,
    retiring: Vec<Retiring>,
    phase: Phase,
    ever_ready: bool,
    notifier: Arc<Notifier>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Pool {
    pub fn new(spec: Spec, options: Options, notifier: Arc<Notifier>) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Pool {
            spec: Arc::new(spec),
            previous: None,
            generation: 1,
            slots: (1..=options.size).map(|n| Slot::new(n, 1)).collect(),
            options,
            retiring: Vec::new(),
            phase: Phase::Starting,
            ever_ready: false,
            notifier,
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
        tracing::info!(
            "starting {} worker(s) on {}",
            self.options.size,
            self.options.listening_on
        );
        let mut watchdog = watchdog.map(tokio::time::interval);
        let mut extend = tokio::time::interval(EXTEND_EVERY);
        loop {
            self.start_due();
            self.advance_reload();
            self.update_status();
            let deadline = self.next_deadline();
            tokio::select! {
                Some(event) = self.events.recv() => self.on_event(event)?,
                _ = sleep_until(deadline) => self.on_deadlines(),
                Some(reload) = reloads.recv() => self.begin_reload(reload),
                _ = tick(&mut watchdog) => self.watchdog(),
                _ = extend.tick(), if self.phase == Phase::Starting => {
                    self.notifier.extend_timeout(EXTEND_BY);
                }
                _ = shutdown.changed() => break,
            }
        }
        self.drain().await;
        Ok(())
    }

    /// Starts every slot whose back-off is over.
    fn start_due(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if matches!(self.slots[index].state, SlotState::Waiting { until } if until <= now) {
                self.start(index);
            }
        }
    }

    fn start(&mut self, index: usize) {
        let number = self.slots[index].number;
        match worker::spawn(&self.spec, number, self.events_tx.clone()) {
            Ok(handle) => {
                tracing::debug!(worker = number, worker_pid = handle.pid, "worker started");
                let slot = &mut self.slots[index];
                slot.generation = self.generation;
                slot.state = SlotState::Starting {
                    handle,
                    deadline: Instant::now() + self.options.start_timeout,
                };
            }
            Err(e) => {
                tracing::error!(
                    worker = number,
                    "cannot start {}: {e}",
                    self.spec.julia.display()
                );
                let slot = &mut self.slots[index];
                slot.start_failures += 1;
                slot.state = SlotState::Waiting {
                    until: Instant::now() + backoff(slot.start_failures),
                };
            }
        }
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
    fn on_deadlines(&mut self) {
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
            Event::Ready { slot, pid } => {
                self.on_ready(slot, pid);
                Ok(())
            }
            Event::Exited(exit) => self.on_exit(exit),
        }
    }

    fn on_ready(&mut self, number: u32, pid: u32) {
        let grace = self.options.shutdown_grace;
        let generation = self.generation;
        let Some(slot) = self.slots.iter_mut().find(|s| s.number == number) else {
            return;
        };
        if slot.successor.as_ref().is_some_and(|(h, _)| h.pid == pid) {
            // Rolling over: the new worker serves, then the old one leaves.
            let (successor, _) = slot.successor.take().expect("checked just above");
            let old = std::mem::replace(&mut slot.state, SlotState::Running { handle: successor });
            slot.generation = generation;
            slot.start_failures = 0;
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
            slot.start_failures = 0;
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

    fn retire(&mut self, handle: Handle, grace: Duration) {
        handle.stop();
        self.retiring.push(Retiring {
            handle,
            deadline: Instant::now() + grace,
            killed: false,
        });
    }

    fn on_exit(&mut self, exit: Exit) -> Result<(), PoolError> {
        if let Some(i) = self.retiring.iter().position(|r| r.handle.pid == exit.pid) {
            let how = describe_status(&exit);
            tracing::debug!(
                worker = exit.slot,
                worker_pid = exit.pid,
                "old worker left: {how}"
            );
            self.retiring.swap_remove(i);
            return Ok(());
        }
        let Some(index) = self.slots.iter().position(|s| s.number == exit.slot) else {
            return Ok(());
        };
        if self.slots[index]
            .successor
            .as_ref()
            .is_some_and(|(h, _)| h.pid == exit.pid)
        {
            self.slots[index].successor = None;
            self.successor_failed(index, &exit);
            return Ok(());
        }
        if self.slots[index].handle().is_none_or(|h| h.pid != exit.pid) {
            return Ok(());
        }
        let ever_ready = self.ever_ready;
        let slot = &mut self.slots[index];
        let how = describe_status(&exit);
        let now = Instant::now();
        let was_running = matches!(slot.state, SlotState::Running { .. });
        if !was_running {
            slot.start_failures += 1;
            tracing::error!(
                worker = exit.slot,
                worker_pid = exit.pid,
                "worker failed to start: {how}; its stderr:\n{}",
                stderr_text(&exit)
            );
            if !ever_ready && slot.start_failures >= START_ATTEMPTS {
                return Err(PoolError::CannotStart {
                    attempts: slot.start_failures,
                    cause: format!("{how}; last stderr line: {}", last_line(&exit)),
                });
            }
            let delay = backoff(slot.start_failures);
            tracing::warn!(worker = exit.slot, "next start in {delay:?}");
            slot.state = SlotState::Waiting { until: now + delay };
            return Ok(());
        }
        if let Some(reason) = &exit.planned {
            tracing::info!(
                worker = exit.slot,
                worker_pid = exit.pid,
                "worker left ({reason}); replacing it"
            );
            slot.state = SlotState::Waiting { until: now };
            return Ok(());
        }
        slot.crashes.push_back(now);
        while slot
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            slot.crashes.pop_front();
        }
        let recent = slot.crashes.len() as u32;
        let delay = if recent <= 1 {
            Duration::ZERO
        } else {
            backoff(recent - 1)
        };
        if delay.is_zero() {
            tracing::error!(
                worker = exit.slot,
                worker_pid = exit.pid,
                "worker died: {how}; replacing it"
            );
        } else {
            tracing::error!(
                worker = exit.slot,
                worker_pid = exit.pid,
                "worker died: {how}; {recent} deaths in {CRASH_WINDOW:?}, \
                 crash loop: next start in {delay:?}"
            );
        }
        slot.state = SlotState::Waiting { until: now + delay };
        Ok(())
    }

    /// Takes a new configuration: validated already, it is rolled out slot
    /// by slot so that the pool never serves with fewer ready workers.
    fn begin_reload(&mut self, reload: Reload) {
        if self.phase == Phase::Reloading {
            tracing::warn!("reload requested while a reload is in progress; starting over");
        }
        self.notifier.reloading();
        let old_spec = std::mem::replace(&mut self.spec, Arc::new(reload.spec));
        let old_options = std::mem::replace(&mut self.options, reload.options);
        if self.previous.is_none() {
            self.previous = Some((old_spec, old_options));
        }
        self.generation += 1;
        self.resize();
        self.phase = Phase::Reloading;
        tracing::info!(
            "reloading: rolling {} worker(s) over to configuration generation {}",
            self.options.size,
            self.generation
        );
    }

    /// Grows or shrinks the pool to the configured size.
    fn resize(&mut self) {
        let size = self.options.size as usize;
        while self.slots.len() < size {
            let number = self.slots.len() as u32 + 1;
            self.slots.push(Slot::new(number, self.generation));
        }
        let grace = self.options.shutdown_grace;
        while self.slots.len() > size {
            let slot = self.slots.pop().expect("more slots than wanted");
            if let Some((successor, _)) = slot.successor {
                self.retire(successor, grace);
            }
            if let SlotState::Starting { handle, .. } | SlotState::Running { handle } = slot.state {
                self.retire(handle, grace);
            }
        }
    }

    /// One slot at a time: start a new-generation worker next to an old one.
    fn advance_reload(&mut self) {
        if self.phase != Phase::Reloading || self.slots.iter().any(|s| s.successor.is_some()) {
            return;
        }
        let generation = self.generation;
        let old = self.slots.iter().position(|s| {
            s.generation < generation && matches!(s.state, SlotState::Running { .. })
        });
        match old {
            Some(index) => {
                let number = self.slots[index].number;
                match worker::spawn(&self.spec, number, self.events_tx.clone()) {
                    Ok(handle) => {
                        let deadline = Instant::now() + self.options.start_timeout;
                        self.slots[index].successor = Some((handle, deadline));
                    }
                    Err(e) => {
                        tracing::error!(worker = number, "reload: cannot start a new worker: {e}");
                        self.abort_reload();
                    }
                }
            }
            None if self.slots.iter().all(|s| {
                s.generation == generation && matches!(s.state, SlotState::Running { .. })
            }) =>
            {
                self.phase = Phase::Serving;
                self.previous = None;
                tracing::info!("reload complete: generation {generation} serving");
                let status = self.status_text();
                self.notifier.ready(&status);
            }
            // Some slot is still starting or backing off; wait for it.
            None => {}
        }
    }

    fn successor_failed(&mut self, index: usize, exit: &Exit) {
        let how = describe_status(exit);
        tracing::error!(
            worker = exit.slot,
            worker_pid = exit.pid,
            "reload: new worker failed to start: {how}; its stderr:\n{}",
            stderr_text(exit)
        );
        let slot = &mut self.slots[index];
        slot.start_failures += 1;
        if slot.start_failures >= START_ATTEMPTS {
            self.abort_reload();
        }
    }

    /// The new configuration cannot start workers: keep serving with the old
    /// workers and the old configuration.
    fn abort_reload(&mut self) {
        let Some((spec, options)) = self.previous.take() else {
            return;
        };
        tracing::error!(
            "reload aborted: the new configuration cannot start workers; \
             still serving with the previous one"
        );
        self.spec = spec;
        self.options = options;
        self.generation += 1;
        let generation = self.generation;
        for slot in &mut self.slots {
            slot.generation = generation;
            slot.start_failures = 0;
        }
        self.resize();
        self.phase = Phase::Serving;
        let status = self.status_text();
        self.notifier.ready(&status);
    }

    /// `WATCHDOG=1`, but only while the supervisor does its job. Sent from
    /// this loop, so a stuck loop stops it by itself. Withheld when the
    /// pool's own timers are overdue: replacements not started, or hung
    /// workers not killed, mean reaping and replacing are broken and a
    /// restart by systemd is the cure. Never withheld because workers crash
    /// or start slowly: back-off handles those, and a restart would only
    /// repeat them (a restart storm).
    fn watchdog(&mut self) {
        let now = Instant::now();
        let overdue = self.slots.iter().any(|slot| match &slot.state {
            SlotState::Waiting { until } => now.saturating_duration_since(*until) > OVERDUE,
            SlotState::Starting { deadline, .. } => {
                now.saturating_duration_since(*deadline) > OVERDUE
            }
            SlotState::Running { .. } => false,
        }) || self
            .retiring
            .iter()
            .any(|r| now.saturating_duration_since(r.deadline) > OVERDUE + OVERDUE);
        if overdue {
            tracing::error!("supervisor timers are overdue; withholding the watchdog ping");
        } else {
            self.notifier.watchdog();
        }
    }

    fn status_text(&self) -> String {
        let ready = self
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Running { .. }))
            .count();
        let size = self.slots.len();
        let mut text = match self.phase {
            Phase::Starting => format!("starting workers: {ready}/{size} ready"),
            Phase::Serving => format!("{ready}/{size} workers ready"),
            Phase::Reloading => {
                let done = self
                    .slots
                    .iter()
                    .filter(|s| s.generation == self.generation)
                    .count();
                format!("{ready}/{size} workers ready; reloading: {done}/{size} replaced")
            }
        };
        let backing_off: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.crashes.len() > 1 && matches!(s.state, SlotState::Waiting { .. }))
            .map(|s| format!("worker {} ({} crashes)", s.number, s.crashes.len()))
            .collect();
        if !backing_off.is_empty() {
            text.push_str("; crash loop, backing off: ");
            text.push_str(&backing_off.join(", "));
        }
        text
    }

    fn update_status(&self) {
        self.notifier.status(&self.status_text());
    }

    /// Tells every worker to stop, waits for them up to the grace period,
    /// then kills what is left.
    async fn drain(&mut self) {
        self.notifier.stopping();
        let grace = self.options.shutdown_grace;
        for slot in std::mem::take(&mut self.slots) {
            if let Some((successor, _)) = slot.successor {
                self.retire(successor, grace);
            }
            if let SlotState::Starting { handle, .. } | SlotState::Running { handle } = slot.state {
                self.retire(handle, grace);
            }
        }
        tracing::info!(
            "stopping {} worker(s); requests in progress get {grace:?} to finish",
            self.retiring.len()
        );
        let give_up = Instant::now() + grace + Duration::from_secs(5);
        while !self.retiring.is_empty() {
            let deadline = self.next_deadline().unwrap_or(give_up).min(give_up);
            tokio::select! {
                Some(event) = self.events.recv() => {
                    if let Event::Exited(exit) = event {
                        self.retiring.retain(|r| r.handle.pid != exit.pid);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= give_up {
                        tracing::error!(
                            "{} worker(s) did not exit even after SIGKILL",
                            self.retiring.len()
                        );
                        return;
                    }
                    self.on_deadlines();
                }
            }
        }
        tracing::info!("all workers stopped");
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

/// 1 s, 2 s, 4 s, … up to [`MAX_BACKOFF`] for the n-th failure in a row.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
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

fn describe_status(exit: &Exit) -> String {
    use std::os::unix::process::ExitStatusExt;
    match exit.status {
        None => "exit status unknown".into(),
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => {
                let name = nix::sys::signal::Signal::try_from(signal)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| format!("signal {signal}"));
                format!("killed by {name}")
            }
            (None, None) => format!("ended ({status})"),
        },
    }
}

fn stderr_text(exit: &Exit) -> String {
    if exit.stderr_tail.is_empty() {
        "(it printed nothing on stderr)".to_owned()
    } else {
        exit.stderr_tail.join("\n")
    }
}

fn last_line(exit: &Exit) -> &str {
    exit.stderr_tail
        .iter()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(String::as_str)
        .unwrap_or("(none)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
