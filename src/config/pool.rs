//! The pool's name, its health listener and its drain delay: what tells
//! one pool from the others on a host (`julia-fcgi@NAME`), what a load
//! balancer asks from another, and how long a stop gives it to notice.

use std::time::Duration;

use super::environment::Environment;
use super::file::FileConfig;
use super::values::{duration, ListenAddr};
use super::{invalid, ConfigError};

/// The variable the template unit `julia-fcgi@.service` sets to its
/// instance name (`Environment=JULIA_FCGI_POOL=%i`): the default `pool`.
pub const POOL_VAR: &str = "JULIA_FCGI_POOL";

/// Names whose files in /run/julia-fcgi are the plain julia-fcgi.service's
/// (its socket, status socket and scoreboard; its lock has a '.').
const RESERVED: &[&str] = &["julia-fcgi", "status", "scoreboard"];

/// The longest pool name: `julia-fcgi@NAME.service` runs as the user
/// `julia-fcgi-NAME`, and a user name has at most 31 characters.
const MAX_LEN: usize = 20;

/// A pool's name, checked: 1 to 20 ASCII letters, digits, `_` or `-`, not
/// starting with `-`. So it is safe as a file name
/// (`/etc/julia-fcgi/pools/NAME.toml`, `/run/julia-fcgi/NAME.sock`), a
/// journal field value (`POOL=NAME`), an OpenMetrics label value and part
/// of a user name (`julia-fcgi-NAME`) as it is, and `systemctl start
/// julia-fcgi@NAME` needs no escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolName(String);

