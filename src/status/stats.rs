//! The pool's counters over its whole life, and the [`Report`] built from
//! them and the live workers' scoreboard slots. The pool says what happened
//! (a restart and its cause, a slow request, a worker gone); what the
//! status page and `STATUS=` make of that is decided here.

use std::path::Path;
use std::time::SystemTime;

use super::report::{micros, Report, Restarts, WorkerReport};
use crate::queue::Queue;
use crate::scoreboard::{Snapshot, State};

/// Why a worker was replaced, as the status page counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// It left on purpose (a page's `exit()`, a STOP).
    Exit,
    /// It died unexpectedly (a signal, an abort).
    Crash,
    /// `request_terminate_timeout` ended it.
    Timeout,
    /// The OOM killer did, at `memory_max`.
    Oom,
    /// `max_requests` or `recycle_memory` replaced it.
    Recycle,
}

/// One worker as the status page shows it.
#[derive(Debug, Clone, Copy)]
pub struct WorkerView<'a> {
    pub number: u32,
    pub pid: u32,
    /// It has not said READY yet.
    pub starting: bool,
    pub started: std::time::Instant,
    /// Its scoreboard slot at the last scan.
    pub last: Option<&'a Snapshot>,
    pub cgroup: Option<&'a Path>,
}

/// What the report says about the pool itself.
#[derive(Debug, Clone)]
pub struct Shape<'a> {
    /// What it serves on.
    pub pool: &'a str,
    pub process_manager: &'static str,
    /// "on (/sys/fs/cgroup/…)" or "off: why".
    pub cgroups: String,
}

/// Counters kept over the pool's life.
#[derive(Debug)]
pub struct Stats {
    started_at: SystemTime,
    /// Requests served by workers that have since left.
    retired_requests: u64,
    restarts: Restarts,
    slow_requests: u64,
    max_children_reached: u64,
    max_listen_queue: u32,
    max_active: u32,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started_at: SystemTime::now(),
            retired_requests: 0,
            restarts: Restarts::default(),
            slow_requests: 0,
            max_children_reached: 0,
            max_listen_queue: 0,
            max_active: 0,
        }
    }
}

impl Stats {
    pub fn restarted(&mut self, why: Restart) {
        let r = &mut self.restarts;
        let counter = match why {
            Restart::Exit => &mut r.exit,
            Restart::Crash => &mut r.crash,
            Restart::Timeout => &mut r.timeout,
            Restart::Oom => &mut r.oom,
            Restart::Recycle => &mut r.recycle,
        };
        *counter += 1;
    }

    pub fn restarts(&self) -> &Restarts {
        &self.restarts
    }

    pub fn slow_request(&mut self) {
        self.slow_requests += 1;
    }

    /// The dynamic pool needed more workers than `max_children` allows.
    pub fn max_children_reached(&mut self) {
        self.max_children_reached += 1;
    }

    /// A worker left the pool's slots; what it served stays counted.
    pub fn worker_left(&mut self, last: Option<&Snapshot>) {
        self.retired_requests += last.map_or(0, |l| l.requests);
    }

    /// The report for the status page, from the live workers' slots as the
    /// last scan saw them and the listen queue now.
    pub fn report<'a>(
        &mut self,
        shape: Shape<'_>,
        workers: impl IntoIterator<Item = WorkerView<'a>>,
        queue: Option<Queue>,
        now_ns: u64,
    ) -> Report {
        let queue = queue.unwrap_or_default();
        self.max_listen_queue = self.max_listen_queue.max(queue.waiting);
        let mut report = Report {
            pool: shape.pool.to_owned(),
            listen: shape.pool.to_owned(),
            process_manager: shape.process_manager,
            listen_queue: queue.waiting,
            max_listen_queue: self.max_listen_queue,
            listen_queue_len: queue.backlog,
            max_children_reached: self.max_children_reached,
            slow_requests: self.slow_requests,
            restarts: self.restarts.clone(),
            cgroups: shape.cgroups,
            started_at: Some(self.started_at),
            ..Report::default()
        };
        let mut accepted = self.retired_requests;
        let mut processes = Vec::new();
        for worker in workers {
            let process = worker_report(&worker, now_ns);
            report.parked_connections += process.parked_connections;
            match process.state {
                "busy" => report.active_processes += 1,
                "idle" => report.idle_processes += 1,
                _ => {}
            }
            report.total_processes += 1;
            if let Some(last) = worker.last {
                // A request in progress has been accepted too.
                accepted += last.requests + u64::from(last.state == State::Busy);
            }
            processes.push(process);
        }
        self.max_active = self.max_active.max(report.active_processes);
        report.max_active_processes = self.max_active;
        report.accepted_conn = accepted;
        report.processes = Some(processes);
        report
    }

    /// "1 idle, 1 busy; 1234 requests", for `STATUS=`, from the slots of
    /// the pool's current workers.
    pub fn load_text<'a>(&self, slots: impl IntoIterator<Item = &'a Snapshot>) -> String {
        let (mut idle, mut busy, mut requests) = (0, 0, self.retired_requests);
        for last in slots {
            requests += last.requests;
            match last.state {
                State::Idle => idle += 1,
                State::Busy => busy += 1,
                _ => {}
            }
        }
        format!("{idle} idle, {busy} busy; {requests} requests")
    }
}

