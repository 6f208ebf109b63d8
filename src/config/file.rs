//! The config file as written: [`FileConfig`] is exactly what the TOML may
//! say, nothing interpreted yet.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::cli::Cli;

/// The TOML file, as written. Every key is optional; unknown keys are errors
/// so that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub julia: Option<PathBuf>,
    pub worker: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub workers: Option<u32>,
    pub backlog: Option<u32>,
    pub socket_mode: Option<String>,
    pub socket_owner: Option<String>,
    pub log_level: Option<String>,
    /// Where logs go: "auto" (the journal when stderr is connected to it),
    /// "journal" or "stderr".
    pub log_target: Option<String>,
    /// Service user when started as root.
    pub user: Option<String>,
    pub group: Option<String>,
    /// Let pages run as root. Never in production.
    pub allow_to_run_as_root: Option<bool>,
    /// Page extensions that may run (PHP-FPM's `security.limit_extensions`).
    pub limit_extensions: Option<Vec<String>>,
    /// Directories outside which no page runs; empty means anywhere.
    pub document_roots: Option<Vec<PathBuf>>,
    /// Show exceptions and backtraces in 500 responses (never in production).
    pub development: Option<bool>,
    /// One log entry per request: method, URI, status, duration, worker.
    pub access_log: Option<bool>,
    pub max_params_bytes: Option<u64>,
    pub max_body_bytes: Option<u64>,
    /// How long a connection may stay silent while a request is read.
    pub read_timeout: Option<String>,
    /// How long a new connection may send nothing at all.
    pub first_byte_timeout: Option<String>,
    /// How long a request's params may take, from the accept.
    pub header_timeout: Option<String>,
    /// How long its body may take, from the end of the params…
    pub body_timeout: Option<String>,
    /// …plus a second per this many bytes received ("16K", or 16384).
    pub body_min_rate: Option<Rate>,
    /// How long a worker may take from spawn to ready.
    pub worker_start_timeout: Option<String>,
    /// How long a stop waits for requests in progress before killing.
    pub shutdown_grace: Option<String>,
    /// How long the workers go on serving after `/ready` turned 503 at the
    /// start of a stop, so that load balancers see it first.
    pub drain_delay: Option<String>,
    /// Where the scoreboard lives (default: systemd's RUNTIME_DIRECTORY).
    pub runtime_dir: Option<PathBuf>,
    /// The status page's socket: a unix path or a loopback HOST:PORT
    /// (default: status.sock in the runtime directory).
    pub status_listen: Option<String>,
    /// The cgroup subtree to manage instead of the process's own, or
    /// "none" for no per-worker cgroups.
    pub cgroup_root: Option<String>,
    /// Per-worker cgroup limits: sizes like "512M", or "max".
    pub memory_max: Option<String>,
    pub memory_high: Option<String>,
    pub memory_swap_max: Option<String>,
    pub pids_max: Option<String>,
    pub cpu_weight: Option<u64>,
    /// A request running longer gets its worker stopped and replaced.
    pub request_terminate_timeout: Option<String>,
    /// A request running longer is logged once as slow.
    pub request_slowlog_timeout: Option<String>,
    /// A worker is replaced after this many requests (0: never)…
    pub max_requests: Option<u64>,
    /// …plus a random 0..jitter, so workers do not all recycle at once.
    pub max_requests_jitter: Option<u64>,
    /// A worker whose cgroup memory stays above this after a request is
    /// replaced gracefully.
    pub recycle_memory: Option<String>,
    /// "static": always `workers`; "dynamic": between `workers` and
    /// `max_children`, by demand.
    pub pm: Option<String>,
    pub max_children: Option<u32>,
    pub min_spare: Option<u32>,
    pub max_spare: Option<u32>,
    /// How long an extra worker may sit idle before it is retired.
    pub idle_timeout: Option<String>,
    /// The pool's Julia project: a directory with a Project.toml, the
    /// workers' `JULIA_PROJECT`.
    pub project: Option<PathBuf>,
    /// The workers' Julia depot (where packages and compiled caches go);
    /// must be writable by the service user.
    pub depot: Option<PathBuf>,
    /// Packages every worker loads at start-up, before it is ready.
    pub preload: Option<Vec<String>>,
    /// The pool sysimage: "auto", "off" or an image's absolute path.
    pub sysimage: Option<String>,
    /// Standard libraries and project packages compiled into the image.
    pub sysimage_packages: Option<Vec<String>>,
    /// What `julia-fcgi sysimage build` builds on: "julia" or "minimal".
    pub sysimage_base: Option<String>,
    /// A directory where workers record what they compile, for the next build.
    pub sysimage_trace: Option<PathBuf>,
    /// The pool's name: the status page, the `pool` label of the metrics
    /// and `POOL=` in the journal (default: the `julia-fcgi@NAME` instance).
    pub pool: Option<String>,
    /// Where `GET /ping` and `GET /ready` alone are served over HTTP, for
    /// load balancers: any address, a private interface included.
    pub health_listen: Option<String>,
}

/// Bytes per second, as written: a number, or a size like "16K".
#[derive(Debug, Clone)]
pub enum Rate {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Rate;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes per second: a whole number, or a size like \"16K\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Rate, E> {
                Ok(Rate::Bytes(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Rate, E> {
                u64::try_from(n)
                    .map(Rate::Bytes)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Rate, E> {
                Ok(Rate::Text(text.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl FileConfig {
    /// The file `-c` names, or an empty one when there is none.
    pub fn of(cli: &Cli) -> Result<Self, ConfigError> {
        match &cli.config {
            Some(path) => Self::load(path),
            None => Ok(Self::default()),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| {
            // Name the line, so the setting at fault is obvious.
            let place = e.span().map(|span| {
                let line_no = text[..span.start].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                format!("line {line_no} (`{line}`): ")
            });
            ConfigError::Parse {
                path: path.to_owned(),
                message: format!("{}{}", place.unwrap_or_default(), e.message()),
            }
        })
    }
}
