//! Paths in the settings, checked before anything runs: the executables,
//! the page restrictions, the runtime directory, and whether the service
//! user may use a directory at all.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;

use super::environment::Environment;
use super::{invalid, ConfigError, INSTALLED_WORKER};
use crate::privileges::Identity;

/// `julia` without a slash is looked up in `PATH`, like a shell would.
pub(super) fn resolve_julia(path: PathBuf, env: &Environment) -> Result<PathBuf, ConfigError> {
    let found = if path.components().count() == 1 && !path.is_absolute() {
        env.var("PATH")
            .and_then(|p| p.to_str())
            .unwrap_or("/usr/local/bin:/usr/bin:/bin")
            .split(':')
            .map(|dir| Path::new(dir).join(&path))
            .find(|candidate| is_executable(candidate))
    } else {
        is_executable(&path).then(|| path.clone())
    };
    found.ok_or_else(|| {
        invalid(
            "julia",
            format!(
                "{} is not an executable file; install Julia or point -b/--julia \
                 (or `julia` in the config file) at one",
                path.display()
            ),
        )
    })
}

fn is_executable(path: &Path) -> bool {
    path.is_file() && nix::unistd::access(path, AccessFlags::X_OK).is_ok()
}

pub(super) fn check_worker_file(path: PathBuf) -> Result<PathBuf, ConfigError> {
    // Workers run in /: a relative path is the caller's, made absolute here.
    let path = std::path::absolute(&path).unwrap_or(path);
    match std::fs::File::open(&path) {
        Ok(_) if path.is_file() => Ok(path),
        Ok(_) => Err(invalid(
            "worker",
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(invalid(
            "worker",
            format!("cannot read worker file {}: {e}", path.display()),
        )),
    }
}

/// The old tool looked for `../julia/worker.jl` next to its binary; an
/// installed package keeps the worker under /usr/share.
pub(super) fn default_worker_file() -> Result<PathBuf, ConfigError> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    {
        candidates.push(dir.join("../julia/worker.jl"));
        candidates.push(dir.join("../share/julia-fcgi/worker.jl"));
    }
    candidates.push(PathBuf::from(INSTALLED_WORKER));
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            invalid(
                "worker",
                format!(
                    "no worker file found (tried {}); give one with -v",
                    tried.join(", ")
                ),
            )
        })
}

pub(super) fn check_extensions(extensions: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if extensions.is_empty() {
        return Err(invalid("limit_extensions", "empty: no page could ever run"));
    }
    for ext in &extensions {
        if !ext.starts_with('.') || ext.len() < 2 || ext.contains([',', '/']) {
            return Err(invalid(
                "limit_extensions",
                format!("{ext:?}: expected an extension like \".jl\""),
            ));
        }
    }
    Ok(extensions)
}

pub(super) fn check_roots(roots: Vec<PathBuf>) -> Result<Vec<PathBuf>, ConfigError> {
    for root in &roots {
        if !root.is_absolute() || root.to_string_lossy().contains(':') {
            return Err(invalid(
                "document_roots",
                format!("{}: expected an absolute path without ':'", root.display()),
            ));
        }
    }
    Ok(roots)
}

/// systemd's `RuntimeDirectory=`, else /run/julia-fcgi when started as
/// root, else the user's runtime directory.
pub fn default_runtime_dir(env: &Environment) -> PathBuf {
    if let Some(dir) = env.first_dir("RUNTIME_DIRECTORY") {
        return dir;
    }
    if env.started_as_root() {
        return PathBuf::from("/run/julia-fcgi");
    }
    match env.var("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("julia-fcgi"),
        None => PathBuf::from(format!("/tmp/julia-fcgi-{}", env.euid())),
    }
}

/// What the service user must be able to do with a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// List and read it (a project).
    Read,
    /// Create files in it, or create it (a depot Julia fills itself).
    Write,
}

/// Whether the workers' user may use `dir` so; `Err` says why not, in words
/// an operator can act on. `who` is the user the workers run as (`None`:
/// this process's own user). While still root the check reads permission
/// bits (ACLs are not consulted); as the user itself it asks the kernel.
pub(super) fn check_use(dir: &Path, how: Use, who: Option<&Identity>) -> Result<(), String> {
    // A missing directory is fine to write if Julia can create it.
    let mut existing = dir;
    while !existing.exists() {
        if how == Use::Read {
            return Err(format!("{} does not exist", dir.display()));
        }
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    let name = who.map_or_else(|| "this user".to_owned(), |id| format!("user {}", id.user));
    let how_text = match how {
        Use::Read => "readable",
        Use::Write => "writable",
    };
    let denied = |path: &Path| {
        Err(format!(
            "{} is not {how_text} by {name}{}",
            dir.display(),
            if path == dir {
                String::new()
            } else {
                format!(" ({} is not)", path.display())
            }
        ))
    };
    match who.filter(|id| id.uid != nix::unistd::geteuid()) {
        None => {
            let mode = match how {
                Use::Read => AccessFlags::R_OK | AccessFlags::X_OK,
                Use::Write => AccessFlags::W_OK | AccessFlags::X_OK,
            };
            if nix::unistd::access(existing, mode).is_err() {
                return denied(existing);
            }
        }
        Some(id) => {
            for ancestor in existing.ancestors().skip(1) {
                if !permits(ancestor, id, 0o1) {
                    return Err(format!(
                        "{} is out of reach of {name}: {} is not searchable by it",
                        dir.display(),
                        ancestor.display()
                    ));
                }
            }
            let wanted = if how == Use::Read { 0o5 } else { 0o3 };
            if !permits(existing, id, wanted) || (how == Use::Write && read_only(existing)) {
                return denied(existing);
            }
        }
    }
    Ok(())
}

/// Whether the permission bits of `path` that apply to `id` (owner, group
/// or other) include all of `wanted` (a 3-bit rwx mask).
fn permits(path: &Path, id: &Identity, wanted: u32) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let mode = meta.mode();
    let bits = if meta.uid() == id.uid.as_raw() {
        mode >> 6
    } else if meta.gid() == id.gid.as_raw() || id.groups.iter().any(|g| g.as_raw() == meta.gid()) {
        mode >> 3
    } else {
        mode
    };
    bits & wanted == wanted
}

fn read_only(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .is_ok_and(|fs| fs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{Gid, Uid};

    fn stranger() -> Identity {
        Identity {
            user: "stranger".into(),
            uid: Uid::from_raw(4_000_001),
            gid: Gid::from_raw(4_000_001),
            groups: vec![],
            home: "/nonexistent".into(),
        }
    }

    #[test]
    fn a_private_directory_is_out_of_reach_of_another_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("depot");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check_use(&inner, Use::Write, None), Ok(()));
        let them = stranger();
        let err = check_use(&inner, Use::Write, Some(&them)).unwrap_err();
        assert!(err.contains("not writable by user stranger"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(check_use(&inner, Use::Write, Some(&them)), Ok(()));
        let err = check_use(&inner, Use::Read, None).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_relative_worker_file_is_made_absolute() {
        // The workers run in /, so the path must not depend on the caller's
        // directory (the crate's tests run in the repository).
        let path = check_worker_file(PathBuf::from("julia/worker.jl")).unwrap();
        assert!(path.is_absolute(), "{}", path.display());
        assert!(path.ends_with("julia/worker.jl"));
        assert!(path.is_file());
    }
}
