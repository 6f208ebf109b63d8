//! Configuration: command-line flags over a TOML file over built-in defaults.
//!
//! Loading is data first ([`FileConfig`] is exactly what the file may say),
//! then [`Settings::resolve`] validates everything into typed values. Nothing
//! here binds, spawns or writes: a bad setting is reported before anything
//! happens, and a reload can validate a new file without disturbing the pool.

use std::ffi::OsString;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::Cli;

mod supervision;
mod values;

use crate::privileges::{self, Identity};
use supervision::process_manager;
pub use supervision::{ProcessManager, Supervision};
use values::{duration, optional_duration, parse_mode, size, status_addr};
pub use values::{parse_duration, ListenAddr};

/// The default service user, created by the packages.
pub const DEFAULT_USER: &str = "julia-fcgi";

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The journal when stderr is connected to it (`JOURNAL_STREAM`).
    Auto,
    Journal,
    Stderr,
}

/// Where the installed worker lives (the packages put it there).
pub const INSTALLED_WORKER: &str = "/usr/share/julia-fcgi/worker.jl";

/// A setting that cannot be used, said precisely enough to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

pub(super) fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

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
    /// How long a worker may take from spawn to ready.
    pub worker_start_timeout: Option<String>,
    /// How long a stop waits for requests in progress before killing.
    pub shutdown_grace: Option<String>,
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
}

impl FileConfig {
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

/// What the workers need to know about running pages (passed to them in
/// their environment, see `julia/INTERFACE.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSettings {
    pub extensions: Vec<String>,
    pub document_roots: Vec<PathBuf>,
    pub development: bool,
    pub max_params_bytes: u64,
    pub max_body_bytes: u64,
    pub read_timeout: Duration,
    /// Workers report each request for the access log.
    pub access_log: bool,
}

/// Validated settings: every value typed and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: ListenAddr,
    pub julia: PathBuf,
    pub worker_file: PathBuf,
    pub home: PathBuf,
    pub workers: NonZeroU32,
    pub backlog: u32,
    pub socket_mode: u32,
    pub socket_owner: Option<String>,
    pub log_level: Option<String>,
    pub log_target: LogTarget,
    /// Who to become after binding, when started as root.
    pub identity: Option<Identity>,
    pub pages: PageSettings,
    pub worker_start_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The old `-s` socket, kept only to say that it is ignored.
    pub compat_socket: Option<PathBuf>,
    pub runtime_dir: PathBuf,
    pub status_listen: Option<ListenAddr>,
    pub supervision: Supervision,
}

impl Settings {
    /// Merges flags over the file (if any) over defaults and validates.
    pub fn resolve(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::from_parts(cli, file)
    }

