//! `/ping` and `/ready`: what a load balancer, a Kubernetes probe or a
//! monitoring check asks, over plain HTTP, without speaking FastCGI.
//!
//! `/ping` says the master is up (liveness). `/ready` says whether sending
//! requests here now makes sense: 200 only while at least one worker is
//! warm (READY said, idle or busy) and the pool is not stopping. From the
//! moment a stop begins (SIGTERM, `systemctl stop`) it is 503: through the
//! drain delay, while the workers still serve, and while they finish what
//! they hold, so a balancer that checks it stops sending before the pool
//! refuses anything.

use super::report::Report;

/// Whether the pool should get requests, and why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Workers warm (idle or busy).
    Ready { warm: u32 },
    /// Told to stop: draining what is in progress.
    Stopping,
    /// No worker has said READY (starting, crash-looping, backing off).
    NoWarmWorker { total: u32 },
}

impl Readiness {
    /// The pool's readiness by its latest report and whether it is stopping.
    pub fn of(report: &Report, stopping: bool) -> Readiness {
        let warm = report.idle_processes + report.active_processes;
        if stopping {
            Readiness::Stopping
        } else if warm == 0 {
            Readiness::NoWarmWorker {
                total: report.total_processes,
            }
        } else {
            Readiness::Ready { warm }
        }
    }

    pub fn is_ready(self) -> bool {
        matches!(self, Readiness::Ready { .. })
    }

    /// The response body: one line, for a person reading a check's log.
    pub fn text(self) -> String {
        match self {
            Readiness::Ready { warm } => format!("ready: {warm} warm worker(s)\n"),
            Readiness::Stopping => "not ready: stopping; requests in progress finish, \
                                    send new ones elsewhere\n"
                .to_owned(),
            Readiness::NoWarmWorker { total: 0 } => {
                "not ready: no worker yet (none started or all backing off)\n".to_owned()
            }
            Readiness::NoWarmWorker { total } => {
                format!("not ready: no warm worker ({total} starting or restarting)\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(idle: u32, active: u32, total: u32) -> Report {
        Report {
            idle_processes: idle,
            active_processes: active,
            total_processes: total,
            ..Report::default()
        }
    }

    #[test]
    fn ready_only_with_a_warm_worker_and_not_stopping() {
        assert_eq!(
            Readiness::of(&report(1, 0, 1), false),
            Readiness::Ready { warm: 1 }
        );
        // Every worker busy is still ready: requests wait in the queue.
        assert_eq!(
            Readiness::of(&report(0, 2, 2), false),
            Readiness::Ready { warm: 2 }
        );
        assert_eq!(
            Readiness::of(&report(0, 0, 2), false),
            Readiness::NoWarmWorker { total: 2 }
        );
        assert_eq!(
            Readiness::of(&Report::default(), false),
            Readiness::NoWarmWorker { total: 0 }
        );
        assert_eq!(Readiness::of(&report(2, 0, 2), true), Readiness::Stopping);
        assert!(Readiness::Ready { warm: 1 }.is_ready());
        assert!(!Readiness::Stopping.is_ready());
        assert!(Readiness::Stopping
            .text()
            .starts_with("not ready: stopping"));
        assert_eq!(
            Readiness::NoWarmWorker { total: 1 }.text(),
            "not ready: no warm worker (1 starting or restarting)\n"
        );
    }
}
