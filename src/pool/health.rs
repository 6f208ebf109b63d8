//! Telling the truth about the pool: the watchdog ping and `STATUS=`, and
//! the designed stop (tell every worker, wait out the grace, then kill).

use std::time::Duration;

use tokio::time::Instant;

use super::restart::STORM_WINDOW;
use super::{Event, Phase, Pool, SlotState, OVERDUE};

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

    pub(super) fn status_text(&self) -> String {
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
        if let Some(load) = self.load_text() {
            text.push_str(": ");
            text.push_str(&load);
        }
        for (number, what) in &self.starting {
            text.push_str(&format!("; worker {number}: {what}"));
        }
        if self.cgroups_off.is_some() {
            text.push_str("; per-worker cgroups off");
        }
        // Slots waiting out a pause, and why: the operator's first question.
        let now = Instant::now();
        let waiting: Vec<String> = self
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Waiting { until } if until > now))
            .map(|s| match s.history.start_failures() {
                0 => format!(
                    "worker {} ({} deaths in {STORM_WINDOW:?}, fork storm guard)",
                    s.number,
                    s.history.recent_deaths(now)
                ),
                n => format!("worker {} cannot start ({n} failures)", s.number),
            })
            .collect();
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

    /// Tells every worker to stop, waits for them up to the grace period,
    /// then kills what is left.
    pub(super) async fn drain(&mut self) {
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
        // What pages detached from their workers goes with them.
        self.sweep_orphans();
        self.flush_logs(Instant::now() + crate::worker::LOG_WINDOW);
        tracing::info!("all workers stopped");
    }
}
