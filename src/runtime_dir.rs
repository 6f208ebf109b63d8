//! The runtime directory: the scoreboard's home and the default place of
//! the status socket. Made while the master is still root and given to the
//! service user; locked, because two masters sharing one scoreboard would
//! overwrite each other's workers' slots.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::privileges::Identity;

/// The directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error("cannot create the runtime directory {}", .dir.display())]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot chmod {}", .dir.display())]
    Chmod {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot chown {}", .dir.display())]
    Chown { dir: PathBuf, source: nix::Error },
    #[error("cannot write in the runtime directory {}", .dir.display())]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another julia-fcgi uses the runtime directory {}; give each instance its own \
         (--runtime-dir or runtime_dir in the config)",
        .dir.display()
    )]
    InUse { dir: PathBuf },
}

impl RuntimeDir {
    /// Creates `dir` if it is missing (owned by `owner`, when the master
    /// will drop to that user) and locks it: only one instance may use it.
    pub fn prepare(dir: &Path, owner: Option<&Identity>) -> Result<RuntimeDir, RuntimeDirError> {
        if !dir.exists() {
            create(dir, owner)?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("julia-fcgi.lock"))
            .map_err(|source| RuntimeDirError::Lock {
                dir: dir.to_owned(),
                source,
            })?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|_| {
            RuntimeDirError::InUse {
                dir: dir.to_owned(),
            }
        })?;
        Ok(RuntimeDir {
            path: dir.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn create(dir: &Path, owner: Option<&Identity>) -> Result<(), RuntimeDirError> {
    let dir_buf = || dir.to_owned();
    std::fs::create_dir_all(dir).map_err(|source| RuntimeDirError::Create {
        dir: dir_buf(),
        source,
    })?;
    // Whatever the umask: others may search it (nginx reaches a status
    // socket there), never write in it. What is inside has its own modes.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        RuntimeDirError::Chmod {
            dir: dir_buf(),
            source,
        }
    })?;
    if let Some(identity) = owner {
        nix::unistd::chown(dir, Some(identity.uid), Some(identity.gid)).map_err(|source| {
            RuntimeDirError::Chown {
                dir: dir_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instance_per_directory() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("run/julia-fcgi");
        let first = RuntimeDir::prepare(&dir, None).unwrap();
        assert_eq!(first.path(), dir);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(matches!(
            RuntimeDir::prepare(&dir, None),
            Err(RuntimeDirError::InUse { .. })
        ));
        drop(first);
        RuntimeDir::prepare(&dir, None).expect("free again once the first is gone");
    }
}
