//! When a slot's next worker starts after one ended: the restart policy, a
//! pure function of the slot's history and the way its worker ended, so it
//! is tested without processes.
//!
//! Back-off is for workers that *cannot start* (a broken worker file, a
//! Julia that does not run, a warm-up that fails): retrying those at once
//! only burns CPU, so the pauses double from 1 s up to [`MAX_BACKOFF`], and
//! before the pool ever served they end the master after [`START_ATTEMPTS`]
//! (a setup error, said with its cause, rather than retried silently).
//!
//! A worker that was ready and then died (a page crashed it, a signal, the
//! OOM killer) proves the set-up works: it is replaced at once, however
//! often that happens, because the capacity it leaves missing is what makes
//! the other requests wait. Only a real fork storm, a slot dying more than
//! [`STORM_BURST`] times within [`STORM_WINDOW`] (more often than a Julia
//! worker can warm up and serve), is slowed down, and never by more than
//! [`STORM_MAX_PAUSE`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Failed starts in a row, before the pool ever was ready, that end the master.
pub const START_ATTEMPTS: u32 = 3;
/// The longest pause before retrying a worker that cannot start.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Deaths of one slot's ready workers counted together by the storm guard.
pub const STORM_WINDOW: Duration = Duration::from_secs(10);
/// Deaths within [`STORM_WINDOW`] that are replaced at once: a slot may die
/// every 2 s for ever. A worker takes seconds to warm up, so even a page
/// that kills it on every request cannot make its slot die more often.
pub const STORM_BURST: usize = 6;
/// The first pause of the storm guard; it doubles per further death…
const STORM_FIRST_PAUSE: Duration = Duration::from_millis(500);
/// …up to this: a storm costs some capacity, a page never costs 30 s.
pub const STORM_MAX_PAUSE: Duration = Duration::from_secs(2);

/// How a slot's worker ended, as the restart policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It never said READY (or could not even be spawned).
    BeforeReady,
    /// It was ready, then died: killed by a signal, the OOM killer, a crash.
    Died,
    /// It left on purpose: a page's `exit()`, a STOP, a policy ending it.
    Left,
}

/// What to do about the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Start the replacement now.
    Now,
    /// The worker cannot start: retry after `delay` (`failures` in a row).
    Backoff { delay: Duration, failures: u32 },
    /// Ready workers die faster than a fork storm guard allows: `deaths`
    /// within [`STORM_WINDOW`], so the next start waits `delay`.
    Storm { delay: Duration, deaths: usize },
    /// Workers never became ready at all: a setup error; the pool gives up.
    GiveUp { failures: u32 },
}

impl Next {
    /// How long the slot waits before its next start (none for `GiveUp`,
    /// which starts nothing).
    pub fn delay(&self) -> Duration {
        match self {
            Next::Backoff { delay, .. } | Next::Storm { delay, .. } => *delay,
            Next::Now | Next::GiveUp { .. } => Duration::ZERO,
        }
    }
}

/// What one slot remembers of its workers' ends.
#[derive(Debug, Default)]
pub struct History {
    /// Failed starts since its last worker said READY.
    start_failures: u32,
    /// When its ready workers died, within the last [`STORM_WINDOW`].
    deaths: VecDeque<Instant>,
}

impl History {
    /// A worker of this slot said READY: whatever failed before is fixed.
    pub fn ready(&mut self) {
        self.start_failures = 0;
    }

    /// Failed starts since the last READY.
    pub fn start_failures(&self) -> u32 {
        self.start_failures
    }

    /// Counts one failed start (a reload's new worker too) and returns the
    /// failures in a row.
    pub fn start_failed(&mut self) -> u32 {
        self.start_failures = self.start_failures.saturating_add(1);
        self.start_failures
    }

    /// Deaths of ready workers within [`STORM_WINDOW`] before `now`.
    pub fn recent_deaths(&self, now: Instant) -> usize {
        self.deaths
            .iter()
            .filter(|t| now.saturating_duration_since(**t) <= STORM_WINDOW)
            .count()
    }

