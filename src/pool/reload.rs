//! Reloading: a new configuration rolls out worker by worker, each new
//! worker warm before the old one it replaces is told to leave, so the pool
//! never serves with fewer ready workers; recycling a worker uses the same
//! hand-over.

use std::sync::Arc;

use tokio::time::Instant;

use super::exits::{describe_status, stderr_text};
use super::{Phase, Pool, Reload, Slot, SlotState, START_ATTEMPTS};
use crate::worker::Exit;

impl Pool {
    /// Takes a new configuration: validated already, it is rolled out slot
    /// by slot so that the pool never serves with fewer ready workers.
    pub(super) fn begin_reload(&mut self, reload: Reload) {
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
    pub(super) fn resize(&mut self) {
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
    pub(super) fn advance_reload(&mut self) {
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
                match self.spawn_worker(number) {
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
    /// workers and the old configuration.
    pub(super) fn abort_reload(&mut self) {
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
            // Its running worker was ready all along.
            slot.history.ready();
        }
        self.resize();
        self.phase = Phase::Serving;
        let status = self.status_text();
        self.notifier.ready(&status);
    }
}
