//! What one configuration says about the pool: how to start a worker, the
//! pool's shape, and its policies. A reload replaces all three at once.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::cgroup::Tree;
use crate::config::{Settings, Supervision};
use crate::contract::WorkerContract;
use crate::worker::Spec;

/// The pool's shape; a reload may change every field but `listening_on`.
#[derive(Debug, Clone)]
pub struct Options {
    pub size: u32,
    pub start_timeout: Duration,
    pub shutdown_grace: Duration,
    /// How long the workers serve on once a stop has begun (`/ready` 503).
    pub drain_delay: Duration,
    /// For the log: what the pool serves on.
    pub listening_on: String,
}

/// One generation of the pool's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub spec: Arc<Spec>,
    pub options: Options,
    /// Request timeouts, recycling, the process manager.
    pub supervision: Supervision,
}

/// What every generation of workers shares, whatever the config says: what
/// the master set up once, before it dropped its privileges.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The FastCGI listening socket.
    pub listener: Arc<OwnedFd>,
    /// What the log calls it.
    pub listening_on: String,
    pub board_file: Option<Arc<std::fs::File>>,
    pub cgroups: Option<Arc<Tree>>,
}

impl Config {
    /// The pool's configuration as `settings` say it, on what `shared` holds.
    pub fn from_settings(settings: &Settings, shared: &Shared) -> Config {
        let env = WorkerContract::from(settings).env();
        // Chosen (and said in the log) at every start and reload.
        let image = settings
            .sysimage
            .choose(&settings.julia, &settings.worker_file, &env);
        let spec = Spec {
            julia: settings.julia.clone(),
            worker_file: settings.worker_file.clone(),
            env,
            listener: shared.listener.clone(),
            cgroups: shared.cgroups.clone(),
            limits: settings.supervision.limits.clone(),
            scoreboard: shared.board_file.clone(),
            image,
            sysimage: settings.sysimage.clone(),
        };
        let options = Options {
            size: settings.workers.get(),
            start_timeout: settings.worker_start_timeout,
            shutdown_grace: settings.shutdown_grace,
            drain_delay: settings.drain_delay,
            listening_on: shared.listening_on.clone(),
        };
        Config {
            spec: Arc::new(spec),
            options,
            supervision: settings.supervision.clone(),
        }
    }
}
