//! The command line: the old tool's flags, and bad input refused with one
//! precise message, the usage hint and exit 2, before anything is spawned.

mod common;

use std::process::Command;

use common::{bin, julia, worker_file};

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Outcome {
    let out = Command::new(bin()).args(args).output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs with a valid julia and worker so that only the flag under test is bad.
fn run_valid_base(extra: &[&str]) -> Outcome {
    let julia = julia();
    let worker = worker_file();
    // Its own runtime directory: tests run in parallel, and only one
    // instance may use a runtime directory.
    let runtime = tempfile::tempdir().unwrap();
    let mut args = vec![
        "-b",
        julia.to_str().unwrap(),
        "-v",
        worker.to_str().unwrap(),
        "--runtime-dir",
        runtime.path().to_str().unwrap(),
    ];
    args.extend(common::root_flag());
    args.extend_from_slice(extra);
    run(&args)
}

fn assert_usage_error(out: &Outcome, needle: &str) {
    assert_eq!(out.code, Some(2), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains(needle),
        "{needle:?} not in: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Usage: julia-fcgi"),
        "no usage in: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--help"),
        "no help hint in: {}",
        out.stderr
    );
}

#[test]
fn help_is_long_only_and_documents_every_flag() {
    let out = run(&["--help"]);
    assert_eq!(out.code, Some(0));
    for flag in [
        "-l, --listen",
        "-b, --julia",
        "-v, --worker",
        "-h, --home",
        "-s, --socket",
        "-w, --workers",
        "-c, --config",
        "--backlog",
        "--socket-mode",
        "--socket-owner",
        "--log-level",
        "--version",
    ] {
        assert!(
            out.stdout.contains(flag),
            "{flag} missing from --help:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("127.0.0.1:4545"));
    assert!(out.stdout.contains("/usr/bin/julia"));
    assert!(out.stdout.contains("ignored"), "-s must say it is ignored");
    // -h is HOME: it wants a value, it does not print help.
    let out = run(&["-h"]);
    assert_usage_error(&out, "a value is required for '--home <HOME>'");
}

#[test]
fn version_comes_from_cargo_toml() {
    let out = run(&["--version"]);
    assert_eq!(out.code, Some(0));
    assert_eq!(
        out.stdout.trim(),
        format!("julia-fcgi {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    assert_usage_error(
        &run(&["--frobnicate"]),
        "unexpected argument '--frobnicate'",
    );
    assert_usage_error(
        &run(&["-w", "two"]),
        "invalid value 'two' for '--workers <N>'",
    );
    assert_usage_error(
        &run_valid_base(&["-w", "0"]),
        "workers: 0: at least one worker",
    );
    assert_usage_error(
        &run_valid_base(&["-l", "nonsense"]),
        "invalid value for listen",
    );
    assert_usage_error(&run_valid_base(&["-l", "127.0.0.1:99999"]), "port number");
    assert_usage_error(&run_valid_base(&["--socket-mode", "999"]), "socket_mode");
    assert_usage_error(
        &run_valid_base(&["--log-level", "loud=="]),
        "invalid log level",
    );
}

#[test]
fn missing_julia_or_worker_is_refused_before_spawning() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let worker = worker_file();
    let out = run(&[
        "-R",
        "-l",
        sock.to_str().unwrap(),
        "-b",
        "/nonexistent/julia",
        "-v",
        worker.to_str().unwrap(),
    ]);
    assert_usage_error(&out, "/nonexistent/julia is not an executable file");
    assert!(!sock.exists(), "nothing may be bound before validation");

    let julia = julia();
    let out = run(&[
        "-R",
        "-l",
        sock.to_str().unwrap(),
        "-b",
        julia.to_str().unwrap(),
        "-v",
        "/nonexistent/worker.jl",
    ]);
    assert_usage_error(&out, "cannot read worker file /nonexistent/worker.jl");
    assert!(!sock.exists());
}

#[test]
fn config_file_errors_are_precise() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "workers = 2\nlisten = 17\n").unwrap();
    let out = run_valid_base(&["--config", cfg.to_str().unwrap()]);
    assert_usage_error(&out, "invalid config file");
    assert!(out.stderr.contains("listen"), "{}", out.stderr);

    std::fs::write(&cfg, "wrokers = 2\n").unwrap();
    let out = run_valid_base(&["--config", cfg.to_str().unwrap()]);
    assert_usage_error(&out, "unknown field `wrokers`");

    std::fs::write(&cfg, "shutdown_grace = \"soon\"\n").unwrap();
    let out = run_valid_base(&["--config", cfg.to_str().unwrap()]);
    assert_usage_error(&out, "shutdown_grace");

    let out = run_valid_base(&["--config", "/nonexistent.toml"]);
    assert_usage_error(&out, "cannot read config file /nonexistent.toml");
}

