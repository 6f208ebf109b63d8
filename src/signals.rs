//! Signals into pool commands: `SIGTERM` and `SIGINT` stop the pool
//! gracefully; `SIGHUP` re-reads the configuration and, when it is valid,
//! hands the pool the new one to roll over to ([`pool::Config`]: the
//! worker spec, the pool's shape and its policies). An invalid one is
//! refused with its reason, and the running one goes on.
//!
//! A stop is said in two steps ([`Stop`]): the first `SIGTERM` or `SIGINT`
//! turns `/ready` to 503 at once and lets the workers serve on for the
//! pool's `drain_delay`, so that a load balancer sees the 503 before any
//! connection is refused; a second one ends that delay. A reload asked
//! once a stop has begun is ignored: the pool is going away.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::cli::Cli;
use crate::config::Settings;
use crate::notify::Notifier;
use crate::pool::{self, Shared};

/// Where a stop is, as the status server and the pool see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    /// No stop asked: serving.
    #[default]
    No,
    /// A first `SIGTERM` or `SIGINT`: `/ready` says 503 from now; the
    /// workers serve on through the drain delay, then are told to stop.
    Draining,
    /// Another one: the workers are told to stop now, whatever is left of
    /// the drain delay.
    Now,
}

impl Stop {
    /// A stop has begun (`/ready` says 503).
    pub fn begun(self) -> bool {
        self != Stop::No
    }
}

/// The task that waits for signals.
pub struct Signals {
    pub cli: Cli,
    /// The configuration running now (a reload resolves the file as the
    /// first start did, from what this captured).
    pub running: Settings,
    pub shared: Shared,
    pub notifier: Arc<Notifier>,
    pub stop: watch::Sender<Stop>,
    pub reload: mpsc::UnboundedSender<pool::Config>,
}

impl Signals {
    pub async fn run(mut self) {
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
        let _ = self.stop.send(Stop::Draining);
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM again: stopping now"); break; }
                _ = int.recv() => { tracing::info!("SIGINT again: stopping now"); break; }
                _ = hup.recv() => tracing::warn!("SIGHUP ignored: the pool is stopping"),
            }
        }
        let _ = self.stop.send(Stop::Now);
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
        let config = pool::Config::from_settings(&reloaded.settings, &self.shared);
        self.running = reloaded.settings;
        let _ = self.reload.send(config);
    }
}
