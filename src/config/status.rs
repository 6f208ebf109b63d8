//! Where `julia-fcgi status` asks: the same place the daemon serves its
//! status page, worked out from the same flags and file.

use super::environment::Environment;
use super::file::FileConfig;
use super::paths::default_runtime_dir;
use super::values::{status_addr, status_addr_of};
use super::{ConfigError, ListenAddr};
use crate::cli::{Cli, StatusArgs};

/// The status socket of the instance `cli` describes, most specific first:
/// `status --status-socket`, `--status-listen`, `status_listen` in the `-c`
/// file, else `status.sock` in the runtime directory (`--runtime-dir`,
/// `runtime_dir` in the file, or the default), as the daemon binds it.
pub fn status_target(
    cli: &Cli,
    args: &StatusArgs,
    env: &Environment,
) -> Result<ListenAddr, ConfigError> {
    if let Some(addr) = &args.socket {
        return status_addr_of("--status-socket", addr);
    }
    if let Some(addr) = &cli.status_listen {
        return status_addr_of("--status-listen", addr);
    }
    let file = FileConfig::of(cli)?;
    if let Some(addr) = file.status_listen.as_deref() {
        return status_addr(addr);
    }
    let runtime_dir = cli
        .runtime_dir
        .clone()
        .or(file.runtime_dir)
        .unwrap_or_else(|| default_runtime_dir(env));
    Ok(default_status_socket(&runtime_dir))
}

/// The status socket when `status_listen` is not set.
pub fn default_status_socket(runtime_dir: &std::path::Path) -> ListenAddr {
    ListenAddr::Unix(runtime_dir.join("status.sock"))
}
