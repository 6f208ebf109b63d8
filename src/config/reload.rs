//! Re-reading the config on SIGHUP.
//!
//! A reload rolls the pool over to new workers; it binds no socket, opens no
//! log and changes no user. So the file is resolved exactly as at the first
//! start (the same [`Environment`](super::Environment), the same identity
//! resolution: julia-fcgi is no longer root by now, but was started as
//! root), the workers keep the running user and the HOME that follows from
//! it, and each setting only a restart applies keeps its running value, with
//! one line saying so when the file changed it.

use std::fmt::Display;

use super::identity::describe;
use super::{wanted_identity, FileConfig, Settings};
use super::{ConfigError, ListenAddr};
use crate::cli::Cli;

/// A re-read configuration, ready to roll out.
#[derive(Debug)]
pub struct Reloaded {
    pub settings: Settings,
    /// One line per setting the file changed that only a restart applies.
    pub needs_restart: Vec<String>,
}

impl Settings {
    /// Re-reads the config `cli` names, as the first start did (`running`
    /// holds what that start captured).
    pub fn reload(cli: &Cli, running: &Settings) -> Result<Reloaded, ConfigError> {
        let env = &running.environment;
        let file = FileConfig::of(cli)?;
        // Checked as a first start would check it, so a user that does not
        // exist is refused now rather than at the next restart…
        let wanted = wanted_identity(cli, &file, env)?;
        // …but the workers stay who they are.
        let mut settings = Settings::build(cli, file, env, running.identity.clone())?;
        let mut needs_restart = Vec::new();
        if wanted != running.identity {
            needs_restart.push(format!(
                "user changed (running as {}, the config now says {}); that takes a restart, \
                 not a reload: the workers keep running as {}",
                describe(running.identity.as_ref()),
                describe(wanted.as_ref()),
                describe(running.identity.as_ref()),
            ));
        }
        needs_restart.extend(keep_restart_only(running, &mut settings));
        Ok(Reloaded {
            settings,
            needs_restart,
        })
    }
}

/// Gives `new` the running value of every setting only a restart applies
/// (sockets, runtime directory, logging, the cgroup tree) and says which of
/// them the file changed.
fn keep_restart_only(r: &Settings, n: &mut Settings) -> Vec<String> {
    let mut c = Changes(Vec::new());
    c.keep("listen", &r.listen, &mut n.listen, ToString::to_string);
    c.keep("backlog", &r.backlog, &mut n.backlog, ToString::to_string);
    c.keep("socket_mode", &r.socket_mode, &mut n.socket_mode, |m| {
        format!("{m:04o}")
    });
    c.keep("socket_owner", &r.socket_owner, &mut n.socket_owner, |o| {
        optional(o.as_ref())
    });
    c.keep("runtime_dir", &r.runtime_dir, &mut n.runtime_dir, |d| {
        d.display().to_string()
    });
    c.keep(
        "status_listen",
        &r.status_listen,
        &mut n.status_listen,
        |a| optional(a.as_ref().map(ListenAddr::to_string).as_ref()),
    );
    c.keep(
        "health_listen",
        &r.health_listen,
        &mut n.health_listen,
        |a| optional(a.as_ref().map(ListenAddr::to_string).as_ref()),
    );
    // The journal field and the metrics' label are set when logging starts.
    c.keep("pool", &r.pool, &mut n.pool, |p| optional(p.as_ref()));
    c.keep("log_level", &r.log_level, &mut n.log_level, |l| {
        optional(l.as_ref())
    });
    c.keep("log_target", &r.log_target, &mut n.log_target, |t| {
        format!("{t:?}").to_lowercase()
    });
    let (running_root, new_root) = (&r.supervision.cgroup_root, &mut n.supervision.cgroup_root);
    c.keep("cgroup_root", running_root, new_root, |root| match root {
        None => "the service's own cgroup".to_owned(),
        Some(None) => "none".to_owned(),
        Some(Some(path)) => path.display().to_string(),
    });
    c.0
}

/// Lines about settings the file changed that a reload does not apply.
struct Changes(Vec<String>);

impl Changes {
    /// Keeps the running value of a setting only a restart applies, and
    /// notes the change the file asked for.
    fn keep<T: PartialEq + Clone>(
        &mut self,
        name: &str,
        running: &T,
        new: &mut T,
        show: impl Fn(&T) -> String,
    ) {
        if running != new {
            self.0.push(format!(
                "{name} changed ({} → {}); that takes a restart, not a reload: still {}",
                show(running),
                show(new),
                show(running)
            ));
            *new = running.clone();
        }
    }
}

fn optional(value: Option<&impl Display>) -> String {
    value.map_or_else(|| "unset".to_owned(), ToString::to_string)
}