    pub fn from_parts(cli: &Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let listen = ListenAddr::parse(
            cli.listen
                .as_deref()
                .or(file.listen.as_deref())
                .unwrap_or("127.0.0.1:4545"),
        )?;
        let workers = cli.workers.or(file.workers).unwrap_or(1);
        let workers = NonZeroU32::new(workers)
            .ok_or_else(|| invalid("workers", "0: at least one worker is needed"))?;
        let pm = process_manager(&file, workers.get())?;
        let julia = resolve_julia(
            cli.julia
                .clone()
                .or(file.julia)
                .unwrap_or_else(|| PathBuf::from("/usr/bin/julia")),
        )?;
        let worker_file = match cli.worker.clone().or(file.worker) {
            Some(path) => check_worker_file(path)?,
            None => default_worker_file()?,
        };
        let identity = resolve_identity(
            cli.user.as_deref().or(file.user.as_deref()),
            cli.group.as_deref().or(file.group.as_deref()),
            cli.allow_root || file.allow_to_run_as_root.unwrap_or(false),
        )?;
        // A dropped-to user gets its own home unless one is given: root's
        // $HOME is no place for the workers.
        let home = cli
            .home
            .clone()
            .or(file.home)
            .or_else(|| identity.as_ref().map(|id| id.home.clone()))
            .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/home"));
        let log_target = match file.log_target.as_deref().unwrap_or("auto") {
            "auto" => LogTarget::Auto,
            "journal" => LogTarget::Journal,
            "stderr" => LogTarget::Stderr,
            other => {
                return Err(invalid(
                    "log_target",
                    format!("{other:?}: expected \"auto\", \"journal\" or \"stderr\""),
                ))
            }
        };
        let socket_mode = cli
            .socket_mode
            .as_deref()
            .or(file.socket_mode.as_deref())
            .map(parse_mode)
            .transpose()?
            .unwrap_or(0o660);
        let backlog = cli.backlog.or(file.backlog).unwrap_or(511);
        if backlog == 0 {
            return Err(invalid("backlog", "0: the kernel would refuse connections"));
        }
        let pages = PageSettings {
            extensions: check_extensions(
                file.limit_extensions.unwrap_or_else(|| vec![".jl".into()]),
            )?,
            document_roots: check_roots(file.document_roots.unwrap_or_default())?,
            development: file.development.unwrap_or(false),
            max_params_bytes: file.max_params_bytes.unwrap_or(1 << 20),
            max_body_bytes: file.max_body_bytes.unwrap_or(64 << 20),
            read_timeout: duration("read_timeout", file.read_timeout.as_deref(), 60)?,
            access_log: cli.access_log || file.access_log.unwrap_or(false),
        };
        Ok(Settings {
            listen,
            julia,
            worker_file,
            home,
            workers,
            backlog,
            socket_mode,
            socket_owner: cli.socket_owner.clone().or(file.socket_owner),
            log_level: cli.log_level.clone().or(file.log_level),
            log_target,
            identity,
            pages,
            worker_start_timeout: duration(
                "worker_start_timeout",
                file.worker_start_timeout.as_deref(),
                120,
            )?,
            shutdown_grace: duration("shutdown_grace", file.shutdown_grace.as_deref(), 10)?,
            compat_socket: cli.socket.clone(),
            runtime_dir: cli
                .runtime_dir
                .clone()
                .or(file.runtime_dir)
                .unwrap_or_else(default_runtime_dir),
            status_listen: match cli
                .status_listen
                .as_deref()
                .or(file.status_listen.as_deref())
            {
                None => None,
                Some(text) => Some(status_addr(text)?),
            },
            supervision: Supervision {
                cgroup_root: match file.cgroup_root.as_deref() {
                    None => None,
                    Some("none") => Some(None),
                    Some(path) => Some(Some(PathBuf::from(path))),
                },
                limits: crate::cgroup::Limits {
                    memory_max: size("memory_max", file.memory_max.as_deref())?,
                    memory_high: size("memory_high", file.memory_high.as_deref())?,
                    // No swap by default: an OOM is an OOM, not a crawl.
                    memory_swap_max: size(
                        "memory_swap_max",
                        file.memory_swap_max.as_deref().or(Some("0")),
                    )?,
                    pids_max: size("pids_max", file.pids_max.as_deref())?,
                    cpu_weight: match file.cpu_weight {
                        Some(w) if !(1..=10000).contains(&w) => {
                            return Err(invalid("cpu_weight", format!("{w}: expected 1-10000")))
                        }
                        other => other,
                    },
                },
                request_terminate_timeout: optional_duration(
                    "request_terminate_timeout",
                    file.request_terminate_timeout.as_deref(),
                )?,
                request_slowlog_timeout: optional_duration(
                    "request_slowlog_timeout",
                    file.request_slowlog_timeout.as_deref(),
                )?,
                max_requests: file.max_requests.unwrap_or(0),
                max_requests_jitter: file.max_requests_jitter.unwrap_or(0),
                recycle_memory: size("recycle_memory", file.recycle_memory.as_deref())?,
                pm,
            },
        })
    }
}

