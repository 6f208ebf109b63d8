//! Programs a page starts die with its worker, in both supervision modes
//! (per-worker cgroups, or process groups when cgroups are off) and on each
//! way a worker ends: death, recycling, reload and stop. The page starts one
//! program in the worker's process group and one that leaves it (`setsid`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cgroup::TestCgroup;
use common::fcgi;
use common::{alive, children, page, Daemon, Options};

const HELLO: &str = r#"print("Content-Type: text/plain\r\n\r\nhello")"#;

/// The page starts three programs behind Julia's back (a page's own
/// `run(…, wait=false)` makes the worker retire after the response, the
/// worker's request isolation, so recycling, reload and stop would never
/// meet one; programs that C libraries and shell scripts leave behind are
/// what is left for the master to catch): a `sleep` in the worker's process
/// group, a `setsid sleep` that left it (both children of the worker), and
/// a `sleep &` from `system()`, orphaned at once but in the worker's group.
const FORK_PAGE: &str = r#"function spawn(args...)
    argv = collect(args)
    ptrs = Ptr{UInt8}[pointer(a) for a in argv]
    push!(ptrs, C_NULL)
    pid = Ref{Cint}(0)
    env = unsafe_load(cglobal(:environ, Ptr{Ptr{UInt8}}))
    rc = GC.@preserve argv ptrs ccall(:posix_spawnp, Cint,
        (Ref{Cint}, Cstring, Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Ptr{UInt8}}, Ptr{Ptr{UInt8}}),
        pid, argv[1], C_NULL, C_NULL, ptrs, env)
    rc == 0 || error("posix_spawnp: $rc")
    pid[]
end
a = spawn("sleep", "1000")
b = spawn("setsid", "sleep", "1000")
ccall(:system, Cint, (Cstring,), "sleep 1000 & echo \$! > PIDS.c")
write("PIDS", string(a, " ", b, " ", strip(read("PIDS.c", String))))
print("Content-Type: text/plain\r\n\r\n", getpid())
"#;

fn fork_page(dir: &Path) -> (PathBuf, PathBuf) {
    let pids = dir.join("pids");
    let code = FORK_PAGE.replace("PIDS", &pids.display().to_string());
    (page(dir, "fork.jl", &code), pids)
}

/// Asks for the page; returns the worker's pid and the programs'.
fn fork(d: &Daemon, p: &Path, pids: &Path) -> (i32, [i32; 3]) {
    let response = fcgi::get(&d.addr, p, "");
    assert_eq!(response.status(), 200, "{}", d.log_text());
    let worker = response.body_text().parse().unwrap();
    let text = std::fs::read_to_string(pids).unwrap();
    let forks: Vec<i32> = text.split(' ').map(|p| p.parse().unwrap()).collect();
    let forks: [i32; 3] = forks.try_into().unwrap();
    // Still there a moment later: nothing kills them before their worker ends.
    std::thread::sleep(Duration::from_millis(300));
    for pid in forks {
        assert!(
            alive(pid),
            "the page's program {pid} runs after the request"
        );
    }
    (worker, forks)
}

/// Waits until the programs are dead; with `reaped`, until they are gone
/// from /proc altogether (the master, their subreaper, collected them).
fn wait_gone(what: &str, forks: [i32; 3], reaped: bool) {
    let start = Instant::now();
    let gone = |pid: i32| {
        if reaped {
            !Path::new(&format!("/proc/{pid}")).exists()
        } else {
            !alive(pid)
        }
    };
    while !forks.iter().all(|&pid| gone(pid)) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "after {what}: the page's programs {forks:?} outlived their worker{}",
            if reaped {
                " (or were never reaped)"
            } else {
                ""
            }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Death, recycling (`max_requests = 3`), reload and stop, one after the
/// other on one daemon with one worker.
fn forks_die_with_their_worker(config: &str, reaped: bool) {
    let mut d = Daemon::start(Options {
        config: Some(format!("max_requests = 3\n{config}")),
        ..Options::default()
    });
    let (p, pids) = fork_page(d.dir.path());
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let timeout = Duration::from_secs(120);

    // Death.
    let mark = d.log_len();
    let (worker, forks) = fork(&d, &p, &pids);
    // SAFETY: a signal to the worker this test's daemon started.
    unsafe {
        libc::kill(worker, libc::SIGKILL);
    }
    wait_gone("the worker was killed", forks, reaped);
    d.wait_for_log_after(mark, "worker ready", timeout);

    // Recycling: the fork is the new worker's first request, two more make
    // max_requests.
    let mark = d.log_len();
    let (_, forks) = fork(&d, &p, &pids);
    for _ in 0..2 {
        assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");
    }
    d.wait_for_log_after(mark, "recycling worker", Duration::from_secs(10));
    d.wait_for_log_after(mark, "new worker ready", timeout);
    wait_gone("recycling", forks, reaped);

    // Reload.
    let mark = d.log_len();
    let (_, forks) = fork(&d, &p, &pids);
    d.signal(libc::SIGHUP);
    d.wait_for_log_after(mark, "reload complete", timeout);
    wait_gone("a reload", forks, reaped);

    // Stop.
    let (_, forks) = fork(&d, &p, &pids);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
    // The master is gone too, so nobody is left to reap: dead is enough.
    wait_gone("a stop", forks, false);
    if reaped {
        assert!(
            d.log_text().contains("left its worker's process group"),
            "the detached program was the master's to kill:\n{}",
            d.log_text()
        );
    }
}

#[test]
fn without_cgroups_forks_die_with_their_worker_and_are_reaped() {
    forks_die_with_their_worker("cgroup_root = \"none\"\n", true);
}

#[test]
fn with_cgroups_forks_die_with_their_worker() {
    let cg = TestCgroup::new("forks");
    forks_die_with_their_worker(
        &format!("cgroup_root = {:?}\n", cg.0.display().to_string()),
        false,
    );
}

/// Without cgroups the master is its workers' subreaper: while workers
/// serve, its only children are its workers (orphans are reaped, and those
/// that detached from their worker's process group killed).
#[test]
fn without_cgroups_the_master_keeps_no_zombies() {
    let d = Daemon::start(Options {
        workers: 2,
        config: Some("cgroup_root = \"none\"\n".into()),
        ..Options::default()
    });
    // A page that double-forks a short-lived program: it is re-parented to
    // the master at once and exits a moment later.
    let p = page(
        d.dir.path(),
        "daemonize.jl",
        "run(`sh -c 'sleep 0.2 &'`)\nprint(\"Content-Type: text/plain\\r\\n\\r\\nok\")",
    );
    for _ in 0..5 {
        assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "ok");
    }
    // One that detaches itself (setsid) and is orphaned at once: nothing
    // says whose it is, so the master kills it when it arrives.
    let pidfile = d.dir.path().join("detached.pid");
    let detach = page(
        d.dir.path(),
        "detach.jl",
        &format!(
            "ccall(:system, Cint, (Cstring,), \"setsid sleep 1000 & echo \\$! > {}\")\n\
             print(\"Content-Type: text/plain\\r\\n\\r\\nok\")",
            pidfile.display()
        ),
    );
    assert_eq!(fcgi::get(&d.addr, &detach, "").body_text(), "ok");
    let detached: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let line = d.wait_for_log(
        &format!("killing pid {detached} (sleep)"),
        Duration::from_secs(10),
    );
    assert!(line.contains("left its worker's process group"), "{line}");
    let start = Instant::now();
    loop {
        let kids = children(d.pid());
        let workers = d.worker_pids().len();
        if kids.len() == 2 && workers == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the master's children: {kids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
