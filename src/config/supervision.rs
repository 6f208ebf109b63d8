//! Settings of the supervisor: cgroups, and the policies built on the
//! scoreboard (timeouts, recycling, the dynamic pool).

use std::path::PathBuf;
use std::time::Duration;

use super::values::{duration, optional_duration, size};
use super::{invalid, ConfigError, FileConfig};

/// Cgroups and the policies built on the scoreboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervision {
    /// `None`: the process's own cgroup; `Some(None)`: cgroups off.
    pub cgroup_root: Option<Option<PathBuf>>,
    pub limits: crate::cgroup::Limits,
    pub request_terminate_timeout: Option<Duration>,
    pub request_slowlog_timeout: Option<Duration>,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub recycle_memory: Option<u64>,
    pub pm: ProcessManager,
}

/// How many workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessManager {
    /// Always `workers`.
    Static,
    /// `workers` at start; more (up to `max_children`) when every worker is
    /// busy and connections wait; extras retired after `idle_timeout`.
    Dynamic {
        max_children: u32,
        min_spare: u32,
        max_spare: u32,
        idle_timeout: Duration,
    },
}

/// The file's cgroup and policy settings, validated.
pub(super) fn resolve(file: &FileConfig, workers: u32) -> Result<Supervision, ConfigError> {
    Ok(Supervision {
        cgroup_root: match file.cgroup_root.as_deref() {
            None => None,
            Some("none") => Some(None),
            Some(path) => Some(Some(PathBuf::from(path))),
        },
        limits: limits(file)?,
        request_terminate_timeout: optional_duration(
            "request_terminate_timeout",
            file.request_terminate_timeout.as_deref(),
        )?,
        request_slowlog_timeout: optional_duration(
            "request_slowlog_timeout",
            file.request_slowlog_timeout.as_deref(),
        )?,
        max_requests: file.max_requests.unwrap_or(0),
        max_requests_jitter: file.max_requests_jitter.unwrap_or(0),
        recycle_memory: size("recycle_memory", file.recycle_memory.as_deref())?,
        pm: process_manager(file, workers)?,
    })
}

fn limits(file: &FileConfig) -> Result<crate::cgroup::Limits, ConfigError> {
    Ok(crate::cgroup::Limits {
        memory_max: size("memory_max", file.memory_max.as_deref())?,
        memory_high: size("memory_high", file.memory_high.as_deref())?,
        // No swap by default: an OOM is an OOM, not a crawl.
        memory_swap_max: size(
            "memory_swap_max",
            file.memory_swap_max.as_deref().or(Some("0")),
        )?,
        pids_max: size("pids_max", file.pids_max.as_deref())?,
        cpu_weight: match file.cpu_weight {
            Some(w) if !(1..=10000).contains(&w) => {
                return Err(invalid("cpu_weight", format!("{w}: expected 1-10000")))
            }
            other => other,
        },
    })
}

fn process_manager(file: &FileConfig, workers: u32) -> Result<ProcessManager, ConfigError> {
    match file.pm.as_deref().unwrap_or("static") {
        "static" => Ok(ProcessManager::Static),
        "dynamic" => {
            let max_children = file.max_children.unwrap_or(workers.max(1) * 4);
            let min_spare = file.min_spare.unwrap_or(1);
            let max_spare = file.max_spare.unwrap_or(min_spare.max(2));
            if max_children < workers {
                return Err(invalid(
                    "max_children",
                    format!("{max_children} is below workers = {workers}"),
                ));
            }
            if min_spare > max_spare {
                return Err(invalid(
                    "min_spare",
                    format!("{min_spare} is above max_spare = {max_spare}"),
                ));
            }
            Ok(ProcessManager::Dynamic {
                max_children,
                min_spare,
                max_spare,
                idle_timeout: duration(
                    "idle_timeout",
                    file.idle_timeout.as_deref(),
                    Duration::from_secs(10),
                )?,
            })
        }
        other => Err(invalid(
            "pm",
            format!("{other:?}: expected \"static\" or \"dynamic\""),
        )),
    }
}
