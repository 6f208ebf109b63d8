//! The FastCGI listening socket: found or made once, then shared by every
//! worker as its fd 0 and held by the master for as long as it runs, so a
//! replaced worker finds the same socket and no connection is refused.
//!
//! Order of preference: the socket systemd passes
//! (`LISTEN_FDS`), a listening socket already on fd 0 (spawn-fcgi), else the
//! `-l` address bound here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType};

use crate::config::{ListenAddr, Settings};

/// How the socket came to the master; it decides who cleans up after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Passed by systemd socket activation; systemd owns it.
    Systemd,
    /// Found on fd 0, as spawn-fcgi hands it over; spawn-fcgi owns it.
    Stdin,
    /// Bound here from `-l`; a unix socket file is removed on exit.
    Bound,
}

#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    pub origin: Origin,
    /// What it listens on, for the log ("unix:/run/x.sock", "127.0.0.1:4545").
    pub description: String,
    /// A unix socket file this process created and must remove.
    pub owned_path: Option<PathBuf>,
}

/// The sockets the master serves on.
#[derive(Debug)]
pub struct Sockets {
    /// Shared by the workers as their fd 0.
    pub fastcgi: Listener,
    /// A listening socket for the master's status page, when systemd passed
    /// one named [`STATUS_FD_NAME`].
    pub status: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("systemd passed fd {fd}, which is not a listening stream socket ({why}); check ListenStream= in the socket unit")]
    NotListening { fd: RawFd, why: String },
    #[error("systemd socket activation: {0}")]
    Activation(String),
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another process is already listening on {path}")]
    InUse { path: PathBuf },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("unknown user or group {0:?} for the socket owner")]
    Owner(String),
}

