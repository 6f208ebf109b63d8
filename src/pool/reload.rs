//! Reloading: a new configuration rolls out worker by worker, each new
//! worker warm before the old one it replaces is told to leave, so the pool
//! never serves with fewer ready workers; recycling a worker uses the same
//! hand-over. Everything the configuration holds applies: the worker spec,
//! the pool's shape, and the policies (request timeouts, recycling, the
//! process manager) from the moment the reload begins.

use super::exits::{describe_status, stderr_text};
use super::life::EndReason;
use super::{Config, Phase, Pool, Slot, Successor, START_ATTEMPTS};
use crate::worker::Exit;

impl Pool {
    /// Takes a new configuration: validated already, it is rolled out slot
    /// by slot so that the pool never serves with fewer ready workers.
    pub(super) fn begin_reload(&mut self, config: Config) {
        if matches!(self.phase, Phase::Reloading { .. }) {
            tracing::warn!("reload requested while a reload is in progress; starting over");
        }
        self.notifier.reloading();
        let old = std::mem::replace(&mut self.config, config);
        // A reload in progress keeps the configuration it would fall back
        // to: the last one that was serving.
        let previous = match std::mem::replace(&mut self.phase, Phase::Serving) {
            Phase::Reloading { previous } => previous,
            Phase::Starting | Phase::Serving => Box::new(old),
        };
        self.phase = Phase::Reloading { previous };
        self.generation += 1;
        self.resize();
        tracing::info!(
            "reloading: rolling {} worker(s) over to configuration generation {}",
            self.config.options.size,
            self.generation
        );
    }

    /// Grows or shrinks the pool to the configured size.
    pub(super) fn resize(&mut self) {
        let size = self.config.options.size as usize;
        while self.slots.len() < size {
            let number = self.slots.len() as u32 + 1;
            self.slots.push(Slot::new(number));
        }
        while self.slots.len() > size {
            let slot = self.slots.pop().expect("more slots than wanted");
            for worker in slot.into_workers() {
                self.leave(worker, EndReason::ScaledDown);
            }
        }
    }

    /// One slot at a time: start a new-generation worker next to an old one.
    pub(super) fn advance_reload(&mut self) {
        if !matches!(self.phase, Phase::Reloading { .. })
            || self.slots.iter().any(|s| s.successor.is_some())
        {
            return;
        }
        let generation = self.generation;
        let of_this_generation =
            |slot: &Slot| slot.worker().is_some_and(|w| w.generation == generation);
        let old = self
            .slots
            .iter()
            .position(|s| s.is_ready() && !of_this_generation(s));
        match old {
            Some(index) => {
                let number = self.slots[index].number;
                match self.spawn_worker(number) {
                    Ok(worker) => {
                        self.slots[index].successor = Some(Successor {
                            worker,
                            replaces: EndReason::Retired,
                        });
                    }
                    Err(e) => {
                        tracing::error!(worker = number, "reload: cannot start a new worker: {e}");
                        self.abort_reload();
                    }
                }
            }
            None if self
                .slots
                .iter()
                .all(|s| s.is_ready() && of_this_generation(s)) =>
            {
                self.phase = Phase::Serving;
                tracing::info!("reload complete: generation {generation} serving");
                let status = self.status_text();
                self.notifier.ready(&status);
            }
            // Some slot is still starting or backing off; wait for it.
            None => {}
        }
    }

    pub(super) fn successor_failed(&mut self, index: usize, exit: &Exit) {
        let how = describe_status(exit);
        tracing::error!(
            worker = exit.slot,
            worker_pid = exit.pid,
            "reload: new worker failed to start: {how}; its stderr:\n{}",
            stderr_text(exit)
        );
        let slot = &mut self.slots[index];
        if slot.history.start_failed() >= START_ATTEMPTS {
            self.abort_reload();
        }
    }

    /// The new configuration cannot start workers: keep serving with the old
    /// workers and the old configuration, policies included.
    pub(super) fn abort_reload(&mut self) {
        let previous = match std::mem::replace(&mut self.phase, Phase::Serving) {
            Phase::Reloading { previous } => previous,
            other => {
                self.phase = other;
                return;
            }
        };
        tracing::error!(
            "reload aborted: the new configuration cannot start workers; \
             still serving with the previous one"
        );
        self.config = *previous;
        self.generation += 1;
        let generation = self.generation;
        for slot in &mut self.slots {
            if let Some(worker) = slot.worker_mut() {
                worker.generation = generation;
            }
            // Its running worker was ready all along.
            slot.history.ready();
        }
        self.resize();
        let status = self.status_text();
        self.notifier.ready(&status);
    }
}
