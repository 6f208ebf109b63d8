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
//! storm, and stop them all gracefully. `shared/ARCHITECTURE.md` says why.
//!
//! # Modules
//!
//! - [`cli`]: the command line, compatible with the old C process manager.
//! - [`config`]: flags over a TOML file over defaults, validated into
//!   [`config::Settings`] before anything happens.
//! - [`contract`]: what the master tells each worker at start-up, as one
//!   typed value, and the environment that carries it to the Julia side.
//! - [`listen`]: the listening socket: systemd's, spawn-fcgi's (fd 0), or
//!   bound from `-l`.
//! - [`control`]: the line protocol on each worker's control channel
//!   (`julia/INTERFACE.md`).
//! - [`fastcgi`]: the FastCGI wire format (records, name-value pairs),
//!   for the status server and the tests' client.
//! - [`worker`]: one Julia process and the actor task that owns it.
//! - [`pool`]: the supervisor: slots, replacement, back-off, reload,
//!   request timeouts and recycling, draining.
//! - [`queue`]: the listen queue length, from the kernel.
//! - [`scoreboard`]: the shared-memory slots workers write around each request.
//! - [`status`]: the status page the master serves itself, and `julia-fcgi status`.
//! - [`cgroup`]: one cgroup v2 per worker, limits, `cgroup.kill`, OOM reports.
//! - [`privileges`]: dropping root for good.
//! - [`notify`]: `sd_notify` readiness, status, watchdog.
//! - [`logging`]: `tracing` to the journal or stderr.
//! - [`sysimage`]: the pool sysimage: building one, and choosing (or refusing) it.
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
