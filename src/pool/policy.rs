//! Policies that read the scoreboard: request timeouts, the slow-request
//! log, recycling by request count or memory, and the live counts in
//! `STATUS=`. Names follow PHP-FPM's where they mean the same.

use std::time::Duration;

use tokio::time::Instant;

use super::{Ending, Pool, SlotState};
use crate::scoreboard::{monotonic_ns, State};

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
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let SlotState::Running { handle } = &slot.state else {
                continue;
            };
            let Some(snapshot) = handle.board_slot.and_then(|i| board.read(i)) else {
                continue;
            };
            let finished_one = slot
                .last
                .as_ref()
                .is_some_and(|last| snapshot.requests > last.requests);
            if let Some(busy_for) = snapshot.busy_for(now_ns) {
                if let Some(limit) = supervision.request_slowlog_timeout {
                    if busy_for > limit && slot.slow_logged != Some(snapshot.started_ns) {
                        slot.slow_logged = Some(snapshot.started_ns);
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
                                crate::cgroup::format_size(current),
                                crate::cgroup::format_size(limit)
                            ),
                        ));
                    }
                }
            }
            slot.last = Some(snapshot);
        }
        for (index, reason) in recycle {
            self.recycle(index, reason);
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
