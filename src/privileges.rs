//! Dropping root: pages must never run with more rights than the service
//! user has.
//!
//! Started as root, the master does what needs root first (binding, the
//! runtime directory, later the cgroup tree), then becomes the configured
//! user for good: supplementary groups, gid, uid, every capability set
//! emptied (bounding and ambient included, so nothing can be regained) and
//! `PR_SET_NO_NEW_PRIVS`, which the workers inherit. Started unprivileged
//! (a unit's `User=`), there is nothing to drop.

use std::ffi::CString;
use std::path::PathBuf;

use caps::CapSet;
use nix::unistd::{Gid, Group, Uid, User};

/// Who the master and its workers run as after the drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: Uid,
    pub gid: Gid,
    /// The user's supplementary groups (from the group database).
    pub groups: Vec<Gid>,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("user {0:?} does not exist; create it (the packages do) or set `user` in the config")]
    NoSuchUser(String),
    #[error("group {0:?} does not exist")]
    NoSuchGroup(String),
    #[error("cannot look up {what}: {source}")]
    Lookup { what: String, source: nix::Error },
    #[error("cannot drop privileges ({step}): {source}")]
    Drop {
        step: &'static str,
        source: std::io::Error,
    },
}

fn step_error(step: &'static str) -> impl FnOnce(nix::Error) -> PrivilegeError {
    move |e| PrivilegeError::Drop {
        step,
        source: e.into(),
    }
}

fn caps_error(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |e| PrivilegeError::Drop {
        step,
        source: std::io::Error::other(e.to_string()),
    }
}

/// Looks up `user` (and `group`, default: the user's primary group).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, PrivilegeError> {
    let lookup = |source| PrivilegeError::Lookup {
        what: format!("user {user:?}"),
        source,
    };
    let entry = User::from_name(user)
        .map_err(lookup)?
        .ok_or_else(|| PrivilegeError::NoSuchUser(user.to_owned()))?;
    let gid = match group {
        None => entry.gid,
        Some(name) => {
            Group::from_name(name)
                .map_err(|source| PrivilegeError::Lookup {
                    what: format!("group {name:?}"),
                    source,
                })?
                .ok_or_else(|| PrivilegeError::NoSuchGroup(name.to_owned()))?
                .gid
        }
    };
    let name = CString::new(user).map_err(|_| PrivilegeError::NoSuchUser(user.to_owned()))?;
    let groups = nix::unistd::getgrouplist(&name, gid).map_err(lookup)?;
    Ok(Identity {
        user: user.to_owned(),
        uid: entry.uid,
        gid,
        groups,
        home: entry.dir,
    })
}

/// Becomes `identity` for good. Must run before any other thread exists
/// (set*id calls apply to the calling thread at the kernel level; glibc
/// broadcasts them, but the capability calls do not).
pub fn drop_to(identity: &Identity) -> Result<(), PrivilegeError> {
    // The bounding set can only shrink while CAP_SETPCAP is held: first.
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(caps_error("bounding set"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_error("ambient set"))?;
    nix::unistd::setgroups(&identity.groups).map_err(step_error("setgroups"))?;
    nix::unistd::setgid(identity.gid).map_err(step_error("setgid"))?;
    nix::unistd::setuid(identity.uid).map_err(step_error("setuid"))?;
    // setuid away from root empties permitted and effective; say so
    // explicitly anyway, and the inheritable set is never emptied by it.
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(caps_error("clearing capabilities"))?;
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::Drop {
            step: "verification",
            source: std::io::Error::other("root could be regained after the drop"),
        });
    }
    Ok(())
}

/// `PR_SET_NO_NEW_PRIVS`: no setuid binary or file capability a page might
/// exec can give the workers more than they have. Inherited by them.
pub fn no_new_privileges() -> Result<(), PrivilegeError> {
    // SAFETY: a plain prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(PrivilegeError::Drop {
            step: "PR_SET_NO_NEW_PRIVS",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Makes the master non-dumpable. Pages run as the same user as the master
/// (the service user), and a process may ptrace, or read the memory,
/// environment and descriptors (`/proc/PID/mem`, `environ`, `fd`) of any
/// process of its own user unless that process is non-dumpable or the
/// kernel's Yama module says otherwise (many kernels have it at 0 or not at
/// all). Dropping root makes a process non-dumpable by itself; a master
/// started as the service user (systemd's `User=`) must ask. Not inherited
/// across exec: the workers are unaffected. It does not stop signals; see
/// the README (signals between master, workers and pages).
pub fn forbid_inspection() -> Result<(), PrivilegeError> {
    // SAFETY: a plain prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(PrivilegeError::Drop {
            step: "PR_SET_DUMPABLE",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
