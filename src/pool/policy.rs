//! Policies that read the scoreboard: request timeouts, the slow-request
//! log, recycling by request count or memory, and the live counts in
//! `STATUS=`. Names follow PHP-FPM's where they mean the same.

use std::time::Duration;

use tokio::time::Instant;

use std::os::fd::AsFd;

use std::sync::Arc;

use super::{Ending, Phase, Pool, Slot, SlotState};
use crate::config::ProcessManager;
use crate::scoreboard::{monotonic_ns, State};
use crate::status::report::{micros, Report, WorkerReport};

/// How often the scoreboard is read.
pub const SCAN_EVERY: Duration = Duration::from_millis(100);
/// Between SIGTERM to a worker over its request timeout and killing its
/// whole cgroup.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);

impl Pool {
    /// `max_requests` plus a random share of the jitter, drawn per worker so
    /// that workers started together do not all recycle together.
    pub(super) fn request_limit(&self) -> u64 {
        let s = &self.supervision;
        if s.max_requests == 0 {
            return 0;
        }
        let jitter = if s.max_requests_jitter == 0 {
            0
        } else {
            // Good enough randomness for spreading restarts.
            monotonic_ns().wrapping_mul(0x9E37_79B9_7F4A_7C15) % (s.max_requests_jitter + 1)
        };
        s.max_requests + jitter
    }

