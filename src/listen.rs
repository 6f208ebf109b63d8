//! The FastCGI listening socket: found or made once, then shared by every
//! worker as its fd 0 and held by the master for as long as it runs, so a
//! replaced worker finds the same socket and no connection is refused.
//!
//! Order of preference (ARCHITECTURE.md): the socket systemd passes
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

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("systemd passed fd {fd}, which is not a listening stream socket ({why})")]
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
    pub fn acquire(settings: &Settings) -> Result<Self, ListenError> {
        if let Some(listener) = from_systemd()? {
            return Ok(listener);
        }
        // SAFETY: fd 0 stays open for the life of the process; it is only
        // borrowed for the duration of these calls.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        if is_listening_stream(stdin).is_ok() {
            let fd = stdin
                .try_clone_to_owned()
                .map_err(|source| bind_error("fd 0", source))?;
            return Ok(Listener {
                description: describe(&fd),
                fd,
                origin: Origin::Stdin,
                owned_path: None,
            });
        }
        bind(settings)
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

fn from_systemd() -> Result<Option<Listener>, ListenError> {
    let count = match std::env::var("LISTEN_FDS") {
        Ok(count) => count,
        Err(_) => return Ok(None),
    };
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    // Never let the workers (or anything they start) see these.
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    if !pid_matches {
        // Meant for another process (e.g. inherited through a wrapper).
        return Ok(None);
    }
    let count: i32 = count
        .parse()
        .map_err(|_| ListenError::Activation(format!("LISTEN_FDS={count:?} is not a number")))?;
    if count < 1 {
        return Err(ListenError::Activation(
            "LISTEN_FDS is 0: the socket unit passed no socket".into(),
        ));
    }
    const SD_LISTEN_FDS_START: RawFd = 3;
    // SAFETY: systemd passes fds 3..3+LISTEN_FDS open to this process; each
    // is taken over exactly once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    is_listening_stream(fd.as_fd()).map_err(|why| ListenError::NotListening {
        fd: SD_LISTEN_FDS_START,
        why,
    })?;
    set_cloexec(&fd);
    Ok(Some(Listener {
        description: describe(&fd),
        fd,
        origin: Origin::Systemd,
        owned_path: None,
    }))
}

/// The master's own copy never leaks into a child by accident; a worker gets
/// it only as the explicitly passed fd 0.
fn set_cloexec(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

fn bind_error(addr: impl ToString, source: impl Into<io::Error>) -> ListenError {
    ListenError::Bind {
        addr: addr.to_string(),
        source: source.into(),
    }
}

fn bind(settings: &Settings) -> Result<Listener, ListenError> {
    let backlog =
        Backlog::new(settings.backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
    match &settings.listen {
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
        ListenAddr::Unix(path) => bind_unix(path, backlog, settings),
    }
}

fn bind_unix(path: &Path, backlog: Backlog, settings: &Settings) -> Result<Listener, ListenError> {
    let err = |e: io::Error| bind_error(format!("unix:{}", path.display()), e);
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(settings.socket_mode))
        .map_err(err)?;
    if let Some(owner) = &settings.socket_owner {
        let (uid, gid) = resolve_owner(owner)?;
        nix::unistd::chown(path, uid, gid).map_err(|e| err(e.into()))?;
    }
    Ok(listener)
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
