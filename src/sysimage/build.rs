//! Building a pool sysimage with plain julia and the C compiler.
//!
//! Steps, each announced through the progress callback:
//!
//! 1. *probe* julia (`julia/build/probe.jl`): version, its own system
//!    image, the libjulia it runs on, where Base's sources are;
//! 2. *trace*: a real worker from source with `--trace-compile`, warmed up
//!    and sent real requests, records what serving compiles;
//! 3. *base* (`--base minimal` only): Base and the few standard libraries
//!    named, compiled from Base's sources (`julia/build/base.jl`) the way
//!    Julia's own build does, so that the image holds no REPL, Pkg, … that
//!    every worker would otherwise map and dirty;
//! 4. *compile*: `julia --output-o` on that base runs `julia/build/build.jl`
//!    (worker, packages, the statements) and writes native code;
//! 5. *link* with `cc -shared`;
//! 6. *check*: a worker on the new image must become ready and serve;
//! 7. *install*: image, statements and metadata renamed into place, the
//!    metadata last, so that a reader never pairs new metadata with an old
//!    image (and running workers keep the file they mapped).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::metadata::{self, Cpu, FileHash, FileStamp, Julia, Metadata, Package, Statements};
use super::trace::{self, Scratch};
use super::{statements_path, Image};

/// What the image is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Base {
    /// julia's own system image, with every standard library it has: a
    /// worker behaves exactly as from source; quick to build.
    #[default]
    Julia,
    /// Base and [`MINIMAL_STDLIBS`] (plus those asked for) only, compiled
    /// from Base's sources: less memory per worker, a longer build.
    Minimal,
}

impl Base {
    pub fn parse(text: &str) -> Result<Base, String> {
        match text {
            "julia" => Ok(Base::Julia),
            "minimal" => Ok(Base::Minimal),
            other => Err(format!("{other:?}: expected \"julia\" or \"minimal\"")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Base::Julia => "julia",
            Base::Minimal => "minimal",
        }
    }
}

/// The standard libraries a minimal base always holds: those whose methods
/// a plain `julia page.jl` can call without `using` them (`rand`, matrix
/// products, the console logger), so that pages behave as from source.
pub const MINIMAL_STDLIBS: &[&str] = &["Logging", "Random", "LinearAlgebra"];

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The pool's julia and worker file.
    pub julia: PathBuf,
    pub worker_file: PathBuf,
    /// The workers' environment (`WorkerContract::env`): the project, the
    /// depot and the load path packages are found with.
    pub env: Vec<(OsString, OsString)>,
    /// `sysimage_packages`, loaded into the image in this order.
    pub packages: Vec<String>,
    /// Where the image goes (its metadata and statements beside it).
    pub output: PathBuf,
    pub base: Base,
    /// More standard libraries for a minimal base.
    pub stdlibs: Vec<String>,
    /// More precompile statements: files, or directories of `*.jl` files
    /// (workers' `--trace-compile` output from real traffic).
    pub traces: Vec<PathBuf>,
    /// Julia's `--cpu-target`; `native` (the default) runs on this CPU only.
    pub cpu_target: String,
    /// The C compiler that links the image (`cc` on PATH by default).
    pub cc: PathBuf,
    /// How long a worker may take to become ready (trace and check).
    pub start_timeout: Duration,
    /// Leave the work directory (objects, logs) for a look afterwards.
    pub keep_work_dir: bool,
}

impl BuildOptions {
    /// The defaults for a pool: worker only, julia's own base, native.
    pub fn new(
        julia: &Path,
        worker_file: &Path,
        env: Vec<(OsString, OsString)>,
        output: &Path,
    ) -> Self {
        BuildOptions {
            julia: julia.to_owned(),
            worker_file: worker_file.to_owned(),
            env,
            packages: Vec::new(),
            output: output.to_owned(),
            base: Base::Julia,
            stdlibs: Vec::new(),
            traces: Vec::new(),
            cpu_target: String::from("native"),
            cc: PathBuf::from("cc"),
            start_timeout: Duration::from_secs(600),
            keep_work_dir: false,
        }
    }
}

