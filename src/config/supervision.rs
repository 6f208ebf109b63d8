//! Settings of the supervisor: cgroups, and the policies built on the
//! scoreboard (timeouts, recycling, the dynamic pool).

use std::path::PathBuf;
use std::time::Duration;

use super::values::duration;
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

pub(super) fn process_manager(
    file: &FileConfig,
    workers: u32,
) -> Result<ProcessManager, ConfigError> {
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
                idle_timeout: duration("idle_timeout", file.idle_timeout.as_deref(), 10)?,
            })
        }
        other => Err(invalid(
            "pm",
            format!("{other:?}: expected \"static\" or \"dynamic\""),
        )),
    }
}
