//! Telling the truth about the pool: the watchdog ping and `STATUS=`, and
//! the designed stop (serve on through the drain delay while `/ready` says
//! 503, then tell every worker, wait out the grace, then kill).

use std::time::Duration;

use tokio::time::Instant;

use crate::scoreboard::State;

use super::life::{EndReason, Life, Worker};
use super::restart::STORM_WINDOW;
use super::{Event, Phase, Pool, Slot, Stop, OVERDUE};

impl Pool {
    /// `WATCHDOG=1`, but only while the supervisor does its job. Sent from
    /// this loop, so a stuck loop stops it by itself. Withheld when the
    /// pool's own timers are overdue: replacements not started, or hung
    /// workers not killed, mean reaping and replacing are broken and a
    /// restart by systemd is the cure. Never withheld because workers crash
    /// or start slowly: back-off handles those, and a restart would only
    /// repeat them (a restart storm).
    pub(super) fn watchdog(&mut self) {
        let now = Instant::now();
        let overdue = self.slots.iter().any(|slot| slot.overdue(now, OVERDUE))
            || self.leaving.iter().any(|w| w.life.overdue(now, OVERDUE));
        if overdue {
            tracing::error!("supervisor timers are overdue; withholding the watchdog ping");
        } else {
            self.notifier.watchdog();
        }
    }

    /// A stop was asked: whether the workers are to be told now. The first
    /// one starts the drain delay instead, when there is one and some
    /// worker is ready (with none, `/ready` has been 503 already and no
    /// worker could serve what a balancer still sent: nothing to wait for).
    pub(super) fn stop_now(&mut self, stop: Stop) -> bool {
        let delay = self.config.options.drain_delay;
        match stop {
            Stop::No => false,
            Stop::Now if self.drain_until.is_some() => {
                tracing::info!("drain delay cut short");
                true
            }
            Stop::Draining if self.drain_until.is_some() => false,
            Stop::Draining if !delay.is_zero() && self.slots.iter().any(Slot::is_ready) => {
                self.drain_until = Some(Instant::now() + delay);
                tracing::info!(
                    "/ready answers 503 from now; the workers serve on for {delay:?} \
                     (drain_delay) so that load balancers stop sending first, then stop \
                     (another SIGTERM or SIGINT: at once)"
                );
                false
            }
            Stop::Draining | Stop::Now => true,
        }
    }

    pub(super) fn status_text(&self) -> String {
        let ready = self.slots.iter().filter(|s| s.is_ready()).count();
        let size = self.slots.len();
        let mut text = match self.drain_until {
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                format!(
                    "stopping in {}s (drain_delay, /ready 503): ",
                    left.as_secs() + 1
                )
            }
            None => String::new(),
        };
        text += &match self.phase {
            Phase::Starting => format!("starting workers: {ready}/{size} ready"),
            Phase::Serving => format!("{ready}/{size} workers ready"),
            Phase::Reloading { .. } => {
                let generation = self.generation;
                let done = self
                    .slots
                    .iter()
                    .filter(|s| s.worker().is_some_and(|w| w.generation == generation))
                    .count();
                format!("{ready}/{size} workers ready; reloading: {done}/{size} replaced")
            }
        };
        if self.board.is_some() {
            let slots = self.slots.iter().filter_map(|s| s.worker()?.last.as_ref());
            text.push_str(": ");
            text.push_str(&self.stats.load_text(slots));
        }
        for slot in &self.slots {
            for worker in slot.workers() {
                if let Life::Spawning {
                    doing: Some(what), ..
                } = &worker.life
                {
                    text.push_str(&format!("; worker {}: {what}", slot.number));
                }
            }
        }
        if self.cgroups_off.is_some() {
            text.push_str("; per-worker cgroups off");
        }
        let waiting = backing_off(&self.slots, Instant::now());
        if !waiting.is_empty() {
            text.push_str("; backing off: ");
            text.push_str(&waiting.join(", "));
        }
        text
    }

    /// Says what the log limiter suppressed in windows that are over at
    /// `at` (a stop passes a time beyond every window: nothing goes unsaid).
    pub(super) fn flush_logs(&self, at: Instant) {
        let ended = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .flush(at);
        for summary in &ended {
            crate::worker::log_summary(summary);
        }
    }

    pub(super) fn update_status(&self) {
        self.notifier.status(&self.status_text());
    }

    /// Whether `worker` is still warming up for sure: it has not said READY
    /// and its scoreboard slot, which it marks idle before it says READY and
    /// before its first accept, says starting too (a READY on its way, or
    /// not yet read, cannot hide a worker that serves already).
    fn still_starting(&self, worker: &Worker) -> bool {
        if !matches!(worker.life, Life::Spawning { .. }) {
            return false;
        }
        match (self.board.as_ref(), worker.handle.board_slot) {
            (Some(board), Some(slot)) => board
                .read(slot)
                .is_some_and(|s| matches!(s.state, State::Starting | State::Free)),
            _ => true,
        }
    }

    /// Tells every worker to stop, waits for them up to the grace period,
    /// then kills what is left. A worker still starting holds no request
    /// (it accepts only once warm), so it is killed at once rather than
    /// waited for: a stop while one warms up would otherwise take the
    /// whole grace period.
    pub(super) async fn drain(&mut self) {
        self.notifier.stopping();
        let grace = self.config.options.shutdown_grace;
        let now = Instant::now();
        for slot in std::mem::take(&mut self.slots) {
            for worker in slot.into_workers() {
                let starting = self.still_starting(&worker);
                self.leave(worker, EndReason::Shutdown);
                if let Some(worker) = self.leaving.last_mut().filter(|_| starting) {
                    let _ = worker.kill(now);
                    tracing::info!(
                        worker = worker.handle.slot,
                        worker_pid = worker.handle.pid,
                        "worker still starting: killed, it holds no request"
                    );
                }
            }
        }
        tracing::info!(
            "stopping {} worker(s); requests in progress get {grace:?} to finish",
            self.leaving.len()
        );
        let give_up = Instant::now() + grace + Duration::from_secs(5);
        while !self.leaving.is_empty() {
            let deadline = self.next_deadline().unwrap_or(give_up).min(give_up);
            tokio::select! {
                Some(event) = self.events.recv() => {
                    if let Event::Exited(exit) = event {
                        self.leaving.retain(|w| w.handle.pid != exit.pid);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= give_up {
                        tracing::error!(
                            "{} worker(s) did not exit even after SIGKILL",
                            self.leaving.len()
                        );
                        return;
                    }
                    self.on_deadlines();
                }
            }
        }
        // What pages detached from their workers goes with them.
        self.sweep_orphans();
        self.flush_logs(Instant::now() + crate::worker::LOG_WINDOW);
        tracing::info!("all workers stopped");
    }
}

/// Slots waiting out a pause, and why: the operator's first question.
fn backing_off(slots: &[Slot], now: Instant) -> Vec<String> {
    slots
        .iter()
        .filter(|s| s.start_at().is_some_and(|at| at > now))
        .map(|s| match s.history.start_failures() {
            0 => format!(
                "worker {} ({} deaths in {STORM_WINDOW:?}, fork storm guard)",
                s.number,
                s.history.recent_deaths(now)
            ),
            n => format!("worker {} cannot start ({n} failures)", s.number),
        })
        .collect()
}
