//! A daemon started as root keeps its workers' identity across SIGHUP: the
//! same user, the same HOME, the same depot, and no spurious "user changed"
//! (issue 13: the re-read config used to resolve as the dropped-to user, so
//! the workers' HOME became /root and their depot /root/.julia).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::fcgi::{self, Addr};
use common::{bin, julia, page, worker_file, Daemon};

/// What the page says about the worker that ran it.
const WHO_AM_I: &str = r#"
environ = Dict{String,String}()
for entry in split(read("/proc/self/environ", String), '\0')
    occursin('=', entry) || continue
    k, v = split(entry, '='; limit=2)
    environ[k] = v
end
print("Content-Type: text/plain\r\n\r\n")
println("uid=", ccall(:getuid, UInt32, ()))
println("HOME=", get(environ, "HOME", "(unset)"))
println("JULIA_DEPOT_PATH=", get(environ, "JULIA_DEPOT_PATH", "(unset)"))
println("depot=", DEPOT_PATH[1])
"#;

/// The workers' environment as the kernel holds it, without what differs
/// from one worker to the next by design (number, fds, scoreboard slot).
fn worker_environ(pid: i32) -> Vec<String> {
    let per_worker = [
        "JULIA_FCGI_WORKER=",
        "JULIA_FCGI_CONTROL_FD=",
        "JULIA_FCGI_SCOREBOARD_FD=",
        "JULIA_FCGI_SCOREBOARD_SLOT=",
    ];
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut vars: Vec<String> = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|v| !v.is_empty() && !per_worker.iter().any(|p| v.starts_with(p)))
        .map(String::from)
        .collect();
    vars.sort();
    vars
}

/// A daemon started as root with `args` (and a config file holding
/// `config`, if any), with root's own environment; its address and the
/// who-am-I page.
fn start_as_root(args: &[&str], config: Option<&str>) -> (Daemon, Addr, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // The workers run as the service user: they must reach the page.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let who = page(dir.path(), "who.jl", WHO_AM_I);
    let socket = dir.path().join("fcgi.sock");
    let mut cmd = Command::new(bin());
    cmd.arg("-l")
        .arg(&socket)
        .arg("-b")
        .arg(julia())
        .arg("-v")
        .arg(worker_file())
        .args(["--socket-mode", "0600"])
        .args(args)
        // Made by the master for the user, as /run/julia-fcgi would be.
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        // Root's own environment, which the workers must not inherit.
        .env("HOME", "/root")
        .env_remove("JULIA_DEPOT_PATH")
        .env_remove("JULIA_PROJECT")
        .env_remove("JULIA_LOAD_PATH")
        .env_remove("STATE_DIRECTORY");
    if let Some(config) = config {
        let path = dir.path().join("julia-fcgi.toml");
        std::fs::write(&path, config).unwrap();
        cmd.arg("-c").arg(path);
    }
    let addr = Addr::Unix(socket);
    let d = Daemon::spawn(cmd, addr.clone(), dir);
    d.wait_for_log("ready:", common::READY_TIMEOUT);
    (d, addr, who)
}

/// An unprivileged user that exists here, other than `not`.
fn unprivileged_user(not: Option<&str>) -> Option<nix::unistd::User> {
    ["www-data", "nobody"]
        .into_iter()
        .filter(|name| Some(*name) != not)
        .find_map(|name| nix::unistd::User::from_name(name).ok().flatten())
}

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root, to start the daemon as root and drop to a user");
    }
    root
}

#[test]
fn sighup_keeps_the_service_user_home_and_depot() {
    if !root() {
        return;
    }
    let Some(user) = unprivileged_user(None) else {
        eprintln!("skipped: no unprivileged user (www-data, nobody) to drop to");
        return;
    };
    let (d, addr, who) = start_as_root(&["-u", &user.name], None);
    let before = fcgi::get(&addr, &who, "").body_text();
    let home = user.dir.display().to_string();
    assert!(before.contains(&format!("uid={}\n", user.uid)), "{before}");
    assert!(before.contains(&format!("HOME={home}\n")), "{before}");
    assert!(
        before.contains(&format!("JULIA_DEPOT_PATH={home}/.julia:\n")),
        "{before}"
    );
    assert!(
        before.contains(&format!("depot={home}/.julia\n")),
        "{before}"
    );
    let old = d.worker_pids();
    let env_before = worker_environ(old[0]);

    let skip = d.log_len();
    d.signal(libc::SIGHUP);
    d.wait_for_log_after(skip, "reload complete", common::READY_TIMEOUT);
    let new = d.wait_for_new_workers(1, &old, Duration::from_secs(30));
    let after = fcgi::get(&addr, &who, "").body_text();
    assert_eq!(
        after, before,
        "the new worker sees another user, HOME or depot than the old one"
    );
    assert_eq!(worker_environ(new[0]), env_before);
    let reload_log = d.log()[skip..].join("\n");
    assert!(
        !reload_log.contains("changed"),
        "a reload of the same config reported a change:\n{reload_log}"
    );
}

#[test]
fn a_user_changed_in_the_file_is_reported_as_needing_a_restart() {
    if !root() {
        return;
    }
    let (Some(first), Some(second)) =
        (unprivileged_user(None), unprivileged_user(Some("www-data")))
    else {
        eprintln!("skipped: needs two unprivileged users (www-data and nobody)");
        return;
    };
    let (d, addr, who) = start_as_root(&[], Some(&format!("user = {:?}\n", first.name)));
    let before = fcgi::get(&addr, &who, "").body_text();
    assert!(before.contains(&format!("uid={}\n", first.uid)), "{before}");
    let config = d.dir.path().join("julia-fcgi.toml");
    std::fs::write(&config, format!("user = {:?}\nworkers = 2\n", second.name)).unwrap();
    let old = d.worker_pids();
    let skip = d.log_len();
    d.signal(libc::SIGHUP);
    d.wait_for_log_after(skip, "reload complete", common::READY_TIMEOUT);
    let line = d.wait_for_log_after(skip, "user changed", Duration::from_secs(1));
    assert!(
        line.contains(&format!(
            "user changed (running as {} (uid {}, gid {}), the config now says {} (uid {}",
            first.name, first.uid, first.gid, second.name, second.uid
        )) && line.contains("takes a restart"),
        "{line}"
    );
    // The rest of the file applies; the workers stay who they were.
    let new = d.wait_for_new_workers(2, &old, Duration::from_secs(30));
    let environ = worker_environ(new[0]);
    assert!(
        environ.contains(&format!("HOME={}", first.dir.display())),
        "{environ:?}"
    );
    assert_eq!(fcgi::get(&addr, &who, "").body_text(), before);
}
