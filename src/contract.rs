//! The master → worker contract: everything a worker is told at start-up,
//! as one typed value, and the environment that carries it.
//!
//! A worker's environment is exactly what [`WorkerContract::env`] returns
//! (the master clears everything else) plus the four per-worker variables
//! the worker actor adds ([`var::WORKER`], [`var::CONTROL_FD`],
//! [`var::SCOREBOARD_FD`], [`var::SCOREBOARD_SLOT`]). The worker parses the
//! same names with the same defaults in `julia/src/Config.jl`, and
//! `julia/INTERFACE.md` ("Start-up") documents each one.
//!
//! Units are in the names and values are integers: every duration is whole
//! milliseconds (`…_MS`), every size whole bytes (`…_BYTES`), so that nothing
//! crosses the boundary as `0.5` for the other side to misread. The config
//! refuses a duration that is not a whole number of milliseconds rather than
//! round it.
//!
//! Adding a setting: a field here, its variable in [`var`] and in
//! [`WorkerContract::env`], its row in INTERFACE.md, its parsing and default
//! in Config.jl, and its case in `tests/contract.rs`, which runs the real
//! Julia side on what this side produces.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Depot, Project, Settings};

/// The variables, by name.
pub mod var {
    pub const HOME: &str = "HOME";
    pub const PATH: &str = "PATH";
    pub const LANG: &str = "LANG";
    pub const LC_ALL: &str = "LC_ALL";
    pub const JULIA_NUM_THREADS: &str = "JULIA_NUM_THREADS";
    pub const JULIA_PROJECT: &str = "JULIA_PROJECT";
    pub const JULIA_DEPOT_PATH: &str = "JULIA_DEPOT_PATH";
    pub const JULIA_LOAD_PATH: &str = "JULIA_LOAD_PATH";
    pub const EXTENSIONS: &str = "JULIA_FCGI_EXTENSIONS";
    pub const DOC_ROOTS: &str = "JULIA_FCGI_DOC_ROOTS";
    pub const DEV: &str = "JULIA_FCGI_DEV";
    pub const ACCESS_LOG: &str = "JULIA_FCGI_ACCESS_LOG";
    pub const MAX_PARAMS_BYTES: &str = "JULIA_FCGI_MAX_PARAMS_BYTES";
    pub const MAX_BODY_BYTES: &str = "JULIA_FCGI_MAX_BODY_BYTES";
    pub const READ_TIMEOUT_MS: &str = "JULIA_FCGI_READ_TIMEOUT_MS";
    pub const FIRST_BYTE_TIMEOUT_MS: &str = "JULIA_FCGI_FIRST_BYTE_TIMEOUT_MS";
    pub const HEADER_TIMEOUT_MS: &str = "JULIA_FCGI_HEADER_TIMEOUT_MS";
    pub const BODY_TIMEOUT_MS: &str = "JULIA_FCGI_BODY_TIMEOUT_MS";
    pub const BODY_MIN_RATE_BYTES_PER_S: &str = "JULIA_FCGI_BODY_MIN_RATE_BYTES_PER_S";
    pub const PRELOAD: &str = "JULIA_FCGI_PRELOAD";
    /// Per worker, set by [`crate::worker`]: its number, 1-based.
    pub const WORKER: &str = "JULIA_FCGI_WORKER";
    /// Per worker: the fd of its control channel.
    pub const CONTROL_FD: &str = "JULIA_FCGI_CONTROL_FD";
    /// Per worker: the fd of the scoreboard file, and its slot in it.
    pub const SCOREBOARD_FD: &str = "JULIA_FCGI_SCOREBOARD_FD";
    pub const SCOREBOARD_SLOT: &str = "JULIA_FCGI_SCOREBOARD_SLOT";
}

/// The defaults both sides use when a setting is not given (Config.jl has
/// the same numbers; `tests/contract.rs` checks that they agree).
pub mod defaults {
    use std::time::Duration;

    pub const EXTENSIONS: &[&str] = &[".jl"];
    pub const MAX_PARAMS_BYTES: u64 = 1 << 20;
    pub const MAX_BODY_BYTES: u64 = 64 << 20;
    pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
    /// A request's deadlines. Every front end sends a request's head (its
    /// params) at once, right after connecting, so a new connection that
    /// has sent nothing after 2 s, or no whole head after 5 s, is no
    /// request on its way (PHP-FPM waits 5 s for the first byte). nginx
    /// sends the body from its own buffer: 20 s, and a second more per
    /// 16 KiB received, is generous for it and leaves room for front ends
    /// that stream a slow client's upload (Apache, HAProxy): 1 MiB may
    /// take 84 s, 64 MiB 68 minutes, a byte a second holds a worker 20 s.
    pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(20);
    pub const BODY_MIN_RATE_BYTES_PER_S: u64 = 16 << 10;
    /// One thread unless the operator asks for more: since Julia 1.12 the
    /// default adds an interactive thread, which a worker serving one
    /// request at a time from blocking system calls has no use for.
    pub const JULIA_NUM_THREADS: &str = "1";
    pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
}

/// `d` in whole milliseconds, if it is a whole, non-zero number of them
/// that the worker's `Int` can hold.
pub fn whole_millis(d: Duration) -> Option<u64> {
    let ms = u64::try_from(d.as_millis()).ok()?;
    (ms > 0 && ms <= i64::MAX as u64 && d.subsec_nanos() % 1_000_000 == 0).then_some(ms)
}

