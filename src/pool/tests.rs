//! The pool's transitions without processes: workers are detached handles
//! (pids no process can have), events are fed in by hand, and what moves
//! is checked in the slots, the leaving list, the counters and the phase.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::life::{EndReason, Life, Worker};
use super::{Config, Current, Options, Phase, Pool, PoolError, Successor};
use crate::config::{ProcessManager, Supervision};
use crate::notify::Notifier;
use crate::scoreboard::{Snapshot, State};
use crate::status::report::Report;
use crate::worker::{Exit, Handle, Spec};

/// Pids beyond `PID_MAX_LIMIT`: nobody's.
const PID: u32 = 5_000_000;

fn rules() -> Supervision {
    super::policy::no_rules()
}

/// A configuration whose workers cannot start (no such Julia).
fn config(size: u32, supervision: Supervision) -> Config {
    let listener = std::fs::File::open("/dev/null").unwrap();
    Config {
        spec: Arc::new(Spec {
            julia: PathBuf::from("/nonexistent/julia"),
            worker_file: PathBuf::from("/nonexistent/worker.jl"),
            env: Vec::new(),
            listener: Arc::new(listener.into()),
            cgroups: None,
            limits: Default::default(),
            scoreboard: None,
            image: None,
            sysimage: Default::default(),
        }),
        options: Options {
            size,
            start_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            listening_on: "unix:/test.sock".into(),
        },
        supervision,
    }
}

fn pool(size: u32) -> Pool {
    let (reports, _) = watch::channel(Arc::new(Report::default()));
    Pool::new(
        config(size, rules()),
        None,
        None,
        Arc::new(Notifier::default()),
        reports,
    )
}

fn worker(number: u32, pid: u32, generation: u64) -> Worker {
    Worker::new(
        Handle::detached(number, pid),
        generation,
        0,
        Instant::now() + Duration::from_secs(120),
    )
}

fn ready(number: u32, pid: u32, generation: u64) -> Worker {
    let mut worker = worker(number, pid, generation);
    worker.life.ready().unwrap();
    worker
}

fn exit(number: u32, pid: u32, signal: i32, planned: Option<&str>) -> Exit {
    Exit {
        slot: number,
        pid,
        status: Some(ExitStatus::from_raw(signal)),
        planned: planned.map(str::to_owned),
        stderr_tail: vec!["ERROR: boom".into()],
        memory: None,
    }
}

fn idle(requests: u64, finished_ns: u64) -> Snapshot {
    Snapshot {
        pid: 0,
        state: State::Idle,
        requests,
        started_ns: 0,
        last_duration: Duration::ZERO,
        last_finished_ns: finished_ns,
        method: String::new(),
        uri: String::new(),
        parked: 0,
    }
}

/// A serving one-slot pool whose ready worker has a successor warming up.
fn replacing(successor_generation: u64, replaces: EndReason) -> Pool {
    let mut pool = pool(1);
    pool.phase = Phase::Serving;
    pool.slots[0].current = Current::Worker(ready(1, PID + 1, 1));
    pool.slots[0].successor = Some(Successor {
        worker: worker(1, PID + 2, successor_generation),
        replaces,
    });
    pool
}

fn life(pool: &Pool, index: usize) -> &Life {
    &pool.slots[index].worker().expect("a worker").life
}

#[test]
fn the_pool_serves_once_every_worker_is_ready() {
    let mut pool = pool(2);
    pool.slots[0].current = Current::Worker(worker(1, PID + 1, 1));
    pool.slots[1].current = Current::Worker(worker(2, PID + 2, 1));
    pool.on_ready(1, PID + 1);
    assert!(pool.ever_ready);
    assert!(matches!(pool.phase, Phase::Starting));
    assert_eq!(pool.status_text(), "starting workers: 1/2 ready");
    // A READY from a pid the slot does not have is ignored.
    pool.on_ready(2, PID + 99);
    assert!(matches!(pool.phase, Phase::Starting));
    pool.on_ready(2, PID + 2);
    assert!(matches!(pool.phase, Phase::Serving));
    assert_eq!(pool.status_text(), "2/2 workers ready");
}

#[test]
fn what_a_starting_worker_is_busy_with_shows_until_it_is_ready() {
    let mut pool = pool(1);
    pool.slots[0].current = Current::Worker(worker(1, PID + 1, 1));
    let starting = crate::worker::Event::Starting {
        slot: 1,
        pid: PID + 1,
        what: "loading package A (1 of 2)".into(),
    };
    pool.on_event(starting).unwrap();
    assert!(pool
        .status_text()
        .ends_with("; worker 1: loading package A (1 of 2)"));
    pool.on_ready(1, PID + 1);
    assert_eq!(pool.status_text(), "1/1 workers ready");
}

