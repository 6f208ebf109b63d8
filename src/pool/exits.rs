//! A worker process ended: whose it was (a retired worker, a reload's
//! successor, or a slot's current worker), why (`EXITING`, a policy, a crash,
//! the OOM killer), what to say about it, and when to replace it.

use tokio::time::Instant;

use super::life::{EndReason, Life};
use super::restart::{End, Next, STORM_WINDOW};
use super::{Current, Pool, PoolError};
use crate::scoreboard::Snapshot;
use crate::status::stats::Restart;
use crate::worker::Exit;

/// How a slot's current worker's end counts, from the life it ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// It never said READY: a failed start.
    BeforeReady,
    /// It left on purpose: a policy ended it, or it said why (`EXITING`).
    Left(Why),
    /// It was ready and died.
    Died,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    Policy(EndReason),
    Said(String),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Policy(why) => why.fmt(f),
            Why::Said(reason) => f.write_str(reason),
        }
    }
}

fn ended(life: &Life, planned: Option<&str>) -> Ended {
    match life {
        Life::Spawning { .. }
        | Life::Killed {
            why: EndReason::StartTimeout,
            ..
        } => Ended::BeforeReady,
        Life::Ready => match planned {
            Some(reason) => Ended::Left(Why::Said(reason.to_owned())),
            None => Ended::Died,
        },
        Life::Ending { why, .. } | Life::Killed { why, .. } => {
            Ended::Left(Why::Policy(why.clone()))
        }
    }
}

impl Pool {
    pub(super) fn on_exit(&mut self, exit: Exit) -> Result<(), PoolError> {
        if let Some(i) = self.leaving.iter().position(|w| w.handle.pid == exit.pid) {
            tracing::debug!(
                worker = exit.slot,
                worker_pid = exit.pid,
                "old worker left: {}",
                describe_status(&exit)
            );
            let worker = self.leaving.swap_remove(i);
            self.release(&worker.handle);
            return Ok(());
        }
        let Some(index) = self.slots.iter().position(|s| s.number == exit.slot) else {
            return Ok(());
        };
        let slot = &mut self.slots[index];
        if let Some(successor) = slot.successor.take_if(|s| s.worker.handle.pid == exit.pid) {
            self.release(&successor.worker.handle);
            self.successor_failed(index, &exit);
            return Ok(());
        }
        let now = Instant::now();
        let Some(worker) = slot.take_worker(exit.pid, now) else {
            return Ok(());
        };
        self.release(&worker.handle);
        let how = explain_death(&exit, worker.last.as_ref());
        self.stats.worker_left(worker.last.as_ref());
        let start_at = match ended(&worker.life, exit.planned.as_deref()) {
            Ended::BeforeReady => self.failed_start(index, &exit, &how, now)?,
            Ended::Left(why) => self.left(index, &exit, &why, now),
            Ended::Died => self.died(index, &exit, &how, now),
        };
        self.slots[index].current = Current::Vacant { start_at };
        Ok(())
    }

    /// A worker that never became ready: retried with back-off, and fatal
    /// before the pool ever served (a setup error, not bad luck).
    fn failed_start(
        &mut self,
        index: usize,
        exit: &Exit,
        how: &str,
        now: Instant,
    ) -> Result<Instant, PoolError> {
        tracing::error!(
            worker = exit.slot,
            worker_pid = exit.pid,
            "worker failed to start: worker {} (pid {}) {how}; its stderr:\n{}",
            exit.slot,
            exit.pid,
            stderr_text(exit)
        );
        let slot = &mut self.slots[index];
        let next = slot.history.next(End::BeforeReady, now, self.ever_ready);
        if let Next::GiveUp { failures } = next {
            return Err(PoolError::CannotStart {
                attempts: failures,
                cause: format!("the last one {how}; last stderr line: {}", last_line(exit)),
            });
        }
        let delay = next.delay();
        tracing::warn!(worker = exit.slot, "next start in {delay:?}");
        Ok(now + delay)
    }

    /// A worker that left on purpose (a page's `exit()`, a STOP, a policy):
    /// replaced at once, never counted as a crash.
    fn left(&mut self, index: usize, exit: &Exit, why: &Why, now: Instant) -> Instant {
        self.stats.restarted(match why {
            Why::Policy(EndReason::TerminateTimeout) => Restart::Timeout,
            _ => Restart::Exit,
        });
        tracing::info!(
            worker = exit.slot,
            worker_pid = exit.pid,
            "worker {} (pid {}) left ({why}); replacing it",
            exit.slot,
            exit.pid
        );
        let next = self.slots[index]
            .history
            .next(End::Left, now, self.ever_ready);
        now + next.delay()
    }

    /// A ready worker that died: replaced at once (a page that kills its
    /// worker must not cost the pool capacity), unless its slot dies faster
    /// than a worker can warm up and serve: a fork storm, slowed down by
    /// seconds at most.
    fn died(&mut self, index: usize, exit: &Exit, how: &str, now: Instant) -> Instant {
        let oom = exit
            .memory
            .as_ref()
            .is_some_and(|(events, _)| events.oom_kill > 0);
        self.stats
            .restarted(if oom { Restart::Oom } else { Restart::Crash });
        let next = self.slots[index]
            .history
            .next(End::Died, now, self.ever_ready);
        let (number, pid) = (exit.slot, exit.pid);
        match &next {
            Next::Storm { delay, deaths } => tracing::error!(
                worker = number,
                worker_pid = pid,
                "worker died: worker {number} (pid {pid}) {how}; {deaths} deaths in \
                 {STORM_WINDOW:?}, fork storm guard: next start in {delay:?}"
            ),
            _ => tracing::error!(
                worker = number,
                worker_pid = pid,
                "worker died: worker {number} (pid {pid}) {how}; replacing it"
            ),
        }
        now + next.delay()
    }
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
    fn an_end_counts_by_the_life_it_ended_in() {
        let now = Instant::now();
        let spawning = Life::spawned(now);
        assert_eq!(ended(&spawning, None), Ended::BeforeReady);
        let timed_out = Life::Killed {
            why: EndReason::StartTimeout,
            at: now,
        };
        assert_eq!(ended(&timed_out, None), Ended::BeforeReady);
        assert_eq!(ended(&Life::Ready, None), Ended::Died);
        assert_eq!(
            ended(&Life::Ready, Some("page called exit()")),
            Ended::Left(Why::Said("page called exit()".into()))
        );
        let terminated = Life::Killed {
            why: EndReason::TerminateTimeout,
            at: now,
        };
        assert_eq!(
            ended(&terminated, Some("stopping")),
            Ended::Left(Why::Policy(EndReason::TerminateTimeout))
        );
        assert_eq!(
            Why::Policy(EndReason::TerminateTimeout).to_string(),
            "request_terminate_timeout"
        );
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