/// What every worker of one configuration is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerContract {
    pub home: PathBuf,
    pub path: OsString,
    /// `LANG` and `LC_ALL`, those of them the master has.
    pub locale: Vec<(&'static str, OsString)>,
    pub julia_num_threads: OsString,
    pub extensions: Vec<String>,
    pub document_roots: Vec<PathBuf>,
    pub development: bool,
    pub access_log: bool,
    pub max_params_bytes: u64,
    pub max_body_bytes: u64,
    pub read_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub body_min_rate_bytes_per_s: u64,
    /// `JULIA_PROJECT`, `JULIA_DEPOT_PATH`, `JULIA_LOAD_PATH` as passed.
    pub project: Option<OsString>,
    pub depot_path: Option<OsString>,
    pub load_path: Option<OsString>,
    pub preload: Vec<String>,
}

impl From<&Settings> for WorkerContract {
    fn from(settings: &Settings) -> Self {
        let pages = &settings.pages;
        let env = &settings.environment;
        let packages = &settings.packages;
        WorkerContract {
            home: settings.home.clone(),
            path: env
                .var(var::PATH)
                .map_or_else(|| defaults::PATH.into(), ToOwned::to_owned),
            locale: [var::LANG, var::LC_ALL]
                .into_iter()
                .filter_map(|name| Some((name, env.var(name)?.to_owned())))
                .collect(),
            julia_num_threads: env
                .var(var::JULIA_NUM_THREADS)
                .map_or_else(|| defaults::JULIA_NUM_THREADS.into(), ToOwned::to_owned),
            extensions: pages.extensions.clone(),
            document_roots: pages.document_roots.clone(),
            development: pages.development,
            access_log: pages.access_log,
            max_params_bytes: pages.max_params_bytes,
            max_body_bytes: pages.max_body_bytes,
            read_timeout_ms: millis(pages.read_timeout),
            first_byte_timeout_ms: millis(pages.deadlines.first_byte),
            header_timeout_ms: millis(pages.deadlines.header),
            body_timeout_ms: millis(pages.deadlines.body),
            body_min_rate_bytes_per_s: pages.deadlines.body_min_rate,
            project: packages.project.as_ref().map(|project| match project {
                Project::Configured(dir) => dir.clone().into_os_string(),
                Project::Inherited(value) => value.clone(),
            }),
            depot_path: Some(depot_path(&packages.depot)),
            load_path: packages.load_path.clone(),
            preload: packages
                .preload
                .iter()
                .map(|name| name.as_str().to_owned())
                .collect(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    whole_millis(d).expect("the config admits only whole milliseconds")
}

/// The depot julia-fcgi chose goes first, where Julia writes; the trailing
/// `:` appends Julia's own default depots, so that the compiled caches of
/// the standard library that come with Julia are still found (without
/// them, Julia 1.9+ would compile the standard library again into the
/// depot). An inherited `JULIA_DEPOT_PATH` is the operator's and passes
/// as it is.
fn depot_path(depot: &Depot) -> OsString {
    match depot {
        Depot::Inherited(value) => value.clone(),
        Depot::Configured(dir) | Depot::StateDirectory(dir) | Depot::Home(dir) => {
            let mut value = dir.as_os_str().to_owned();
            value.push(":");
            value
        }
    }
}

fn flag(on: bool) -> OsString {
    if on { "1" } else { "0" }.into()
}

impl WorkerContract {
    /// The workers' whole environment (but the per-worker variables).
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = vec![
            (var::HOME.into(), self.home.clone().into_os_string()),
            (var::PATH.into(), self.path.clone()),
            (
                var::JULIA_NUM_THREADS.into(),
                self.julia_num_threads.clone(),
            ),
            (var::EXTENSIONS.into(), self.extensions.join(",").into()),
            (
                var::DOC_ROOTS.into(),
                std::env::join_paths(&self.document_roots)
                    .expect("the config admits no ':' in document roots"),
            ),
            (var::DEV.into(), flag(self.development)),
            (var::ACCESS_LOG.into(), flag(self.access_log)),
            (
                var::MAX_PARAMS_BYTES.into(),
                self.max_params_bytes.to_string().into(),
            ),
            (
                var::MAX_BODY_BYTES.into(),
                self.max_body_bytes.to_string().into(),
            ),
            (
                var::READ_TIMEOUT_MS.into(),
                self.read_timeout_ms.to_string().into(),
            ),
            (
                var::FIRST_BYTE_TIMEOUT_MS.into(),
                self.first_byte_timeout_ms.to_string().into(),
            ),
            (
                var::HEADER_TIMEOUT_MS.into(),
                self.header_timeout_ms.to_string().into(),
            ),
            (
                var::BODY_TIMEOUT_MS.into(),
                self.body_timeout_ms.to_string().into(),
            ),
            (
                var::BODY_MIN_RATE_BYTES_PER_S.into(),
                self.body_min_rate_bytes_per_s.to_string().into(),
            ),
            (var::PRELOAD.into(), self.preload.join(",").into()),
        ];
        env.extend(
            self.locale
                .iter()
                .map(|(name, value)| ((*name).into(), value.clone())),
        );
        for (name, value) in [
            (var::JULIA_PROJECT, &self.project),
            (var::JULIA_DEPOT_PATH, &self.depot_path),
            (var::JULIA_LOAD_PATH, &self.load_path),
        ] {
            if let Some(value) = value {
                env.push((name.into(), value.clone()));
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_milliseconds_cross() {
        assert_eq!(whole_millis(Duration::from_millis(500)), Some(500));
        assert_eq!(whole_millis(Duration::from_secs_f64(1.5)), Some(1500));
        assert_eq!(whole_millis(Duration::from_secs(60)), Some(60_000));
        assert_eq!(whole_millis(Duration::from_micros(1500)), None);
        assert_eq!(whole_millis(Duration::ZERO), None);
        assert_eq!(whole_millis(Duration::from_secs(u64::MAX)), None);
    }
}
