//! Where `julia-fcgi status` asks: the same place the daemon serves its
//! status page, worked out from the same flags and file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::environment::Environment;
use super::file::FileConfig;
use super::paths::default_runtime_dir;
use super::pool::PoolName;
use super::values::{status_addr, status_addr_of};
use super::{invalid, ConfigError, ListenAddr};
use crate::cli::{Cli, StatusArgs};

/// The status socket of the instance `cli` describes, most specific first:
/// `status --status-socket`; for `--pool NAME` what its pool file says
/// ([`pool_target`]); `--status-listen`, `status_listen` in the `-c`
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
        let file = cli
            .config
            .clone()
            .unwrap_or_else(|| pool_file(&pool_files_dir(env), &name));
        return pool_target(&file, &pools_dir(cli, env), &name);
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

/// The variable that moves the pool files' directory (tests, unusual
/// layouts): pool NAME's file is `$JULIA_FCGI_CONFIG_DIR/pools/NAME.toml`.
pub const CONFIG_DIR_VAR: &str = "JULIA_FCGI_CONFIG_DIR";

/// Where pool files are: `/etc/julia-fcgi/pools` (julia-fcgi@NAME.service
/// runs with `--config /etc/julia-fcgi/pools/NAME.toml`), or `pools` in
/// [`CONFIG_DIR_VAR`].
pub fn pool_files_dir(env: &Environment) -> PathBuf {
    let base = env
        .var(CONFIG_DIR_VAR)
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/etc/julia-fcgi"), PathBuf::from);
    base.join("pools")
}

/// Pool `name`'s file in `dir`.
pub fn pool_file(dir: &Path, name: &PoolName) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Where pool `name` serves its status page, as its daemon works it out
/// from its `file`: its `status_listen`, else `status.sock` in its
/// `runtime_dir`, else `NAME/status.sock` in the pools' runtime directory
/// `pools` (the template's `RuntimeDirectory=julia-fcgi/NAME`). A pool
/// with no file has the last; a file that cannot be read or parsed is an
/// error, since the socket may be anywhere.
pub fn pool_target(file: &Path, pools: &Path, name: &PoolName) -> Result<ListenAddr, ConfigError> {
    let config = match FileConfig::load(file) {
        Ok(config) => config,
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            FileConfig::default()
        }
        Err(ConfigError::Read { path, source }) => {
            return Err(invalid(
                "--pool",
                format!(
                    "{name}: cannot read its pool file {} ({source}), which says where its \
                     status socket is; run as root, or ask with --status-socket ADDR",
                    path.display()
                ),
            ))
        }
        Err(ConfigError::Parse { path, message }) => {
            return Err(invalid(
                "--pool",
                format!(
                    "{name}: its pool file {} does not parse ({message}), so where its status \
                     socket is is not known; ask with --status-socket ADDR",
                    path.display()
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    if let Some(addr) = config.status_listen.as_deref() {
        return status_addr(addr).map_err(|e| {
            invalid(
                "--pool",
                format!("{name}: status_listen in {}: {e}", file.display()),
            )
        });
    }
    Ok(match config.runtime_dir {
        Some(dir) => default_status_socket(&dir),
        None => pool_status_socket(pools, name),
    })
}

/// Every pool `julia-fcgi status --all` asks, by name, with where (or why
/// not): each with a `NAME/status.sock` in the pools' runtime directory,
/// and each whose pool file puts its status socket elsewhere
/// (`status_listen` or `runtime_dir`) or cannot be read. A directory that
/// does not exist holds no pool.
pub fn pools_to_ask(
    cli: &Cli,
    env: &Environment,
) -> std::io::Result<Vec<(PoolName, Result<ListenAddr, ConfigError>)>> {
    let absent = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let (pools, files) = (pools_dir(cli, env), pool_files_dir(env));
    let mut names: BTreeSet<PoolName> = match pools_in(&pools) {
        Ok(found) => found.into_iter().map(|(name, _)| name).collect(),
        Err(e) if absent(&e) => BTreeSet::new(),
        Err(e) => return Err(e),
    };
    let entries = match std::fs::read_dir(&files) {
        Ok(entries) => entries.collect::<Result<Vec<_>, _>>()?,
        Err(e) if absent(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry.path();
        let Some(name) = path
            .extension()
            .filter(|ext| *ext == "toml")
            .and_then(|_| path.file_stem()?.to_str())
            .and_then(|stem| PoolName::parse(stem).ok())
        else {
            continue;
        };
        let elsewhere = FileConfig::load(&path).map_or(true, |c| {
            c.status_listen.is_some() || c.runtime_dir.is_some()
        });
        if elsewhere {
            names.insert(name);
        }
    }
    Ok(names
        .into_iter()
        .map(|name| {
            let target = pool_target(&pool_file(&files, &name), &pools, &name);
            (name, target)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use nix::unistd::Uid;

    use super::*;

    #[test]
    fn a_pool_is_asked_where_its_file_says() {
        let dir = tempfile::tempdir().unwrap();
        let (pools, run) = (dir.path().join("pools"), Path::new("/run/jf"));
        std::fs::create_dir(&pools).unwrap();
        let name = |n: &str| PoolName::parse(n).unwrap();
        let write = |n: &str, toml: &str| std::fs::write(pools.join(format!("{n}.toml")), toml);
        write("tcp", "status_listen = \"127.0.0.1:9002\"\n").unwrap();
        write("unix", "status_listen = \"/srv/s.sock\"\n").unwrap();
        write("rt", "runtime_dir = \"/srv/rt\"\n").unwrap();
        write("plain", "workers = 2\n").unwrap();
        write("bad", "workers = \"many\"\n").unwrap();
        write("open", "status_listen = \"10.0.0.5:9002\"\n").unwrap();
        let target = |n: &str| pool_target(&pool_file(&pools, &name(n)), run, &name(n));
        assert_eq!(target("tcp").unwrap().to_string(), "127.0.0.1:9002");
        assert_eq!(target("unix").unwrap().to_string(), "unix:/srv/s.sock");
        assert_eq!(
            target("rt").unwrap().to_string(),
            "unix:/srv/rt/status.sock"
        );
        let default = "unix:/run/jf/plain/status.sock";
        assert_eq!(target("plain").unwrap().to_string(), default);
        let none = target("none").unwrap().to_string();
        assert_eq!(none, "unix:/run/jf/none/status.sock");
        let e = target("bad").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid value for --pool: bad: its pool file ")
                && e.contains("bad.toml does not parse (line 1")
                && e.contains("--status-socket ADDR"),
            "{e}"
        );
        let e = target("open").unwrap_err().to_string();
        assert!(e.contains("open: status_listen in "), "{e}");

        let env = Environment::from_vars(
            Uid::from_raw(1000),
            [(CONFIG_DIR_VAR, dir.path().as_os_str())],
        );
        assert_eq!(pool_files_dir(&env), pools);
        let root = Environment::from_vars(Uid::from_raw(0), [("HOME", "/root")]);
        assert_eq!(pool_files_dir(&root), Path::new("/etc/julia-fcgi/pools"));
    }
}