impl PoolName {
    /// `text` as a pool name, or why it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if RESERVED.contains(&text) {
            return Err(format!(
                "{text:?} is taken: /run/julia-fcgi/{text}.sock or /run/julia-fcgi/{text} \
                 belong to the plain julia-fcgi.service (its socket, status socket and \
                 scoreboard); choose another name"
            ));
        }
        let why = if text.is_empty() {
            Some("empty")
        } else if text.len() > MAX_LEN {
            Some("longer than 20 characters")
        } else if text.starts_with('-') {
            Some("starts with '-'")
        } else if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            Some("has a character other than a letter, a digit, '_' or '-'")
        } else {
            None
        };
        match why {
            None => Ok(PoolName(text.to_owned())),
            Some(why) => Err(format!(
                "{text:?} {why}: a pool name is 1-20 ASCII letters, digits, '_' or '-', \
                 not starting with '-' (it names /etc/julia-fcgi/pools/NAME.toml, \
                 /run/julia-fcgi/NAME.sock and the user julia-fcgi-NAME)"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PoolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `pool` in the file, else the template unit's instance name
/// ([`POOL_VAR`]), else none: a plain `julia-fcgi.service` has no name.
pub(super) fn resolve_pool(
    file: &FileConfig,
    env: &Environment,
) -> Result<Option<PoolName>, ConfigError> {
    if let Some(text) = file.pool.as_deref() {
        return PoolName::parse(text)
            .map(Some)
            .map_err(|e| invalid("pool", e));
    }
    match env.var(POOL_VAR) {
        None => Ok(None),
        Some(value) => {
            let text = value.to_str().unwrap_or("\u{fffd}");
            PoolName::parse(text)
                .map(Some)
                .map_err(|e| invalid("pool", format!("from ${POOL_VAR}: {e}")))
        }
    }
}

/// `health_listen`: where a load balancer or a probe asks `GET /ping` and
/// `GET /ready` over plain HTTP. Any address, private interfaces included,
/// because that listener answers those two paths and nothing else: whether
/// the pool is up and whether it has a warm worker. The status page (every
/// request's URI with its query string) stays on `status_listen`, a unix
/// socket or the loopback.
pub(super) fn resolve_health(file: &FileConfig) -> Result<Option<ListenAddr>, ConfigError> {
    let Some(text) = file.health_listen.as_deref() else {
        return Ok(None);
    };
    ListenAddr::parse(text).map(Some).map_err(|e| match e {
        ConfigError::Invalid { message, .. } => invalid("health_listen", message),
        other => other,
    })
}

/// The default drain delay with a health listener: HAProxy's recipe
/// checks every second and marks a host down at the first 503, so two
/// seconds cover a check and its answer. Without one nobody is asking
/// `/ready` from elsewhere, and a stop does not wait at all.
pub const DRAIN_DELAY_WITH_HEALTH: Duration = Duration::from_secs(2);

/// What the shipped units give a stop (`TimeoutStopSec=30s`) before
/// systemd kills what is left, and Kubernetes' default
/// `terminationGracePeriodSeconds`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `drain_delay`: how long the workers go on serving after `/ready` turned
/// 503 at a stop's start. A delay that, with `shutdown_grace` after it,
/// reaches [`STOP_TIMEOUT`] is valid (a drop-in may raise the unit's) but
/// said: under the shipped units systemd would kill the pool mid-request.
pub(super) fn resolve_drain_delay(
    file: &FileConfig,
    has_health_listener: bool,
    shutdown_grace: Duration,
    warnings: &mut Vec<String>,
) -> Result<Duration, ConfigError> {
    let default = if has_health_listener {
        DRAIN_DELAY_WITH_HEALTH
    } else {
        Duration::ZERO
    };
    let delay = duration("drain_delay", file.drain_delay.as_deref(), default)?;
    let stop = delay + shutdown_grace;
    if stop >= STOP_TIMEOUT {
        warnings.push(format!(
            "drain_delay ({delay:?}) + shutdown_grace ({shutdown_grace:?}) = {stop:?}, not \
             under the units' TimeoutStopSec=30s (and Kubernetes' default \
             terminationGracePeriodSeconds): a stop would be killed before the workers \
             finish; raise TimeoutStopSec above {stop:?} (systemctl edit julia-fcgi.service, \
             or julia-fcgi@NAME.service) or shorten them"
        ));
    }
    Ok(delay)
}

#[cfg(test)]
mod tests {
    use nix::unistd::Uid;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment::from_vars(Uid::from_raw(1000), vars.iter().copied())
    }

    fn file(toml: &str) -> FileConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn names_that_are_file_names_journal_values_and_labels() {
        for good in ["blog", "shop-2", "a_b-c", "X", "_x", &"n".repeat(20)] {
            assert_eq!(PoolName::parse(good).unwrap().as_str(), good);
        }
        for (bad, why) in [
            ("", "empty"),
            (&"n".repeat(21) as &str, "longer than 20"),
            ("-x", "starts with"),
            (".hidden", "a character other"),
            ("a.b", "a character other"),
            ("a/b", "a character other"),
            ("a b", "a character other"),
            ("blog\"", "a character other"),
            ("café", "a character other"),
        ] {
            let e = PoolName::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("/etc/julia-fcgi/pools/NAME.toml"), "{e}");
        }
        for taken in ["status", "julia-fcgi", "scoreboard"] {
            let e = PoolName::parse(taken).unwrap_err();
            assert!(
                e.contains("is taken") && e.contains("choose another name"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_file_wins_over_the_instance_name_and_none_is_none() {
        let blog = env(&[(POOL_VAR, "blog")]);
        assert_eq!(resolve_pool(&file(""), &env(&[])).unwrap(), None);
        assert_eq!(
            resolve_pool(&file(""), &blog).unwrap().unwrap().as_str(),
            "blog"
        );
        let named = file("pool = \"shop\"");
        assert_eq!(
            resolve_pool(&named, &blog).unwrap().unwrap().as_str(),
            "shop"
        );
        let e = resolve_pool(&file("pool = \"a/b\""), &blog).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid value for pool: \"a/b\""),
            "{e}"
        );
        let e = resolve_pool(&file(""), &env(&[(POOL_VAR, "x y")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid value for pool: from $JULIA_FCGI_POOL: \"x y\""),
            "{e}"
        );
    }

    #[test]
    fn the_drain_delay_is_short_by_default_and_said_when_it_outlasts_the_stop() {
        let grace = Duration::from_secs(10);
        let delay = |toml: &str, health, warnings: &mut Vec<String>| {
            resolve_drain_delay(&file(toml), health, grace, warnings)
        };
        let mut w = Vec::new();
        assert_eq!(delay("", false, &mut w).unwrap(), Duration::ZERO);
        assert_eq!(delay("", true, &mut w).unwrap(), Duration::from_secs(2));
        let half = delay("drain_delay = \"500ms\"", true, &mut w).unwrap();
        assert_eq!(half, Duration::from_millis(500));
        let none = delay("drain_delay = \"0s\"", true, &mut w).unwrap();
        assert_eq!(none, Duration::ZERO);
        let long = delay("drain_delay = \"19s\"", false, &mut w).unwrap();
        assert_eq!(long, Duration::from_secs(19));
        let e = delay("drain_delay = \"soon\"", true, &mut w).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid value for drain_delay: \"soon\": expected a duration"),
            "{e}"
        );
        assert!(w.is_empty(), "{w:?}");
        let too_long = delay("drain_delay = \"20s\"", false, &mut w).unwrap();
        assert_eq!(too_long, Duration::from_secs(20));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("drain_delay (20s) + shutdown_grace (10s) = 30s")
                && w[0].contains("raise TimeoutStopSec above 30s"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn the_health_listener_may_be_any_address() {
        assert_eq!(resolve_health(&file("")).unwrap(), None);
        for addr in ["10.0.0.5:9001", "0.0.0.0:9001", "127.0.0.2:9001"] {
            let toml = format!("health_listen = {addr:?}");
            match resolve_health(&file(&toml)).unwrap() {
                Some(ListenAddr::Tcp { addr: a, .. }) => assert_eq!(a.to_string(), addr),
                other => panic!("{addr}: {other:?}"),
            }
        }
        let e = resolve_health(&file("health_listen = \"9001\"")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid value for health_listen: \"9001\""),
            "{e}"
        );
    }
}