/// Started as root: whom to become (pages as root are refused unless
/// allowed). Started unprivileged: nobody; there is nothing to drop.
fn resolve_identity(
    user: Option<&str>,
    group: Option<&str>,
    allow_root: bool,
) -> Result<Option<Identity>, ConfigError> {
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        if let Some(user) = user {
            let wanted =
                privileges::resolve(user, group).map_err(|e| invalid("user", e.to_string()))?;
            if wanted.uid != me {
                return Err(invalid(
                    "user",
                    format!("{user:?}: switching users needs root, and this runs as uid {me}"),
                ));
            }
        }
        return Ok(None);
    }
    let identity = match (user, allow_root) {
        (None, true) => return Ok(None),
        (user, _) => privileges::resolve(user.unwrap_or(DEFAULT_USER), group)
            .map_err(|e| invalid("user", e.to_string()))?,
    };
    if identity.uid.is_root() && !allow_root {
        return Err(invalid(
            "user",
            "refusing to run pages as root; set another user, or pass \
             -R/--allow-to-run-as-root (allow_to_run_as_root = true) if you really mean it",
        ));
    }
    Ok((!identity.uid.is_root()).then_some(identity))
}

/// `julia` without a slash is looked up in `PATH`, like a shell would.
fn resolve_julia(path: PathBuf) -> Result<PathBuf, ConfigError> {
    let found = if path.components().count() == 1 && !path.is_absolute() {
        std::env::var_os("PATH")
            .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"))
            .to_str()
            .unwrap_or_default()
            .split(':')
            .map(|dir| Path::new(dir).join(&path))
            .find(|candidate| is_executable(candidate))
    } else {
        is_executable(&path).then(|| path.clone())
    };
    found.ok_or_else(|| {
        invalid(
            "julia",
            format!(
                "{} is not an executable file; install Julia or point -b/--julia \
                 (or `julia` in the config file) at one",
                path.display()
            ),
        )
    })
}

fn is_executable(path: &Path) -> bool {
    path.is_file() && nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

fn check_worker_file(path: PathBuf) -> Result<PathBuf, ConfigError> {
    match std::fs::File::open(&path) {
        Ok(_) if path.is_file() => Ok(path),
        Ok(_) => Err(invalid(
            "worker",
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(invalid(
            "worker",
            format!("cannot read worker file {}: {e}", path.display()),
        )),
    }
}

/// The old tool looked for `../julia/worker.jl` next to its binary; an
/// installed package keeps the worker under /usr/share.
fn default_worker_file() -> Result<PathBuf, ConfigError> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    {
        candidates.push(dir.join("../julia/worker.jl"));
        candidates.push(dir.join("../share/julia-fcgi/worker.jl"));
    }
    candidates.push(PathBuf::from(INSTALLED_WORKER));
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            invalid(
                "worker",
                format!(
                    "no worker file found (tried {}); give one with -v",
                    tried.join(", ")
                ),
            )
        })
}

fn check_extensions(extensions: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if extensions.is_empty() {
        return Err(invalid("limit_extensions", "empty: no page could ever run"));
    }
    for ext in &extensions {
        if !ext.starts_with('.') || ext.len() < 2 || ext.contains([',', '/']) {
            return Err(invalid(
                "limit_extensions",
                format!("{ext:?}: expected an extension like \".jl\""),
            ));
        }
    }
    Ok(extensions)
}

fn check_roots(roots: Vec<PathBuf>) -> Result<Vec<PathBuf>, ConfigError> {
    for root in &roots {
        if !root.is_absolute() || root.to_string_lossy().contains(':') {
            return Err(invalid(
                "document_roots",
                format!("{}: expected an absolute path without ':'", root.display()),
            ));
        }
    }
    Ok(roots)
}

/// systemd's `RuntimeDirectory=`, else /run/julia-fcgi for root, else the
/// user's runtime directory.
pub fn default_runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several, colon-separated; ours is the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        return PathBuf::from(first);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/julia-fcgi");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("julia-fcgi"),
        None => PathBuf::from(format!("/tmp/julia-fcgi-{}", nix::unistd::geteuid())),
    }
}
