//! Every [`SCAN_EVERY`]: read the scoreboard, apply what the policies
//! decide ([`policy`], [`scale`]), and publish the status report.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::life::{EndReason, Life, RecycleCause};
use super::policy::{self, Action, Seen, TERMINATE_GRACE};
use super::scale::{Census, Scale};
#[cfg(doc)]
use super::{policy::SCAN_EVERY, scale};
use super::{Phase, Pool, Slot, Successor};
use crate::config::ProcessManager;
use crate::scoreboard::{monotonic_ns, Snapshot, State};
use crate::status::stats::{Restart, Shape};

impl Pool {
    /// Reads every ready worker's slot, applies the policies, resizes a
    /// dynamic pool and publishes the report.
    pub(super) fn scan(&mut self) {
        let now_ns = monotonic_ns();
        for (index, snapshot, actions) in self.read_board(now_ns) {
            for action in actions {
                self.apply(index, &snapshot, action);
            }
        }
        let queue = crate::queue::read(self.config.spec.listener.as_fd()).ok();
        if matches!(self.phase, Phase::Serving) {
            self.scale(now_ns, queue.map_or(0, |q| q.waiting));
        }
        self.publish(now_ns, queue);
    }

    /// Reads the slots of the current workers (ready, or being ended, whose
    /// last request explains their end) and says what the policies want
    /// done about the ready ones.
    fn read_board(&mut self, now_ns: u64) -> Vec<(usize, Snapshot, Vec<Action>)> {
        let Some(board) = &self.board else {
            return Vec::new();
        };
        let rules = &self.config.supervision;
        let mut todo = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let replacing = slot.successor.is_some();
            let Some(worker) = slot.worker_mut() else {
                continue;
            };
            if !matches!(worker.life, Life::Ready | Life::Ending { .. }) {
                continue;
            }
            let Some(snapshot) = worker.handle.board_slot.and_then(|i| board.read(i)) else {
                continue;
            };
            if worker.life.is_ready() {
                let seen = Seen {
                    last: worker.last.as_ref(),
                    slow_logged: worker.slow_logged,
                    request_limit: worker.request_limit,
                    replacing,
                };
                let cgroup = worker.handle.cgroup.as_deref();
                let memory = || cgroup.and_then(|c| c.memory_current());
                let actions = policy::decide(rules, &seen, &snapshot, now_ns, memory);
                if !actions.is_empty() {
                    todo.push((index, snapshot.clone(), actions));
                }
            }
            worker.last = Some(snapshot);
        }
        todo
    }

    fn apply(&mut self, index: usize, snapshot: &Snapshot, action: Action) {
        let Some(worker) = self.slots[index].worker_mut() else {
            return;
        };
        let (number, pid) = (worker.handle.slot, worker.handle.pid);
        let (method, uri) = (snapshot.method.as_str(), snapshot.uri.as_str());
        match action {
            Action::LogSlow { busy_for, limit } => {
                worker.slow_logged = Some(snapshot.started_ns);
                self.stats.slow_request();
                tracing::warn!(
                    worker = number,
                    worker_pid = pid,
                    request_method = method,
                    request_uri = uri,
                    "slow request: {method} {uri} running for {:.1} s \
                     (request_slowlog_timeout={limit:?})",
                    busy_for.as_secs_f64()
                );
            }
            Action::Terminate { busy_for, limit } => {
                if worker.terminate(Instant::now() + TERMINATE_GRACE).is_ok() {
                    tracing::error!(
                        worker = number,
                        worker_pid = pid,
                        request_method = method,
                        request_uri = uri,
                        "{method} {uri} ran {:.1} s, past request_terminate_timeout={limit:?}; \
                         stopping its worker",
                        busy_for.as_secs_f64()
                    );
                }
            }
            Action::Recycle(cause) => {
                self.stats.restarted(Restart::Recycle);
                self.recycle(index, cause);
            }
        }
    }

    /// Replaces a healthy worker gracefully: its successor warms up first,
    /// then it finishes its request and leaves (the reload hand-over).
    fn recycle(&mut self, index: usize, cause: RecycleCause) {
        let number = self.slots[index].number;
        match self.spawn_worker(number) {
            Ok(worker) => {
                tracing::info!(worker = number, "recycling worker ({cause})");
                self.slots[index].successor = Some(Successor {
                    worker,
                    replaces: EndReason::Recycled(cause),
                });
            }
            Err(e) => tracing::error!(worker = number, "cannot start a replacement: {e}"),
        }
    }

    /// Applies the dynamic pool's decision, if it makes one.
    pub(super) fn scale(&mut self, now_ns: u64, waiting: u32) {
        let census = self.census(now_ns, waiting);
        match self.scaler.decide(&self.config.supervision.pm, &census) {
            Some(Scale::Grow {
                number,
                max_children,
                idle,
                waiting,
            }) => {
                tracing::info!(
                    "{idle} idle worker(s), {waiting} connection(s) waiting: starting worker \
                     {number} ({number}/{max_children})"
                );
                self.slots.push(Slot::new(number));
            }
            Some(Scale::AtMaxChildren {
                max_children,
                waiting,
            }) => {
                self.stats.max_children_reached();
                tracing::warn!(
                    "max_children reached ({max_children}): every worker is busy and \
                     {waiting} connection(s) wait; raise max_children if this persists"
                );
            }
            Some(Scale::Shrink { idle, idle_timeout }) => {
                let slot = self
                    .slots
                    .pop()
                    .expect("the policy shrinks only beyond workers");
                tracing::info!(
                    worker = slot.number,
                    "retiring idle worker {} (idle over {idle_timeout:?}, {idle} idle)",
                    slot.number
                );
                for worker in slot.into_workers() {
                    self.leave(worker, EndReason::ScaledDown);
                }
            }
            None => {}
        }
    }

    fn census(&self, now_ns: u64, waiting: u32) -> Census {
        let idle_since = |slot: &Slot| {
            let worker = slot.worker().filter(|w| w.life.is_ready())?;
            let last = worker.last.as_ref().filter(|l| l.state == State::Idle)?;
            Some(last.last_finished_ns)
        };
        let count = |f: &dyn Fn(&Slot) -> bool| self.slots.iter().filter(|s| f(s)).count() as u32;
        Census {
            idle: count(&|s| idle_since(s).is_some()),
            warming: count(&|s| !s.is_ready() || s.successor.is_some()),
            size: self.slots.len() as u32,
            base_size: self.config.options.size,
            waiting,
            newest_idle_for: self
                .slots
                .last()
                .and_then(idle_since)
                .map(|since| Duration::from_nanos(now_ns.saturating_sub(since))),
        }
    }

    /// Hands the status page a fresh report.
    fn publish(&mut self, now_ns: u64, queue: Option<crate::queue::Queue>) {
        let shape = Shape {
            pool: &self.config.options.listening_on,
            process_manager: match self.config.supervision.pm {
                ProcessManager::Static => "static",
                ProcessManager::Dynamic { .. } => "dynamic",
            },
            cgroups: match (&self.cgroups_off, &self.config.spec.cgroups) {
                (Some(why), _) => format!("off: {why}"),
                (None, Some(tree)) => format!("on ({})", tree.root().display()),
                (None, None) => "off".into(),
            },
        };
        let workers = self.slots.iter().filter_map(Slot::worker).map(|w| w.view());
        let report = self.stats.report(shape, workers, queue, now_ns);
        self.reports.send_replace(Arc::new(report));
    }

    /// `max_requests` plus a random share of the jitter.
    pub(super) fn request_limit(&self) -> u64 {
        policy::request_limit(&self.config.supervision, monotonic_ns())
    }
}
