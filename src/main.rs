//! The `julia-fcgi` binary: parse, validate, acquire the socket, drop
//! privileges, run the pool; turn signals into stops and reloads.

use std::path::PathBuf;

use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};
use tokio::sync::{mpsc, watch};

use julia_fcgi::cgroup::{NotDelegated, Tree};
use julia_fcgi::cli::{Cli, Command, StatusArgs};
use julia_fcgi::config::{self, Environment, ListenAddr, Settings};
use julia_fcgi::contract::WorkerContract;
use julia_fcgi::listen::{self, Listener, Origin, Sockets};
use julia_fcgi::notify::{self, Notifier};
use julia_fcgi::pool::{self, Pool, Reload};
use julia_fcgi::scoreboard::Scoreboard;
use julia_fcgi::status::{self, Report};
use julia_fcgi::{logging, privileges, worker};

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
    if let Err(e) = logging::init(settings.log_level.as_deref(), settings.log_target) {
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

/// A usage error of `julia-fcgi status`, with that subcommand's usage.
fn status_usage_error(message: impl std::fmt::Display) -> ! {
    let mut cli = Cli::command();
    // Built, the subcommand knows its full name (`julia-fcgi status`).
    cli.build();
    match cli.find_subcommand_mut("status") {
        Some(status) => status.error(clap::error::ErrorKind::ValueValidation, message),
        None => cli.error(clap::error::ErrorKind::ValueValidation, message),
    }
    .exit()
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
    let runtime = prepare_runtime_dir(&settings)?;
    let mut sockets = Listener::acquire(&settings)?;
    if let (
        Origin::Bound,
        ListenAddr::Tcp {
            all_interfaces: true,
            addr,
        },
    ) = (&sockets.fastcgi.origin, &settings.listen)
    {
        tracing::warn!(
            "listening on every interface ({addr}): anyone who can reach this port can run \
             any .jl file this user can read; prefer 127.0.0.1 or a unix socket"
        );
    }
    let status_listener = match sockets.status.take() {
        Some(fd) => StatusSocket::Passed(fd),
        None => StatusSocket::Bound(listen::bind_status(&settings)?),
    };
    let (cgroups, cgroups_off) = open_cgroups(&settings)?;
    let board = Scoreboard::create(&runtime.join("scoreboard"), board_capacity(&settings))
        .with_context(|| format!("cannot create the scoreboard in {}", runtime.display()))?;
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let parts = Parts {
        sockets,
        status: status_listener,
        board,
        cgroups,
        cgroups_off,
    };
    runtime.block_on(serve(cli, settings, parts, notifier))
}

/// Room for every worker plus the new ones warming up next to old ones
/// during a reload or recycling.
fn board_capacity(settings: &Settings) -> usize {
    (settings.workers.get() as usize * 2 + 4).max(64)
}

/// The runtime directory (the scoreboard's home), made while still root and
/// given to the service user. Only one instance may use it.
fn prepare_runtime_dir(settings: &Settings) -> anyhow::Result<PathBuf> {
    let dir = settings.runtime_dir.clone();
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the runtime directory {}", dir.display()))?;
        // Whatever the umask: others may search it (nginx reaches a status
        // socket there), never write in it. What is inside has its own modes.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {}", dir.display()))?;
        if let Some(identity) = &settings.identity {
            nix::unistd::chown(&dir, Some(identity.uid), Some(identity.gid))
                .with_context(|| format!("cannot chown {}", dir.display()))?;
        }
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("julia-fcgi.lock"))
        .with_context(|| format!("cannot write in the runtime directory {}", dir.display()))?;
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |_| {
            anyhow::anyhow!(
                "another julia-fcgi uses the runtime directory {}; give each instance its own \
                 (--runtime-dir or runtime_dir in the config)",
                dir.display()
            )
        },
    )?;
    // Held (and so locked) for the life of the process.
    std::mem::forget(lock);
    Ok(dir)
}

/// Per-worker cgroups when the subtree is delegated; otherwise why not.
fn open_cgroups(settings: &Settings) -> anyhow::Result<(Option<Arc<Tree>>, Option<String>)> {
    let root = match &settings.supervision.cgroup_root {
        Some(None) => return Ok((None, Some("cgroup_root = \"none\" in the config".into()))),
        Some(Some(root)) => Some(root.as_path()),
        None => None,
    };
    match Tree::open(root) {
        Ok(tree) => {
            if let Some(identity) = &settings.identity {
                tree.chown(identity.uid, identity.gid)
                    .with_context(|| format!("cannot chown {}", tree.root().display()))?;
            }
            tracing::info!(
                "per-worker cgroups under {} (controllers: {})",
                tree.root().display(),
                if tree.controllers().is_empty() {
                    "none available".to_owned()
                } else {
                    tree.controllers().join(" ")
                }
            );
            Ok((Some(Arc::new(tree)), None))
        }
        Err(NotDelegated(why)) => {
            tracing::warn!(
                "per-worker cgroups off: {why}; workers get process groups and die with the master"
            );
            Ok((None, Some(why)))
        }
    }
}

