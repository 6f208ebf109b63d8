//! The master → worker contract, end to end: settings resolved by the real
//! config code, turned into the workers' environment by `WorkerContract`,
//! read by the real Julia `Config.load` (julia/test/contract_probe.jl) — and
//! every value must arrive with the meaning it was given.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use julia_fcgi::cli::Cli;
use julia_fcgi::config::{Environment, Settings};
use julia_fcgi::contract::{defaults, var, WorkerContract};
use serde_json::{json, Value};

/// What the worker made of an environment: `config` (Config.load) and
/// `julia` (Julia's own reading of HOME, DEPOT_PATH, the project…), and
/// its log.
struct Arrived {
    config: Value,
    julia: Value,
    log: String,
}

/// Runs the Julia side with exactly `env`, as a worker would be.
fn arrive(env: &[(OsString, OsString)]) -> Arrived {
    let probe = common::repo().join("julia/test/contract_probe.jl");
    let out = Command::new(common::julia())
        .arg("--startup-file=no")
        .arg(&probe)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "probe failed: {stdout}\n{log}");
    let mut all: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("probe printed no JSON ({e}): {stdout}\n{log}");
    });
    Arrived {
        config: all["config"].take(),
        julia: all["julia"].take(),
        log,
    }
}

/// Settings as `julia-fcgi [flags] -c FILE` would resolve them in `vars`.
fn settings(dir: &Path, toml: &str, flags: &[&str], vars: &[(&str, &str)]) -> Settings {
    let config = dir.join("julia-fcgi.toml");
    std::fs::write(&config, toml).unwrap();
    let (julia, worker) = (common::julia(), common::worker_file());
    let mut args = vec!["julia-fcgi", "-b", julia.to_str().unwrap()];
    args.extend([
        "-v",
        worker.to_str().unwrap(),
        "-c",
        config.to_str().unwrap(),
    ]);
    args.extend(common::root_flag());
    args.extend(flags);
    let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
    let env = Environment::from_vars(nix::unistd::geteuid(), vars.iter().copied());
    Settings::resolve(&cli, &env).unwrap_or_else(|e| panic!("{e}"))
}

fn contract_env(settings: &Settings) -> Vec<(OsString, OsString)> {
    WorkerContract::from(settings).env()
}

fn mkdirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|name| {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        })
        .collect()
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn every_setting_arrives_as_meant_and_the_config_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = mkdirs(tmp.path(), &["www", "more", "proj", "depot", "home"]);
    let (www, more, proj, depot, home) = (&dirs[0], &dirs[1], &dirs[2], &dirs[3], &dirs[4]);
    std::fs::write(proj.join("Project.toml"), "[deps]\n").unwrap();
    let toml = format!(
        "limit_extensions = [\".jl\", \".jlx\"]\n\
         document_roots = [{www:?}, {more:?}]\n\
         development = true\naccess_log = true\n\
         max_params_bytes = 2048\nmax_body_bytes = 12345\n\
         read_timeout = \"500ms\"\n\
         first_byte_timeout = \"250ms\"\nheader_timeout = \"1.5s\"\n\
         body_timeout = \"2m\"\nbody_min_rate = \"1M\"\n\
         project = {proj:?}\ndepot = {depot:?}\n\
         preload = [\"Dates\", \"MyLib\"]\n"
    );
    // The daemon's own JULIA_PROJECT and JULIA_DEPOT_PATH lose to the config.
    let vars = [
        ("JULIA_PROJECT", "/elsewhere"),
        ("JULIA_DEPOT_PATH", "/elsewhere/depot"),
        ("PATH", "/usr/bin:/bin"),
    ];
    let settings = settings(tmp.path(), &toml, &["-h", &s(home)], &vars);
    let arrived = arrive(&contract_env(&settings));
    let c = &arrived.config;
    assert_eq!(c["extensions"], json!([".jl", ".jlx"]));
    assert_eq!(c["doc_roots"], json!([s(www), s(more)]));
    assert_eq!(c["dev"], true);
    assert_eq!(c["access_log"], true);
    assert_eq!(c["max_params"], 2048);
    assert_eq!(c["max_body"], 12345);
    assert_eq!(c["read_timeout_ms"], 500, "{}", arrived.log);
    assert_eq!(c["first_byte_timeout_ms"], 250);
    assert_eq!(c["header_timeout_ms"], 1500);
    assert_eq!(c["body_timeout_ms"], 120_000);
    assert_eq!(c["body_min_rate"], 1 << 20);
    assert_eq!(c["project"], s(proj));
    assert_eq!(c["depot"], s(depot));
    assert_eq!(c["preload"], json!(["Dates", "MyLib"]));
    // And Julia itself uses them: the project is active, the depot first.
    let j = &arrived.julia;
    assert_eq!(j["HOME"], s(home));
    assert_eq!(j["active_project"], s(&proj.join("Project.toml")));
    assert_eq!(j["DEPOT_PATH"][0], s(depot));
    assert_eq!(j["PATH"], "/usr/bin:/bin");
    assert_eq!(j["nthreads"], 1);
    assert!(
        !arrived.log.contains("error") && !arrived.log.contains("warn"),
        "{}",
        arrived.log
    );
}

