//! The supervisor: keeps `N` workers alive, replaces the ones that die, backs
//! off from crash loops, and stops them all gracefully.
//!
//! Each worker slot is a small state machine ([`SlotState`]); events from the
//! worker actors and timers move it. The pool never waits on a worker: it
//! reacts to [`worker::Event`]s and deadlines in one loop.
//!
//! Failure policy, and why:
//! - A worker that dies after it was ready is replaced at once the first
//!   time: one crash must not cost capacity. Repeated crashes of a slot within
//!   [`CRASH_WINDOW`] back off exponentially up to [`MAX_BACKOFF`], said in
//!   the log, so a page that kills its worker cannot make a restart storm.
//! - A worker that cannot start (bad worker file, broken Julia) is reported
//!   with its stderr. Before any worker was ever ready that is a setup error:
//!   after [`START_ATTEMPTS`] failures the master exits with the cause rather
//!   than retrying silently forever. Once the pool has served, start failures
//!   are retried with back-off while the others keep serving.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::worker::{self, Event, Exit, Handle, Spec};

/// Crashes of one slot counted together for back-off.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The longest pause before a replacement is started.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Failed starts in a row, before the pool ever was ready, that end the master.
pub const START_ATTEMPTS: u32 = 3;

/// Why the pool gave up.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("workers cannot start (tried {attempts} times): {cause}")]
    CannotStart { attempts: u32, cause: String },
}

#[derive(Debug)]
pub struct Options {
    pub size: u32,
    pub start_timeout: Duration,
    pub shutdown_grace: Duration,
    /// For the log: what the pool serves on.
    pub listening_on: String,
}

/// Where one worker slot is in its life.
#[derive(Debug)]
enum SlotState {
    /// Spawned, warming up; must say READY before `deadline`.
    Starting { handle: Handle, deadline: Instant },
    /// Ready and accepting connections.
    Running { handle: Handle },
    /// Told to stop; killed at `deadline` if still there.
    Stopping { handle: Handle, deadline: Instant },
    /// Waiting out a back-off before the next start.
    Waiting { until: Instant },
    /// Nothing, and nothing planned (pool shutting down).
    Empty,
}

#[derive(Debug)]
struct Slot {
    number: u32,
    state: SlotState,
    /// When this slot's recent unplanned deaths happened.
    crashes: VecDeque<Instant>,
    /// Failed starts since the last successful one.
    start_failures: u32,
}

impl Slot {
    fn handle(&self) -> Option<&Handle> {
        match &self.state {
            SlotState::Starting { handle, .. }
            | SlotState::Running { handle }
            | SlotState::Stopping { handle, .. } => Some(handle),
            SlotState::Waiting { .. } | SlotState::Empty => None,
        }
    }
}

pub struct Pool {
    spec: Spec,
    options: Options,
    slots: Vec<Slot>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Has every worker been ready at least once (start-up is over)?
    announced: bool,
    ever_ready: bool,
}

