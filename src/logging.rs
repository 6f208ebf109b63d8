//! Logging set-up: `tracing` to stderr, one line per event, with the
//! worker's number and pid as fields so every line a worker printed can be
//! traced back to it.

use tracing_subscriber::EnvFilter;

/// `level` (from `--log-level` or the config) wins over `RUST_LOG`; the
/// default is `info`. Returns a message when the filter could not be used.
pub fn init(level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
