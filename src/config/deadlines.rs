//! A request's deadlines: how long a worker waits for a new connection's
//! first byte, for a request's params and for its body (the contract
//! carries them in whole milliseconds, see [`crate::contract`]).

use std::time::Duration;

use super::file::Rate;
use super::values::duration;
use super::{invalid, ConfigError, FileConfig};
use crate::contract::{self, defaults};

/// Validated deadlines of every request (`julia/INTERFACE.md`,
/// "Deadlines"; README, "Slow and idle clients").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From the accept to a new connection's first byte.
    pub first_byte: Duration,
    /// From the accept (on a kept connection: the next request's first
    /// byte) to the end of the params.
    pub header: Duration,
    /// From the end of the params to the end of the body, plus a second
    /// per `body_min_rate` bytes received…
    pub body: Duration,
    /// …in bytes per second; 0: no such allowance.
    pub body_min_rate: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            first_byte: defaults::FIRST_BYTE_TIMEOUT,
            header: defaults::HEADER_TIMEOUT,
            body: defaults::BODY_TIMEOUT,
            body_min_rate: defaults::BODY_MIN_RATE_BYTES_PER_S,
        }
    }
}

/// A duration setting the worker is told in whole milliseconds, at least 1.
pub(super) fn whole_ms(
    setting: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(setting, text, default)?;
    if contract::whole_millis(d).is_none() {
        return Err(invalid(
            setting,
            format!(
                "{:?}: expected a whole number of milliseconds, at least 1ms",
                text.unwrap_or_default()
            ),
        ));
    }
    Ok(d)
}

/// A rate like `16K` or `16384` (bytes per second), or `0`.
fn rate(setting: &'static str, given: Option<&Rate>, default: u64) -> Result<u64, ConfigError> {
    let text = match given {
        None => return Ok(default),
        Some(Rate::Bytes(n)) => n.to_string(),
        Some(Rate::Text(text)) => text.clone(),
    };
    match crate::cgroup::parse_size(&text) {
        Some(n) if n != u64::MAX && n <= i64::MAX as u64 => Ok(n),
        _ => Err(invalid(
            setting,
            format!("{text:?}: expected bytes per second like 16K, 1M or 0"),
        )),
    }
}

pub(super) fn resolve(file: &FileConfig) -> Result<Deadlines, ConfigError> {
    let d = Deadlines::default();
    Ok(Deadlines {
        first_byte: whole_ms(
            "first_byte_timeout",
            file.first_byte_timeout.as_deref(),
            d.first_byte,
        )?,
        header: whole_ms("header_timeout", file.header_timeout.as_deref(), d.header)?,
        body: whole_ms("body_timeout", file.body_timeout.as_deref(), d.body)?,
        body_min_rate: rate(
            "body_min_rate",
            file.body_min_rate.as_ref(),
            d.body_min_rate,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(toml: &str) -> FileConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn defaults_and_forms() {
        assert_eq!(resolve(&file("")).unwrap(), Deadlines::default());
        let d = resolve(&file(
            "first_byte_timeout = \"250ms\"\nheader_timeout = \"1.5s\"\n\
             body_timeout = \"2m\"\nbody_min_rate = \"1M\"\n",
        ))
        .unwrap();
        assert_eq!(d.first_byte, Duration::from_millis(250));
        assert_eq!(d.header, Duration::from_millis(1500));
        assert_eq!(d.body, Duration::from_secs(120));
        assert_eq!(d.body_min_rate, 1 << 20);
        assert_eq!(
            resolve(&file("body_min_rate = \"0\""))
                .unwrap()
                .body_min_rate,
            0
        );
        assert_eq!(
            resolve(&file("body_min_rate = 4096"))
                .unwrap()
                .body_min_rate,
            4096
        );
    }

    #[test]
    fn refused() {
        for (toml, needle) in [
            ("header_timeout = \"0s\"", "header_timeout"),
            (
                "first_byte_timeout = \"1.5ms\"",
                "whole number of milliseconds",
            ),
            ("body_timeout = \"soon\"", "body_timeout"),
            ("body_min_rate = \"max\"", "bytes per second"),
            ("body_min_rate = \"fast\"", "body_min_rate"),
        ] {
            let err = resolve(&file(toml)).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }
}
