//! One worker's life as the pool sees it. A [`Worker`] is the handle of a
//! process and its [`Life`]; the life moves only through the transitions
//! below, and each says which states it may leave. Those checks are not
//! paranoia: a worker's events race with the pool's decisions (a READY can
//! arrive from a worker that was just told to stop, or killed for being
//! late), and such an event is refused, not obeyed.
//!
//! ```text
//!  spawned ─▶ Spawning ──ready──▶ Ready
//!                │  ╲                │
//!           deadline  stop/        stop/terminate
//!                │    terminate      │
//!                ▼      ╲            ▼
//!             Killed ◀─kill_at── Ending
//! ```
//!
//! Every state that waits for something has its deadline in it: the
//! pool's next timer is the earliest of them, and a deadline long past is
//! what tells the watchdog that the supervisor stopped doing its job.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::scoreboard::Snapshot;
use crate::status::stats::WorkerView;
use crate::worker::Handle;

/// Why the pool ends a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Rolled over to a new configuration (a reload).
    Retired,
    /// Replaced by a fresh worker of the same configuration.
    Recycled(RecycleCause),
    /// Its request ran past `request_terminate_timeout`.
    TerminateTimeout,
    /// The pool got smaller: an idle extra of the dynamic pool, or fewer
    /// `workers` after a reload.
    ScaledDown,
    /// The pool stops.
    Shutdown,
    /// It did not say READY within `worker_start_timeout`.
    StartTimeout,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Retired => f.write_str("reload"),
            EndReason::Recycled(cause) => cause.fmt(f),
            // The setting's name: what the operator looks for.
            EndReason::TerminateTimeout => f.write_str("request_terminate_timeout"),
            EndReason::ScaledDown => f.write_str("scaled down"),
            EndReason::Shutdown => f.write_str("stopping"),
            EndReason::StartTimeout => f.write_str("worker_start_timeout"),
        }
    }
}

/// Why a healthy worker is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecycleCause {
    /// `max_requests`: it served this many.
    MaxRequests { served: u64 },
    /// `recycle_memory`: its cgroup used `used` bytes after a request.
    Memory { used: u64, limit: u64 },
}

impl fmt::Display for RecycleCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecycleCause::MaxRequests { served } => write!(f, "max_requests: served {served}"),
            RecycleCause::Memory { used, limit } => write!(
                f,
                "recycle_memory: {} in use after a request, limit {}",
                approx_size(*used),
                crate::cgroup::format_size(*limit)
            ),
        }
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

/// Where a worker process is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    /// Spawned, warming up: it must say READY before `deadline`. `doing`
    /// is what it last said it is busy with (loading packages can take
    /// minutes; `STATUS=` shows it).
    Spawning {
        deadline: Instant,
        doing: Option<String>,
    },
    /// Ready and accepting connections.
    Ready,
    /// Told to leave (`STOP`), or terminated over an overrun request
    /// (`ABORT`, SIGTERM); killed at `kill_at` if it is still there.
    Ending { why: EndReason, kill_at: Instant },
    /// Killed with everything it started, at `at`; waiting to be reaped.
    Killed { why: EndReason, at: Instant },
}

/// A transition the worker's life does not allow from where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a worker that is {from} cannot become {to}")]
pub struct Refused {
    pub from: &'static str,
    pub to: &'static str,
}

impl Life {
    pub fn spawned(deadline: Instant) -> Life {
        Life::Spawning {
            deadline,
            doing: None,
        }
    }

