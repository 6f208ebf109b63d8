//! Without per-worker cgroups: what pages started must still die with their
//! worker, on death, recycle, reload and stop.
//!
//! Each worker leads its own process group and the programs its pages run
//! inherit it, so the worker's actor kills the group as soon as the worker
//! has ended (`worker::Actor`). A program that left the group (`setsid`,
//! `setpgid`) cannot be reached that way, and once its parent is gone it
//! would be re-parented to PID 1 and live on. So the master is a child
//! subreaper: such orphans become its children, and on every scan it kills
//! those that belong to no live worker's group and reaps them all (nobody
//! else would: they are not the async runtime's children).
//!
//! An orphan that left its worker's group cannot be told apart from one
//! whose worker still runs: it is killed when it is orphaned, not when its
//! worker ends. A page that needs a program to outlive its request should
//! not detach it; with cgroups (systemd's `Delegate=yes`) the cgroup tells
//! whose it is and none of this is needed.

use std::collections::HashSet;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::Pool;

/// A child of the master that is not one of its workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub pid: u32,
    pub pgid: u32,
    /// Dead, waiting to be reaped.
    pub zombie: bool,
    /// Its command name, for the log.
    pub name: String,
}

/// What to do about one orphan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Already dead: collect its exit status so it does not stay a zombie.
    Reap(u32),
    /// Kill it, and its process group when it leads one (it may have
    /// started programs of its own).
    Kill { pid: u32, group: bool },
}

/// The policy, without processes: zombies are reaped, orphans in a live
/// worker's process group are left to die with it, all others are killed.
pub fn decide(orphans: &[Orphan], worker_groups: &HashSet<u32>) -> Vec<Action> {
    orphans
        .iter()
        .filter_map(|orphan| {
            if orphan.zombie {
                Some(Action::Reap(orphan.pid))
            } else if worker_groups.contains(&orphan.pgid) {
                None
            } else {
                Some(Action::Kill {
                    pid: orphan.pid,
                    group: orphan.pgid == orphan.pid,
                })
            }
        })
        .collect()
}

/// Makes this process the reaper of its descendants' orphans.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: a plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// This process's children (of every thread: a child's parent is the
/// thread that forked it, or any for an adopted orphan).
fn children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Name, state and process group of `pid`, from `/proc/PID/stat`.
fn describe(pid: u32) -> Option<Orphan> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
    let (head, rest) = stat.rsplit_once(") ")?;
    let name = head.split_once(" (")?.1.to_owned();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let pgid = fields.nth(1)?.parse().ok()?;
    Some(Orphan {
        pid,
        pgid,
        zombie: state == "Z" || state == "X",
        name,
    })
}

impl Pool {
    /// What the master's process needs to be a supervisor: without cgroups,
    /// the reaper of what pages detach (this module); and never inspectable
    /// by its workers, which run as the same user.
    pub(super) fn prepare_process(&self) {
        if self.config.spec.cgroups.is_none() {
            if let Err(e) = become_subreaper() {
                tracing::warn!(
                    "cannot become a child subreaper ({e}): programs that pages detach from \
                     their worker's process group may outlive it"
                );
            }
        }
        if let Err(e) = crate::privileges::forbid_inspection() {
            tracing::warn!("{e}; pages could inspect the master through ptrace and /proc");
        }
    }

    /// Every worker process the pool knows of: slots, successors, leaving.
    fn worker_pids(&self) -> HashSet<u32> {
        self.slots
            .iter()
            .flat_map(|slot| slot.workers())
            .chain(&self.leaving)
            .map(|worker| worker.handle.pid)
            .collect()
    }

    /// Kills and reaps the orphans that came back to the master. Only
    /// without cgroups: only then is it a subreaper.
    pub(super) fn sweep_orphans(&mut self) {
        if self.config.spec.cgroups.is_some() {
            return;
        }
        let workers = self.worker_pids();
        let orphans: Vec<Orphan> = children()
            .into_iter()
            .filter(|pid| !workers.contains(pid))
            .filter_map(describe)
            .collect();
        if orphans.is_empty() {
            return;
        }
        for action in decide(&orphans, &workers) {
            match action {
                Action::Reap(pid) => {
                    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
                }
                Action::Kill { pid, group } => {
                    let name = orphans
                        .iter()
                        .find(|o| o.pid == pid)
                        .map_or("?", |o| o.name.as_str());
                    tracing::info!(
                        "killing pid {pid} ({name}): a page started it, it left its worker's \
                         process group and outlived its parent (per-worker cgroups are off)"
                    );
                    let target = if group { -(pid as i32) } else { pid as i32 };
                    let _ = kill(Pid::from_raw(target), Signal::SIGKILL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orphan(pid: u32, pgid: u32, zombie: bool) -> Orphan {
        Orphan {
            pid,
            pgid,
            zombie,
            name: "sleep".into(),
        }
    }

    #[test]
    fn orphans_of_live_workers_wait_for_them_the_rest_die() {
        let workers: HashSet<u32> = [100, 200].into();
        let orphans = [
            // Double-forked, still in worker 100's group: dies with it.
            orphan(101, 100, false),
            // setsid: its own group, nobody's.
            orphan(102, 102, false),
            // setpgid into an existing group of its own parent's making.
            orphan(103, 150, false),
            // In the group of a worker that is gone.
            orphan(301, 300, false),
            // Dead already.
            orphan(104, 100, true),
        ];
        assert_eq!(
            decide(&orphans, &workers),
            [
                Action::Kill {
                    pid: 102,
                    group: true
                },
                Action::Kill {
                    pid: 103,
                    group: false
                },
                Action::Kill {
                    pid: 301,
                    group: false
                },
                Action::Reap(104),
            ]
        );
    }

    #[test]
    fn reads_a_process_from_proc() {
        let me = describe(std::process::id()).expect("this process has a stat file");
        assert_eq!(me.pid, std::process::id());
        assert!(!me.zombie);
        // SAFETY: getpgrp has no preconditions.
        assert_eq!(me.pgid, unsafe { libc::getpgrp() } as u32);
    }
}
