//! The `julia-fcgi` binary: parse and validate, then wire the parts
//! together in the order privileges demand — runtime directory, sockets,
//! cgroups and scoreboard while still root, then drop privileges, then the
//! async part: the status server, the signal task and the pool.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use tokio::sync::{mpsc, watch};

use julia_fcgi::cgroup::Cgroups;
use julia_fcgi::cli::{Cli, Command, StatusArgs, SysimageAction};
use julia_fcgi::config::{self, Environment, Settings};
use julia_fcgi::contract::WorkerContract;
use julia_fcgi::listen::{Listener, Sockets, StatusSocket};
use julia_fcgi::notify::{self, Notifier};
use julia_fcgi::pool::{self, Pool, Shared};
use julia_fcgi::runtime_dir::RuntimeDir;
use julia_fcgi::scoreboard::Scoreboard;
use julia_fcgi::signals::{Signals, Stop};
use julia_fcgi::status::{self, Report};
use julia_fcgi::sysimage::command::{self as sysimage, BuildRequest};
use julia_fcgi::sysimage::Base;
use julia_fcgi::{logging, privileges};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => parse_error(e),
    };
    // Before anything changes who this process is: a reload resolves the
    // config in the same environment as this first start.
    let env = Environment::capture();
    if let Some(Command::Status(args)) = &cli.command {
        return status_command(&cli, args, &env);
    }
    let settings = match Settings::resolve(&cli, &env) {
        Ok(settings) => settings,
        // Usage text and exit 2, like clap's own errors, before anything runs.
        Err(e) => usage_error(e),
    };
    if let Some(Command::Sysimage(args)) = &cli.command {
        return sysimage_command(&settings, &args.action);
    }
    if let Err(e) = logging::init(
        settings.log_level.as_deref(),
        settings.log_target,
        settings.pool.as_ref(),
    ) {
        usage_error(e);
    }
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let notifier = Arc::new(Notifier::from_env());
    match run(cli, settings, notifier.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            let errno = e
                .chain()
                .find_map(|cause| cause.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error)
                .map_or(libc::EIO, |errno| errno);
            notifier.fatal(errno as u32, &format!("failed: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// clap's own errors, always with the usage line (clap leaves it out of
/// some, such as a value that does not parse).
fn parse_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let rendered = e.render().to_string();
    if rendered.contains("Usage:") {
        e.exit();
    }
    let usage = Cli::command().render_usage().to_string();
    let text = match rendered.split_once("\nFor more information") {
        Some((message, tip)) => format!("{message}\n{usage}\n\nFor more information{tip}"),
        None => format!("{rendered}\n{usage}\n"),
    };
    eprint!("{text}");
    std::process::exit(2);
}

fn usage_error(message: impl std::fmt::Display) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

/// `julia-fcgi status`: ask a running instance (or pool, or every pool),
/// print what it says.
fn status_command(cli: &Cli, args: &StatusArgs, env: &Environment) -> ExitCode {
    let show = status::client::Show {
        json: args.json,
        watch: args.watch,
    };
    if args.all {
        let dir = config::pools_dir(cli, env);
        return match config::pools_to_ask(cli, env) {
            Ok(pools) if !pools.is_empty() => status::client::run_all(&pools, args.json),
            Ok(_) => {
                eprintln!(
                    "julia-fcgi status: no pool's status socket in {} (NAME/status.sock), \
                     and no pool file in {} that puts one elsewhere; is any julia-fcgi@NAME \
                     running (systemctl list-units 'julia-fcgi@*')? Another directory with \
                     --runtime-dir DIR",
                    dir.display(),
                    config::pool_files_dir(env).display()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!(
                    "julia-fcgi status: cannot list the pools in {} or their files in {}: {e}; \
                     another directory with --runtime-dir DIR",
                    dir.display(),
                    config::pool_files_dir(env).display()
                );
                ExitCode::FAILURE
            }
        };
    }
    let addr = match config::status_target(cli, args, env) {
        Ok(addr) => addr,
        Err(e) => {
            // A usage error of the subcommand, with its usage.
            let mut cli = Cli::command();
            // Built, the subcommand knows its full name (`julia-fcgi status`).
            cli.build();
            match cli.find_subcommand_mut("status") {
                Some(status) => status.error(clap::error::ErrorKind::ValueValidation, e),
                None => cli.error(clap::error::ErrorKind::ValueValidation, e),
            }
            .exit()
        }
    };
    let unit = match &args.pool {
        Some(name) => format!("julia-fcgi@{name}"),
        None => "julia-fcgi".to_owned(),
    };
    status::client::run(&addr, &unit, show)
}

/// `julia-fcgi sysimage build|status`, for the pool the flags and the
/// config describe; nothing is bound or started but the build's own
/// workers.
fn sysimage_command(settings: &Settings, action: &SysimageAction) -> ExitCode {
    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }
    let pool = sysimage::Pool {
        julia: &settings.julia,
        worker_file: &settings.worker_file,
        env: WorkerContract::from(settings).env(),
        config: &settings.sysimage,
        start_timeout: settings.worker_start_timeout,
    };
    match action {
        SysimageAction::Status(_) if sysimage::status_command(&pool) => ExitCode::SUCCESS,
        SysimageAction::Status(_) => ExitCode::FAILURE,
        SysimageAction::Build(args) => {
            let request = BuildRequest {
                output: args.output.clone(),
                // clap allowed only the names Base::parse knows.
                base: args.base.as_deref().and_then(|b| Base::parse(b).ok()),
                traces: args.traces.clone(),
                cpu_target: args.cpu_target.clone(),
                cc: args.cc.clone(),
                if_stale: args.if_stale,
                keep_work_dir: args.keep_work_dir,
            };
            match sysimage::build_command(&pool, &request) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "sysimage build failed at {e}\n\
                         nothing was installed; the workers keep starting as before"
                    );
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What the privileged set-up prepared, handed to the async part.
struct Parts {
    sockets: Sockets,
    status: StatusSocket,
    board: Scoreboard,
    cgroups: Cgroups,
}

fn run(cli: Cli, settings: Settings, notifier: Arc<Notifier>) -> anyhow::Result<()> {
    if let Some(path) = &settings.compat_socket {
        tracing::warn!(
            "-s {} ignored: workers accept FastCGI connections directly, \
             there is no master-worker socket any more",
            path.display()
        );
    }
    // First: one instance per runtime directory, before anything is bound.
    // Held (and so locked) until the pool has stopped.
    let runtime = RuntimeDir::prepare(&settings.runtime_dir, settings.identity.as_ref())?;
    let mut sockets = Listener::acquire(&settings)?;
    sockets.warn_if_exposed(&settings);
    let status = StatusSocket::acquire(sockets.status.take(), &settings)?;
    let owner = settings.identity.as_ref().map(|i| (i.uid, i.gid));
    let cgroups = Cgroups::open(&settings.supervision.cgroup_root, owner)?;
    let board = Scoreboard::create(
        &runtime.path().join("scoreboard"),
        board_capacity(&settings),
    )
    .with_context(|| {
        format!(
            "cannot create the scoreboard in {}",
            runtime.path().display()
        )
    })?;
    // Everything that needs root is done: become the service user for good,
    // before any thread exists.
    if let Some(identity) = &settings.identity {
        privileges::drop_to(identity)?;
        tracing::info!(
            "running as user {} (uid {}, gid {})",
            identity.user,
            identity.uid,
            identity.gid
        );
    }
    privileges::no_new_privileges()?;
    let parts = Parts {
        sockets,
        status,
        board,
        cgroups,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(cli, settings, parts, notifier))?;
    drop(runtime);
    Ok(())
}

/// Room for every worker plus the new ones warming up next to old ones
/// during a reload or recycling.
fn board_capacity(settings: &Settings) -> usize {
    (settings.workers.get() as usize * 2 + 4).max(64)
}

async fn serve(
    cli: Cli,
    settings: Settings,
    parts: Parts,
    notifier: Arc<Notifier>,
) -> anyhow::Result<()> {
    let Parts {
        sockets,
        status,
        board,
        cgroups,
    } = parts;
    let shared = Shared {
        listener: Arc::new(sockets.fastcgi.fd.try_clone()?),
        listening_on: sockets.fastcgi.description.clone(),
        board_file: Some(Arc::new(board.file().try_clone()?)),
        cgroups: cgroups.tree,
    };
    let (reports_tx, reports_rx) = watch::channel(Arc::new(Report::default()));
    let (stop_tx, stop_rx) = watch::channel(Stop::No);
    let served = status::Served {
        reports: reports_rx,
        stopping: stop_rx.clone(),
        pool: settings.pool.clone(),
    };
    status::spawn(&status, served)?;
    let config = pool::Config::from_settings(&settings, &shared);
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let signals = Signals {
        cli,
        running: settings,
        shared,
        notifier: notifier.clone(),
        stop: stop_tx,
        reload: reload_tx,
    };
    tokio::spawn(signals.run());
    Pool::new(config, Some(board), cgroups.off, notifier, reports_tx)
        .run(stop_rx, reload_rx, notify::watchdog_period())
        .await?;
    // The socket files go only now that nothing will be served.
    drop(status);
    drop(sockets);
    Ok(())
}