    /// Reads every running worker's slot and applies the policies.
    pub(super) fn scan(&mut self) {
        let Some(board) = &self.board else {
            return;
        };
        let now_ns = monotonic_ns();
        let now = Instant::now();
        let supervision = self.supervision.clone();
        let mut recycle = Vec::new();
        let mut slow = 0;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let SlotState::Running { handle } = &slot.state else {
                continue;
            };
            let Some(snapshot) = handle.board_slot.and_then(|i| board.read(i)) else {
                continue;
            };
            // A request finished since the last scan; on the first scan of a
            // worker, any request it has served counts (a short one can come
            // and go in the 100 ms before that scan).
            let finished_one = slot.last.as_ref().map_or(snapshot.requests > 0, |last| {
                snapshot.requests > last.requests
            });
            if let Some(busy_for) = snapshot.busy_for(now_ns) {
                if let Some(limit) = supervision.request_slowlog_timeout {
                    if busy_for > limit && slot.slow_logged != Some(snapshot.started_ns) {
                        slot.slow_logged = Some(snapshot.started_ns);
                        slow += 1;
                        tracing::warn!(
                            worker = slot.number,
                            worker_pid = handle.pid,
                            request_method = snapshot.method.as_str(),
                            request_uri = snapshot.uri.as_str(),
                            "slow request: {} {} running for {:.1} s (request_slowlog_timeout={limit:?})",
                            snapshot.method,
                            snapshot.uri,
                            busy_for.as_secs_f64()
                        );
                    }
                }
                if let Some(limit) = supervision.request_terminate_timeout {
                    if busy_for > limit && slot.ending.is_none() {
                        tracing::error!(
                            worker = slot.number,
                            worker_pid = handle.pid,
                            request_method = snapshot.method.as_str(),
                            request_uri = snapshot.uri.as_str(),
                            "{} {} ran {:.1} s, past request_terminate_timeout={limit:?}; \
                             stopping its worker",
                            snapshot.method,
                            snapshot.uri,
                            busy_for.as_secs_f64()
                        );
                        handle.terminate();
                        slot.ending = Some(Ending {
                            reason: "request_terminate_timeout".into(),
                            kill_at: Some(now + TERMINATE_GRACE),
                        });
                    }
                }
            }
            if let Some(Ending {
                kill_at: Some(at), ..
            }) = &slot.ending
            {
                if *at <= now {
                    handle.kill();
                }
            }
            if slot.ending.is_none() && slot.successor.is_none() {
                if slot.request_limit > 0 && snapshot.requests >= slot.request_limit {
                    recycle.push((index, format!("max_requests: served {}", snapshot.requests)));
                } else if let (Some(limit), true) = (supervision.recycle_memory, finished_one) {
                    let current = handle.cgroup.as_ref().and_then(|c| c.memory_current());
                    if let Some(current) = current.filter(|c| *c > limit) {
                        recycle.push((
                            index,
                            format!(
                                "recycle_memory: {} in use after a request, limit {}",
                                approx_size(current),
                                crate::cgroup::format_size(limit)
                            ),
                        ));
                    }
                }
            }
            slot.last = Some(snapshot);
        }
        self.slow_requests += slow;
        for (index, reason) in recycle {
            self.restarts.recycle += 1;
            self.recycle(index, reason);
        }
        let queue = crate::queue::read(self.spec.listener.as_fd()).ok();
        self.scale(now_ns, queue.map_or(0, |q| q.waiting));
        self.publish(now_ns, queue);
    }

    /// Hands the status page a fresh report.
    fn publish(&mut self, now_ns: u64, queue: Option<crate::queue::Queue>) {
        let queue = queue.unwrap_or_default();
        self.max_listen_queue = self.max_listen_queue.max(queue.waiting);
        let mut report = Report {
            pool: self.options.listening_on.clone(),
            process_manager: match self.supervision.pm {
                ProcessManager::Static => "static",
                ProcessManager::Dynamic { .. } => "dynamic",
            },
            listen_queue: queue.waiting,
            max_listen_queue: self.max_listen_queue,
            listen_queue_len: queue.backlog,
            max_children_reached: self.max_children_reached,
            slow_requests: self.slow_requests,
            restarts: self.restarts.clone(),
            cgroups: match (&self.cgroups_off, &self.spec.cgroups) {
                (Some(why), _) => format!("off: {why}"),
                (None, Some(tree)) => format!("on ({})", tree.root().display()),
                (None, None) => "off".into(),
            },
            started_at: Some(self.started_at),
            ..Report::default()
        };
        let mut accepted = self.retired_requests;
        let mut workers = Vec::new();
        for slot in &self.slots {
            let Some(handle) = slot.handle() else {
                continue;
            };
            let last = slot.last.as_ref();
            let state = match (&slot.state, last.map(|l| l.state)) {
                (SlotState::Starting { .. }, _) => "starting",
                (_, Some(State::Busy)) => "busy",
                (_, Some(State::Idle)) => "idle",
                (_, Some(State::Stopping)) => "stopping",
                _ => "starting",
            };
            match state {
                "busy" => report.active_processes += 1,
                "idle" => report.idle_processes += 1,
                _ => {}
            }
            report.total_processes += 1;
            if let Some(last) = last {
                // A request in progress has been accepted too.
                accepted += last.requests + u64::from(last.state == State::Busy);
            }
            workers.push(WorkerReport {
                number: slot.number,
                pid: handle.pid,
                state,
                requests: last.map_or(0, |l| l.requests),
                uptime_secs: handle.started.elapsed().as_secs(),
                request_method: last.map(|l| l.method.clone()).unwrap_or_default(),
                request_uri: last.map(|l| l.uri.clone()).unwrap_or_default(),
                request_duration_us: last
                    .map(|l| micros(l.busy_for(now_ns).unwrap_or(l.last_duration)))
                    .unwrap_or(0),
                memory_current: None,
                cpu_seconds: None,
                cgroup: handle.cgroup.as_ref().map(|c| c.path.clone()),
            });
        }
        self.max_active = self.max_active.max(report.active_processes);
        report.max_active_processes = self.max_active;
        report.accepted_conn = accepted;
        report.processes = Some(workers);
        self.reports.send_replace(Arc::new(report));
    }

    /// `pm = dynamic`: a worker more when every worker is busy and
    /// connections wait in the listen queue (or spare workers run short), up
    /// to `max_children`; the newest extra worker retired once it has idled
    /// for `idle_timeout` while there are more than `max_spare` idle.
    fn scale(&mut self, now_ns: u64, waiting: u32) {
        let ProcessManager::Dynamic {
            max_children,
            min_spare,
            max_spare,
            idle_timeout,
        } = self.supervision.pm
        else {
            return;
        };
        if self.phase != Phase::Serving {
            return;
        }
        let idle_since = |slot: &Slot| match (&slot.state, &slot.last) {
            (SlotState::Running { .. }, Some(last)) if last.state == State::Idle => {
                Some(last.last_finished_ns)
            }
            _ => None,
        };
        let idle = self
            .slots
            .iter()
            .filter(|s| idle_since(s).is_some())
            .count() as u32;
        let warming = self
            .slots
            .iter()
            .filter(|s| !matches!(s.state, SlotState::Running { .. }) || s.successor.is_some())
            .count() as u32;
        let size = self.slots.len() as u32;
        if idle > 0 {
            self.at_max_children = false;
        }
        if warming == 0 && ((idle == 0 && waiting > 0) || idle < min_spare) {
            if size < max_children {
                tracing::info!(
                    "{idle} idle worker(s), {waiting} connection(s) waiting: starting worker {} \
                     ({}/{max_children})",
                    size + 1,
                    size + 1
                );
                self.slots.push(Slot::new(size + 1, self.generation));
            } else if waiting > 0 && !self.at_max_children {
                self.at_max_children = true;
                self.max_children_reached += 1;
                tracing::warn!(
                    "max_children reached ({max_children}): every worker is busy and \
                     {waiting} connection(s) wait; raise max_children if this persists"
                );
            }
            return;
        }
        if idle > max_spare && size > self.options.size {
            let newest = self.slots.last().expect("size > options.size >= 1");
            let idle_for = idle_since(newest).map(|t| now_ns.saturating_sub(t));
            if idle_for.is_some_and(|ns| ns > idle_timeout.as_nanos() as u64) {
                let slot = self.slots.pop().expect("checked above");
                tracing::info!(
                    worker = slot.number,
                    "retiring idle worker {} (idle over {idle_timeout:?}, {idle} idle)",
                    slot.number
                );
                if let Some(last) = &slot.last {
                    self.retired_requests += last.requests;
                }
                if let SlotState::Running { handle } = slot.state {
                    self.retire(handle, self.options.shutdown_grace);
                }
            }
        }
    }

    /// Replaces a healthy worker gracefully: its successor warms up first,
    /// then it finishes its request and leaves (the reload hand-over).
    fn recycle(&mut self, index: usize, reason: String) {
        let number = self.slots[index].number;
        match self.spawn_worker(number) {
            Ok(handle) => {
                tracing::info!(worker = number, "recycling worker ({reason})");
                let deadline = Instant::now() + self.options.start_timeout;
                self.slots[index].successor = Some((handle, deadline));
            }
            Err(e) => tracing::error!(worker = number, "cannot start a replacement: {e}"),
        }
    }

    /// "1 idle, 1 busy; 1234 requests", from the last scan.
    pub(super) fn load_text(&self) -> Option<String> {
        self.board.as_ref()?;
        let (mut idle, mut busy, mut requests) = (0, 0, self.retired_requests);
        for slot in &self.slots {
            if let Some(last) = &slot.last {
                requests += last.requests;
                match last.state {
                    State::Idle => idle += 1,
                    State::Busy => busy += 1,
                    _ => {}
                }
            }
        }
        Some(format!("{idle} idle, {busy} busy; {requests} requests"))
    }
}

/// "606.7M" for a measured byte count (exact units like "512M" as written).
fn approx_size(bytes: u64) -> String {
    if bytes % (1 << 20) == 0 || bytes < (1 << 20) {
        crate::cgroup::format_size(bytes)
    } else {
        format!("{:.1}M", bytes as f64 / f64::from(1 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::approx_size;

    #[test]
    fn measured_sizes_read_in_mebibytes() {
        assert_eq!(approx_size(621_236 << 10), "606.7M");
        assert_eq!(approx_size(512 << 20), "512M");
        assert_eq!(approx_size(1000), "1000");
    }
}