#[test]
fn a_socket_file_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let out = run_valid_base(&["-l", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("is not a socket; refusing to replace it"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[test]
fn a_socket_somebody_listens_on_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let out = run_valid_base(&["-l", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("another process is already listening"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_status_subcommand_has_its_own_help() {
    for flag in ["--help", "-h"] {
        let out = run(&["status", flag]);
        assert_eq!(out.code, Some(0), "status {flag}: {}", out.stderr);
        for needle in [
            "Usage: julia-fcgi status",
            "--json",
            "--watch",
            "--status-socket",
            "--status-listen",
            "--config",
        ] {
            assert!(
                out.stdout.contains(needle),
                "{needle} missing from status {flag}:\n{}",
                out.stdout
            );
        }
    }
}

/// `julia-fcgi ARGS` as a command, its JSON report and its exit code.
fn status_json(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = run(args);
    let json = serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.code, json, out.stderr)
}

#[test]
fn status_asks_where_status_listen_and_the_config_say() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = common::Daemon::start(common::Options {
        extra_args: vec!["--status-listen".into(), addr.clone()],
        ..common::Options::default()
    });
    // The runtime directory has no status socket: asking there would fail.
    let elsewhere = tempfile::tempdir().unwrap();
    let runtime = elsewhere.path().to_str().unwrap();
    let cfg = elsewhere.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("status_listen = {addr:?}\nruntime_dir = {runtime:?}\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec![
            "--status-listen",
            &addr,
            "--runtime-dir",
            runtime,
            "status",
            "--json",
        ],
        vec![
            "--runtime-dir",
            runtime,
            "status",
            "--json",
            "--status-listen",
            &addr,
        ],
        vec!["-c", cfg, "status", "--json"],
        vec!["status", "--json", "-c", cfg],
        // The flag wins over the file.
        vec!["-c", cfg, "--status-listen", &addr, "status", "--json"],
    ] {
        let (code, json, stderr) = status_json(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert_eq!(json["total processes"], 1, "{args:?}: {json}");
    }
    let (code, _, stderr) = status_json(&["--runtime-dir", runtime, "status"]);
    assert_eq!(code, Some(1), "nothing listens in {runtime}: {stderr}");
    assert!(stderr.contains("status.sock"), "{stderr}");
    drop(d);
}

#[test]
fn status_refuses_bad_addresses_and_files() {
    let out = run(&["--status-listen", "10.0.0.1:80", "status"]);
    assert_usage_error(
        &out,
        "invalid value for --status-listen: 10.0.0.1:80: only a unix socket",
    );
    assert!(
        out.stderr.contains("Usage: julia-fcgi status"),
        "{}",
        out.stderr
    );
    assert_usage_error(
        &run(&["status", "--status-socket", "nonsense"]),
        "invalid value for --status-socket: \"nonsense\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "status_listen = \"[::]:9001\"\n").unwrap();
    assert_usage_error(
        &run(&["-c", cfg.to_str().unwrap(), "status"]),
        "invalid value for status_listen: [::]:9001",
    );
    std::fs::write(&cfg, "status_lisen = \"/x.sock\"\n").unwrap();
    assert_usage_error(
        &run(&["-c", cfg.to_str().unwrap(), "status"]),
        "unknown field `status_lisen`",
    );
    assert_usage_error(
        &run(&["-c", "/nonexistent.toml", "status"]),
        "cannot read config file /nonexistent.toml",
    );
}

/// Runs the daemon with a config file holding `toml`; it must refuse.
fn refused_config(toml: &str, extra: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut args = vec!["-c", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    assert_usage_error(&run_valid_base(&args), needle);
}

#[test]
fn durations_and_sizes_the_worker_cannot_take_are_refused() {
    for (toml, needle) in [
        (
            "read_timeout = \"1.5ms\"",
            "invalid value for read_timeout: \"1.5ms\": expected a whole number of milliseconds",
        ),
        ("read_timeout = \"0s\"", "at least 1ms"),
        (
            "max_params_bytes = 0",
            "invalid value for max_params_bytes: 0",
        ),
        (
            "first_byte_timeout = \"0.5ms\"",
            "invalid value for first_byte_timeout: \"0.5ms\": expected a whole number of milliseconds",
        ),
        (
            "header_timeout = \"0s\"",
            "invalid value for header_timeout: \"0s\": expected a whole number of milliseconds, at least 1ms",
        ),
        (
            "body_timeout = \"later\"",
            "invalid value for body_timeout: \"later\": expected a duration",
        ),
        (
            "body_min_rate = \"max\"",
            "invalid value for body_min_rate: \"max\": expected bytes per second like 16K",
        ),
        (
            "body_min_rate = -1",
            "invalid value: integer `-1`, expected bytes per second",
        ),
    ] {
        refused_config(toml, &[], needle);
    }
}

#[test]
fn project_depot_and_preload_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let project_file = dir.path().join("Project.toml");
    std::fs::write(&project_file, "").unwrap();
    let (empty, file) = (empty.display(), project_file.display());
    for (toml, needle) in [
        (
            "project = \"/nonexistent/proj\"".to_owned(),
            "invalid value for project: /nonexistent/proj does not exist".to_owned(),
        ),
        (
            format!("project = \"{empty}\""),
            format!("invalid value for project: {empty} holds no Project.toml"),
        ),
        (
            format!("project = \"{file}\""),
            "is a file; give the directory that holds the Project.toml".to_owned(),
        ),
        (
            "project = \"proj\"".to_owned(),
            "invalid value for project: proj: expected an absolute path".to_owned(),
        ),
        (
            "depot = \"depot\"".to_owned(),
            "invalid value for depot: depot: expected an absolute path".to_owned(),
        ),
        ("depot = \"/a:/b\"".to_owned(), "without ':'".to_owned()),
        (
            "preload = [\"My-Lib\"]".to_owned(),
            "invalid value for preload: \"My-Lib\" is not a package name".to_owned(),
        ),
        (
            "preload = [\"MyLib.jl\"]".to_owned(),
            "write the package's name, \"MyLib\"".to_owned(),
        ),
        (
            "preload = [\"Dates\", \"Dates\"]".to_owned(),
            "\"Dates\" is listed twice".to_owned(),
        ),
    ] {
        refused_config(&toml, &[], &needle);
    }
}

#[test]
fn a_depot_the_service_user_cannot_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let depot = dir.path().join("depot");
    let toml = format!("depot = {:?}", depot.display().to_string());
    if nix::unistd::geteuid().is_root() {
        // Root may write anywhere; the workers' user may not.
        let Some(user) = common_unprivileged_user() else {
            eprintln!("skipped: no unprivileged user (www-data, nobody) to run as");
            return;
        };
        let needle = format!("is not writable by user {user}");
        refused_config(&toml, &["-u", &user], &needle);
    } else {
        refused_config(&toml, &[], "is not writable by this user");
    }
}

/// An unprivileged user that exists here.
fn common_unprivileged_user() -> Option<String> {
    ["www-data", "nobody"]
        .into_iter()
        .find(|name| nix::unistd::User::from_name(name).ok().flatten().is_some())
        .map(String::from)
}

/// A machine without a C compiler (the package only recommends gcc) hears it
/// before anything is compiled, which takes minutes, an hour on a slow CPU,
/// and nothing is installed.
#[test]
fn a_sysimage_build_without_a_c_compiler_fails_at_once() {
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("sysimage.so");
    let out = run_valid_base(&[
        "sysimage",
        "build",
        "--cc",
        "no-such-cc-here",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    for needle in [
        "checking that no-such-cc-here links against libjulia",
        "sysimage build failed at link: no C compiler to link the image: `no-such-cc-here` is \
         not installed. Install gcc (Debian, Ubuntu: apt install gcc",
        "nothing was installed; the workers keep starting as before",
    ] {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in: {}",
            out.stderr
        );
    }
    assert!(
        !out.stderr.contains("recording what a worker compiles"),
        "compiled before checking the linker: {}",
        out.stderr
    );
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A compiler that cannot link (gcc without libc6-dev: `apt install gcc`
/// with --no-install-recommends) is found out the same way.
#[test]
fn a_sysimage_build_whose_compiler_cannot_link_fails_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cc = dir.path().join("cc");
    std::fs::write(
        &cc,
        "#!/bin/sh\necho '/usr/bin/ld: cannot find crti.o: No such file or directory' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&cc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = dir.path().join("out/sysimage.so");
    let out = run_valid_base(&[
        "sysimage",
        "build",
        "--cc",
        cc.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    for needle in [
        "cannot link an empty shared object against libjulia, so it could not link the image \
         either",
        "apt install libc6-dev",
        "cannot find crti.o",
    ] {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in: {}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("recording what a worker compiles"));
    assert!(!output.exists());
}