#[test]
fn a_late_starter_is_killed_and_its_exit_backs_off() {
    let mut pool = pool(1);
    let mut late = worker(1, PID + 1, 1);
    late.life = Life::spawned(Instant::now());
    pool.slots[0].current = Current::Worker(late);
    assert!(pool.next_deadline().unwrap() <= Instant::now());
    pool.on_deadlines();
    assert!(matches!(
        life(&pool, 0),
        Life::Killed {
            why: EndReason::StartTimeout,
            ..
        }
    ));
    // Killed: no deadline left, nothing for the timer to wake up for.
    assert_eq!(pool.next_deadline(), None);
    // A READY that was on its way is refused.
    pool.on_ready(1, PID + 1);
    assert!(!pool.ever_ready);
    pool.on_exit(exit(1, PID + 1, 9, None)).unwrap();
    let start_at = pool.slots[0].start_at().expect("vacant");
    let pause = start_at.saturating_duration_since(Instant::now());
    assert!(pause > Duration::from_millis(900), "{pause:?}");
    assert_eq!(pool.slots[0].history.start_failures(), 1);
    assert!(pool
        .status_text()
        .contains("worker 1 cannot start (1 failures)"));
}

#[test]
fn workers_that_never_start_end_the_pool_before_it_served() {
    let mut pool = pool(1);
    for attempt in 1..=3 {
        pool.slots[0].current = Current::Worker(worker(1, PID + attempt, 1));
        let result = pool.on_exit(exit(1, PID + attempt, 9, None));
        match (attempt, result) {
            (1 | 2, Ok(())) => {}
            (3, Err(PoolError::CannotStart { attempts, cause })) => {
                assert_eq!(attempts, 3);
                assert!(cause.contains("ERROR: boom"), "{cause}");
            }
            (n, other) => panic!("attempt {n}: {other:?}"),
        }
    }
}

#[test]
fn a_ready_worker_that_dies_is_replaced_at_once_and_counted() {
    let mut pool = pool(1);
    pool.ever_ready = true;
    let mut dead = ready(1, PID + 1, 1);
    dead.last = Some(idle(7, 0));
    pool.slots[0].current = Current::Worker(dead);
    pool.on_exit(exit(1, PID + 1, 6, None)).unwrap();
    assert!(pool.slots[0].start_at().unwrap() <= Instant::now());
    assert_eq!(pool.stats.restarts().crash, 1);
    // What it served stays counted.
    assert!(pool.stats.load_text([]).ends_with("; 7 requests"));
}

#[test]
fn a_worker_ended_by_a_policy_left_and_is_no_crash() {
    let mut pool = pool(1);
    pool.ever_ready = true;
    let mut slow = ready(1, PID + 1, 1);
    slow.terminate(Instant::now() + Duration::from_secs(2))
        .unwrap();
    pool.slots[0].current = Current::Worker(slow);
    // Not ready any more: the slot does not count as serving.
    assert_eq!(pool.status_text(), "starting workers: 0/1 ready");
    pool.on_exit(exit(1, PID + 1, 15, Some("stopping")))
        .unwrap();
    let restarts = pool.stats.restarts();
    assert_eq!((restarts.timeout, restarts.crash, restarts.exit), (1, 0, 0));
    assert!(pool.slots[0].start_at().unwrap() <= Instant::now());
    // A page's exit() counts as an exit.
    pool.slots[0].current = Current::Worker(ready(1, PID + 2, 1));
    pool.on_exit(exit(1, PID + 2, 0, Some("page called exit()")))
        .unwrap();
    assert_eq!(pool.stats.restarts().exit, 1);
}

#[test]
fn a_ready_successor_takes_over_and_the_old_worker_leaves() {
    let mut pool = replacing(2, EndReason::Retired);
    pool.on_ready(1, PID + 2);
    let current = pool.slots[0].worker().unwrap();
    assert_eq!(current.handle.pid, PID + 2);
    assert!(current.life.is_ready());
    assert!(pool.slots[0].successor.is_none());
    assert_eq!(pool.leaving.len(), 1);
    assert!(matches!(
        pool.leaving[0].life,
        Life::Ending {
            why: EndReason::Retired,
            ..
        }
    ));
    // Still busy after the grace: killed, then gone once reaped.
    let grace_over = Instant::now() + Duration::from_secs(11);
    assert!(pool.next_deadline().unwrap() < grace_over);
    pool.leaving[0].life = Life::Ending {
        why: EndReason::Retired,
        kill_at: Instant::now(),
    };
    pool.on_deadlines();
    assert!(matches!(pool.leaving[0].life, Life::Killed { .. }));
    pool.on_exit(exit(1, PID + 1, 9, None)).unwrap();
    assert!(pool.leaving.is_empty());
    assert_eq!(pool.stats.restarts(), &Default::default());
}

