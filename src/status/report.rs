//! What the status page says, and its three formats: text (PHP-FPM's
//! layout), JSON (PHP-FPM's field names) and OpenMetrics (for Prometheus,
//! through the `prometheus-client` crate).

use std::borrow::Cow;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Workers replaced, by why.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Restarts {
    /// The page called exit().
    pub exit: u64,
    /// Died unexpectedly (signal, abort).
    pub crash: u64,
    /// Stopped by request_terminate_timeout.
    pub timeout: u64,
    /// Killed by the OOM killer at memory_max.
    pub oom: u64,
    /// Replaced by max_requests or recycle_memory.
    pub recycle: u64,
}

/// One worker process.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    pub number: u32,
    pub pid: u32,
    pub state: &'static str,
    pub requests: u64,
    #[serde(rename = "start since")]
    pub uptime_secs: u64,
    #[serde(rename = "request method")]
    pub request_method: String,
    #[serde(rename = "request uri")]
    pub request_uri: String,
    /// Of the current request when busy, else of the last one.
    #[serde(rename = "request duration")]
    pub request_duration_us: u64,
    /// Connections it holds parked: accepted, their request head awaited.
    #[serde(rename = "parked connections")]
    pub parked_connections: u32,
    #[serde(rename = "memory current", skip_serializing_if = "Option::is_none")]
    pub memory_current: Option<u64>,
    #[serde(rename = "cpu seconds", skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    #[serde(skip)]
    pub cgroup: Option<PathBuf>,
}

/// The pool, as PHP-FPM's status page names things where they mean the same.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The pool's name; a pool without one is called by what it serves on.
    pub pool: String,
    /// What it serves on ("unix:/run/julia-fcgi/blog.sock", "10.0.0.5:4545").
    pub listen: String,
    #[serde(rename = "process manager")]
    pub process_manager: &'static str,
    #[serde(rename = "start time")]
    pub start_time: u64,
    #[serde(rename = "start since")]
    pub start_since: u64,
    #[serde(rename = "accepted conn")]
    pub accepted_conn: u64,
    #[serde(rename = "listen queue")]
    pub listen_queue: u32,
    #[serde(rename = "max listen queue")]
    pub max_listen_queue: u32,
    #[serde(rename = "listen queue len")]
    pub listen_queue_len: u32,
    /// Connections the workers hold parked until their request head comes:
    /// clients that wait as those in the listen queue do, but out of it
    /// (julia/INTERFACE.md, "Deadlines").
    #[serde(rename = "parked connections")]
    pub parked_connections: u32,
    #[serde(rename = "idle processes")]
    pub idle_processes: u32,
    #[serde(rename = "active processes")]
    pub active_processes: u32,
    #[serde(rename = "total processes")]
    pub total_processes: u32,
    #[serde(rename = "max active processes")]
    pub max_active_processes: u32,
    #[serde(rename = "max children reached")]
    pub max_children_reached: u64,
    #[serde(rename = "slow requests")]
    pub slow_requests: u64,
    pub restarts: Restarts,
    /// "on (/sys/fs/cgroup/…)" or "off: why".
    pub cgroups: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<WorkerReport>>,
    #[serde(skip)]
    pub started_at: Option<SystemTime>,
    /// The pool's name when it has one: the `pool` label of every metric.
    #[serde(skip)]
    pub name: Option<String>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            pool: String::new(),
            listen: String::new(),
            process_manager: "static",
            start_time: 0,
            start_since: 0,
            accepted_conn: 0,
            listen_queue: 0,
            max_listen_queue: 0,
            listen_queue_len: 0,
            parked_connections: 0,
            idle_processes: 0,
            active_processes: 0,
            total_processes: 0,
            max_active_processes: 0,
            max_children_reached: 0,
            slow_requests: 0,
            restarts: Restarts::default(),
            cgroups: String::new(),
            processes: Some(Vec::new()),
            started_at: None,
            name: None,
        }
    }
}

