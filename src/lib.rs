//! julia-fcgi: a FastCGI process manager for Julia pages.
//!
//! # Theory of operation
//!
//! nginx speaks FastCGI to one listening socket. The Julia workers accept
//! connections on that socket themselves (it is their fd 0, as the FastCGI
//! standard has it) and run the pages; this process, the master, never reads
//! or relays a request byte. The master's job is everything around the
//! requests: find or make the socket, start the workers, log what they say,
//! replace the ones that die without letting a crashing page cause a restart
//! storm, and stop them all gracefully. The README's first sections say why
//! (no relay, no lost connection on reload, status under full load).
//!
//! A start goes: the command line and the file are validated into
//! [`config::Settings`] (nothing happens before that); as root, the runtime
//! directory is locked, the sockets found or bound, the cgroup tree and
//! the scoreboard set up; privileges are dropped for good; then one
//! single-threaded runtime runs three tasks: the status server, the signal
//! task, and the pool. The pool owns every worker's life: each worker
//! process has an actor task ([`worker`]) that forwards its output and
//! control messages as events; the pool's one loop turns events, deadlines
//! and scoreboard scans into transitions of each worker's life and applies
//! what its policies (restart, timeouts, recycling, scaling) decide.
//!
//! # Modules
//!
//! - [`cli`]: the command line, compatible with the old C process manager.
//! - [`config`]: flags over a TOML file over defaults, validated into
//!   [`config::Settings`] before anything happens (the pool's name among
//!   them: `pool`, or the instance of `julia-fcgi@NAME`).
//! - [`contract`]: what the master tells each worker at start-up, as one
//!   typed value, and the environment that carries it to the Julia side.
//! - [`runtime_dir`]: the runtime directory and its one-instance lock.
//! - [`listen`]: the listening socket (systemd's, spawn-fcgi's on fd 0, or
//!   bound from `-l`) and the status socket.
//! - [`cgroup`]: one cgroup v2 per worker, limits, `cgroup.kill`, OOM
//!   reports; [`cgroup::Cgroups::open`] says why there are none.
//! - [`privileges`]: dropping root for good.
//! - [`worker`]: starting one Julia process, and the actor task that owns it.
//! - [`control`]: the line protocol on each worker's control channel
//!   (`julia/INTERFACE.md`).
//! - [`pool`]: the supervisor: each worker's life as a state machine, slots
//!   and successors, replacement and back-off, reload, request timeouts,
//!   recycling, the dynamic pool, draining.
//! - [`scoreboard`]: the shared-memory slots workers write around each
//!   request, read by the pool's scans.
//! - [`queue`]: the listen queue length, from the kernel.
//! - [`status`]: the status page the master serves itself (its counters
//!   and report, [`status::stats`]), `GET /ping` and `GET /ready` for load
//!   balancers ([`status::health`], also on `health_listen`), at most 64
//!   clients at once on each listener ([`status::admission`]), and
//!   `julia-fcgi status` (`--pool NAME`, `--all`).
//! - [`fastcgi`]: the FastCGI wire format (records, name-value pairs),
//!   for the status server and the tests' client.
//! - [`signals`]: SIGTERM/SIGINT into a stop, SIGHUP into a reload.
//! - [`notify`]: `sd_notify` readiness, status, watchdog.
//! - [`logging`]: `tracing` to the journal or stderr.
//! - [`sysimage`]: the pool sysimage: building one (`julia-fcgi sysimage
//!   build`), and choosing (or refusing) it at every start and reload.
//!
//! `main.rs` only parses arguments and wires these together.

pub mod cgroup;
pub mod cli;
pub mod config;
pub mod contract;
pub mod control;
pub mod fastcgi;
pub mod listen;
pub mod logging;
pub mod notify;
pub mod pool;
pub mod privileges;
pub mod queue;
pub mod runtime_dir;
pub mod scoreboard;
pub mod signals;
pub mod status;
pub mod sysimage;
pub mod worker;
