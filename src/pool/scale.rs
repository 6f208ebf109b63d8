//! `pm = dynamic`: how many workers the pool runs, as a pure function of a
//! census of its slots. A worker more when every worker is busy and
//! connections wait in the listen queue (or spare workers run short), up
//! to `max_children`; the newest extra worker retired once it has idled
//! for `idle_timeout` while more than `max_spare` are idle.

use std::time::Duration;

use crate::config::ProcessManager;

/// The pool as the scaling policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Slots whose ready worker is idle.
    pub idle: u32,
    /// Slots without a ready worker, or with a successor warming up.
    pub warming: u32,
    /// Slots.
    pub size: u32,
    /// The configured `workers`: the pool never shrinks below it.
    pub base_size: u32,
    /// Connections waiting in the listen queue.
    pub waiting: u32,
    /// How long the newest slot's worker has idled, if it is idle.
    pub newest_idle_for: Option<Duration>,
}

/// What to do about the pool's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Add slot `number`.
    Grow {
        number: u32,
        max_children: u32,
        idle: u32,
        waiting: u32,
    },
    /// More workers are needed than `max_children` allows (said once per
    /// episode, until a worker idles again).
    AtMaxChildren { max_children: u32, waiting: u32 },
    /// Retire the newest slot.
    Shrink { idle: u32, idle_timeout: Duration },
}

/// The policy, with the one thing it remembers between scans.
#[derive(Debug, Default)]
pub struct Scaler {
    /// Inside a "max_children reached" episode.
    at_max_children: bool,
}

impl Scaler {
    pub fn decide(&mut self, pm: &ProcessManager, census: &Census) -> Option<Scale> {
        let ProcessManager::Dynamic {
            max_children,
            min_spare,
            max_spare,
            idle_timeout,
        } = *pm
        else {
            return None;
        };
        let Census {
            idle,
            warming,
            size,
            base_size,
            waiting,
            newest_idle_for,
        } = *census;
        if idle > 0 {
            self.at_max_children = false;
        }
        if warming == 0 && ((idle == 0 && waiting > 0) || idle < min_spare) {
            if size < max_children {
                return Some(Scale::Grow {
                    number: size + 1,
                    max_children,
                    idle,
                    waiting,
                });
            }
            if waiting > 0 && !self.at_max_children {
                self.at_max_children = true;
                return Some(Scale::AtMaxChildren {
                    max_children,
                    waiting,
                });
            }
            return None;
        }
        let idled_out = newest_idle_for.is_some_and(|idle_for| idle_for > idle_timeout);
        (idle > max_spare && size > base_size && idled_out)
            .then_some(Scale::Shrink { idle, idle_timeout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYNAMIC: ProcessManager = ProcessManager::Dynamic {
        max_children: 3,
        min_spare: 0,
        max_spare: 1,
        idle_timeout: Duration::from_secs(10),
    };

    fn census(idle: u32, size: u32, waiting: u32) -> Census {
        Census {
            idle,
            warming: 0,
            size,
            base_size: 1,
            waiting,
            newest_idle_for: None,
        }
    }

    #[test]
    fn a_static_pool_never_changes_size() {
        let mut scaler = Scaler::default();
        assert_eq!(
            scaler.decide(&ProcessManager::Static, &census(0, 1, 100)),
            None
        );
    }

    #[test]
    fn the_pool_grows_when_every_worker_is_busy_and_connections_wait() {
        let mut scaler = Scaler::default();
        assert_eq!(scaler.decide(&DYNAMIC, &census(0, 1, 0)), None);
        assert_eq!(
            scaler.decide(&DYNAMIC, &census(0, 1, 4)),
            Some(Scale::Grow {
                number: 2,
                max_children: 3,
                idle: 0,
                waiting: 4
            })
        );
        // Not while a worker is still warming up.
        let warming = Census {
            warming: 1,
            ..census(0, 2, 4)
        };
        assert_eq!(scaler.decide(&DYNAMIC, &warming), None);
    }

    #[test]
    fn spare_workers_are_kept_at_min_spare() {
        let pm = ProcessManager::Dynamic {
            max_children: 4,
            min_spare: 2,
            max_spare: 3,
            idle_timeout: Duration::from_secs(10),
        };
        let mut scaler = Scaler::default();
        assert!(matches!(
            scaler.decide(&pm, &census(1, 2, 0)),
            Some(Scale::Grow { number: 3, .. })
        ));
        assert_eq!(scaler.decide(&pm, &census(2, 3, 0)), None);
    }

    #[test]
    fn max_children_is_said_once_per_episode() {
        let mut scaler = Scaler::default();
        let full = census(0, 3, 5);
        assert_eq!(
            scaler.decide(&DYNAMIC, &full),
            Some(Scale::AtMaxChildren {
                max_children: 3,
                waiting: 5
            })
        );
        assert_eq!(scaler.decide(&DYNAMIC, &full), None);
        // A worker idles: the episode is over, the next one is said again.
        assert_eq!(scaler.decide(&DYNAMIC, &census(1, 3, 0)), None);
        assert!(matches!(
            scaler.decide(&DYNAMIC, &full),
            Some(Scale::AtMaxChildren { .. })
        ));
    }

    #[test]
    fn the_newest_extra_worker_retires_after_idling_long_enough() {
        let mut scaler = Scaler::default();
        let idle = |for_secs| Census {
            newest_idle_for: Some(Duration::from_secs(for_secs)),
            ..census(2, 2, 0)
        };
        assert_eq!(scaler.decide(&DYNAMIC, &idle(5)), None);
        assert_eq!(
            scaler.decide(&DYNAMIC, &idle(11)),
            Some(Scale::Shrink {
                idle: 2,
                idle_timeout: Duration::from_secs(10)
            })
        );
        // Never below `workers`.
        let base = Census {
            size: 1,
            idle: 2,
            ..idle(11)
        };
        assert_eq!(scaler.decide(&DYNAMIC, &base), None);
        // Not while it is busy (the newest is not idle).
        let busy = Census {
            newest_idle_for: None,
            ..idle(11)
        };
        assert_eq!(scaler.decide(&DYNAMIC, &busy), None);
    }
}
