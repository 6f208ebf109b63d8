//! A worker slot: the place one of the pool's `N` workers fills. It holds
//! its current worker (or, between two, when the next one starts), the
//! successor warming up to take over from it (a reload, a recycle), and
//! the history the restart policy judges it by.

use std::time::Duration;

use tokio::time::Instant;

use super::life::{EndReason, Worker};
use super::restart::History;

#[derive(Debug)]
pub struct Slot {
    pub number: u32,
    pub current: Current,
    pub successor: Option<Successor>,
    /// Its failed starts and recent deaths, for the restart policy.
    pub history: History,
}

/// A slot's own worker.
// A vacant slot is rare and short-lived, and a pool has a few slots:
// boxing the worker would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Current {
    /// No worker: the next one starts at `start_at` (now, or after a pause
    /// the restart policy chose).
    Vacant {
        start_at: Instant,
    },
    Worker(Worker),
}

/// A worker warming up next to the current one, and why the current one
/// leaves once it is ready.
#[derive(Debug)]
pub struct Successor {
    pub worker: Worker,
    pub replaces: EndReason,
}

impl Slot {
    /// A slot whose first worker starts at once.
    pub fn new(number: u32) -> Self {
        Slot {
            number,
            current: Current::Vacant {
                start_at: Instant::now(),
            },
            successor: None,
            history: History::default(),
        }
    }

    pub fn worker(&self) -> Option<&Worker> {
        match &self.current {
            Current::Worker(worker) => Some(worker),
            Current::Vacant { .. } => None,
        }
    }

    pub fn worker_mut(&mut self) -> Option<&mut Worker> {
        match &mut self.current {
            Current::Worker(worker) => Some(worker),
            Current::Vacant { .. } => None,
        }
    }

    /// Its current worker is ready.
    pub fn is_ready(&self) -> bool {
        self.worker().is_some_and(|w| w.life.is_ready())
    }

    /// When its next worker starts, if it has none.
    pub fn start_at(&self) -> Option<Instant> {
        match self.current {
            Current::Vacant { start_at } => Some(start_at),
            Current::Worker(_) => None,
        }
    }

    /// Its workers: the current one, then the successor.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.worker()
            .into_iter()
            .chain(self.successor.as_ref().map(|s| &s.worker))
    }

    pub fn workers_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        let current = match &mut self.current {
            Current::Worker(worker) => Some(worker),
            Current::Vacant { .. } => None,
        };
        current
            .into_iter()
            .chain(self.successor.as_mut().map(|s| &mut s.worker))
    }

    /// Its workers, taken out of the slot (which is being dropped).
    pub fn into_workers(self) -> impl Iterator<Item = Worker> {
        let current = match self.current {
            Current::Worker(worker) => Some(worker),
            Current::Vacant { .. } => None,
        };
        current.into_iter().chain(self.successor.map(|s| s.worker))
    }

    /// Takes out the current worker if it is `pid`, leaving the slot vacant
    /// from `now` (the caller then says when the next one starts).
    pub fn take_worker(&mut self, pid: u32, now: Instant) -> Option<Worker> {
        if self.worker().is_none_or(|w| w.handle.pid != pid) {
            return None;
        }
        match std::mem::replace(&mut self.current, Current::Vacant { start_at: now }) {
            Current::Worker(worker) => Some(worker),
            Current::Vacant { .. } => None,
        }
    }

    /// The earliest time the pool must act on this slot.
    pub fn deadline(&self) -> Option<Instant> {
        self.start_at()
            .into_iter()
            .chain(self.workers().filter_map(|w| w.life.deadline()))
            .min()
    }

    /// Whether the pool missed one of this slot's deadlines by more than
    /// `by`.
    pub fn overdue(&self, now: Instant, by: Duration) -> bool {
        self.start_at()
            .is_some_and(|at| now.saturating_duration_since(at) > by)
            || self.workers().any(|w| w.life.overdue(now, by))
    }
}
