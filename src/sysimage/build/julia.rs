//! Running julia for a build: the probe, the minimal base (Julia's own
//! build steps on a copy of Base's sources) and the compile step, each
//! streaming its output as progress.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{fail, BuildError, BuildOptions, MINIMAL_STDLIBS};
use crate::sysimage::metadata::{FileStamp, Julia, Package, Statements};
use crate::sysimage::trace;

/// What probe.jl reported.
#[derive(Debug, Default)]
pub(super) struct Facts {
    pub(super) version: String,
    pub(super) image: PathBuf,
    pub(super) libraries: Vec<PathBuf>,
    pub(super) base_sources: Option<PathBuf>,
}

/// What build.jl reported.
#[derive(Debug, Default)]
pub(super) struct Contents {
    pub(super) loaded: Vec<Package>,
    pub(super) stdlibs: Vec<String>,
    pub(super) files: Vec<PathBuf>,
    pub(super) statements: Option<Statements>,
}

/// The pool's julia with the workers' environment and nothing else.
fn julia_command(opts: &BuildOptions) -> Command {
    let mut command = Command::new(&opts.julia);
    command
        .args(["--startup-file=no", "--history-file=no", "--color=no"])
        .env_clear()
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    command
}

/// julia as Julia's own build runs it: a clean environment, no project, no
/// depot.
fn plain_julia_command(opts: &BuildOptions) -> Command {
    let mut command = julia_command(opts);
    command
        .env_remove("JULIA_PROJECT")
        .env_remove("JULIA_LOAD_PATH")
        .env_remove("JULIA_DEPOT_PATH");
    command
}

