//! Per-worker cgroups (v2), hand-written: the crates found are v1-shaped.
//!
//! With a delegated subtree (`Delegate=yes`), the master moves itself into a
//! leaf `supervisor/`, enables the controllers it can for the children, and
//! starts each worker in its own `worker-N/` with its own limits. A worker's
//! death is followed by `cgroup.kill`, so nothing it forked outlives it, and
//! `memory.events` says whether the OOM killer did it.
//!
//! Without delegation (a plain shell, a container) workers get process groups
//! and `PR_SET_PDEATHSIG` instead, and the log says why once.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The per-worker cgroups the config asks for, or why there are none.
#[derive(Debug, Default)]
pub struct Cgroups {
    pub tree: Option<Arc<Tree>>,
    /// Why they are off, for the log and the status page.
    pub off: Option<String>,
}

/// The tree could not be given to the service user.
#[derive(Debug, thiserror::Error)]
#[error("cannot chown {}", .path.display())]
pub struct ChownError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl Cgroups {
    /// Opens the subtree `root` names (`None`: this process's own cgroup;
    /// `Some(None)`: cgroups off) and gives it to `owner`, the user the
    /// master becomes. Not delegated is no error: workers then get process
    /// groups, said once in the log.
    pub fn open(
        root: &Option<Option<PathBuf>>,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> Result<Cgroups, ChownError> {
        let root = match root {
            Some(None) => {
                return Ok(Cgroups {
                    tree: None,
                    off: Some("cgroup_root = \"none\" in the config".into()),
                })
            }
            Some(Some(root)) => Some(root.as_path()),
            None => None,
        };
        match Tree::open(root) {
            Ok(tree) => {
                if let Some((uid, gid)) = owner {
                    tree.chown(uid, gid).map_err(|source| ChownError {
                        path: tree.root().to_owned(),
                        source,
                    })?;
                }
                tracing::info!(
                    "per-worker cgroups under {} (controllers: {})",
                    tree.root().display(),
                    if tree.controllers().is_empty() {
                        "none available".to_owned()
                    } else {
                        tree.controllers().join(" ")
                    }
                );
                Ok(Cgroups {
                    tree: Some(Arc::new(tree)),
                    off: None,
                })
            }
            Err(NotDelegated(why)) => {
                tracing::warn!(
                    "per-worker cgroups off: {why}; workers get process groups and die with \
                     the master"
                );
                Ok(Cgroups {
                    tree: None,
                    off: Some(why),
                })
            }
        }
    }
}

/// Per-worker limits; `None` leaves the kernel's default ("max").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    pub memory_swap_max: Option<u64>,
    pub pids_max: Option<u64>,
    pub cpu_weight: Option<u64>,
}

/// The delegated subtree the master manages.
#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    /// Controllers enabled for the workers.
    controllers: Vec<String>,
}

/// Why there are no per-worker cgroups.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NotDelegated(pub String);

