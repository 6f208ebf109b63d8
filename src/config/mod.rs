//! Configuration: command-line flags over a TOML file over built-in defaults.
//!
//! Loading is data first ([`FileConfig`] is exactly what the file may say),
//! then [`Settings::resolve`] validates everything into typed values. Nothing
//! here binds, spawns or writes: a bad setting is reported before anything
//! happens, and a reload can validate a new file without disturbing the pool.
//!
//! Defaults that depend on the process (who it runs as, `$HOME`, systemd's
//! directories) come from an [`Environment`] captured once at start-up, so
//! that a SIGHUP after the privilege drop resolves exactly what the first
//! start did ([`Settings::reload`]).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Cli;
use crate::contract::defaults;

mod deadlines;
mod environment;
mod file;
mod identity;
mod packages;
mod paths;
mod pool;
mod reload;
mod status;
mod supervision;
mod values;

use crate::privileges::Identity;
pub use deadlines::Deadlines;
pub use environment::Environment;
pub use file::FileConfig;
pub use packages::{Depot, PackageName, Packages, Project};
pub use paths::default_runtime_dir;
pub use pool::{PoolName, POOL_VAR};
pub use reload::Reloaded;
pub use status::{
    default_status_socket, pool_file, pool_files_dir, pool_status_socket, pool_target, pools_dir,
    pools_in, pools_to_ask, status_target, CONFIG_DIR_VAR,
};
pub use supervision::{ProcessManager, Supervision};
use values::{duration, parse_mode, status_addr};
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

/// What the workers need to know about running pages (passed to them in
/// their environment, see [`crate::contract`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSettings {
    pub extensions: Vec<String>,
    pub document_roots: Vec<PathBuf>,
    pub development: bool,
    pub max_params_bytes: u64,
    pub max_body_bytes: u64,
    /// A whole number of milliseconds, at least one.
    pub read_timeout: Duration,
    /// Each request's deadlines (whole milliseconds too).
    pub deadlines: Deadlines,
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
    pub packages: Packages,
    /// The pool sysimage: which image workers start from, and how the next
    /// one is built.
    pub sysimage: crate::sysimage::Config,
    pub worker_start_timeout: Duration,
    pub shutdown_grace: Duration,
    /// From the stop signal to the workers being told to stop: `/ready`
    /// says 503 meanwhile, and the workers go on serving.
    pub drain_delay: Duration,
    /// The old `-s` socket, kept only to say that it is ignored.
    pub compat_socket: Option<PathBuf>,
    pub runtime_dir: PathBuf,
    pub status_listen: Option<ListenAddr>,
    /// Where `/ping` and `/ready` alone are served, for load balancers.
    pub health_listen: Option<ListenAddr>,
    /// The pool's name, when it has one (`pool`, or the instance of
    /// `julia-fcgi@NAME`): in the status, the metrics and the journal.
    pub pool: Option<PoolName>,
    pub supervision: Supervision,
    /// The environment these were resolved in (the workers get some of it).
    pub environment: Environment,
    /// Defaults that will not work well, for the log: valid, but worth
    /// saying (e.g. a depot the service user cannot write).
    pub warnings: Vec<String>,
}

impl Settings {
    /// Merges flags over the file (if any) over defaults and validates.
    pub fn resolve(cli: &Cli, env: &Environment) -> Result<Self, ConfigError> {
        Self::from_parts(cli, FileConfig::of(cli)?, env)
    }

    /// Like [`Settings::resolve`], with the file already read.
    pub fn from_parts(cli: &Cli, file: FileConfig, env: &Environment) -> Result<Self, ConfigError> {
        let identity = wanted_identity(cli, &file, env)?;
        Self::build(cli, file, env, identity)
    }

    /// Everything but the identity, which the caller resolved (a reload
    /// keeps the running one).
    fn build(
        cli: &Cli,
        file: FileConfig,
        env: &Environment,
        identity: Option<Identity>,
    ) -> Result<Self, ConfigError> {
        let net = Network::resolve(cli, &file, env)?;
        let workers = NonZeroU32::new(cli.workers.or(file.workers).unwrap_or(1))
            .ok_or_else(|| invalid("workers", "0: at least one worker is needed"))?;
        let (julia, worker_file) = program(cli, &file, env)?;
        let home = identity::resolve_home(
            cli.home.clone().or_else(|| file.home.clone()),
            identity.as_ref(),
            env,
        );
        let mut warnings = Vec::new();
        let packages = packages::resolve(&file, env, identity.as_ref(), &home, &mut warnings)?;
        let sysimage = sysimage(&file)?;
        let (pages, supervision) = (
            pages(cli, &file)?,
            supervision::resolve(&file, workers.get())?,
        );
        let timeout = |name, text: &Option<String>, secs| {
            duration(name, text.as_deref(), Duration::from_secs(secs))
        };
        let worker_start_timeout =
            timeout("worker_start_timeout", &file.worker_start_timeout, 120)?;
        let shutdown_grace = timeout("shutdown_grace", &file.shutdown_grace, 10)?;
        let (pool, health_listen) = (
            pool::resolve_pool(&file, env)?,
            pool::resolve_health(&file)?,
        );
        let drain_delay = pool::resolve_drain_delay(
            &file,
            health_listen.is_some(),
            shutdown_grace,
            &mut warnings,
        )?;
        Ok(Settings {
            listen: net.listen,
            julia,
            worker_file,
            home,
            workers,
            backlog: net.backlog,
            socket_mode: net.socket_mode,
            socket_owner: net.socket_owner,
            log_level: cli.log_level.clone().or(file.log_level),
            log_target: log_target(file.log_target.as_deref())?,
            identity,
            pages,
            packages,
            sysimage,
            worker_start_timeout,
            shutdown_grace,
            drain_delay,
            compat_socket: cli.socket.clone(),
            runtime_dir: net.runtime_dir,
            status_listen: net.status_listen,
            health_listen,
            pool,
            supervision,
            environment: env.clone(),
            warnings,
        })
    }
}