    /// The state's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Life::Spawning { .. } => "spawning",
            Life::Ready => "ready",
            Life::Ending { .. } => "ending",
            Life::Killed { .. } => "killed",
        }
    }

    fn refuse(&self, to: &'static str) -> Refused {
        Refused {
            from: self.name(),
            to,
        }
    }

    /// It said what it is busy with: only while spawning.
    pub fn busy_with(&mut self, what: String) -> Result<(), Refused> {
        match self {
            Life::Spawning { doing, .. } => {
                *doing = Some(what);
                Ok(())
            }
            _ => Err(self.refuse("busy starting")),
        }
    }

    /// It said READY: only from spawning.
    pub fn ready(&mut self) -> Result<(), Refused> {
        match self {
            Life::Spawning { .. } => {
                *self = Life::Ready;
                Ok(())
            }
            _ => Err(self.refuse("ready")),
        }
    }

    /// The pool ends it: from spawning or ready. A worker already ending
    /// keeps its reason and its kill time.
    pub fn end(&mut self, why: EndReason, kill_at: Instant) -> Result<(), Refused> {
        match self {
            Life::Spawning { .. } | Life::Ready => {
                *self = Life::Ending { why, kill_at };
                Ok(())
            }
            _ => Err(self.refuse("ending")),
        }
    }

    /// Its deadline passed: a spawning worker was too slow to start, an
    /// ending one to leave.
    pub fn kill(&mut self, at: Instant) -> Result<(), Refused> {
        let why = match self {
            Life::Spawning { .. } => EndReason::StartTimeout,
            Life::Ending { why, .. } => why.clone(),
            _ => return Err(self.refuse("killed")),
        };
        *self = Life::Killed { why, at };
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Life::Ready)
    }

    /// When the pool must act on it: the start deadline, or the kill time.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Life::Spawning { deadline, .. } => Some(*deadline),
            Life::Ending { kill_at, .. } => Some(*kill_at),
            Life::Ready | Life::Killed { .. } => None,
        }
    }

    /// Whether the pool failed to act on it in time: its deadline passed
    /// more than `by` ago, or it was killed more than twice that ago and is
    /// still not reaped.
    pub fn overdue(&self, now: Instant, by: Duration) -> bool {
        match self {
            Life::Killed { at, .. } => now.saturating_duration_since(*at) > by * 2,
            _ => self
                .deadline()
                .is_some_and(|deadline| now.saturating_duration_since(deadline) > by),
        }
    }
}

/// One worker process: its handle, its life, and what the pool remembers
/// of it between scoreboard scans.
#[derive(Debug)]
pub struct Worker {
    pub handle: Handle,
    pub life: Life,
    /// The configuration generation it was started with.
    pub generation: u64,
    /// Requests after which it is recycled (0: never).
    pub request_limit: u64,
    /// What its scoreboard slot said at the last scan.
    pub last: Option<Snapshot>,
    /// `started_ns` of the request already logged as slow.
    pub slow_logged: Option<u64>,
}

impl Worker {
    pub fn new(handle: Handle, generation: u64, request_limit: u64, deadline: Instant) -> Self {
        Worker {
            handle,
            life: Life::spawned(deadline),
            generation,
            request_limit,
            last: None,
            slow_logged: None,
        }
    }

    /// Asks it to finish its request and leave; killed at `kill_at`.
    pub fn stop(&mut self, why: EndReason, kill_at: Instant) -> Result<(), Refused> {
        self.life.end(why, kill_at)?;
        self.handle.stop();
        Ok(())
    }

    /// Ends it over an overrun request (`ABORT`, then SIGTERM); killed at
    /// `kill_at`.
    pub fn terminate(&mut self, kill_at: Instant) -> Result<(), Refused> {
        self.life.end(EndReason::TerminateTimeout, kill_at)?;
        self.handle.terminate();
        Ok(())
    }

    /// Kills it and everything it started (its deadline passed).
    pub fn kill(&mut self, now: Instant) -> Result<(), Refused> {
        self.life.kill(now)?;
        self.handle.kill();
        Ok(())
    }

