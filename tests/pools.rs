//! Several pools on one host: each named (the template unit's
//! `JULIA_FCGI_POOL`, or `pool` in its file), each with its own runtime
//! directory in the pools' directory, found by `julia-fcgi status --pool
//! NAME` and `--all` there or where its pool file's `status_listen` says;
//! real daemons with real Julia workers.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, Daemon, Options};

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `julia-fcgi status ARGS` with `pools` as the pools' runtime directory
/// and no pool files (never the host's /etc/julia-fcgi).
fn status(pools: &Path, args: &[&str]) -> Out {
    let etc = tempfile::tempdir().unwrap();
    status_with(pools, etc.path(), &[], args)
}

/// [`status`] with pool files in `etc`/pools and `top` flags before it.
fn status_with(pools: &Path, etc: &Path, top: &[&str], args: &[&str]) -> Out {
    let out = Command::new(bin())
        .env("JULIA_FCGI_CONFIG_DIR", etc)
        .arg("--runtime-dir")
        .arg(pools)
        .args(top)
        .arg("status")
        .args(args)
        .output()
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Two pools, `a` named by the variable the template unit sets and `b` by
/// its file (which wins over the variable), in one pools' directory (each
/// daemon's own runtime directory, linked in as NAME).
fn two_pools() -> (Daemon, Daemon, tempfile::TempDir) {
    let a = Daemon::start(Options {
        env: vec![("JULIA_FCGI_POOL".into(), "a".into())],
        ..Options::default()
    });
    let b = Daemon::start(Options {
        env: vec![("JULIA_FCGI_POOL".into(), "not-this".into())],
        config: Some("pool = \"b\"\n".into()),
        ..Options::default()
    });
    let pools = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(a.dir.path(), pools.path().join("a")).unwrap();
    std::os::unix::fs::symlink(b.dir.path(), pools.path().join("b")).unwrap();
    (a, b, pools)
}

#[test]
fn status_finds_each_pool_by_name_and_all_of_them() {
    let (a, b, pools) = two_pools();
    for (name, daemon) in [("a", &a), ("b", &b)] {
        let out = status(pools.path(), &["--pool", name, "--json"]);
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(json["pool"], name, "{json}");
        let listen = format!("unix:{}", daemon.dir.path().join("fcgi.sock").display());
        assert_eq!(json["listen"], listen.as_str(), "{json}");
        let out = status(pools.path(), &["--pool", name]);
        assert!(
            out.stdout
                .starts_with(&format!("pool {name} on {listen}  (static")),
            "{}",
            out.stdout
        );
    }
    let out = status(pools.path(), &["--all", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let all: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pool"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let out = status(pools.path(), &["--all"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("pool a on ") && out.stdout.contains("pool b on "),
        "{}",
        out.stdout
    );

    // A pool that is gone (its directory and a stale socket left): said,
    // exit 1, the others still printed.
    let gone = pools.path().join("c");
    std::fs::create_dir(&gone).unwrap();
    drop(std::os::unix::net::UnixListener::bind(gone.join("status.sock")).unwrap());
    let out = status(pools.path(), &["--all", "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("pool c: cannot reach julia-fcgi's status socket")
            && out.stderr.contains("systemctl status julia-fcgi@c"),
        "{}",
        out.stderr
    );
    let all: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
}

#[test]
fn status_says_why_it_cannot_ask_a_pool() {
    let pools = tempfile::tempdir().unwrap();
    let out = status(pools.path(), &["--pool", "nope"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let socket = pools.path().join("nope/status.sock");
    assert!(
        out.stderr.contains(&format!("unix:{}", socket.display()))
            && out.stderr.contains("systemctl status julia-fcgi@nope"),
        "{}",
        out.stderr
    );
    let out = status(pools.path(), &["--all"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "no pool's status socket in {}",
            pools.path().display()
        )),
        "{}",
        out.stderr
    );
    let out = status(pools.path(), &["--pool", "a/b"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("invalid value for --pool: \"a/b\" has a character other than"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Usage: julia-fcgi status"),
        "{}",
        out.stderr
    );
    for args in [
        &["--pool", "a", "--status-socket", "/x.sock"][..],
        &["--pool", "a", "--all"],
        &["--all", "--watch"],
    ] {
        let out = status(pools.path(), args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
    }
}

#[test]
fn status_asks_a_pool_where_its_file_puts_the_status_socket() {
    let port = common::free_port();
    let toml = format!("pool = \"c\"\nstatus_listen = \"127.0.0.1:{port}\"\n");
    let c = Daemon::start(Options {
        config: Some(toml.clone()),
        ..Options::default()
    });
    c.wait_for_log("status page and ping on", std::time::Duration::from_secs(5));
    let (pools, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Without its file, the default place: nobody there.
    let out = status_with(pools.path(), etc.path(), &[], &["--pool", "c"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("c/status.sock"), "{}", out.stderr);
    std::fs::create_dir(etc.path().join("pools")).unwrap();
    let file = etc.path().join("pools/c.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = status_with(pools.path(), etc.path(), &[], &["--pool", "c", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["pool"], "c", "{json}");
    // --all finds it by its file, though nothing of it is in the pools'
    // runtime directory.
    let out = status_with(pools.path(), etc.path(), &[], &["--all", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let all: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(all[0]["pool"], "c", "{all}");
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    // -c names the pool's file instead.
    let elsewhere = c.dir.path().join("elsewhere.toml");
    std::fs::write(&elsewhere, &toml).unwrap();
    std::fs::remove_file(&file).unwrap();
    let top = ["-c", elsewhere.to_str().unwrap()];
    let out = status_with(pools.path(), etc.path(), &top, &["--pool", "c", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // A pool file that does not parse: where the socket is is not known.
    std::fs::write(&file, "status_listen = 9\n").unwrap();
    let out = status_with(pools.path(), etc.path(), &[], &["--pool", "c"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("invalid value for --pool: c: its pool file ")
            && out.stderr.contains("c.toml does not parse")
            && out.stderr.contains("--status-socket ADDR"),
        "{}",
        out.stderr
    );
    let out = status_with(pools.path(), etc.path(), &[], &["--all"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("c.toml does not parse"),
        "{}",
        out.stderr
    );
}