fn worker_report(worker: &WorkerView<'_>, now_ns: u64) -> WorkerReport {
    let last = worker.last;
    let state = match (worker.starting, last.map(|l| l.state)) {
        (true, _) => "starting",
        (_, Some(State::Busy)) => "busy",
        (_, Some(State::Idle)) => "idle",
        (_, Some(State::Stopping)) => "stopping",
        _ => "starting",
    };
    WorkerReport {
        number: worker.number,
        pid: worker.pid,
        state,
        requests: last.map_or(0, |l| l.requests),
        uptime_secs: worker.started.elapsed().as_secs(),
        request_method: last.map(|l| l.method.clone()).unwrap_or_default(),
        request_uri: last.map(|l| l.uri.clone()).unwrap_or_default(),
        request_duration_us: last
            .map(|l| micros(l.busy_for(now_ns).unwrap_or(l.last_duration)))
            .unwrap_or(0),
        parked_connections: last.map_or(0, |l| l.parked),
        memory_current: None,
        cpu_seconds: None,
        cgroup: worker.cgroup.map(Path::to_path_buf),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn snapshot(state: State, requests: u64) -> Snapshot {
        Snapshot {
            pid: 1,
            state,
            requests,
            started_ns: 1_000,
            last_duration: Duration::from_micros(250),
            last_finished_ns: 0,
            method: "GET".into(),
            uri: "/a.jl".into(),
            parked: 0,
        }
    }

    fn view<'a>(number: u32, starting: bool, last: Option<&'a Snapshot>) -> WorkerView<'a> {
        WorkerView {
            number,
            pid: 100 + number,
            starting,
            started: std::time::Instant::now(),
            last,
            cgroup: None,
        }
    }

    fn shape() -> Shape<'static> {
        Shape {
            pool: "unix:/run/x.sock",
            process_manager: "static",
            cgroups: "off".into(),
        }
    }

    #[test]
    fn the_report_counts_workers_by_state_and_keeps_what_left() {
        let mut stats = Stats::default();
        stats.worker_left(Some(&snapshot(State::Idle, 40)));
        stats.restarted(Restart::Crash);
        stats.restarted(Restart::Timeout);
        stats.slow_request();
        // Each holds connections parked: they are counted per worker and in all.
        let busy = Snapshot {
            parked: 2,
            ..snapshot(State::Busy, 5)
        };
        let idle = Snapshot {
            parked: 3,
            ..snapshot(State::Idle, 7)
        };
        let workers = [
            view(1, false, Some(&busy)),
            view(2, false, Some(&idle)),
            view(3, true, None),
        ];
        // The busy worker's request is 1 s in.
        let report = stats.report(shape(), workers, None, 1_000_001_000);
        assert_eq!(report.accepted_conn, 40 + 5 + 1 + 7);
        assert_eq!(
            (
                report.active_processes,
                report.idle_processes,
                report.total_processes
            ),
            (1, 1, 3)
        );
        assert_eq!(report.max_active_processes, 1);
        assert_eq!(report.slow_requests, 1);
        assert_eq!((report.restarts.crash, report.restarts.timeout), (1, 1));
        let processes = report.processes.expect("always listed when built");
        let states: Vec<&str> = processes.iter().map(|p| p.state).collect();
        assert_eq!(states, ["busy", "idle", "starting"]);
        assert_eq!(processes[0].request_duration_us, 1_000_000);
        assert_eq!(processes[1].request_duration_us, 250);
        let parked: Vec<u32> = processes.iter().map(|p| p.parked_connections).collect();
        assert_eq!(
            (parked.as_slice(), report.parked_connections),
            (&[2, 3, 0][..], 5)
        );
        assert_eq!(
            stats.load_text([&busy, &idle]),
            "1 idle, 1 busy; 52 requests"
        );
    }

    #[test]
    fn maxima_stay_at_their_peak() {
        let mut stats = Stats::default();
        let busy = snapshot(State::Busy, 1);
        let queue = Queue {
            waiting: 9,
            backlog: 511,
        };
        stats.report(shape(), [view(1, false, Some(&busy))], Some(queue), 0);
        let report = stats.report(shape(), [], None, 0);
        assert_eq!(report.max_listen_queue, 9);
        assert_eq!(report.listen_queue, 0);
        assert_eq!(report.max_active_processes, 1);
    }
}