impl Tree {
    /// Opens the subtree at `root`, or this process's own cgroup when `None`.
    /// Must run while the master still has the rights it starts with.
    pub fn open(root: Option<&Path>) -> Result<Tree, NotDelegated> {
        let root = match root {
            Some(root) => root.to_owned(),
            None => delegated_own_cgroup()?,
        };
        for file in ["cgroup.procs", "cgroup.subtree_control"] {
            let path = root.join(file);
            if nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK).is_err() {
                return Err(NotDelegated(format!(
                    "{} is not writable (run under systemd with Delegate=yes, or set cgroup_root)",
                    path.display()
                )));
            }
        }
        let controllers = enable_controllers(&root).map_err(|e| {
            NotDelegated(format!(
                "cannot set up the cgroup tree at {}: {e}",
                root.display()
            ))
        })?;
        remove_stale_workers(&root);
        Ok(Tree { root, controllers })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// Gives the tree to the service user before the master drops root, so
    /// it can still create and remove worker cgroups.
    pub fn chown(&self, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
        for path in [
            self.root.clone(),
            self.root.join("cgroup.procs"),
            self.root.join("cgroup.subtree_control"),
            self.root.join("supervisor"),
            self.root.join("supervisor/cgroup.procs"),
        ] {
            nix::unistd::chown(&path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Creates `worker-N/` (`worker-N.2/`… while an old worker N still
    /// finishes its request during a reload) with `limits`. Returns it with
    /// the open `cgroup.procs` the new process writes itself into between
    /// fork and exec, so it runs Julia inside the cgroup from its first
    /// instruction.
    pub fn create_worker(&self, number: u32, limits: &Limits) -> io::Result<WorkerCgroup> {
        let path = (1..)
            .map(|k| match k {
                1 => self.root.join(format!("worker-{number}")),
                k => self.root.join(format!("worker-{number}.{k}")),
            })
            .find(|p| !p.exists())
            .expect("some name is free");
        std::fs::create_dir(&path)?;
        let has = |c: &str| self.controllers.iter().any(|x| x == c);
        let settings = [
            ("memory", "memory.max", limits.memory_max),
            ("memory", "memory.high", limits.memory_high),
            ("memory", "memory.swap.max", limits.memory_swap_max),
            ("pids", "pids.max", limits.pids_max),
            ("cpu", "cpu.weight", limits.cpu_weight),
        ];
        for (controller, file, value) in settings {
            if let Some(value) = value {
                if has(controller) {
                    write(&path.join(file), &value.to_string())?;
                }
            }
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))?;
        Ok(WorkerCgroup {
            path,
            procs: Some(procs.into()),
        })
    }
}

/// This process's own cgroup, if it can have been delegated.
fn delegated_own_cgroup() -> Result<PathBuf, NotDelegated> {
    let own = own_cgroup().map_err(|e| NotDelegated(format!("cannot find own cgroup: {e}")))?;
    // Root may write the root cgroup, but nobody delegated it: a plain
    // shell or container, not a service with Delegate=yes.
    if cgroup2_mount_of(&own).is_some_and(|mount| mount == own) {
        return Err(NotDelegated(
            "running in the root cgroup, which is never delegated \
             (run under systemd with Delegate=yes, or set cgroup_root)"
                .into(),
        ));
    }
    Ok(own)
}

/// Moves the master into a leaf `supervisor/` (no process may stay in a
/// cgroup whose children have controllers) and enables the controllers
/// the workers' limits need, of those available; returns them.
fn enable_controllers(root: &Path) -> io::Result<Vec<String>> {
    let supervisor = root.join("supervisor");
    mkdir(&supervisor)?;
    write(&supervisor.join("cgroup.procs"), "0")?;
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .filter(|c| ["memory", "pids", "cpu"].contains(c))
        .map(String::from)
        .collect();
    if !wanted.is_empty() {
        let enable: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        write(&root.join("cgroup.subtree_control"), &enable.join(" "))?;
    }
    Ok(wanted)
}

/// Workers of a previous master that died without cleaning up.
fn remove_stale_workers(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("worker-") {
            WorkerCgroup {
                path: entry.path(),
                procs: None,
            }
            .kill_and_remove();
        }
    }
}

/// One worker's cgroup.
#[derive(Debug)]
pub struct WorkerCgroup {
    pub path: PathBuf,
    /// Open `cgroup.procs`, written by the child before exec.
    procs: Option<OwnedFd>,
}

/// What `memory.events` says about a worker's end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub oom_kill: u64,
    pub max: u64,
    pub high: u64,
}

impl WorkerCgroup {
    /// The fd the child writes "0" into to join; only valid until spawn.
    pub fn procs_fd(&self) -> Option<i32> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// After spawning, the parent has no use for the open file.
    pub fn close_procs(&mut self) {
        self.procs = None;
    }

    pub fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.path.join(file)).ok()
    }

    pub fn memory_current(&self) -> Option<u64> {
        memory_current_at(&self.path)
    }

    /// The configured `memory.max`, as written ("max" when unlimited).
    pub fn memory_max(&self) -> Option<String> {
        self.read("memory.max").map(|s| s.trim().to_owned())
    }

    pub fn memory_events(&self) -> MemoryEvents {
        let mut events = MemoryEvents::default();
        for line in self.read("memory.events").unwrap_or_default().lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value = value.parse().unwrap_or(0);
            match key {
                "oom_kill" => events.oom_kill = value,
                "max" => events.max = value,
                "high" => events.high = value,
                _ => {}
            }
        }
        events
    }

    /// Kills every process in the cgroup (the worker and anything it
    /// forked), waits for it to empty, and removes it.
    pub fn kill_and_remove(&self) {
        if write(&self.path.join("cgroup.kill"), "1").is_err() {
            // Kernels before 5.14 have no cgroup.kill: signal each process.
            for pid in self.read("cgroup.procs").unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        for _ in 0..200 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                // EBUSY until the last process is reaped by the kernel.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        tracing::warn!("cannot remove {}: processes remain", self.path.display());
    }
}

/// `memory.current` of the cgroup at `dir`, in bytes.
pub fn memory_current_at(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Total CPU time used by the cgroup at `dir`, from `cpu.stat`.
pub fn cpu_usage_at(dir: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let usec = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_micros(usec))
}

/// This process's cgroup directory: `/proc/self/cgroup`'s unified (`0::`)
/// entry under the cgroup2 mount from `/proc/self/mountinfo`.
pub fn own_cgroup() -> io::Result<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    let relative = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::other("no cgroup v2 entry in /proc/self/cgroup"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = cgroup2_mount(&mountinfo)
        .ok_or_else(|| io::Error::other("no cgroup2 file system mounted"))?;
    Ok(mount.join(relative.trim_start_matches('/')))
}

/// The cgroup2 mount point `path` lies under.
fn cgroup2_mount_of(path: &Path) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount(&mountinfo).filter(|mount| path.starts_with(mount))
}

/// The mount point of the cgroup2 file system, from mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Parses a size like `512M`, `2G`, `1048576` or `max`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return Some(u64::MAX);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `512M`-style text for a byte count, for log messages.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (factor, unit) in UNITS {
        if bytes >= factor && bytes % factor == 0 {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

fn mkdir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "24 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n\
                    25 1 0:23 / /proc rw - proc proc rw\n";
        assert_eq!(cgroup2_mount(info), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("25 1 0:23 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("max"), Some(u64::MAX));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(format_size(512 << 20), "512M");
        assert_eq!(format_size(1000), "1000");
    }
}
