//! Who the workers run as, and the HOME they get.
//!
//! Both depend on whether julia-fcgi was *started* as root, never on who it
//! is now: after the drop it is the service user, and a SIGHUP must resolve
//! the same user, group and HOME as the first start did (see
//! [`Environment`]).

use std::path::PathBuf;

use super::environment::Environment;
use super::{invalid, ConfigError, DEFAULT_USER};
use crate::privileges::{self, Identity};

/// Started as root: whom to become (pages as root are refused unless
/// allowed). Started unprivileged: nobody; there is nothing to drop.
pub(super) fn resolve_identity(
    user: Option<&str>,
    group: Option<&str>,
    allow_root: bool,
    env: &Environment,
) -> Result<Option<Identity>, ConfigError> {
    if !env.started_as_root() {
        let me = env.euid();
        if let Some(user) = user {
            let wanted =
                privileges::resolve(user, group).map_err(|e| invalid("user", e.to_string()))?;
            if wanted.uid != me {
                return Err(invalid(
                    "user",
                    format!("{user:?}: switching users needs root, and this runs as uid {me}"),
                ));
            }
        }
        return Ok(None);
    }
    let identity = match (user, allow_root) {
        (None, true) => return Ok(None),
        (user, _) => privileges::resolve(user.unwrap_or(DEFAULT_USER), group)
            .map_err(|e| invalid("user", e.to_string()))?,
    };
    if identity.uid.is_root() && !allow_root {
        return Err(invalid(
            "user",
            "refusing to run pages as root; set another user, or pass \
             -R/--allow-to-run-as-root (allow_to_run_as_root = true) if you really mean it",
        ));
    }
    Ok((!identity.uid.is_root()).then_some(identity))
}

/// `-h`/`home` when given; else the dropped-to user's own home (root's
/// `$HOME` is no place for the workers); else the `$HOME` julia-fcgi was
/// started with; else `/home`.
pub(super) fn resolve_home(
    given: Option<PathBuf>,
    identity: Option<&Identity>,
    env: &Environment,
) -> PathBuf {
    given
        .or_else(|| identity.map(|id| id.home.clone()))
        .or_else(|| env.var("HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/home"))
}

/// A user as a message names it: `www-data (uid 33, gid 33)`, or that there
/// is none to become.
pub(super) fn describe(identity: Option<&Identity>) -> String {
    match identity {
        Some(id) => format!("{} (uid {}, gid {})", id.user, id.uid, id.gid),
        None => "none (no privileges to drop)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Uid;

    #[test]
    fn resolution_depends_on_the_start_not_on_the_current_user() {
        // As if re-reading the config after the drop: this process is no
        // longer root, but it was started as root.
        let root_start = Environment::from_vars(Uid::from_raw(0), [("HOME", "/root")]);
        let Ok(Some(id)) = resolve_identity(Some("nobody"), None, false, &root_start) else {
            // No "nobody" on this system: nothing to resolve against.
            return;
        };
        assert_eq!(id.user, "nobody");
        assert_eq!(resolve_home(None, Some(&id), &root_start), id.home);
        assert_eq!(
            resolve_home(Some("/srv".into()), Some(&id), &root_start),
            PathBuf::from("/srv")
        );
        let plain = Environment::from_vars(Uid::from_raw(1000), [("HOME", "/home/u")]);
        assert_eq!(resolve_identity(None, None, false, &plain).unwrap(), None);
        assert_eq!(resolve_home(None, None, &plain), PathBuf::from("/home/u"));
    }
}