impl Listener {
    /// Finds or creates the listening socket. Runs before the async runtime
    /// starts (it edits the environment, which is not thread-safe).
    ///
    /// Every other descriptor this process inherited (a shell's fd 10, a
    /// pipe at 251) is marked close-on-exec here, the first thing done with
    /// descriptors: nothing the master was started with reaches a worker or
    /// the programs pages run. Workers get the socket as their fd 0 anyway.
    pub fn acquire(settings: &Settings) -> Result<Sockets, ListenError> {
        crate::worker::close_on_exec_from(3, crate::worker::descriptor_limit());
        if let Some((fastcgi, status)) = from_systemd()? {
            return Ok(Sockets { fastcgi, status });
        }
        // SAFETY: fd 0 stays open for the life of the process; it is only
        // borrowed for the duration of these calls.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        if is_listening_stream(stdin).is_ok() {
            let fd = stdin
                .try_clone_to_owned()
                .map_err(|source| bind_error("fd 0", source))?;
            let fastcgi = Listener {
                description: describe(&fd),
                fd,
                origin: Origin::Stdin,
                owned_path: None,
            };
            return Ok(Sockets {
                fastcgi,
                status: None,
            });
        }
        Ok(Sockets {
            fastcgi: bind(settings)?,
            status: None,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.owned_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Checks that `fd` is a SOCK_STREAM socket in the listening state.
fn is_listening_stream(fd: BorrowedFd<'_>) -> Result<(), String> {
    match socket::getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(format!("socket type {other:?}")),
        Err(e) => return Err(format!("not a socket: {e}")),
    }
    match socket::getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => Ok(()),
        Ok(false) => Err("not listening".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The name a socket unit gives the status socket (`FileDescriptorName=`).
pub const STATUS_FD_NAME: &str = "status";

/// Takes the sockets systemd passed: the FastCGI socket, and the status
/// socket if one is named [`STATUS_FD_NAME`]. The variables are removed from
/// the environment either way, so nothing started later mistakes them.
fn from_systemd() -> Result<Option<(Listener, Option<OwnedFd>)>, ListenError> {
    let activation = |why: String| ListenError::Activation(why);
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    match std::env::var("LISTEN_PID") {
        Err(_) => {
            return Err(activation(format!(
                "LISTEN_FDS={count} is set but LISTEN_PID is not"
            )))
        }
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => {
            tracing::warn!(
                "ignoring LISTEN_FDS={count}: it was meant for pid {pid}, not this process"
            );
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDNAMES");
            return Ok(None);
        }
        Ok(_) => {}
    }
    let passed: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names(true)
        .map_err(|e| activation(format!("{e} (LISTEN_FDS={count})")))?
        .collect();
    // SAFETY: systemd passed these fds open to this process (LISTEN_PID
    // matched); each is taken over exactly once, here.
    let mut owned: Vec<(OwnedFd, String)> = passed
        .into_iter()
        .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
        .collect();
    for (fd, name) in &owned {
        is_listening_stream(fd.as_fd()).map_err(|why| ListenError::NotListening {
            fd: fd.as_raw_fd(),
            why: format!("{why}; name {name:?}"),
        })?;
    }
    let status = owned
        .iter()
        .position(|(_, name)| name == STATUS_FD_NAME)
        .map(|i| owned.remove(i).0);
    let names: Vec<&str> = owned.iter().map(|(_, name)| name.as_str()).collect();
    if owned.len() != 1 {
        return Err(activation(format!(
            "expected one FastCGI socket (and optionally one named {STATUS_FD_NAME:?}), \
             got {} ({})",
            owned.len(),
            names.join(", ")
        )));
    }
    let (fd, _) = owned.remove(0);
    let listener = Listener {
        description: describe(&fd),
        fd,
        origin: Origin::Systemd,
        owned_path: None,
    };
    Ok(Some((listener, status)))
}

fn bind_error(addr: impl ToString, source: impl Into<io::Error>) -> ListenError {
    ListenError::Bind {
        addr: addr.to_string(),
        source: source.into(),
    }
}

/// Where the master's status page is served, and its health listener.
#[derive(Debug)]
pub struct StatusSocket {
    page: StatusPage,
    /// `health_listen`: `/ping` and `/ready` only, for load balancers.
    health: Option<Listener>,
}

#[derive(Debug)]
enum StatusPage {
    /// systemd passed it (`FileDescriptorName=status`).
    Passed(OwnedFd),
    /// Bound here ([`bind_status`]); a unix socket file is removed on exit.
    Bound(Listener),
}

impl StatusSocket {
    /// The socket systemd `passed`, else one bound as the settings say; and
    /// the health listener when `health_listen` asks for one.
    pub fn acquire(passed: Option<OwnedFd>, settings: &Settings) -> Result<Self, ListenError> {
        let page = match passed {
            Some(fd) => StatusPage::Passed(fd),
            None => StatusPage::Bound(bind_status(settings)?),
        };
        let health = settings
            .health_listen
            .as_ref()
            .map(|addr| bind_health(addr, settings))
            .transpose()?;
        Ok(StatusSocket { page, health })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.page {
            StatusPage::Passed(fd) => fd.as_fd(),
            StatusPage::Bound(listener) => listener.fd.as_fd(),
        }
    }

    /// What it listens on, for the log.
    pub fn description(&self) -> &str {
        match &self.page {
            StatusPage::Passed(_) => "the socket systemd passed",
            StatusPage::Bound(listener) => &listener.description,
        }
    }

    /// The health listener, when `health_listen` is set.
    pub fn health(&self) -> Option<&Listener> {
        self.health.as_ref()
    }
}

/// The health listener: any address, since it says only whether the pool
/// is up and ready; a unix socket there is world-connectable (0666) for the
/// same reason.
fn bind_health(addr: &ListenAddr, settings: &Settings) -> Result<Listener, ListenError> {
    if let ListenAddr::Tcp {
        all_interfaces: true,
        addr,
    } = addr
    {
        tracing::warn!(
            "health_listen on every interface ({addr}): /ping and /ready are reachable from \
             any network this host is on; prefer the private address the balancer uses"
        );
    }
    let mut health_settings = settings.clone();
    health_settings.socket_owner = None;
    bind_addr(addr, 0o666, &health_settings)
}

impl Sockets {
    /// Warns when the FastCGI socket was bound on every interface: anyone
    /// who reaches it runs pages.
    pub fn warn_if_exposed(&self, settings: &Settings) {
        if let (
            Origin::Bound,
            ListenAddr::Tcp {
                all_interfaces: true,
                addr,
            },
        ) = (&self.fastcgi.origin, &settings.listen)
        {
            tracing::warn!(
                "listening on every interface ({addr}): anyone who can reach this port can run \
                 any .jl file this user can read; prefer 127.0.0.1 or a unix socket"
            );
        }
    }
}

fn bind(settings: &Settings) -> Result<Listener, ListenError> {
    bind_addr(&settings.listen, settings.socket_mode, settings)
}

/// The master's own status socket: `status_listen`, else `status.sock` in
/// the runtime directory. Bound before privileges are dropped.
pub fn bind_status(settings: &Settings) -> Result<Listener, ListenError> {
    let addr = settings
        .status_listen
        .clone()
        .unwrap_or_else(|| ListenAddr::Unix(settings.runtime_dir.join("status.sock")));
    let mut status_settings = settings.clone();
    // It shows every request's URI with its query string: the service user
    // and its group (and root) read it, nobody else; nginx only if the
    // admin puts it in nginx's group. Started as root, the file would be
    // root's: it is given to the service user, as the runtime directory is.
    status_settings.socket_owner = None;
    let listener = bind_addr(&addr, 0o660, &status_settings)?;
    if let (Some(identity), Some(path)) = (&settings.identity, &listener.owned_path) {
        nix::unistd::chown(path, Some(identity.uid), Some(identity.gid))
            .map_err(|e| bind_error(format!("unix:{}", path.display()), e))?;
    }
    Ok(listener)
}

fn bind_addr(addr: &ListenAddr, mode: u32, settings: &Settings) -> Result<Listener, ListenError> {
    let backlog =
        Backlog::new(settings.backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
    match addr {
        ListenAddr::Tcp { addr, .. } => {
            let err = |e: nix::Error| bind_error(addr, e);
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(err)?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
            socket::bind(fd.as_raw_fd(), &socket::SockaddrStorage::from(*addr)).map_err(err)?;
            socket::listen(&fd, backlog).map_err(err)?;
            Ok(Listener {
                fd,
                origin: Origin::Bound,
                description: addr.to_string(),
                owned_path: None,
            })
        }
        ListenAddr::Unix(path) => bind_unix(path, backlog, mode, settings),
    }
}

fn bind_unix(
    path: &Path,
    backlog: Backlog,
    mode: u32,
    settings: &Settings,
) -> Result<Listener, ListenError> {
    let err = |e: io::Error| bind_error(format!("unix:{}", path.display()), e);
    create_parent(path, settings).map_err(err)?;
    remove_stale_socket(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    let addr = socket::UnixAddr::new(path).map_err(|e| err(e.into()))?;
    // The file is created with the umask's permissions; keep it private until
    // the configured mode is applied. Single-threaded here, so the umask
    // change affects nothing else.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = socket::bind(fd.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.map_err(|e| err(e.into()))?;
    // From here on the file is ours: the Listener removes it when dropped.
    let listener = Listener {
        description: format!("unix:{}", path.display()),
        fd,
        origin: Origin::Bound,
        owned_path: Some(path.to_owned()),
    };
    socket::listen(&listener.fd, backlog).map_err(|e| err(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    if let Some(owner) = &settings.socket_owner {
        let (uid, gid) = resolve_owner(owner)?;
        nix::unistd::chown(path, uid, gid).map_err(|e| err(e.into()))?;
    }
    Ok(listener)
}

/// The runtime directory (e.g. /run/julia-fcgi) is made here when missing,
/// while the master may still be root, and given to the service user.
fn create_parent(path: &Path, settings: &Settings) -> io::Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    if let Some(identity) = &settings.identity {
        nix::unistd::chown(dir, Some(identity.uid), Some(identity.gid))?;
    }
    tracing::info!("created {}", dir.display());
    Ok(())
}

/// A socket file left by a process that died is replaced; one somebody
/// still listens on, or a file that is not a socket, is never touched.
fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => return Ok(()),
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            path: path.to_owned(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse {
            path: path.to_owned(),
        }),
        Err(_) => {
            std::fs::remove_file(path).map_err(|e| bind_error(path.display(), e))?;
            tracing::info!("replaced stale socket file {}", path.display());
            Ok(())
        }
    }
}

fn resolve_owner(
    owner: &str,
) -> Result<(Option<nix::unistd::Uid>, Option<nix::unistd::Gid>), ListenError> {
    use nix::unistd::{Group, User};
    let unknown = || ListenError::Owner(owner.to_owned());
    let (user, group) = match owner.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (owner, None),
    };
    let uid = if user.is_empty() {
        None
    } else {
        Some(
            User::from_name(user)
                .ok()
                .flatten()
                .ok_or_else(unknown)?
                .uid,
        )
    };
    let gid = match group {
        Some(group) if !group.is_empty() => Some(
            Group::from_name(group)
                .ok()
                .flatten()
                .ok_or_else(unknown)?
                .gid,
        ),
        _ => None,
    };
    Ok((uid, gid))
}

/// "unix:/path" or "host:port" of a socket we did not bind ourselves.
fn describe(fd: &OwnedFd) -> String {
    match socket::getsockname::<socket::SockaddrStorage>(fd.as_raw_fd()) {
        Ok(addr) => {
            if let Some(unix) = addr.as_unix_addr() {
                match unix.path() {
                    Some(path) => format!("unix:{}", path.display()),
                    None => "unix:(unnamed)".into(),
                }
            } else {
                addr.to_string()
            }
        }
        Err(e) => format!("fd {} ({e})", fd.as_raw_fd()),
    }
}
