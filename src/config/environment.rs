//! The environment julia-fcgi was started in, captured once.
//!
//! Several settings default to something the process's environment says
//! (`$HOME`, systemd's `STATE_DIRECTORY`, an operator's `JULIA_PROJECT`) or
//! depend on who the process is (root binds `/run/julia-fcgi` and drops to a
//! service user). Both change over the life of the daemon: it stops being
//! root right after binding. A SIGHUP must re-read the config exactly as the
//! first start did, so everything the defaults depend on is taken here, once,
//! before the privilege drop, and handed to every later
//! [`Settings::resolve`](super::Settings::resolve).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use nix::unistd::Uid;

/// Every variable julia-fcgi's defaults consult (the workers' own
/// environment is built from [`crate::contract`], never inherited whole).
const CONSULTED: &[&str] = &[
    "HOME",
    "PATH",
    "LANG",
    "LC_ALL",
    "JULIA_NUM_THREADS",
    "JULIA_PROJECT",
    "JULIA_LOAD_PATH",
    "JULIA_DEPOT_PATH",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "XDG_RUNTIME_DIR",
    // Set by julia-fcgi@.service to its instance name: the default `pool`.
    "JULIA_FCGI_POOL",
    // Where `julia-fcgi status --pool` finds pool files (default
    // /etc/julia-fcgi): tests and unusual layouts.
    "JULIA_FCGI_CONFIG_DIR",
];

/// The process's effective user and the variables in [`CONSULTED`], as they
/// were at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    euid: Uid,
    vars: BTreeMap<&'static str, OsString>,
}

impl Environment {
    /// This process's environment, now. Call it once, before dropping
    /// privileges.
    pub fn capture() -> Self {
        Self::from_vars(nix::unistd::geteuid(), std::env::vars_os())
    }

    /// An environment as given (tests; a variable not consulted is dropped).
    pub fn from_vars<K, V>(euid: Uid, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<OsStr>,
        V: Into<OsString>,
    {
        let vars = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let name = CONSULTED.iter().find(|c| OsStr::new(c) == name.as_ref())?;
                Some((*name, value.into()))
            })
            .collect();
        Environment { euid, vars }
    }

    /// A variable's value; `Some("")` when set but empty, which means
    /// something for some of them (`JULIA_DEPOT_PATH=""`: no depot at all).
    pub fn var(&self, name: &str) -> Option<&OsStr> {
        self.vars.get(name).map(OsString::as_os_str)
    }

    /// Started as root: there is a user to drop to, and root's defaults
    /// (`/run/julia-fcgi`) apply, also when re-reading the config later.
    pub fn started_as_root(&self) -> bool {
        self.euid.is_root()
    }

    pub fn euid(&self) -> Uid {
        self.euid
    }

    /// The first entry of a colon-separated list systemd sets
    /// (`RUNTIME_DIRECTORY`, `STATE_DIRECTORY`): ours.
    pub fn first_dir(&self, name: &str) -> Option<PathBuf> {
        let value = self.var(name)?.to_str()?;
        let first = value.split(':').next().filter(|dir| !dir.is_empty())?;
        Some(PathBuf::from(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_is_consulted_and_empty_values() {
        let env = Environment::from_vars(
            Uid::from_raw(1000),
            [
                ("HOME", "/home/u"),
                ("SECRET", "x"),
                ("JULIA_DEPOT_PATH", ""),
                ("STATE_DIRECTORY", "/var/lib/a:/var/lib/b"),
            ],
        );
        assert_eq!(env.var("HOME"), Some(OsStr::new("/home/u")));
        assert_eq!(env.var("SECRET"), None);
        assert_eq!(env.var("JULIA_DEPOT_PATH"), Some(OsStr::new("")));
        assert_eq!(
            env.first_dir("STATE_DIRECTORY"),
            Some(PathBuf::from("/var/lib/a"))
        );
        assert!(!env.started_as_root());
    }
}