/// A finished build.
#[derive(Debug)]
pub struct Built {
    pub image: Image,
    /// spawn → READY of the traced worker (from source) and of the check
    /// (on the image), on this machine, in this build.
    pub source_ready: Duration,
    pub image_ready: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{step}: {why}")]
    Step { step: &'static str, why: String },
}

fn fail(step: &'static str) -> impl Fn(String) -> BuildError {
    move |why| BuildError::Step { step, why }
}

/// What probe.jl reported.
#[derive(Debug, Default)]
struct Facts {
    version: String,
    image: PathBuf,
    libraries: Vec<PathBuf>,
    base_sources: Option<PathBuf>,
}

/// What build.jl reported.
#[derive(Debug, Default)]
struct Contents {
    loaded: Vec<Package>,
    stdlibs: Vec<String>,
    files: Vec<PathBuf>,
    statements: Option<Statements>,
}

/// Builds the image `opts` describe. `progress` hears what is going on, a
/// line at a time (and every 30 s during the long steps).
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Built, BuildError> {
    let t0 = Instant::now();
    // Workers run in /: the worker file by its absolute path.
    let mut opts = opts.clone();
    opts.worker_file = std::fs::canonicalize(&opts.worker_file)
        .map_err(|e| fail("worker")(format!("{}: {e}", opts.worker_file.display())))?;
    let opts = &opts;
    let worker_dir = opts
        .worker_file
        .parent()
        .unwrap_or(Path::new("/"))
        .to_owned();
    let scripts = worker_dir.join("build");
    let parent = opts.output.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| fail("output")(format!("{}: {e}", parent.display())))?;
    }
    remove_abandoned_work(parent);
    let work = Scratch(parent.join(format!(".sysimage-build-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    std::fs::create_dir_all(&work.0)
        .map_err(|e| fail("output")(format!("{}: {e}", work.0.display())))?;
    let result = build_in(opts, &worker_dir, &scripts, &work.0, t0, progress);
    if opts.keep_work_dir || result.is_err() && std::env::var_os("JULIA_FCGI_KEEP_BUILD").is_some()
    {
        progress(&format!("work directory kept: {}", work.0.display()));
        std::mem::forget(work);
    }
    result
}

/// Work directories of builds that were killed (a stopped background build):
/// theirs is a pid that no longer runs.
fn remove_abandoned_work(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".sysimage-build-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn build_in(
    opts: &BuildOptions,
    worker_dir: &Path,
    scripts: &Path,
    work: &Path,
    t0: Instant,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, BuildError> {
    progress(&format!("probing {}", opts.julia.display()));
    let facts = probe(opts, scripts)?;
    let sources =
        metadata::worker_sources(worker_dir).map_err(|e| fail("worker")(e.to_string()))?;
    let julia = julia_identity(opts, &facts)?;
    progress(&format!(
        "checking that {} links against libjulia",
        opts.cc.display()
    ));
    check_linker(opts, &facts, work)?;

    progress("recording what a worker compiles while it warms up and serves (--trace-compile)");
    let trace_file = work.join("worker-trace.jl");
    let mut trace_arg = OsString::from("--trace-compile=");
    trace_arg.push(&trace_file);
    let traced = trace::run_worker(
        &opts.julia,
        &[trace_arg, "--compiled-modules=no".into()],
        &opts.worker_file,
        &opts.env,
        &work.join("trace"),
        opts.start_timeout,
        &mut |what| progress(&format!("worker: {what}")),
    )
    .map_err(fail("trace"))?;
    progress(&format!(
        "a worker from source was ready in {:.2} s",
        traced.ready_after.as_secs_f64()
    ));
    let mut statement_files = vec![trace_file];
    statement_files.extend(existing(&statements_path(&opts.output)));
    statement_files.extend(trace_files(&opts.traces).map_err(fail("traces"))?);

    let base_image = match opts.base {
        Base::Julia => facts.image.clone(),
        Base::Minimal => minimal_base(opts, &facts, scripts, work, progress)?,
    };

    let object = work.join("sysimage.o");
    let contents = compile(
        opts,
        worker_dir,
        scripts,
        &base_image,
        &statement_files,
        &object,
        progress,
    )?;
    if let Some(s) = contents.statements {
        progress(&format!(
            "precompile statements: {} compiled, {} not compilable here, {} rejected",
            s.ok, s.failed, s.rejected
        ));
    }

    progress(&format!("linking with {}", opts.cc.display()));
    let linked = work.join("sysimage.so");
    link(opts, &facts, &object, &linked)?;
    let _ = std::fs::remove_file(&object);

    progress("checking that a worker starts on the new image and serves");
    let checked = trace::run_worker(
        &opts.julia,
        &[
            "-J".into(),
            linked.clone().into_os_string(),
            "--compiled-modules=no".into(),
        ],
        &opts.worker_file,
        &opts.env,
        &work.join("check"),
        opts.start_timeout,
        &mut |what| progress(&format!("worker: {what}")),
    )
    .map_err(fail("check"))?;
    progress(&format!(
        "a worker on the image was ready in {:.2} s",
        checked.ready_after.as_secs_f64()
    ));

    let now = metadata::worker_sources(worker_dir).map_err(|e| fail("worker")(e.to_string()))?;
    if let Some(why) = metadata::sources_differ(&sources, &now) {
        return Err(fail("worker")(format!(
            "changed during the build ({why}); build again"
        )));
    }
    let package_files = contents
        .files
        .iter()
        .map(|f| FileHash::of(f, f))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| fail("packages")(e.to_string()))?;
    let mut stdlibs = contents.stdlibs.clone();
    stdlibs.sort();
    stdlibs.dedup();

    progress(&format!("installing {}", opts.output.display()));
    install(&linked, &opts.output).map_err(fail("install"))?;
    merge_statements(&statement_files, &statements_path(&opts.output)).map_err(fail("install"))?;
    let image = FileStamp::of(&opts.output).map_err(|e| fail("install")(e.to_string()))?;
    let meta = Metadata {
        format: metadata::FORMAT,
        built_by: env!("CARGO_PKG_VERSION").to_owned(),
        built_at: unix_now(),
        build_seconds: t0.elapsed().as_secs_f64(),
        julia,
        cpu: Cpu {
            target: opts.cpu_target.clone(),
            host: metadata::host_cpu(),
        },
        base: opts.base.name().to_owned(),
        stdlibs,
        worker: sources,
        packages: opts.packages.clone(),
        loaded: contents.loaded,
        project: metadata::env_value(&opts.env, "JULIA_PROJECT"),
        load_path: metadata::env_value(&opts.env, "JULIA_LOAD_PATH"),
        package_files,
        statements: contents.statements.unwrap_or(Statements {
            ok: 0,
            failed: 0,
            rejected: 0,
        }),
        image,
    };
    meta.write(&super::metadata_path(&opts.output))
        .map_err(|e| fail("install")(e.to_string()))?;
    Ok(Built {
        image: Image {
            path: opts.output.clone(),
            metadata: meta,
        },
        source_ready: traced.ready_after,
        image_ready: checked.ready_after,
    })
}

fn julia_command(opts: &BuildOptions) -> Command {
    let mut command = Command::new(&opts.julia);
    command
        .args(["--startup-file=no", "--history-file=no", "--color=no"])
        .env_clear()
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    command
}

fn probe(opts: &BuildOptions, scripts: &Path) -> Result<Facts, BuildError> {
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
fn julia_identity(opts: &BuildOptions, facts: &Facts) -> Result<Julia, BuildError> {
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

fn existing(path: &Path) -> Option<PathBuf> {
    path.is_file().then(|| path.to_owned())
}

/// The statement files among `traces`: files as they are, directories'
/// `*.jl` files, sorted.
fn trace_files(traces: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in traces {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jl") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(format!("{}: no such file or directory", path.display()));
        }
    }
    Ok(files)
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
fn minimal_base(
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
    let mut stdlibs: Vec<String> = MINIMAL_STDLIBS.iter().map(|s| (*s).to_owned()).collect();
    for s in &opts.stdlibs {
        if !stdlibs.contains(s) {
            stdlibs.push(s.clone());
        }
    }
    progress(&format!(
        "preparing Base's sources with the standard libraries {}",
        stdlibs.join(", ")
    ));
    // Julia's own build runs with a clean environment: no project, no depot.
    let plain = |cmd: &mut Command| {
        cmd.env_remove("JULIA_PROJECT")
            .env_remove("JULIA_LOAD_PATH")
            .env_remove("JULIA_DEPOT_PATH");
    };
    let mut prepare = julia_command(opts);
    plain(&mut prepare);
    let out = prepare
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
    let sysimg = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let base_dir = sysimg.parent().unwrap_or(work).to_owned();
    let corecompiler = work.join("corecompiler.ji");
    let sys_ji = work.join("sys.ji");
    let target = format!("--cpu-target={}", opts.cpu_target);

    progress("compiling the compiler (corecompiler.ji; Julia's own build step)");
    let mut cmd = julia_command(opts);
    plain(&mut cmd);
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
    let mut cmd = julia_command(opts);
    plain(&mut cmd);
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

/// Step 4: build.jl with `--output-o` on `base`.
fn compile(
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
        let fields: Vec<&str> = l.split('\t').collect();
        match fields.as_slice() {
            ["progress", text] => p(text),
            ["package", name, uuid, dir] => contents.loaded.push(Package {
                name: (*name).to_owned(),
                uuid: (*uuid).to_owned(),
                dir: PathBuf::from(dir),
            }),
            ["stdlib", name] => contents.stdlibs.push((*name).to_owned()),
            ["file", path] => contents.files.push(PathBuf::from(path)),
            ["statements", ok, failed, rejected] => {
                contents.statements = Some(Statements {
                    ok: ok.parse().unwrap_or(0),
                    failed: failed.parse().unwrap_or(0),
                    rejected: rejected.parse().unwrap_or(0),
                })
            }
            _ if !l.trim().is_empty() => p(&format!("julia: {l}")),
            _ => {}
        }
    })?;
    if !object.is_file() {
        return Err(fail("compile")(format!(
            "julia wrote no {}",
            object.display()
        )));
    }
    Ok(contents)
}

/// Step 5. `--whole-archive`: every symbol of the object stays, as julia
/// looks its tables up by name at start-up.
fn link(opts: &BuildOptions, facts: &Facts, object: &Path, out: &Path) -> Result<(), BuildError> {
    let mut cc = Command::new(&opts.cc);
    cc.arg("-Wl,--whole-archive")
        .arg(object)
        .arg("-Wl,--no-whole-archive");
    run_linker(facts, cc, out).map_err(|e| fail("link")(e.describe(&opts.cc)))
}

/// Before anything is compiled (which takes minutes, an hour on a slow
/// CPU): the C compiler links an empty shared object against libjulia, so
/// that a machine without one (a minimal server: the package only
/// recommends gcc) hears it at once and what to do.
fn check_linker(opts: &BuildOptions, facts: &Facts, work: &Path) -> Result<(), BuildError> {
    let mut cc = Command::new(&opts.cc);
    // An empty C file; `-x none` so that julia's libraries after it are
    // linked, not compiled.
    cc.args(["-x", "c", "/dev/null", "-x", "none"]);
    run_linker(facts, cc, &work.join("link-check.so")).map_err(|e| {
        let why = match e {
            LinkError::Failed(_) => format!(
                "{} cannot link an empty shared object against libjulia, so it could not link \
                 the image either (a compiler without the C library's development files? \
                 Debian, Ubuntu: apt install libc6-dev; Fedora, RHEL: dnf install glibc-devel): \
                 {}",
                opts.cc.display(),
                e.describe(&opts.cc)
            ),
            e => e.describe(&opts.cc),
        };
        fail("link")(why)
    })
}

/// How running the C compiler went wrong.
enum LinkError {
    NotInstalled,
    CannotRun(std::io::Error),
    /// Its exit status and the end of its complaint.
    Failed(String),
}

impl LinkError {
    fn describe(&self, cc: &Path) -> String {
        match self {
            LinkError::NotInstalled => format!(
                "no C compiler to link the image: `{}` is not installed. Install gcc (Debian, \
                 Ubuntu: apt install gcc; Fedora, RHEL: dnf install gcc) or name another one \
                 with --cc",
                cc.display()
            ),
            LinkError::CannotRun(e) => format!("cannot run {}: {e}", cc.display()),
            LinkError::Failed(why) => format!("{} {why}", cc.display()),
        }
    }
}

/// `cc` (with its inputs already given) `-shared -o out` against julia's
/// libraries.
fn run_linker(facts: &Facts, mut cc: Command, out: &Path) -> Result<(), LinkError> {
    let output = cc
        .arg("-shared")
        .arg("-o")
        .arg(out)
        .args(&facts.libraries)
        .arg("-Wl,-z,noexecstack")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LinkError::NotInstalled,
            _ => LinkError::CannotRun(e),
        })?;
    if !output.status.success() {
        return Err(LinkError::Failed(format!(
            "({}): {}",
            output.status,
            last_lines(&String::from_utf8_lossy(&output.stderr), 20)
        )));
    }
    Ok(())
}

/// Renames the linked image into place; across file systems, copies it next
/// to the target first so that the rename itself stays atomic.
fn install(linked: &Path, output: &Path) -> Result<(), String> {
    // On disk before it is in place: after a crash the name holds the old
    // image or the whole new one. (Dirty page-cache pages of a fresh file
    // also count as a worker's Private_Dirty until written back.)
    // Readable by the service user whatever the builder's umask; written
    // by root only (the maintainer scripts build as root).
    std::fs::set_permissions(linked, std::fs::Permissions::from_mode(0o644))
        .and_then(|()| std::fs::File::open(linked)?.sync_all())
        .map_err(|e| format!("{}: {e}", linked.display()))?;
    if std::fs::rename(linked, output).is_ok() {
        return Ok(());
    }
    let tmp = output.with_extension("so.tmp");
    std::fs::copy(linked, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, output).map_err(|e| format!("{}: {e}", output.display()))
}

/// The statements of every file, once each, for the next build.
fn merge_statements(files: &[PathBuf], out: &Path) -> Result<(), String> {
    let mut all = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        all.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| l.starts_with("precompile("))
                .map(str::to_owned),
        );
    }
    let tmp = out.with_extension("jl.tmp");
    let mut text = String::from(
        "# Precompile statements of this pool sysimage's builds (julia-fcgi sysimage build \
         replays them; the next build keeps them).\n",
    );
    for l in &all {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

/// The end of a tool's complaint: the first error and its context are
/// usually there, and a linker fed the wrong file prints megabytes.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = lines[skip..].join("\n");
    if skip > 0 {
        out.insert_str(0, &format!("({skip} lines before) …\n"));
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
