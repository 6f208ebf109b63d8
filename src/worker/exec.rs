//! Starting a Julia worker process: its command line and environment, and
//! what happens to the child between fork and exec (descriptors, its
//! cgroup, the parent-death signal).

use std::io;
use std::os::fd::RawFd;
use std::process::Stdio;

use tokio::process::Command;

use super::Spec;
use crate::contract::var;

/// Julia's own options, the same for every worker: no start-up file of the
/// service user's, no REPL history, no colour codes in the log.
const JULIA_OPTIONS: [&str; 3] = ["--startup-file=no", "--history-file=no", "--color=no"];

/// The descriptors and the cgroup one new worker gets.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plumbing {
    /// The worker's end of its control channel.
    pub control: RawFd,
    /// The scoreboard file and the worker's slot in it.
    pub board: Option<(RawFd, usize)>,
    /// The worker's open `cgroup.procs`, which it joins before exec.
    pub procs: Option<RawFd>,
}

/// The command that starts worker `slot`: Julia with its options (and the
/// pool sysimage's), the worker program, and the whole environment (the master's own is not
/// inherited): the contract's, plus the variables of this worker alone.
pub(super) fn command(spec: &Spec, slot: u32, plumbing: Plumbing) -> io::Result<Command> {
    let mut command = Command::new(&spec.julia);
    command
        .args(spec.sysimage.julia_args(spec.image.as_ref(), slot))
        .args(JULIA_OPTIONS)
        .arg(&spec.worker_file)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(var::WORKER, slot.to_string())
        .env(var::CONTROL_FD, plumbing.control.to_string())
        .current_dir("/")
        .stdin(Stdio::from(spec.listener.try_clone()?))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some((fd, board_slot)) = plumbing.board {
        command
            .env(var::SCOREBOARD_FD, fd.to_string())
            .env(var::SCOREBOARD_SLOT, board_slot.to_string());
    }
    before_exec(&mut command, plumbing);
    Ok(command)
}

/// What the child does between fork and exec: keep only its own
/// descriptors, then join its cgroup, or without one, die with the master.
fn before_exec(command: &mut Command, plumbing: Plumbing) {
    let fd_limit = descriptor_limit();
    let Plumbing {
        control,
        board,
        procs,
    } = plumbing;
    let keep = [Some(control), board.map(|(fd, _)| fd)];
    // SAFETY: only async-signal-safe calls (close_range, fcntl, write,
    // prctl) between fork and exec. Our end of the control socket is
    // close-on-exec everywhere else, so the worker gets its own end and no
    // other worker's.
    unsafe {
        command.pre_exec(move || {
            // Only fds 0-2 (set by the Command), the control channel and the
            // scoreboard reach the worker, whatever the master inherited.
            close_on_exec_from(3, fd_limit);
            for fd in keep.into_iter().flatten() {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            match procs {
                // Join the worker's cgroup before Julia runs at all.
                Some(fd) => {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // No cgroup to kill it with: die with the master.
                None => {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
}

/// Marks every descriptor from `first` on close-on-exec, so that what this
/// process inherited (a shell's fd 10, a pipe at 251 from whatever started
/// it) never reaches a Julia worker or the programs its pages run. Marked,
/// not closed: std's spawn reports exec errors through a close-on-exec pipe
/// of its own. Async-signal-safe, so usable between fork and exec; `limit`
/// (from [`descriptor_limit`], taken before the fork) bounds the fallback
/// for kernels before 5.11, which have no `close_range`.
pub fn close_on_exec_from(first: u32, limit: u32) {
    // SAFETY: system calls on descriptor numbers only; none is closed.
    unsafe {
        let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_uint;
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, flags) == 0 {
            return;
        }
        for fd in first..limit {
            let fd = fd as libc::c_int;
            let current = libc::fcntl(fd, libc::F_GETFD);
            if current >= 0 && current & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, current | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The highest descriptor number the fallback of [`close_on_exec_from`]
/// looks at: the hard `RLIMIT_NOFILE`, but at most 2^20.
pub fn descriptor_limit() -> u32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if known {
        limit.rlim_max.min(1 << 20) as u32
    } else {
        1 << 20
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_worker_gets_the_contract_its_own_variables_and_julias_options() {
        let listener = std::fs::File::open("/dev/null").unwrap();
        let spec = Spec {
            julia: PathBuf::from("/usr/bin/julia"),
            worker_file: PathBuf::from("/srv/worker.jl"),
            env: vec![("HOME".into(), "/home/jf".into())],
            listener: Arc::new(listener.into()),
            cgroups: None,
            limits: Default::default(),
            scoreboard: None,
            image: None,
            sysimage: Default::default(),
        };
        let plumbing = Plumbing {
            control: 7,
            board: Some((9, 3)),
            procs: None,
        };
        let command = command(&spec, 2, plumbing).unwrap();
        let command = command.as_std();
        assert_eq!(command.get_program(), "/usr/bin/julia");
        let args: Vec<&OsStr> = command.get_args().collect();
        assert_eq!(
            args,
            [
                "--startup-file=no",
                "--history-file=no",
                "--color=no",
                "/srv/worker.jl"
            ]
        );
        let env: Vec<(&OsStr, Option<&OsStr>)> = command.get_envs().collect();
        for (name, value) in [
            ("HOME", "/home/jf"),
            (var::WORKER, "2"),
            (var::CONTROL_FD, "7"),
            (var::SCOREBOARD_FD, "9"),
            (var::SCOREBOARD_SLOT, "3"),
        ] {
            assert!(
                env.contains(&(OsStr::new(name), Some(OsStr::new(value)))),
                "{name}={value} in {env:?}"
            );
        }
        assert_eq!(env.len(), 5, "{env:?}");
        assert!(spec.listener.as_raw_fd() > 2);
    }

    #[test]
    fn the_pool_sysimage_settings_come_before_the_worker_file() {
        let traces = tempfile::tempdir().unwrap();
        let listener = std::fs::File::open("/dev/null").unwrap();
        let sysimage =
            crate::sysimage::Config::parse(None, vec![], None, Some(traces.path())).unwrap();
        let spec = Spec {
            julia: PathBuf::from("/usr/bin/julia"),
            worker_file: PathBuf::from("/srv/worker.jl"),
            env: vec![],
            listener: Arc::new(listener.into()),
            cgroups: None,
            limits: Default::default(),
            scoreboard: None,
            image: None,
            sysimage,
        };
        let plumbing = Plumbing {
            control: 7,
            board: None,
            procs: None,
        };
        let command = command(&spec, 4, plumbing).unwrap();
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let trace = format!("--trace-compile={}/worker-4-", traces.path().display());
        assert!(args[0].starts_with(&trace), "{args:?}");
        assert_eq!(args.last().map(String::as_str), Some("/srv/worker.jl"));
    }
}
