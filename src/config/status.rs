//! Where `julia-fcgi status` asks: the same place the daemon serves its
//! status page, worked out from the same flags and file.

use super::environment::Environment;
use super::file::FileConfig;
use super::paths::default_runtime_dir;
use super::pool::PoolName;
use super::values::{status_addr, status_addr_of};
use super::{invalid, ConfigError, ListenAddr};
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
    if let Some(name) = &args.pool {
        let name = PoolName::parse(name).map_err(|e| invalid("--pool", e))?;
        return Ok(pool_status_socket(&pools_dir(cli, env), &name));
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

/// Where every pool's runtime directory is (`julia-fcgi@NAME` has
/// `RuntimeDirectory=julia-fcgi/NAME`): `--runtime-dir`, else the default
/// runtime directory (`/run/julia-fcgi` as root).
pub fn pools_dir(cli: &Cli, env: &Environment) -> std::path::PathBuf {
    cli.runtime_dir
        .clone()
        .unwrap_or_else(|| default_runtime_dir(env))
}

/// The status socket of pool `name` whose runtime directory is in `dir`.
pub fn pool_status_socket(dir: &std::path::Path, name: &PoolName) -> ListenAddr {
    default_status_socket(&dir.join(name.as_str()))
}

/// The pools whose status sockets are in `dir`, by name: every
/// `NAME/status.sock` with NAME a pool name.
pub fn pools_in(dir: &std::path::Path) -> std::io::Result<Vec<(PoolName, ListenAddr)>> {
    let mut pools = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| PoolName::parse(n).ok())
        else {
            continue;
        };
        let socket = entry.path().join("status.sock");
        if socket.exists() {
            pools.push((name, ListenAddr::Unix(socket)));
        }
    }
    pools.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(pools)
}
