//! Command-line interface.
//!
//! The short flags are the old C "Julia FastCGI Process Manager"'s, so existing
//! start scripts keep working: `-l ADDR -b JULIA -v WORKER_FILE -h HOME -s
//! SOCKET -w N`. Because `-h` is HOME there, the top level's help is
//! `--help` only; a subcommand, where `-h` means nothing else, takes both.
//!
//! Every field is an `Option`: a flag given on the command line overrides the
//! config file, a flag left out leaves the file's value (or the built-in
//! default) alone. Defaults are documented here and applied in
//! [`crate::config`].

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// FastCGI process manager for Julia pages.
///
/// Runs a pool of Julia workers that accept FastCGI connections from nginx
/// (or any FastCGI client) on one shared listening socket, replaces workers
/// that die, and logs what they print. The listening socket is, in this
/// order: the one systemd passes (socket activation), a listening socket on
/// standard input (spawn-fcgi), or the address given with -l.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "julia-fcgi",
    version,
    disable_help_flag = true,
    after_help = "Signals: SIGTERM/SIGINT stop gracefully (requests in progress finish).\n\
                  Exit codes: 0 stopped cleanly, 1 runtime failure, 2 bad usage or configuration."
)]
pub struct Cli {
    /// Address to listen on: HOST:PORT, :PORT (every interface), [V6]:PORT,
    /// or a unix socket path (absolute, or prefixed with unix:)
    /// [default: 127.0.0.1:4545]
    #[arg(short = 'l', long = "listen", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Julia executable used to run the workers [default: /usr/bin/julia]
    #[arg(short = 'b', long = "julia", value_name = "JULIA")]
    pub julia: Option<PathBuf>,

    /// Julia worker program [default: ../julia/worker.jl next to this
    /// binary, else /usr/share/julia-fcgi/worker.jl]
    #[arg(short = 'v', long = "worker", value_name = "WORKER_FILE")]
    pub worker: Option<PathBuf>,

    /// HOME directory given to the workers [default: the --user's home when
    /// started as root, else $HOME, else /home]
    #[arg(short = 'h', long = "home", value_name = "HOME")]
    pub home: Option<PathBuf>,

    /// Accepted for compatibility and ignored: the old tool's socket between
    /// master and workers. Workers now accept FastCGI connections themselves,
    /// so there is no such socket.
    #[arg(short = 's', long = "socket", value_name = "SOCKET")]
    pub socket: Option<PathBuf>,

    /// Number of Julia workers [default: 1]
    #[arg(short = 'w', long = "workers", value_name = "N")]
    pub workers: Option<u32>,

    /// TOML configuration file; flags given on the command line override it
    /// (`status` reads its status_listen and runtime_dir)
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Listen backlog of a socket julia-fcgi binds itself [default: 511]
    #[arg(long = "backlog", value_name = "N")]
    pub backlog: Option<u32>,

    /// Permissions of a unix socket julia-fcgi binds itself, octal [default: 0660]
    #[arg(long = "socket-mode", value_name = "MODE")]
    pub socket_mode: Option<String>,

    /// Owner of a unix socket julia-fcgi binds itself: USER or USER:GROUP
    #[arg(long = "socket-owner", value_name = "USER[:GROUP]")]
    pub socket_owner: Option<String>,

    /// User the workers (and the master, after binding) run as, when started
    /// as root [default: julia-fcgi]
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,

    /// Group for --user [default: the user's primary group]
    #[arg(short = 'g', long = "group", value_name = "GROUP")]
    pub group: Option<String>,

    /// Allow pages to run as root (never do this in production)
    #[arg(short = 'R', long = "allow-to-run-as-root")]
    pub allow_root: bool,

    /// Directory for the scoreboard [default: systemd's RUNTIME_DIRECTORY,
    /// else /run/julia-fcgi as root, else $XDG_RUNTIME_DIR/julia-fcgi]
    #[arg(long = "runtime-dir", value_name = "DIR", global = true)]
    pub runtime_dir: Option<PathBuf>,