#[test]
fn the_daemons_julia_variables_pass_when_the_config_is_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let vars = [
        ("HOME", "/home/someone"),
        ("PATH", "/opt/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C.UTF-8"),
        ("JULIA_NUM_THREADS", "2"),
        ("JULIA_PROJECT", "@."),
        ("JULIA_LOAD_PATH", "@:/opt/julia-libs:@stdlib"),
        ("JULIA_DEPOT_PATH", "/opt/depot-a:/opt/depot-b"),
    ];
    let settings = settings(tmp.path(), "read_timeout = \"1.5s\"\n", &[], &vars);
    let env = contract_env(&settings);
    let arrived = arrive(&env);
    assert_eq!(arrived.config["read_timeout_ms"], 1500, "{}", arrived.log);
    assert_eq!(arrived.config["project"], "@.");
    assert_eq!(arrived.config["depot"], "/opt/depot-a");
    let j = &arrived.julia;
    assert_eq!(j["HOME"], "/home/someone");
    assert_eq!(j["PATH"], "/opt/bin:/usr/bin:/bin");
    assert_eq!(j["LANG"], "C.UTF-8");
    assert_eq!(j["LC_ALL"], "C.UTF-8");
    assert_eq!(j["nthreads"], 2);
    assert_eq!(j["DEPOT_PATH"], json!(["/opt/depot-a", "/opt/depot-b"]));
    assert_eq!(j["LOAD_PATH"][1], "/opt/julia-libs", "{j}");
}

#[test]
fn defaults_agree_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let home = &mkdirs(tmp.path(), &["home"])[0];
    let settings = settings(tmp.path(), "", &[], &[("HOME", &s(home))]);
    let from_master = arrive(&contract_env(&settings));
    // Julia's own defaults, with nothing set at all, are the master's.
    let alone = arrive(&[("PATH".into(), "/usr/bin:/bin".into())]);
    let expected = json!({
        "worker": 0,
        "control_fd": -1,
        "extensions": defaults::EXTENSIONS,
        "doc_roots": [],
        "dev": false,
        "max_params": defaults::MAX_PARAMS_BYTES,
        "max_body": defaults::MAX_BODY_BYTES,
        "read_timeout_ms": defaults::READ_TIMEOUT.as_millis() as u64,
        "first_byte_timeout_ms": defaults::FIRST_BYTE_TIMEOUT.as_millis() as u64,
        "header_timeout_ms": defaults::HEADER_TIMEOUT.as_millis() as u64,
        "body_timeout_ms": defaults::BODY_TIMEOUT.as_millis() as u64,
        "body_min_rate": defaults::BODY_MIN_RATE_BYTES_PER_S,
        "access_log": false,
        "project": null,
        "depot": null,
        "preload": [],
    });
    assert_eq!(alone.config, expected, "{}", alone.log);
    // From the master, the same but the depot, which it always names: here
    // (no systemd, no JULIA_DEPOT_PATH) where Julia would put it anyway.
    let mut expected_from_master = expected;
    expected_from_master["depot"] = json!(s(&home.join(".julia")));
    assert_eq!(
        from_master.config, expected_from_master,
        "{}",
        from_master.log
    );
    assert_eq!(from_master.julia["DEPOT_PATH"][0], s(&home.join(".julia")));
    assert_eq!(from_master.julia["nthreads"], 1);
}