/// Where the status page is served.
enum StatusSocket {
    /// systemd passed it (`FileDescriptorName=status`).
    Passed(std::os::fd::OwnedFd),
    /// Bound here; a unix socket file is removed on exit.
    Bound(Listener),
}

/// `julia-fcgi status`: ask a running instance, print what it says.
fn status_command(cli: &Cli, args: &StatusArgs, env: &Environment) -> ExitCode {
    let addr = match config::status_target(cli, args, env) {
        Ok(addr) => addr,
        Err(e) => status_usage_error(e),
    };
    loop {
        match status::client::fetch(&addr) {
            Ok(report) => {
                if args.watch {
                    // Clear the screen and go home, like watch(1).
                    print!("\x1b[2J\x1b[H");
                }
                if args.json {
                    println!("{report}");
                } else {
                    print!("{}", status::client::table(&report));
                }
            }
            Err(e) => {
                eprintln!("julia-fcgi status: {e}");
                return ExitCode::FAILURE;
            }
        }
        if !args.watch {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// What `run` prepared, handed to the async part.
struct Parts {
    sockets: Sockets,
    status: StatusSocket,
    board: Scoreboard,
    cgroups: Option<Arc<Tree>>,
    cgroups_off: Option<String>,
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
        cgroups_off,
    } = parts;
    let shared = Shared {
        listener: Arc::new(sockets.fastcgi.fd.try_clone()?),
        board_file: Arc::new(board.file().try_clone()?),
        cgroups,
    };
    let (reports_tx, reports_rx) = watch::channel(Arc::new(Report::default()));
    let (status_fd, status_where) = match &status {
        StatusSocket::Passed(fd) => (fd.try_clone()?, "the socket systemd passed".to_owned()),
        StatusSocket::Bound(listener) => (listener.fd.try_clone()?, listener.description.clone()),
    };
    tracing::info!("status page and ping on {status_where}");
    tokio::spawn(status::serve(status_fd, reports_rx));
    let listening_on = sockets.fastcgi.description.clone();
    let (spec, options) = pool_config(&settings, &shared, &listening_on);
    let supervision = settings.supervision.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let signals = Signals {
        cli,
        running: settings,
        shared,
        listening_on,
        notifier: notifier.clone(),
        stop: stop_tx,
        reload: reload_tx,
    };
    tokio::spawn(signals.run());
    Pool::new(
        spec,
        options,
        supervision,
        Some(board),
        cgroups_off,
        notifier,
        reports_tx,
    )
    .run(stop_rx, reload_rx, notify::watchdog_period())
    .await?;
    // The socket files go only now that nothing will be served.
    drop(status);
    drop(sockets);
    Ok(())
}

/// What every generation of workers shares, whatever the config says.
struct Shared {
    listener: Arc<std::os::fd::OwnedFd>,
    board_file: Arc<std::fs::File>,
    cgroups: Option<Arc<Tree>>,
}

fn pool_config(
    settings: &Settings,
    shared: &Shared,
    listening_on: &str,
) -> (worker::Spec, pool::Options) {
    let spec = worker::Spec {
        julia: settings.julia.clone(),
        worker_file: settings.worker_file.clone(),
        env: WorkerContract::from(settings).env(),
        listener: shared.listener.clone(),
        cgroups: shared.cgroups.clone(),
        limits: settings.supervision.limits.clone(),
        scoreboard: Some(shared.board_file.clone()),
    };
    let options = pool::Options {
        size: settings.workers.get(),
        start_timeout: settings.worker_start_timeout,
        shutdown_grace: settings.shutdown_grace,
        listening_on: listening_on.to_owned(),
    };
    (spec, options)
}

/// Turns signals into pool commands: SIGTERM/SIGINT stop gracefully, SIGHUP
/// re-reads the configuration and, when it is valid, rolls the pool over.
struct Signals {
    cli: Cli,
    running: Settings,
    shared: Shared,
    listening_on: String,
    notifier: Arc<Notifier>,
    stop: watch::Sender<bool>,
    reload: mpsc::UnboundedSender<Reload>,
}

impl Signals {
    async fn run(mut self) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping will not be graceful");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = hup.recv() => self.reload(),
            }
        }
        self.notifier.stopping();
        let _ = self.stop.send(true);
    }

    fn reload(&mut self) {
        tracing::info!("SIGHUP: re-reading the configuration");
        let reloaded = match Settings::reload(&self.cli, &self.running) {
            Ok(reloaded) => reloaded,
            Err(e) => {
                tracing::error!("reload refused, still running the previous configuration: {e}");
                return;
            }
        };
        for line in reloaded
            .needs_restart
            .iter()
            .chain(&reloaded.settings.warnings)
        {
            tracing::warn!("{line}");
        }
        let (spec, options) = pool_config(&reloaded.settings, &self.shared, &self.listening_on);
        self.running = reloaded.settings;
        let _ = self.reload.send(Reload { spec, options });
    }
}
