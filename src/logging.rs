//! Logging set-up: `tracing` to the journal when stderr is connected to it,
//! else human-readable lines on stderr.
//!
//! Fields become journal fields: `worker` and `worker_pid` are `WORKER` and
//! `WORKER_PID`, `request_uri` is `REQUEST_URI`, so `journalctl -u julia-fcgi
//! WORKER=1` shows one worker's lines. Every line a worker prints is one
//! entry; the journal's native protocol has no line length limit. A named
//! pool's entries all carry `POOL=NAME`, so `journalctl POOL=blog` finds
//! one pool's lines whichever unit or host wrote them.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogTarget, PoolName};

pub const SYSLOG_IDENTIFIER: &str = "julia-fcgi";

/// `level` (from `--log-level` or the config) wins over `RUST_LOG`; the
/// default is `info`. Entries in the journal carry `POOL=` of `pool`.
/// Returns a message when the filter could not be used.
pub fn init(level: Option<&str>, target: LogTarget, pool: Option<&PoolName>) -> Result<(), String> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // The access log is switched by `access_log`, not by the log level: an
    // operator who turned it on at `log_level = "warn"` still gets it.
    let filter = filter.add_directive(
        format!("{}=info", crate::worker::ACCESS_TARGET)
            .parse()
            .expect("a valid directive"),
    );
    let journal = match target {
        LogTarget::Stderr => false,
        LogTarget::Journal => true,
        LogTarget::Auto => stderr_is_journal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
                    .with_priority_mappings(priorities())
                    .with_custom_fields(pool_fields(pool));
                registry.with(layer).init();
                return Ok(());
            }
            Err(e) if target == LogTarget::Journal => {
                return Err(format!("cannot connect to the journal: {e}"));
            }
            // Auto: the journal went away; stderr still reaches somebody.
            Err(_) => {}
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                // Colours only for a person at a terminal, never in files.
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .init();
    Ok(())
}

/// The fields every entry carries: `POOL=NAME` for a named pool (a
/// checked name, so the value needs no escaping).
fn pool_fields(pool: Option<&PoolName>) -> Vec<(&'static str, String)> {
    pool.map(|name| ("POOL", name.to_string()))
        .into_iter()
        .collect()
}

/// syslog's meaning of the levels, as other daemons use them: routine
/// messages (a worker is ready, the access log) are `info` (6), so
/// `journalctl -p notice` leaves them out; tracing-journald's default would
/// make them `notice` (5).
fn priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr is
/// the journal; it only counts while stderr is still that very stream.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => {
            dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_pool_tags_every_entry_and_an_unnamed_one_nothing() {
        let blog = PoolName::parse("blog").unwrap();
        assert_eq!(pool_fields(Some(&blog)), [("POOL", "blog".to_owned())]);
        assert!(pool_fields(None).is_empty());
    }
}
