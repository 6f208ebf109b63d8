//! A worker process ended: whose it was (a retired worker, a reload's
//! successor, or a slot's current worker), why (`EXITING`, a policy, a crash,
//! the OOM killer), what to say about it, and when to replace it.

use std::time::Duration;

use tokio::time::Instant;

use super::{Pool, PoolError, SlotState, CRASH_WINDOW, MAX_BACKOFF, START_ATTEMPTS};
use crate::scoreboard::Snapshot;
use crate::worker::Exit;

impl Pool {
    pub(super) fn on_exit(&mut self, exit: Exit) -> Result<(), PoolError> {
        if let Some(i) = self.retiring.iter().position(|r| r.handle.pid == exit.pid) {
            tracing::debug!(
                worker = exit.slot,
                worker_pid = exit.pid,
                "old worker left: {}",
                describe_status(&exit)
            );
            let retired = self.retiring.swap_remove(i);
            self.release(&retired.handle);
            return Ok(());
        }
        let Some(index) = self.slots.iter().position(|s| s.number == exit.slot) else {
            return Ok(());
        };
        let slot = &mut self.slots[index];
        if slot
            .successor
            .as_ref()
            .is_some_and(|(h, _)| h.pid == exit.pid)
        {
            if let Some((handle, _)) = slot.successor.take() {
                self.release(&handle);
            }
            self.successor_failed(index, &exit);
            return Ok(());
        }
        match slot.handle() {
            Some(handle) if handle.pid == exit.pid => {
                if let (Some(board), Some(i)) = (self.board.as_mut(), handle.board_slot) {
                    board.release(i);
                }
            }
            _ => return Ok(()),
        }
        let how = explain_death(&exit, slot.last.as_ref());
        if let Some(last) = slot.last.take() {
            self.retired_requests += last.requests;
        }
        if !matches!(self.slots[index].state, SlotState::Running { .. }) {
            return self.failed_start(index, &exit, &how);
        }
        let planned = self.slots[index]
            .ending
            .take()
            .map(|ending| ending.reason)
            .or_else(|| exit.planned.clone());
        match planned {
            Some(reason) => self.left(index, &exit, &reason),
            None => self.died(index, &exit, &how),
        }
        Ok(())
    }

    /// A worker that never became ready: retried with back-off, and fatal
    /// before the pool ever served (a setup error, not bad luck).
    fn failed_start(&mut self, index: usize, exit: &Exit, how: &str) -> Result<(), PoolError> {
        let ever_ready = self.ever_ready;
        let slot = &mut self.slots[index];
        slot.start_failures += 1;
        tracing::error!(
            worker = exit.slot,
            worker_pid = exit.pid,
            "worker failed to start: worker {} (pid {}) {how}; its stderr:\n{}",
            exit.slot,
            exit.pid,
            stderr_text(exit)
        );
        if !ever_ready && slot.start_failures >= START_ATTEMPTS {
            return Err(PoolError::CannotStart {
                attempts: slot.start_failures,
                cause: format!("the last one {how}; last stderr line: {}", last_line(exit)),
            });
        }
        let delay = backoff(slot.start_failures);
        tracing::warn!(worker = exit.slot, "next start in {delay:?}");
        slot.state = SlotState::Waiting {
            until: Instant::now() + delay,
        };
        Ok(())
    }

    /// A worker that left on purpose (a page's `exit()`, a STOP, a policy):
    /// replaced at once, never counted as a crash.
    fn left(&mut self, index: usize, exit: &Exit, reason: &str) {
        if reason == "request_terminate_timeout" {
            self.restarts.timeout += 1;
        } else {
            self.restarts.exit += 1;
        }
        tracing::info!(
            worker = exit.slot,
            worker_pid = exit.pid,
            "worker {} (pid {}) left ({reason}); replacing it",
            exit.slot,
            exit.pid
        );
        self.slots[index].state = SlotState::Waiting {
            until: Instant::now(),
        };
    }

    /// A worker that died: replaced at once the first time, with growing
    /// pauses when its slot keeps dying within [`CRASH_WINDOW`].
    fn died(&mut self, index: usize, exit: &Exit, how: &str) {
        let oom = exit
            .memory
            .as_ref()
            .is_some_and(|(events, _)| events.oom_kill > 0);
        if oom {
            self.restarts.oom += 1;
        } else {
            self.restarts.crash += 1;
        }
        let now = Instant::now();
        let slot = &mut self.slots[index];
        slot.crashes.push_back(now);
        while slot
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            slot.crashes.pop_front();
        }
        let recent = slot.crashes.len() as u32;
        let delay = match recent {
            0 | 1 => Duration::ZERO,
            n => backoff(n - 1),
        };
        let (number, pid) = (exit.slot, exit.pid);
        if delay.is_zero() {
            tracing::error!(
                worker = number,
                worker_pid = pid,
                "worker died: worker {number} (pid {pid}) {how}; replacing it"
            );
        } else {
            tracing::error!(
                worker = number,
                worker_pid = pid,
                "worker died: worker {number} (pid {pid}) {how}; {recent} deaths in \
                 {CRASH_WINDOW:?}, crash loop: next start in {delay:?}"
            );
        }
        slot.state = SlotState::Waiting { until: now + delay };
    }
}

/// 1 s, 2 s, 4 s, … up to [`MAX_BACKOFF`] for the n-th failure in a row.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// "exited with status 1", "killed by SIGSEGV".
pub(super) fn describe_status(exit: &Exit) -> String {
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

/// What happened, to follow "worker 2 (pid 1234)": "was killed by the OOM
/// killer at memory.max=512M while serving GET /big.jl for 1.8 s", "was
/// killed by SIGSEGV", "exited with status 1".
fn explain_death(exit: &Exit, last: Option<&Snapshot>) -> String {
    let mut how = match &exit.memory {
        Some((events, max)) if events.oom_kill > 0 => {
            let max = max.as_deref().unwrap_or("?");
            let max = max
                .parse::<u64>()
                .map(crate::cgroup::format_size)
                .unwrap_or_else(|_| max.to_owned());
            format!("was killed by the OOM killer at memory.max={max}")
        }
        _ => match describe_status(exit) {
            killed if killed.starts_with("killed") => format!("was {killed}"),
            other => other,
        },
    };
    if let Some(busy_for) = last.and_then(|l| l.busy_for(crate::scoreboard::monotonic_ns())) {
        let last = last.expect("busy_for came from it");
        how.push_str(&format!(
            " while serving {} {} for {:.1} s",
            last.method,
            last.uri,
            busy_for.as_secs_f64()
        ));
    }
    how
}

pub(super) fn stderr_text(exit: &Exit) -> String {
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
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;
    use crate::cgroup::MemoryEvents;

    fn exit(status: ExitStatus, oom_kill: u64) -> Exit {
        Exit {
            slot: 2,
            pid: 1234,
            status: Some(status),
            planned: None,
            stderr_tail: Vec::new(),
            memory: Some((
                MemoryEvents {
                    oom_kill,
                    ..MemoryEvents::default()
                },
                Some("536870912".into()),
            )),
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn deaths_are_explained() {
        let sigkill = ExitStatus::from_raw(9);
        assert_eq!(
            explain_death(&exit(sigkill, 1), None),
            "was killed by the OOM killer at memory.max=512M"
        );
        assert_eq!(
            explain_death(&exit(sigkill, 0), None),
            "was killed by SIGKILL"
        );
        assert_eq!(
            explain_death(&exit(ExitStatus::from_raw(3 << 8), 0), None),
            "exited with status 3"
        );
    }
}