    /// Log level (error, warn, info, debug, trace) or a RUST_LOG-style filter
    /// [default: info, or RUST_LOG]
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log every request (method, URI, status, duration, worker) as one
    /// entry [default: off, or `access_log` in the config]
    #[arg(long = "access-log")]
    pub access_log: bool,

    /// Where the master serves its status page and ping (and where `status`
    /// asks): a unix socket path or a loopback HOST:PORT [default:
    /// status.sock in the runtime directory]
    #[arg(long = "status-listen", value_name = "ADDR", global = true)]
    pub status_listen: Option<String>,

    /// Print help
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Show a running julia-fcgi's workers, requests and queue
    Status(StatusArgs),
    /// Build the pool sysimage (workers that start compiled), or say
    /// whether the pool's workers start from one
    Sysimage(SysimageArgs),
}

#[derive(Debug, Clone, Args)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct SysimageArgs {
    #[command(subcommand)]
    pub action: SysimageAction,
    /// Print help
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SysimageAction {
    /// Build the image for the config's julia, worker and sysimage_packages
    /// (minutes; progress on stderr). A running pool uses it from its next
    /// start or reload (SIGHUP)
    Build(SysimageBuildArgs),
    /// Say whether the pool's workers start from an image, or why not; exit
    /// status 0 only when they do
    Status(HelpOnly),
}

#[derive(Debug, Clone, Args)]
pub struct SysimageBuildArgs {
    /// Where the image goes [default: the `sysimage` path in the config,
    /// else where `sysimage = "auto"` looks]
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// What to build on: julia (julia's own system image) or minimal
    /// [default: sysimage_base in the config, else julia]
    #[arg(long, value_name = "BASE", value_parser = ["julia", "minimal"])]
    pub base: Option<String>,
    /// More precompile statements to compile ahead: a file, or a directory
    /// of workers' --trace-compile files (repeatable; sysimage_trace too)
    #[arg(long = "trace", value_name = "PATH")]
    pub traces: Vec<PathBuf>,
    /// Julia's --cpu-target [default: native, this CPU only]
    #[arg(long, value_name = "TARGET")]
    pub cpu_target: Option<String>,
    /// The C compiler that links the image (gcc or clang) [default: cc]
    #[arg(long, value_name = "CC")]
    pub cc: Option<PathBuf>,
    /// Build only when the image there does not fit the pool
    #[arg(long)]
    pub if_stale: bool,
    /// Keep the work directory (objects, logs) for a look afterwards
    #[arg(long)]
    pub keep_work_dir: bool,
    /// Print help
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// A subcommand without options of its own.
#[derive(Debug, Clone, Args)]
pub struct HelpOnly {
    /// Print help
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print the status as JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until interrupted
    #[arg(long)]
    pub watch: bool,
    /// The status socket to ask: a unix socket path or a loopback HOST:PORT
    /// [default: --status-listen, else status_listen in the --config file,
    /// else status.sock in the runtime directory]
    #[arg(long = "status-socket", value_name = "ADDR")]
    pub socket: Option<String>,
    /// Ask pool NAME, the instance julia-fcgi@NAME, where its pool file
    /// (/etc/julia-fcgi/pools/NAME.toml) says: its status_listen, else
    /// status.sock in its runtime_dir, else NAME/status.sock in the pools'
    /// runtime directory (--runtime-dir, else /run/julia-fcgi)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["socket", "all"])]
    pub pool: Option<String>,
    /// Ask every pool, one after the other: those with a status socket in
    /// the pools' runtime directory (--runtime-dir, else /run/julia-fcgi)
    /// and those whose pool file puts it elsewhere
    #[arg(long, conflicts_with_all = ["socket", "watch"])]
    pub all: bool,
    /// Print help
    // The top level turns clap's help flag off (-h is HOME there), and that
    // setting is inherited; here -h means nothing else.
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}