impl Report {
    /// Fills in what is read at the moment of asking: uptime, and with
    /// `full` each worker's memory and CPU from its cgroup; without `full`
    /// the per-worker list is left out.
    pub fn finish(mut self, full: bool) -> Report {
        let now = SystemTime::now();
        if let Some(started) = self.started_at {
            self.start_time = started
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            self.start_since = now.duration_since(started).unwrap_or_default().as_secs();
        }
        if !full {
            self.processes = None;
        } else if let Some(workers) = &mut self.processes {
            for w in workers {
                if let Some(dir) = &w.cgroup {
                    w.memory_current = crate::cgroup::memory_current_at(dir);
                    w.cpu_seconds = crate::cgroup::cpu_usage_at(dir).map(|d| d.as_secs_f64());
                }
            }
        }
        self
    }

    /// The report of the pool called `name` (none: called by its address).
    pub fn named(mut self, name: Option<&crate::config::PoolName>) -> Report {
        if let Some(name) = name {
            self.pool = name.to_string();
            self.name = Some(name.to_string());
        }
        self
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(out, "{:<21}{v}", format!("{k}:"));
        };
        line("pool", &self.pool);
        line("listen", &self.listen);
        line("process manager", &self.process_manager);
        line("start time", &self.start_time);
        line("start since", &self.start_since);
        line("accepted conn", &self.accepted_conn);
        line("listen queue", &self.listen_queue);
        line("max listen queue", &self.max_listen_queue);
        line("listen queue len", &self.listen_queue_len);
        line("parked connections", &self.parked_connections);
        line("idle processes", &self.idle_processes);
        line("active processes", &self.active_processes);
        line("total processes", &self.total_processes);
        line("max active processes", &self.max_active_processes);
        line("max children reached", &self.max_children_reached);
        line("slow requests", &self.slow_requests);
        let r = &self.restarts;
        line(
            "restarts",
            &format!(
                "exit {} crash {} timeout {} oom {} recycle {}",
                r.exit, r.crash, r.timeout, r.oom, r.recycle
            ),
        );
        line("cgroups", &self.cgroups);
        for w in self.processes.iter().flatten() {
            out.push_str("\n************************\n");
            let mut line = |k: &str, v: &dyn std::fmt::Display| {
                let _ = writeln!(out, "{:<21}{v}", format!("{k}:"));
            };
            line("worker", &w.number);
            line("pid", &w.pid);
            line("state", &w.state);
            line("requests", &w.requests);
            line("start since", &w.uptime_secs);
            line("request method", &w.request_method);
            line("request uri", &w.request_uri);
            line("request duration", &w.request_duration_us);
            line("parked connections", &w.parked_connections);
            if let Some(m) = w.memory_current {
                line("memory current", &m);
            }
            if let Some(c) = w.cpu_seconds {
                line("cpu seconds", &format!("{c:.3}"));
            }
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    /// The Prometheus / OpenMetrics exposition; a named pool's samples all
    /// carry its `pool` label, so one scrape job tells the pools apart.
    pub fn openmetrics(&self) -> String {
        let labels = self
            .name
            .iter()
            .map(|name| (Cow::Borrowed("pool"), Cow::Owned(name.clone())));
        let mut registry = Registry::with_prefix_and_labels("julia_fcgi", labels);
        for (name, help, value) in self.metrics() {
            match value {
                Metric::Counter(n) => {
                    let counter: Counter = Counter::default();
                    counter.inc_by(n);
                    registry.register(name, help, counter);
                }
                Metric::Gauge(n) => {
                    let gauge: Gauge = Gauge::default();
                    gauge.set(n);
                    registry.register(name, help, gauge);
                }
            }
        }
        let restarts = Family::<Vec<(String, String)>, Counter>::default();
        for (cause, n) in [
            ("exit", self.restarts.exit),
            ("crash", self.restarts.crash),
            ("timeout", self.restarts.timeout),
            ("oom", self.restarts.oom),
            ("recycle", self.restarts.recycle),
        ] {
            restarts
                .get_or_create(&vec![("cause".to_owned(), cause.to_owned())])
                .inc_by(n);
        }
        registry.register("worker_restarts", "Workers replaced, by cause", restarts);
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }

    /// The pool's figures as metrics: name, help, value.
    fn metrics(&self) -> [(&'static str, &'static str, Metric); 12] {
        use Metric::{Counter as C, Gauge as G};
        [
            (
                "accepted_connections",
                "Requests accepted by the pool",
                C(self.accepted_conn),
            ),
            (
                "listen_queue",
                "Connections waiting in the listen queue",
                G(self.listen_queue.into()),
            ),
            (
                "max_listen_queue",
                "Most connections seen waiting",
                G(self.max_listen_queue.into()),
            ),
            (
                "listen_queue_len",
                "Size of the listen queue (backlog)",
                G(self.listen_queue_len.into()),
            ),
            (
                "parked_connections",
                "Connections workers hold parked, waiting for their request head",
                G(self.parked_connections.into()),
            ),
            (
                "idle_processes",
                "Idle workers",
                G(self.idle_processes.into()),
            ),
            (
                "active_processes",
                "Busy workers",
                G(self.active_processes.into()),
            ),
            ("total_processes", "Workers", G(self.total_processes.into())),
            (
                "max_active_processes",
                "Most workers busy at once",
                G(self.max_active_processes.into()),
            ),
            (
                "max_children_reached",
                "Times the dynamic pool hit max_children",
                C(self.max_children_reached),
            ),
            (
                "slow_requests",
                "Requests past request_slowlog_timeout",
                C(self.slow_requests),
            ),
            (
                "start_time_seconds",
                "When the pool started (Unix time)",
                G(i64::try_from(self.start_time).unwrap_or(i64::MAX)),
            ),
        ]
    }
}

/// One figure of the OpenMetrics exposition.
#[derive(Debug, Clone, Copy)]
enum Metric {
    /// Only ever grows.
    Counter(u64),
    /// Goes up and down.
    Gauge(i64),
}

/// Microseconds, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_has_every_figure_in_order_and_each_restart_cause() {
        let report = Report {
            accepted_conn: 7,
            listen_queue: 1,
            parked_connections: 4,
            total_processes: 2,
            max_children_reached: 3,
            start_time: 1_700_000_000,
            restarts: Restarts {
                crash: 2,
                ..Restarts::default()
            },
            ..Report::default()
        };
        let text = report.openmetrics();
        let order = [
            "# TYPE julia_fcgi_accepted_connections counter",
            "julia_fcgi_accepted_connections_total 7",
            "# TYPE julia_fcgi_listen_queue gauge",
            "julia_fcgi_listen_queue 1",
            "# TYPE julia_fcgi_parked_connections gauge",
            "julia_fcgi_parked_connections 4",
            "julia_fcgi_total_processes 2",
            "julia_fcgi_max_children_reached_total 3",
            "julia_fcgi_start_time_seconds 1700000000",
            "julia_fcgi_worker_restarts_total{cause=\"crash\"} 2",
            "# EOF",
        ];
        let mut from = 0;
        for line in order {
            let at = text[from..]
                .find(line)
                .unwrap_or_else(|| panic!("{line:?} after byte {from} in\n{text}"));
            from += at + line.len();
        }
        assert_eq!(text.matches("# HELP").count(), 13, "{text}");
        assert!(
            !text.contains("pool="),
            "an unnamed pool has no label: {text}"
        );
    }

    #[test]
    fn a_named_pool_labels_every_sample_and_says_its_name() {
        let name = crate::config::PoolName::parse("blog").unwrap();
        let report = Report {
            pool: "unix:/run/julia-fcgi/blog.sock".into(),
            listen: "unix:/run/julia-fcgi/blog.sock".into(),
            accepted_conn: 3,
            ..Report::default()
        }
        .named(Some(&name));
        let text = report.openmetrics();
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(samples.len(), 12 + 5, "{text}");
        for sample in &samples {
            assert!(sample.contains("pool=\"blog\""), "{sample}");
        }
        assert!(
            text.contains("julia_fcgi_worker_restarts_total{pool=\"blog\",cause=\"crash\"} 0")
                || text
                    .contains("julia_fcgi_worker_restarts_total{cause=\"crash\",pool=\"blog\"} 0"),
            "{text}"
        );
        assert!(
            report.text().starts_with("pool:                blog\n"),
            "{}",
            report.text()
        );
        assert!(report
            .text()
            .contains("listen:              unix:/run/julia-fcgi/blog.sock\n"));
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["pool"], "blog");
        assert_eq!(json["listen"], "unix:/run/julia-fcgi/blog.sock");
    }
}