#[test]
fn under_systemd_the_state_directory_is_the_depot() {
    let tmp = tempfile::tempdir().unwrap();
    let state = &mkdirs(tmp.path(), &["state"])[0];
    let vars = [
        ("STATE_DIRECTORY", s(state)),
        ("HOME", "/nonexistent".into()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let settings = settings(tmp.path(), "read_timeout = \"2m\"\n", &[], &vars);
    let arrived = arrive(&contract_env(&settings));
    assert_eq!(arrived.config["depot"], s(state));
    assert_eq!(arrived.julia["DEPOT_PATH"][0], s(state));
    assert_eq!(arrived.config["read_timeout_ms"], 120_000);
}

#[test]
fn a_bad_value_on_the_worker_side_is_logged_not_silently_replaced() {
    let bad = |name: &str, value: &str| (OsString::from(name), OsString::from(value));
    let arrived = arrive(&[
        bad(var::READ_TIMEOUT_MS, "0.5"),
        bad(var::MAX_BODY_BYTES, "-1"),
        bad(var::MAX_PARAMS_BYTES, "0"),
        bad(var::DEV, "yes"),
        bad(var::PRELOAD, "Dates,My-Lib"),
        bad(var::HEADER_TIMEOUT_MS, "5s"),
        bad(var::BODY_MIN_RATE_BYTES_PER_S, "-5"),
        // The old name, in its old unit (seconds), with a warning.
        bad("JULIA_FCGI_READ_TIMEOUT", "7"),
    ]);
    let c = &arrived.config;
    assert_eq!(c["read_timeout_ms"], 60_000);
    assert_eq!(c["max_body"], defaults::MAX_BODY_BYTES);
    assert_eq!(c["max_params"], defaults::MAX_PARAMS_BYTES);
    assert_eq!(c["dev"], false);
    assert_eq!(c["preload"], json!(["Dates"]));
    assert_eq!(c["header_timeout_ms"], 5000);
    assert_eq!(c["body_min_rate"], defaults::BODY_MIN_RATE_BYTES_PER_S);
    for needle in [
        "error: invalid JULIA_FCGI_READ_TIMEOUT_MS=\"0.5\": expected a whole number of \
         milliseconds ≥ 1; using the default 60000",
        "error: invalid JULIA_FCGI_MAX_BODY_BYTES=\"-1\"",
        "error: invalid JULIA_FCGI_MAX_PARAMS_BYTES=\"0\"",
        "error: invalid JULIA_FCGI_DEV=\"yes\"",
        "error: JULIA_FCGI_PRELOAD entry \"My-Lib\" is not a package name",
        "error: invalid JULIA_FCGI_HEADER_TIMEOUT_MS=\"5s\": expected a whole number of \
         milliseconds ≥ 1; using the default 5000",
        "error: invalid JULIA_FCGI_BODY_MIN_RATE_BYTES_PER_S=\"-5\"",
        "warn: JULIA_FCGI_READ_TIMEOUT is ignored: JULIA_FCGI_READ_TIMEOUT_MS is set",
    ] {
        assert!(
            arrived.log.contains(needle),
            "{needle:?} not in:\n{}",
            arrived.log
        );
    }
    let legacy = arrive(&[bad("JULIA_FCGI_READ_TIMEOUT", "7")]);
    assert_eq!(legacy.config["read_timeout_ms"], 7000);
    assert!(
        legacy.log.contains("JULIA_FCGI_READ_TIMEOUT is deprecated"),
        "{}",
        legacy.log
    );
}

#[test]
fn every_variable_is_documented_in_interface_md() {
    let doc = std::fs::read_to_string(common::repo().join("julia/INTERFACE.md")).unwrap();
    let start = doc.find("## Start-up").unwrap();
    let end = start + doc[start..].find("\n## ").unwrap_or(doc.len() - start);
    let startup = &doc[start..end];
    let tmp = tempfile::tempdir().unwrap();
    let vars = [
        ("LANG", "C"),
        ("LC_ALL", "C"),
        ("JULIA_PROJECT", "@."),
        ("JULIA_LOAD_PATH", "@"),
    ];
    let settings = settings(tmp.path(), "", &[], &vars);
    let names: Vec<String> = contract_env(&settings)
        .into_iter()
        .map(|(name, _)| name.into_string().unwrap())
        .chain(
            [
                var::WORKER,
                var::CONTROL_FD,
                var::SCOREBOARD_FD,
                var::SCOREBOARD_SLOT,
            ]
            .map(String::from),
        )
        .collect();
    for name in names {
        assert!(
            startup.contains(&format!("| `{name}` |")),
            "{name} has no row in INTERFACE.md's Start-up table"
        );
    }
}