    /// What the status page shows of it.
    pub fn view(&self) -> WorkerView<'_> {
        WorkerView {
            number: self.handle.slot,
            pid: self.handle.pid,
            starting: matches!(self.life, Life::Spawning { .. }),
            started: self.handle.started,
            last: self.last.as_ref(),
            cgroup: self.handle.cgroup.as_ref().map(|c| c.path.as_path()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn spawning(now: Instant) -> Life {
        Life::spawned(now + 10 * SECOND)
    }

    #[test]
    fn a_worker_becomes_ready_only_while_spawning() {
        let now = Instant::now();
        let mut life = spawning(now);
        life.busy_with("loading package A (1 of 2)".into()).unwrap();
        assert!(matches!(&life, Life::Spawning { doing: Some(what), .. } if what.contains("A")));
        life.ready().unwrap();
        assert_eq!(life, Life::Ready);
        assert_eq!(life.deadline(), None);
        assert_eq!(
            life.ready(),
            Err(Refused {
                from: "ready",
                to: "ready"
            })
        );
        assert!(life.busy_with("late".into()).is_err());
    }

    #[test]
    fn a_worker_told_to_stop_is_not_made_ready_by_a_late_ready() {
        let now = Instant::now();
        let mut life = spawning(now);
        life.end(EndReason::Shutdown, now + SECOND).unwrap();
        assert!(life.ready().is_err());
        assert_eq!(
            life,
            Life::Ending {
                why: EndReason::Shutdown,
                kill_at: now + SECOND
            }
        );
    }

    #[test]
    fn an_ending_worker_keeps_its_first_reason_and_kill_time() {
        let now = Instant::now();
        let mut life = Life::Ready;
        life.end(EndReason::TerminateTimeout, now + 2 * SECOND)
            .unwrap();
        assert!(life.end(EndReason::Shutdown, now + 10 * SECOND).is_err());
        assert_eq!(life.deadline(), Some(now + 2 * SECOND));
        life.kill(now + 2 * SECOND).unwrap();
        assert_eq!(
            life,
            Life::Killed {
                why: EndReason::TerminateTimeout,
                at: now + 2 * SECOND
            }
        );
    }

    #[test]
    fn a_late_starter_is_killed_for_its_start_timeout() {
        let now = Instant::now();
        let mut life = spawning(now);
        assert_eq!(life.deadline(), Some(now + 10 * SECOND));
        life.kill(now + 10 * SECOND).unwrap();
        assert!(matches!(
            life,
            Life::Killed {
                why: EndReason::StartTimeout,
                ..
            }
        ));
        // Killed is final: nothing moves it, and it has no deadline left.
        assert!(life.kill(now).is_err());
        assert!(life.ready().is_err());
        assert!(life.end(EndReason::Shutdown, now).is_err());
        assert_eq!(life.deadline(), None);
    }

    #[test]
    fn a_ready_worker_is_never_killed_without_ending_first() {
        let mut life = Life::Ready;
        assert_eq!(
            life.kill(Instant::now()),
            Err(Refused {
                from: "ready",
                to: "killed"
            })
        );
    }

    #[test]
    fn overdue_means_the_pool_missed_a_deadline() {
        let now = Instant::now();
        let by = 5 * SECOND;
        let life = spawning(now);
        assert!(!life.overdue(now + 14 * SECOND, by));
        assert!(life.overdue(now + 16 * SECOND, by));
        assert!(!Life::Ready.overdue(now + 1000 * SECOND, by));
        let ending = Life::Ending {
            why: EndReason::Retired,
            kill_at: now,
        };
        assert!(!ending.overdue(now + 4 * SECOND, by));
        assert!(ending.overdue(now + 6 * SECOND, by));
        // A killed worker gets longer: its actor drains its pipes and
        // removes its cgroup before it reports the exit.
        let killed = Life::Killed {
            why: EndReason::Retired,
            at: now,
        };
        assert!(!killed.overdue(now + 9 * SECOND, by));
        assert!(killed.overdue(now + 11 * SECOND, by));
    }

    #[test]
    fn reasons_read_as_the_log_says_them() {
        assert_eq!(
            EndReason::TerminateTimeout.to_string(),
            "request_terminate_timeout"
        );
        assert_eq!(
            EndReason::Recycled(RecycleCause::MaxRequests { served: 5 }).to_string(),
            "max_requests: served 5"
        );
        assert_eq!(
            RecycleCause::Memory {
                used: 621_236 << 10,
                limit: 512 << 20
            }
            .to_string(),
            "recycle_memory: 606.7M in use after a request, limit 512M"
        );
    }

    #[test]
    fn measured_sizes_read_in_mebibytes() {
        assert_eq!(approx_size(621_236 << 10), "606.7M");
        assert_eq!(approx_size(512 << 20), "512M");
        assert_eq!(approx_size(1000), "1000");
    }
}