impl Pool {
    pub fn new(spec: Spec, options: Options) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let slots = (1..=options.size)
            .map(|number| Slot {
                number,
                state: SlotState::Waiting {
                    until: Instant::now(),
                },
                crashes: VecDeque::new(),
                start_failures: 0,
            })
            .collect();
        Pool {
            spec,
            options,
            slots,
            events_tx,
            events,
            announced: false,
            ever_ready: false,
        }
    }

    /// Runs the pool until `shutdown` turns true, then drains it.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), PoolError> {
        tracing::info!(
            "starting {} worker(s) on {}",
            self.options.size,
            self.options.listening_on
        );
        loop {
            self.start_due();
            let deadline = self.next_deadline();
            tokio::select! {
                Some(event) = self.events.recv() => self.on_event(event)?,
                _ = sleep_until(deadline) => self.on_deadlines(),
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
                self.slots[index].state = SlotState::Starting {
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
                let delay = backoff(slot.start_failures);
                slot.state = SlotState::Waiting {
                    until: Instant::now() + delay,
                };
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|slot| match &slot.state {
                SlotState::Starting { deadline, .. } | SlotState::Stopping { deadline, .. } => {
                    Some(*deadline)
                }
                SlotState::Waiting { until } => Some(*until),
                SlotState::Running { .. } | SlotState::Empty => None,
            })
            .min()
    }

    /// Workers that overran their start-up or stop deadline are killed; their
    /// exit event then takes them through the usual path.
    fn on_deadlines(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            match &slot.state {
                SlotState::Starting { handle, deadline } if *deadline <= now => {
                    tracing::error!(
                        worker = slot.number,
                        worker_pid = handle.pid,
                        "worker did not report ready within {:?}; killing it",
                        self.options.start_timeout
                    );
                    handle.kill();
                    // Not again until it is reaped.
                    let handle = take_handle(&mut slot.state);
                    slot.state = SlotState::Stopping {
                        handle,
                        deadline: now + Duration::from_secs(3600),
                    };
                }
                SlotState::Stopping { handle, deadline } if *deadline <= now => {
                    tracing::warn!(
                        worker = slot.number,
                        worker_pid = handle.pid,
                        "worker still busy after the grace period; killing it"
                    );
                    handle.kill();
                    let handle = take_handle(&mut slot.state);
                    slot.state = SlotState::Stopping {
                        handle,
                        deadline: now + Duration::from_secs(3600),
                    };
                }
                _ => {}
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), PoolError> {
        match event {
            Event::Ready { slot, pid } => self.on_ready(slot, pid),
            Event::Exited(exit) => return self.on_exit(exit),
        }
        Ok(())
    }

    fn on_ready(&mut self, number: u32, pid: u32) {
        let Some(slot) = self.slot_of(number, pid) else {
            return;
        };
        if let SlotState::Starting { .. } = slot.state {
            let handle = take_handle(&mut slot.state);
            slot.state = SlotState::Running { handle };
            slot.start_failures = 0;
            tracing::info!(worker = number, worker_pid = pid, "worker ready");
        }
        self.ever_ready = true;
        if !self.announced
            && self
                .slots
                .iter()
                .all(|slot| matches!(slot.state, SlotState::Running { .. }))
        {
            self.announced = true;
            tracing::info!(
                "ready: {} worker(s) serving FastCGI on {}",
                self.options.size,
                self.options.listening_on
            );
        }
    }

    fn on_exit(&mut self, exit: Exit) -> Result<(), PoolError> {
        let ever_ready = self.ever_ready;
        let Some(slot) = self.slot_of(exit.slot, exit.pid) else {
            return Ok(());
        };
        let how = describe_status(&exit);
        let now = Instant::now();
        let previous = std::mem::replace(&mut slot.state, SlotState::Empty);
        match previous {
            SlotState::Starting { .. } => {
                slot.start_failures += 1;
                let stderr = if exit.stderr_tail.is_empty() {
                    "(it printed nothing on stderr)".to_owned()
                } else {
                    exit.stderr_tail.join("\n")
                };
                tracing::error!(
                    worker = exit.slot,
                    worker_pid = exit.pid,
                    "worker failed to start: {how}; its stderr:\n{stderr}"
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
            }
            SlotState::Running { .. } => {
                if let Some(reason) = &exit.planned {
                    tracing::info!(
                        worker = exit.slot,
                        worker_pid = exit.pid,
                        "worker left ({reason}); replacing it"
                    );
                    slot.state = SlotState::Waiting { until: now };
                } else {
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
                }
            }
            SlotState::Stopping { .. } => {
                tracing::debug!(
                    worker = exit.slot,
                    worker_pid = exit.pid,
                    "worker stopped: {how}"
                );
            }
            SlotState::Waiting { .. } | SlotState::Empty => {}
        }
        Ok(())
    }

    /// The slot whose current worker is `pid`; events of workers already
    /// replaced are ignored.
    fn slot_of(&mut self, number: u32, pid: u32) -> Option<&mut Slot> {
        self.slots
            .iter_mut()
            .find(|slot| slot.number == number && slot.handle().is_some_and(|h| h.pid == pid))
    }

    /// Tells every worker to stop, waits for them up to the grace period,
    /// then kills what is left.
    async fn drain(&mut self) {
        let deadline = Instant::now() + self.options.shutdown_grace;
        let mut alive = 0;
        for slot in &mut self.slots {
            match std::mem::replace(&mut slot.state, SlotState::Empty) {
                SlotState::Starting { handle, .. }
                | SlotState::Running { handle }
                | SlotState::Stopping { handle, .. } => {
                    handle.stop();
                    slot.state = SlotState::Stopping { handle, deadline };
                    alive += 1;
                }
                SlotState::Waiting { .. } | SlotState::Empty => {}
            }
        }
        tracing::info!(
            "stopping {alive} worker(s); requests in progress get {:?} to finish",
            self.options.shutdown_grace
        );
        let mut killed = false;
        while alive > 0 {
            let wait = if killed {
                Instant::now() + Duration::from_secs(5)
            } else {
                deadline
            };
            tokio::select! {
                Some(event) = self.events.recv() => {
                    if let Event::Exited(exit) = event {
                        if let Some(slot) = self.slot_of(exit.slot, exit.pid) {
                            slot.state = SlotState::Empty;
                            alive -= 1;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wait) => {
                    if killed {
                        tracing::error!("{alive} worker(s) did not exit even after SIGKILL");
                        return;
                    }
                    for slot in &self.slots {
                        if let Some(handle) = slot.handle() {
                            tracing::warn!(
                                worker = slot.number,
                                worker_pid = handle.pid,
                                "still running after the grace period; killing it"
                            );
                            handle.kill();
                        }
                    }
                    killed = true;
                }
            }
        }
        tracing::info!("all workers stopped");
    }
}

fn take_handle(state: &mut SlotState) -> Handle {
    match std::mem::replace(state, SlotState::Empty) {
        SlotState::Starting { handle, .. }
        | SlotState::Running { handle }
        | SlotState::Stopping { handle, .. } => handle,
        SlotState::Waiting { .. } | SlotState::Empty => {
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
