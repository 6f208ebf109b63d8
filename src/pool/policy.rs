//! The policies that read the scoreboard, as pure functions of what a
//! worker's slot says: the slow-request log, `request_terminate_timeout`,
//! recycling by request count (`max_requests`) or memory
//! (`recycle_memory`). They decide; the pool applies what they decide
//! (`scan.rs`). Names follow PHP-FPM's where they mean the same.

use std::time::Duration;

use super::life::RecycleCause;
use crate::config::Supervision;
use crate::scoreboard::Snapshot;

/// How often the scoreboard is read.
pub const SCAN_EVERY: Duration = Duration::from_millis(100);
/// Between SIGTERM to a worker over its request timeout and killing its
/// whole cgroup.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// What a policy wants done about a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Log its request as slow (once per request).
    LogSlow { busy_for: Duration, limit: Duration },
    /// Stop it over its overrun request.
    Terminate { busy_for: Duration, limit: Duration },
    /// Replace it gracefully with a fresh worker.
    Recycle(RecycleCause),
}

/// What the pool remembers of a ready worker between scans.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Its slot at the previous scan (`None` on its first).
    pub last: Option<&'a Snapshot>,
    /// `started_ns` of the request already logged as slow.
    pub slow_logged: Option<u64>,
    /// Requests after which it is recycled (0: never).
    pub request_limit: u64,
    /// A successor is already warming up to replace it.
    pub replacing: bool,
}

/// The policies' verdict on a ready worker whose slot now says `now`.
/// `memory` reads its cgroup's memory use, asked only when
/// `recycle_memory` needs it (after a request).
pub fn decide(
    rules: &Supervision,
    seen: &Seen<'_>,
    now: &Snapshot,
    now_ns: u64,
    memory: impl FnOnce() -> Option<u64>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if let Some(busy_for) = now.busy_for(now_ns) {
        if let Some(limit) = rules.request_slowlog_timeout {
            if busy_for > limit && seen.slow_logged != Some(now.started_ns) {
                actions.push(Action::LogSlow { busy_for, limit });
            }
        }
        if let Some(limit) = rules.request_terminate_timeout {
            if busy_for > limit {
                // A worker being stopped is not recycled as well.
                actions.push(Action::Terminate { busy_for, limit });
                return actions;
            }
        }
    }
    if seen.replacing {
        return actions;
    }
    if seen.request_limit > 0 && now.requests >= seen.request_limit {
        actions.push(Action::Recycle(RecycleCause::MaxRequests {
            served: now.requests,
        }));
    } else if let Some(limit) = rules.recycle_memory {
        // A request finished since the last scan; on the first scan of a
        // worker, any request it has served counts (a short one can come
        // and go in the 100 ms before that scan).
        let finished_one = seen
            .last
            .map_or(now.requests > 0, |last| now.requests > last.requests);
        if let Some(used) = finished_one.then(memory).flatten().filter(|m| *m > limit) {
            actions.push(Action::Recycle(RecycleCause::Memory { used, limit }));
        }
    }
    actions
}

/// `max_requests` plus a share of the jitter chosen by `seed`, drawn per
/// worker so that workers started together do not all recycle together.
pub fn request_limit(rules: &Supervision, seed: u64) -> u64 {
    if rules.max_requests == 0 {
        return 0;
    }
    let jitter = if rules.max_requests_jitter == 0 {
        0
    } else {
        // Good enough randomness for spreading restarts.
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (rules.max_requests_jitter + 1)
    };
    rules.max_requests + jitter
}