    /// Records how the slot's worker ended at `now` and says when its
    /// replacement starts. `ever_ready`: some worker of the pool was ready
    /// once, so a start failure is bad luck rather than a setup error.
    pub fn next(&mut self, end: End, now: Instant, ever_ready: bool) -> Next {
        match end {
            End::Left => Next::Now,
            End::BeforeReady => {
                let failures = self.start_failed();
                if !ever_ready && failures >= START_ATTEMPTS {
                    Next::GiveUp { failures }
                } else {
                    Next::Backoff {
                        delay: backoff(failures),
                        failures,
                    }
                }
            }
            End::Died => {
                while self
                    .deaths
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > STORM_WINDOW)
                {
                    self.deaths.pop_front();
                }
                self.deaths.push_back(now);
                let deaths = self.deaths.len();
                match storm_pause(deaths) {
                    None => Next::Now,
                    Some(delay) => Next::Storm { delay, deaths },
                }
            }
        }
    }
}

/// 1 s, 2 s, 4 s, … up to [`MAX_BACKOFF`] for the n-th failed start in a row.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// The storm guard's pause for `deaths` within the window, if any.
fn storm_pause(deaths: usize) -> Option<Duration> {
    let over = deaths.checked_sub(STORM_BURST).filter(|n| *n > 0)?;
    let exponent = (over - 1).min(8) as u32;
    Some((STORM_FIRST_PAUSE * (1 << exponent)).min(STORM_MAX_PAUSE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    /// The probe: a page kills a worker every 2 s for 60 s. Even if
    /// every one of those deaths hit the same slot, each is replaced at once;
    /// the old policy paused 1, 2, 4 … 30 s.
    #[test]
    fn a_page_that_kills_its_worker_never_causes_a_pause() {
        let start = Instant::now();
        let mut history = History::default();
        for i in 0..30 {
            let now = start + secs(2.0 * f64::from(i));
            assert_eq!(history.next(End::Died, now, true), Next::Now, "death {i}");
        }
    }

    #[test]
    fn a_fork_storm_is_slowed_down_by_seconds_at_most() {
        let start = Instant::now();
        let mut history = History::default();
        let mut next = Vec::new();
        for i in 0..11 {
            next.push(history.next(End::Died, start + secs(0.1 * f64::from(i)), true));
        }
        assert!(
            next[..STORM_BURST].iter().all(|n| *n == Next::Now),
            "{next:?}"
        );
        let pauses: Vec<Duration> = next[STORM_BURST..]
            .iter()
            .map(|n| match n {
                Next::Storm { delay, .. } => *delay,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            pauses,
            [secs(0.5), secs(1.0), secs(2.0), secs(2.0), secs(2.0)]
        );
        assert!(matches!(next[10], Next::Storm { deaths: 11, .. }));
        // Once the window has passed, the slot is trusted again.
        assert_eq!(
            history.next(
                End::Died,
                start + secs(1.0) + STORM_WINDOW + secs(0.1),
                true
            ),
            Next::Now
        );
        assert_eq!(history.recent_deaths(start + secs(30.0)), 0);
    }

    #[test]
    fn workers_that_cannot_start_back_off_and_give_up_before_the_pool_served() {
        let now = Instant::now();
        let mut history = History::default();
        assert_eq!(
            history.next(End::BeforeReady, now, false),
            Next::Backoff {
                delay: secs(1.0),
                failures: 1
            }
        );
        assert_eq!(
            history.next(End::BeforeReady, now, false),
            Next::Backoff {
                delay: secs(2.0),
                failures: 2
            }
        );
        assert_eq!(
            history.next(End::BeforeReady, now, false),
            Next::GiveUp { failures: 3 }
        );
        // After the pool served, never give up; the pauses keep growing.
        let mut history = History::default();
        let delays: Vec<Next> = (0..6)
            .map(|_| history.next(End::BeforeReady, now, true))
            .collect();
        assert_eq!(
            delays[5],
            Next::Backoff {
                delay: MAX_BACKOFF,
                failures: 6
            }
        );
        history.ready();
        assert_eq!(history.start_failures(), 0);
        assert!(matches!(
            history.next(End::BeforeReady, now, true),
            Next::Backoff { failures: 1, .. }
        ));
    }

    #[test]
    fn leaving_on_purpose_is_never_held_against_a_slot() {
        let now = Instant::now();
        let mut history = History::default();
        for _ in 0..100 {
            assert_eq!(history.next(End::Left, now, true), Next::Now);
        }
        assert_eq!(history.recent_deaths(now), 0);
        assert_eq!(history.start_failures(), 0);
    }
}