/// Step 1: what julia says of itself (`julia/build/probe.jl`).
pub(super) fn probe(opts: &BuildOptions, scripts: &Path) -> Result<Facts, BuildError> {
    let out = julia_command(opts)
        .arg(scripts.join("probe.jl"))
        .output()
        .map_err(|e| fail("probe")(format!("cannot run {}: {e}", opts.julia.display())))?;
    if !out.status.success() {
        return Err(fail("probe")(format!(
            "{} ({}): {}",
            opts.julia.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut facts = Facts::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.split_once('\t') {
            Some(("version", v)) => facts.version = v.to_owned(),
            Some(("image", v)) => facts.image = PathBuf::from(v),
            Some(("library", v)) => facts.libraries.push(PathBuf::from(v)),
            Some(("base", v)) => facts.base_sources = Some(PathBuf::from(v)),
            _ => {}
        }
    }
    if facts.version.is_empty() || facts.libraries.is_empty() || !facts.image.is_file() {
        return Err(fail("probe")(format!(
            "{} said too little about itself: {facts:?}",
            opts.julia.display()
        )));
    }
    Ok(facts)
}

/// The files whose change means another julia: the configured executable
/// (a wrapper script, maybe), the libraries and its system image.
pub(super) fn identity(opts: &BuildOptions, facts: &Facts) -> Result<Julia, BuildError> {
    let exe = std::fs::canonicalize(&opts.julia)
        .map_err(|e| fail("probe")(format!("{}: {e}", opts.julia.display())))?;
    let mut files = Vec::new();
    for path in std::iter::once(&exe)
        .chain(&facts.libraries)
        .chain([&facts.image])
    {
        files.push(
            FileStamp::of(path).map_err(|e| fail("probe")(format!("{}: {e}", path.display())))?,
        );
    }
    Ok(Julia {
        path: opts.julia.clone(),
        version: facts.version.clone(),
        files,
    })
}

/// Handles one line of a julia's stdout; may report progress.
type LineHandler<'a> = dyn FnMut(&str, &mut dyn FnMut(&str)) + 'a;

/// Runs `command`, passing each stdout line to `line` and saying every 30 s
/// that it still runs; stderr goes to `log`. Fails with the log's tail.
fn run_streaming(
    step: &'static str,
    mut command: Command,
    log: &Path,
    progress: &mut dyn FnMut(&str),
    line: &mut LineHandler,
) -> Result<(), BuildError> {
    let err = std::fs::File::create(log).map_err(|e| fail(step)(e.to_string()))?;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| fail(step)(e.to_string()))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut last = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                line(&l, progress);
                last = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if last.elapsed() >= Duration::from_secs(30) {
                    progress(&format!(
                        "… still {step} ({} s)",
                        started.elapsed().as_secs()
                    ));
                    last = Instant::now();
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = reader.join();
    let status = child.wait().map_err(|e| fail(step)(e.to_string()))?;
    if !status.success() {
        return Err(fail(step)(format!(
            "julia failed ({status}):\n{}",
            trace::tail(log, 40)
        )));
    }
    Ok(())
}

/// Steps 3a-3c: Base's sources copied and cut down, the compiler, then Base
/// with the wanted standard libraries (a .ji: the compile step makes the
/// native code for all of it).
pub(super) fn minimal_base(
    opts: &BuildOptions,
    facts: &Facts,
    scripts: &Path,
    work: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, BuildError> {
    if facts.base_sources.is_none() {
        return Err(fail("base")(format!(
            "julia {} came without Base's sources; use --base julia",
            facts.version
        )));
    }
    let stdlibs = base_stdlibs(opts);
    progress(&format!(
        "preparing Base's sources with the standard libraries {}",
        stdlibs.join(", ")
    ));
    let sysimg = prepare_base_sources(opts, scripts, work, &stdlibs)?;
    let base_dir = sysimg.parent().unwrap_or(work).to_owned();
    let corecompiler = work.join("corecompiler.ji");
    let sys_ji = work.join("sys.ji");
    let target = format!("--cpu-target={}", opts.cpu_target);

    progress("compiling the compiler (corecompiler.ji; Julia's own build step)");
    let mut cmd = plain_julia_command(opts);
    cmd.current_dir(&base_dir)
        .arg(&target)
        .args(["-g0", "-O0", "--output-ji"])
        .arg(&corecompiler)
        .arg("compiler/compiler.jl");
    run_streaming(
        "compiling the compiler",
        cmd,
        &work.join("corecompiler.log"),
        progress,
        &mut |_, _| {},
    )?;

    progress("compiling Base and the standard libraries (sys.ji; a few minutes)");
    let mut cmd = plain_julia_command(opts);
    cmd.current_dir(&base_dir)
        .arg(&target)
        .args(["-g1", "-O0", "-J"])
        .arg(&corecompiler)
        .arg("--output-ji")
        .arg(&sys_ji)
        .arg(&sysimg);
    run_streaming(
        "compiling Base",
        cmd,
        &work.join("base.log"),
        progress,
        &mut |l, p| {
            // Base.jl names each file it includes (too many to pass on);
            // sysimg.jl prints a line per standard library and a summary.
            let l = l.trim();
            if !l.is_empty() && !l.ends_with(".jl") {
                p(&format!("base: {l}"));
            }
        },
    )?;
    let _ = std::fs::remove_dir_all(work.join("base"));
    Ok(sys_ji)
}

/// [`MINIMAL_STDLIBS`] and those the operator adds, in that order, once each.
fn base_stdlibs(opts: &BuildOptions) -> Vec<String> {
    let mut stdlibs: Vec<String> = MINIMAL_STDLIBS.iter().map(|s| (*s).to_owned()).collect();
    for s in &opts.stdlibs {
        if !stdlibs.contains(s) {
            stdlibs.push(s.clone());
        }
    }
    stdlibs
}

/// Step 3a (`julia/build/base.jl`): Base's sources copied into `work` with
/// only `stdlibs`; returns the copy's sysimg.jl.
fn prepare_base_sources(
    opts: &BuildOptions,
    scripts: &Path,
    work: &Path,
    stdlibs: &[String],
) -> Result<PathBuf, BuildError> {
    let out = plain_julia_command(opts)
        .arg(scripts.join("base.jl"))
        .arg(work)
        .arg(stdlibs.join(","))
        .output()
        .map_err(|e| fail("base")(e.to_string()))?;
    if !out.status.success() {
        return Err(fail("base")(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Step 4: build.jl with `--output-o` on `base`.
pub(super) fn compile(
    opts: &BuildOptions,
    worker_dir: &Path,
    scripts: &Path,
    base: &Path,
    statements: &[PathBuf],
    object: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Contents, BuildError> {
    let joined = std::env::join_paths(statements)
        .map_err(|e| fail("compile")(format!("statement file names: {e}")))?;
    let mut cmd = julia_command(opts);
    cmd.current_dir(object.parent().unwrap_or(Path::new("/")))
        .arg(format!("--cpu-target={}", opts.cpu_target))
        .arg("--compiled-modules=no")
        .arg("-J")
        .arg(base)
        .arg("--output-o")
        .arg(object)
        .arg(scripts.join("build.jl"))
        .env("JULIA_FCGI_SYSIMAGE_WORKER", worker_dir)
        .env("JULIA_FCGI_SYSIMAGE_PACKAGES", opts.packages.join(","))
        .env("JULIA_FCGI_SYSIMAGE_STATEMENTS", joined);
    progress(&format!(
        "compiling the image on {} (worker{})",
        base.display(),
        if opts.packages.is_empty() {
            String::new()
        } else {
            format!(", packages {}", opts.packages.join(", "))
        }
    ));
    let mut contents = Contents::default();
    let log = object.with_extension("log");
    run_streaming("compiling the image", cmd, &log, progress, &mut |l, p| {
        contents.take(l, p)
    })?;
    if !object.is_file() {
        return Err(fail("compile")(format!(
            "julia wrote no {}",
            object.display()
        )));
    }
    Ok(contents)
}

impl Contents {
    /// One line of build.jl's report (tab-separated fields); other lines
    /// are passed on as progress.
    fn take(&mut self, line: &str, progress: &mut dyn FnMut(&str)) {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["progress", text] => progress(text),
            ["package", name, uuid, dir] => self.loaded.push(Package {
                name: (*name).to_owned(),
                uuid: (*uuid).to_owned(),
                dir: PathBuf::from(dir),
            }),
            ["stdlib", name] => self.stdlibs.push((*name).to_owned()),
            ["file", path] => self.files.push(PathBuf::from(path)),
            ["statements", ok, failed, rejected] => {
                self.statements = Some(Statements {
                    ok: ok.parse().unwrap_or(0),
                    failed: failed.parse().unwrap_or(0),
                    rejected: rejected.parse().unwrap_or(0),
                })
            }
            _ if !line.trim().is_empty() => progress(&format!("julia: {line}")),
            _ => {}
        }
    }
}