/// No policy at all, for tests to switch on one at a time.
#[cfg(test)]
pub fn no_rules() -> Supervision {
    Supervision {
        cgroup_root: Some(None),
        limits: Default::default(),
        request_terminate_timeout: None,
        request_slowlog_timeout: None,
        max_requests: 0,
        max_requests_jitter: 0,
        recycle_memory: None,
        pm: crate::config::ProcessManager::Static,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoreboard::State;

    fn rules() -> Supervision {
        no_rules()
    }

    const MS: u64 = 1_000_000;

    fn slot(state: State, requests: u64, started_ns: u64) -> Snapshot {
        Snapshot {
            pid: 1,
            state,
            requests,
            started_ns,
            last_duration: Duration::ZERO,
            last_finished_ns: 0,
            method: "GET".into(),
            uri: "/slow.jl".into(),
            parked: 0,
        }
    }

    fn seen(last: Option<&Snapshot>) -> Seen<'_> {
        Seen {
            last,
            slow_logged: None,
            request_limit: 0,
            replacing: false,
        }
    }

    fn no_memory() -> Option<u64> {
        panic!("memory read when no policy needs it")
    }

    #[test]
    fn a_slow_request_is_logged_once() {
        let rules = Supervision {
            request_slowlog_timeout: Some(Duration::from_millis(500)),
            ..rules()
        };
        let busy = slot(State::Busy, 3, 1000 * MS);
        assert_eq!(decide(&rules, &seen(None), &busy, 1400 * MS, no_memory), []);
        assert_eq!(
            decide(&rules, &seen(None), &busy, 1600 * MS, no_memory),
            [Action::LogSlow {
                busy_for: Duration::from_millis(600),
                limit: Duration::from_millis(500)
            }]
        );
        let logged = Seen {
            slow_logged: Some(1000 * MS),
            ..seen(None)
        };
        assert_eq!(decide(&rules, &logged, &busy, 1900 * MS, no_memory), []);
        // The next slow request is logged again.
        let next = slot(State::Busy, 4, 2000 * MS);
        assert_eq!(
            decide(&rules, &logged, &next, 2600 * MS, no_memory).len(),
            1
        );
    }

    #[test]
    fn an_overrun_request_stops_its_worker_and_nothing_else_happens_to_it() {
        let rules = Supervision {
            request_slowlog_timeout: Some(Duration::from_millis(100)),
            request_terminate_timeout: Some(Duration::from_secs(1)),
            max_requests: 1,
            ..rules()
        };
        let seen = Seen {
            request_limit: 1,
            ..seen(None)
        };
        let busy = slot(State::Busy, 5, 0);
        assert_eq!(
            decide(&rules, &seen, &busy, 1500 * MS, no_memory),
            [
                Action::LogSlow {
                    busy_for: Duration::from_millis(1500),
                    limit: Duration::from_millis(100)
                },
                Action::Terminate {
                    busy_for: Duration::from_millis(1500),
                    limit: Duration::from_secs(1)
                }
            ]
        );
    }

    #[test]
    fn max_requests_recycles_once_per_successor() {
        let rules = Supervision {
            max_requests: 10,
            ..rules()
        };
        let worker = Seen {
            request_limit: 10,
            ..seen(None)
        };
        let idle = slot(State::Idle, 10, 0);
        assert_eq!(
            decide(&rules, &worker, &slot(State::Idle, 9, 0), 0, no_memory),
            []
        );
        assert_eq!(
            decide(&rules, &worker, &idle, 0, no_memory),
            [Action::Recycle(RecycleCause::MaxRequests { served: 10 })]
        );
        let replacing = Seen {
            replacing: true,
            ..worker
        };
        assert_eq!(decide(&rules, &replacing, &idle, 0, no_memory), []);
    }

    #[test]
    fn memory_is_checked_only_after_a_request() {
        let rules = Supervision {
            recycle_memory: Some(512 << 20),
            ..rules()
        };
        let before = slot(State::Idle, 3, 0);
        // No request since the last scan: memory is not even read.
        assert_eq!(
            decide(&rules, &seen(Some(&before)), &before, 0, no_memory),
            []
        );
        let after = slot(State::Idle, 4, 0);
        assert_eq!(
            decide(&rules, &seen(Some(&before)), &after, 0, || Some(600 << 20)),
            [Action::Recycle(RecycleCause::Memory {
                used: 600 << 20,
                limit: 512 << 20
            })]
        );
        assert_eq!(
            decide(&rules, &seen(Some(&before)), &after, 0, || Some(100 << 20)),
            []
        );
        // Its first scan: any request it served counts.
        assert_eq!(
            decide(&rules, &seen(None), &after, 0, || Some(600 << 20)).len(),
            1
        );
        let fresh = slot(State::Idle, 0, 0);
        assert_eq!(decide(&rules, &seen(None), &fresh, 0, no_memory), []);
    }

    #[test]
    fn request_limits_spread_over_the_jitter() {
        assert_eq!(request_limit(&rules(), 7), 0);
        let rules = Supervision {
            max_requests: 100,
            max_requests_jitter: 10,
            ..rules()
        };
        let limits: Vec<u64> = (0..50).map(|seed| request_limit(&rules, seed)).collect();
        assert!(limits.iter().all(|l| (100..=110).contains(l)), "{limits:?}");
        assert!(limits.iter().any(|l| *l != limits[0]), "{limits:?}");
    }
}