#[test]
fn a_successor_that_dies_leaves_the_current_worker_serving() {
    let cause = super::life::RecycleCause::MaxRequests { served: 5 };
    let mut pool = replacing(1, EndReason::Recycled(cause));
    pool.on_exit(exit(1, PID + 2, 9, None)).unwrap();
    assert!(pool.slots[0].successor.is_none());
    assert!(pool.slots[0].is_ready());
    assert_eq!(pool.slots[0].history.start_failures(), 1);
}

#[test]
fn the_next_deadline_is_the_earliest_of_all_lives() {
    let mut pool = pool(2);
    let now = Instant::now();
    let mut soon = worker(1, PID + 1, 1);
    soon.life = Life::spawned(now + Duration::from_secs(3));
    pool.slots[0].current = Current::Worker(soon);
    pool.slots[1].current = Current::Worker(ready(2, PID + 2, 1));
    let mut leaving = ready(3, PID + 3, 1);
    leaving
        .stop(EndReason::ScaledDown, now + Duration::from_secs(1))
        .unwrap();
    pool.leaving.push(leaving);
    assert_eq!(pool.next_deadline(), Some(now + Duration::from_secs(1)));
    pool.leaving.clear();
    assert_eq!(pool.next_deadline(), Some(now + Duration::from_secs(3)));
}

#[tokio::test]
async fn a_reload_applies_the_new_policies_and_an_abort_restores_the_old() {
    let mut pool = pool(1);
    pool.phase = Phase::Serving;
    pool.slots[0].current = Current::Worker(ready(1, PID + 1, 1));
    let stricter = Supervision {
        request_terminate_timeout: Some(Duration::from_secs(5)),
        request_slowlog_timeout: Some(Duration::from_secs(1)),
        max_requests: 100,
        recycle_memory: Some(256 << 20),
        pm: ProcessManager::Dynamic {
            max_children: 4,
            min_spare: 1,
            max_spare: 2,
            idle_timeout: Duration::from_secs(10),
        },
        ..rules()
    };
    pool.begin_reload(config(2, stricter.clone()));
    assert_eq!(pool.config.supervision, stricter);
    assert_eq!(pool.slots.len(), 2);
    assert!(matches!(pool.phase, Phase::Reloading { .. }));
    // Its workers cannot start (no such Julia): the reload is given up,
    // and everything the old configuration said applies again.
    pool.advance_reload();
    assert!(matches!(pool.phase, Phase::Serving));
    assert_eq!(pool.config.supervision, rules());
    assert_eq!(pool.config.options.size, 1);
    assert_eq!(pool.slots.len(), 1);
    assert_eq!(pool.slots[0].worker().unwrap().generation, pool.generation);
}

#[test]
fn a_reload_while_reloading_falls_back_to_what_served() {
    let mut pool = pool(1);
    pool.phase = Phase::Serving;
    let second = Supervision {
        max_requests: 2,
        ..rules()
    };
    let third = Supervision {
        max_requests: 3,
        ..rules()
    };
    pool.begin_reload(config(1, second));
    pool.begin_reload(config(1, third.clone()));
    assert_eq!(pool.config.supervision, third);
    pool.abort_reload();
    assert_eq!(pool.config.supervision, rules());
}

#[test]
fn a_dynamic_pool_retires_its_idle_extra_worker() {
    let mut pool = pool(1);
    pool.phase = Phase::Serving;
    pool.config.supervision.pm = ProcessManager::Dynamic {
        max_children: 2,
        min_spare: 0,
        max_spare: 1,
        idle_timeout: Duration::from_secs(10),
    };
    pool.slots.push(super::Slot::new(2));
    for (index, pid) in [(0, PID + 1), (1, PID + 2)] {
        let mut w = ready(index as u32 + 1, pid, 1);
        w.last = Some(idle(3, 1_000));
        pool.slots[index].current = Current::Worker(w);
    }
    // Idle for 20 s.
    pool.scale(20_000_001_000, 0);
    assert_eq!(pool.slots.len(), 1);
    assert_eq!(pool.leaving.len(), 1);
    assert!(matches!(
        pool.leaving[0].life,
        Life::Ending {
            why: EndReason::ScaledDown,
            ..
        }
    ));
    assert!(pool.stats.load_text([]).ends_with("; 3 requests"));
}

#[test]
fn the_watchdog_sees_a_missed_deadline() {
    let mut pool = pool(1);
    let mut stuck = ready(1, PID + 1, 1);
    let long_ago = Instant::now()
        .checked_sub(Duration::from_secs(30))
        .expect("the machine is up longer than that");
    stuck.life = Life::Ending {
        why: EndReason::Shutdown,
        kill_at: long_ago,
    };
    assert!(!pool.slots[0].overdue(Instant::now(), super::OVERDUE));
    pool.leaving.push(stuck);
    assert!(pool.leaving[0].life.overdue(Instant::now(), super::OVERDUE));
    pool.slots[0].current = Current::Vacant { start_at: long_ago };
    assert!(pool.slots[0].overdue(Instant::now(), super::OVERDUE));
}
