//! Per-worker cgroups on the host's controller-less cgroup2 tree
//! (/sys/fs/cgroup/unified), injected as `cgroup_root`; and the fallback when
//! nothing is delegated. Limits and OOM kills need controllers: the VM test
//! covers those.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cgroup::TestCgroup;
use common::fcgi::{self, Request};
use common::{alive, page, Daemon, Options};

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn each_worker_gets_a_cgroup_and_takes_its_children_along() {
    let cg = TestCgroup::new("placement");
    let d = Daemon::start(Options {
        workers: 2,
        config: Some(format!("cgroup_root = {:?}\n", cg.0.display().to_string())),
        ..Options::default()
    });
    assert!(
        d.log_text().contains("per-worker cgroups under"),
        "{}",
        d.log_text()
    );
    // The master lives in the leaf supervisor/, each worker in worker-N/.
    assert_eq!(procs(&cg.0.join("supervisor")), vec![d.pid()]);
    let workers = d.worker_pids();
    for (n, dir) in [(1, "worker-1"), (2, "worker-2")] {
        let inside = procs(&cg.0.join(dir));
        assert_eq!(inside.len(), 1, "worker {n}: {inside:?}");
        assert!(workers.contains(&inside[0]));
    }

    // A page forks a long sleep that would outlive a plain kill -9.
    let pidfile = d.dir.path().join("sleep.pid");
    let p = page(
        d.dir.path(),
        "fork.jl",
        &format!(
            "p = run(`sleep 1000`, wait=false); write({:?}, string(getpid(p)));\
             print(\"Content-Type: text/plain\\r\\n\\r\\n\", getpid())",
            pidfile.display().to_string()
        ),
    );
    let worker: i32 = fcgi::get(&d.addr, &p, "").body_text().parse().unwrap();
    let sleeper: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    assert!(alive(sleeper));
    let cgroup_of_sleeper = std::fs::read_to_string(format!("/proc/{sleeper}/cgroup")).unwrap();
    assert!(
        cgroup_of_sleeper.contains("/worker-"),
        "{cgroup_of_sleeper}"
    );

    let mark = d.log_len();
    unsafe {
        libc::kill(worker, libc::SIGKILL);
    }
    let start = Instant::now();
    while alive(sleeper) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the page's child outlived its worker"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.wait_for_log_after(mark, "worker ready", Duration::from_secs(120));
    // The dead worker's cgroup is gone; the replacement has its own.
    let dirs: Vec<String> = std::fs::read_dir(&cg.0)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        dirs.iter().filter(|d| d.starts_with("worker-")).count(),
        2,
        "{dirs:?}"
    );
    assert_eq!(fcgi::request(&d.addr, &Request::get(&p, "")).status(), 200);
}

#[test]
fn without_delegation_workers_die_with_the_master() {
    // The test process sits in the host's root cgroup: never delegated.
    let mut d = Daemon::start(Options::default());
    let log = d.log_text();
    assert!(log.contains("per-worker cgroups off"), "{log}");
    assert_eq!(
        log.matches("per-worker cgroups off").count(),
        1,
        "said once"
    );
    let workers = d.worker_pids();
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let start = Instant::now();
    while workers.iter().any(|&pid| alive(pid)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "orphaned workers: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