/// The julia the workers run (`-b`, `julia`) and their worker file (`-v`,
/// `worker`), both checked.
fn program(
    cli: &Cli,
    file: &FileConfig,
    env: &Environment,
) -> Result<(PathBuf, PathBuf), ConfigError> {
    let julia = paths::resolve_julia(
        cli.julia
            .clone()
            .or_else(|| file.julia.clone())
            .unwrap_or_else(|| PathBuf::from("/usr/bin/julia")),
        env,
    )?;
    let worker_file = match cli.worker.clone().or_else(|| file.worker.clone()) {
        Some(path) => paths::check_worker_file(path)?,
        None => paths::default_worker_file()?,
    };
    Ok((julia, worker_file))
}

/// The sockets julia-fcgi binds and the runtime directory.
struct Network {
    listen: ListenAddr,
    backlog: u32,
    socket_mode: u32,
    socket_owner: Option<String>,
    runtime_dir: PathBuf,
    status_listen: Option<ListenAddr>,
}

impl Network {
    fn resolve(cli: &Cli, file: &FileConfig, env: &Environment) -> Result<Self, ConfigError> {
        let listen = ListenAddr::parse(
            cli.listen
                .as_deref()
                .or(file.listen.as_deref())
                .unwrap_or("127.0.0.1:4545"),
        )?;
        let backlog = cli.backlog.or(file.backlog).unwrap_or(511);
        if backlog == 0 {
            return Err(invalid("backlog", "0: the kernel would refuse connections"));
        }
        let socket_mode = cli
            .socket_mode
            .as_deref()
            .or(file.socket_mode.as_deref())
            .map(parse_mode)
            .transpose()?
            .unwrap_or(0o660);
        Ok(Network {
            listen,
            backlog,
            socket_mode,
            socket_owner: cli
                .socket_owner
                .clone()
                .or_else(|| file.socket_owner.clone()),
            runtime_dir: cli
                .runtime_dir
                .clone()
                .or_else(|| file.runtime_dir.clone())
                .unwrap_or_else(|| default_runtime_dir(env)),
            status_listen: cli
                .status_listen
                .as_deref()
                .or(file.status_listen.as_deref())
                .map(status_addr)
                .transpose()?,
        })
    }
}

/// The user the flags and the file ask for, as the first start resolves it.
fn wanted_identity(
    cli: &Cli,
    file: &FileConfig,
    env: &Environment,
) -> Result<Option<Identity>, ConfigError> {
    identity::resolve_identity(
        cli.user.as_deref().or(file.user.as_deref()),
        cli.group.as_deref().or(file.group.as_deref()),
        cli.allow_root || file.allow_to_run_as_root.unwrap_or(false),
        env,
    )
}

/// The sysimage settings; package names follow `preload`'s rules.
fn sysimage(file: &FileConfig) -> Result<crate::sysimage::Config, ConfigError> {
    let packages = file
        .sysimage_packages
        .iter()
        .flatten()
        .map(|name| {
            PackageName::parse(name)
                .map(|name| name.as_str().to_owned())
                .map_err(|e| invalid("sysimage_packages", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    crate::sysimage::Config::parse(
        file.sysimage.as_deref(),
        packages,
        file.sysimage_base.as_deref(),
        file.sysimage_trace.as_deref(),
    )
    .map_err(|(setting, message)| invalid(setting, message))
}

fn log_target(text: Option<&str>) -> Result<LogTarget, ConfigError> {
    match text.unwrap_or("auto") {
        "auto" => Ok(LogTarget::Auto),
        "journal" => Ok(LogTarget::Journal),
        "stderr" => Ok(LogTarget::Stderr),
        other => Err(invalid(
            "log_target",
            format!("{other:?}: expected \"auto\", \"journal\" or \"stderr\""),
        )),
    }
}

/// The page settings, checked so that each crosses to the worker with the
/// meaning it was given (see [`crate::contract`]).
fn pages(cli: &Cli, file: &FileConfig) -> Result<PageSettings, ConfigError> {
    let read_timeout = deadlines::whole_ms(
        "read_timeout",
        file.read_timeout.as_deref(),
        defaults::READ_TIMEOUT,
    )?;
    let max_params_bytes = file.max_params_bytes.unwrap_or(defaults::MAX_PARAMS_BYTES);
    if max_params_bytes == 0 {
        return Err(invalid("max_params_bytes", "0: no request could be read"));
    }
    let extensions = file.limit_extensions.clone().unwrap_or_else(|| {
        defaults::EXTENSIONS
            .iter()
            .map(|e| (*e).to_owned())
            .collect()
    });
    Ok(PageSettings {
        extensions: paths::check_extensions(extensions)?,
        document_roots: paths::check_roots(file.document_roots.clone().unwrap_or_default())?,
        development: file.development.unwrap_or(false),
        max_params_bytes,
        max_body_bytes: file.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
        read_timeout,
        deadlines: deadlines::resolve(file)?,
        access_log: cli.access_log || file.access_log.unwrap_or(false),
    })
}
