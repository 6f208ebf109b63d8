//! Values as written in the config and on the command line, parsed into
//! types: addresses, durations, sizes, modes.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::{invalid, ConfigError};

/// Where the FastCGI socket is bound when nobody hands one over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp {
        addr: SocketAddr,
        /// Reachable from the network: every page on the host becomes
        /// runnable by anyone who can connect, so this is logged loudly.
        all_interfaces: bool,
    },
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp { addr, .. } => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddr {
    /// Parses `HOST:PORT`, `:PORT`, `[V6]:PORT`, `unix:PATH` or a path.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| invalid("listen", format!("{text:?}: {why}"));
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty unix socket path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') || text.starts_with("./") || text.starts_with("../") {
            return Ok(ListenAddr::Unix(PathBuf::from(text)));
        }
        if let Some(port) = text.strip_prefix(':') {
            let port: u16 = port
                .parse()
                .map_err(|_| bad("expected :PORT with a port number 1-65535"))?;
            return Ok(ListenAddr::Tcp {
                addr: SocketAddr::from(([0, 0, 0, 0], port)),
                all_interfaces: true,
            });
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:PORT, :PORT, [V6]:PORT or a unix socket path"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad("expected HOST:PORT with a port number 1-65535"));
        }
        let addr = match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => text
                .to_socket_addrs()
                .map_err(|e| bad(&format!("cannot resolve host: {e}")))?
                .next()
                .ok_or_else(|| bad("host resolves to no address"))?,
        };
        Ok(ListenAddr::Tcp {
            addr,
            all_interfaces: addr.ip().is_unspecified(),
        })
    }
}

pub(super) fn parse_mode(text: &str) -> Result<u32, ConfigError> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| invalid("socket_mode", format!("{text:?}: expected octal like 0660")))
}

/// The status page is for operators and health checks: a unix socket or
/// the loopback only, never the network.
pub(super) fn status_addr(text: &str) -> Result<ListenAddr, ConfigError> {
    status_addr_of("status_listen", text)
}

/// [`status_addr`] of the setting or flag `setting`, named so in errors.
pub(super) fn status_addr_of(setting: &'static str, text: &str) -> Result<ListenAddr, ConfigError> {
    let parsed = ListenAddr::parse(text).map_err(|e| match e {
        ConfigError::Invalid { message, .. } => invalid(setting, message),
        other => other,
    })?;
    match parsed {
        ListenAddr::Tcp { addr, .. } if !addr.ip().is_loopback() => Err(invalid(
            setting,
            format!("{addr}: only a unix socket or a loopback address (127.0.0.1, [::1])"),
        )),
        addr => Ok(addr),
    }
}

pub(super) fn size(setting: &'static str, text: Option<&str>) -> Result<Option<u64>, ConfigError> {
    text.map(|t| {
        crate::cgroup::parse_size(t).ok_or_else(|| {
            invalid(
                setting,
                format!("{t:?}: expected a size like 512M, 2G or max"),
            )
        })
    })
    .transpose()
}

pub(super) fn optional_duration(
    setting: &'static str,
    text: Option<&str>,
) -> Result<Option<Duration>, ConfigError> {
    match text {
        None => Ok(None),
        Some(text) => {
            let d = parse_duration(text).ok_or_else(|| {
                invalid(
                    setting,
                    format!("{text:?}: expected a duration like 30s or 2m"),
                )
            })?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

/// A duration: `10s`, `500ms`, `1.5s`, `2m`, `1h` or a bare number of
/// seconds. Decimals are read exactly (not through a float), so `1.001s` is
/// 1001 ms to the nanosecond, as the worker will be told.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_ns: u128 = match unit.trim() {
        "" | "s" => 1_000_000_000,
        "ms" => 1_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 18 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction_ns = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u128>().ok()? * unit_ns / 10u128.pow(fraction.len() as u32)
    };
    let ns = whole.checked_mul(unit_ns)?.checked_add(fraction_ns)?;
    let secs = u64::try_from(ns / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (ns % 1_000_000_000) as u32))
}

pub(super) fn duration(
    setting: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(text) => parse_duration(text).ok_or_else(|| {
            invalid(
                setting,
                format!("{text:?}: expected a duration like 10s, 500ms or 2m"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    #[test]
    fn listen_forms() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:4545").unwrap(),
            ListenAddr::Tcp {
                addr: "127.0.0.1:4545".parse().unwrap(),
                all_interfaces: false
            }
        );
        assert_eq!(
            ListenAddr::parse(":4545").unwrap(),
            ListenAddr::Tcp {
                addr: "0.0.0.0:4545".parse().unwrap(),
                all_interfaces: true
            }
        );
        assert_eq!(
            ListenAddr::parse("[::1]:9000").unwrap(),
            ListenAddr::Tcp {
                addr: "[::1]:9000".parse().unwrap(),
                all_interfaces: false
            }
        );
        assert_eq!(
            ListenAddr::parse("/run/x.sock").unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("unix:rel.sock").unwrap(),
            ListenAddr::Unix("rel.sock".into())
        );
        for bad in ["4545", "host:", ":99999", "127.0.0.1:x", "unix:", "[::1]"] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.001s"), Some(Duration::from_millis(1001)));
        assert_eq!(parse_duration("0.1s"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration(".5m"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5ms"), Some(Duration::from_micros(1500)));
        for bad in [".", "1..2s", "1.2.3s", "-1s", "s", ""] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("666").unwrap(), 0o666);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("07777").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<FileConfig>("workrs = 2").unwrap_err();
        assert!(err.message().contains("workrs"), "{}", err.message());
    }
}
