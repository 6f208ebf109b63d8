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

//!
//! This file runs the steps in order and installs the result; running julia
//! (probe, base, compile) is in [`julia`], the C compiler in [`link`].

mod julia;
mod link;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::julia::Contents;
use super::metadata::{self, Cpu, FileHash, FileStamp, Julia, Metadata, Sources, Statements};
use super::trace::{self, Scratch, WorkerRun};
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

    pub(super) fn name(self) -> &'static str {
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

pub(super) fn fail(step: &'static str) -> impl Fn(String) -> BuildError {
    move |why| BuildError::Step { step, why }
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
    let facts = julia::probe(opts, scripts)?;
    let sources =
        metadata::worker_sources(worker_dir).map_err(|e| fail("worker")(e.to_string()))?;
    let identity = julia::identity(opts, &facts)?;
    progress(&format!(
        "checking that {} links against libjulia",
        opts.cc.display()
    ));
    link::check_linker(opts, &facts, work)?;

    let (traced, statement_files) = trace_step(opts, work, progress)?;
    let (linked, contents) = native_step(
        opts,
        &facts,
        worker_dir,
        scripts,
        work,
        &statement_files,
        progress,
    )?;
    let checked = check_step(opts, &linked, work, progress)?;
    let now = metadata::worker_sources(worker_dir).map_err(|e| fail("worker")(e.to_string()))?;
    if let Some(why) = metadata::sources_differ(&sources, &now) {
        return Err(fail("worker")(format!(
            "changed during the build ({why}); build again"
        )));
    }
    progress(&format!("installing {}", opts.output.display()));
    let made = Made {
        julia: identity,
        sources,
        contents,
        build_seconds: t0.elapsed().as_secs_f64(),
    };
    let metadata = install_step(opts, &linked, &statement_files, made)?;
    Ok(Built {
        image: Image {
            path: opts.output.clone(),
            metadata,
        },
        source_ready: traced.ready_after,
        image_ready: checked.ready_after,
    })
}

/// Step 2: a worker from source records what it compiles; its statements,
/// the last build's and the operator's traces are the ones compiled in.
fn trace_step(
    opts: &BuildOptions,
    work: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(WorkerRun, Vec<PathBuf>), BuildError> {
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
    Ok((traced, statement_files))
}

/// Steps 3-5: the base (julia's own image, or a minimal one built now), the
/// native code of the worker, packages and statements on it, linked into
/// `work`/sysimage.so.
fn native_step(
    opts: &BuildOptions,
    facts: &julia::Facts,
    worker_dir: &Path,
    scripts: &Path,
    work: &Path,
    statement_files: &[PathBuf],
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, Contents), BuildError> {
    let base_image = match opts.base {
        Base::Julia => facts.image.clone(),
        Base::Minimal => julia::minimal_base(opts, facts, scripts, work, progress)?,
    };
    let object = work.join("sysimage.o");
    let contents = julia::compile(
        opts,
        worker_dir,
        scripts,
        &base_image,
        statement_files,
        &object,
        progress,
    )?;
    if let Some(s) = &contents.statements {
        progress(&format!(
            "precompile statements: {} compiled, {} not compilable here, {} rejected",
            s.ok, s.failed, s.rejected
        ));
    }

    progress(&format!("linking with {}", opts.cc.display()));
    let linked = work.join("sysimage.so");
    link::link(opts, facts, &object, &linked)?;
    let _ = std::fs::remove_file(&object);

    Ok((linked, contents))
}

/// Step 6: a worker on the linked image must become ready and serve.
fn check_step(
    opts: &BuildOptions,
    linked: &Path,
    work: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<WorkerRun, BuildError> {
    progress("checking that a worker starts on the new image and serves");
    let checked = trace::run_worker(
        &opts.julia,
        &[
            "-J".into(),
            linked.to_owned().into_os_string(),
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
    Ok(checked)
}

/// What the build made and found, for the metadata.
struct Made {
    julia: Julia,
    sources: Sources,
    contents: Contents,
    build_seconds: f64,
}

/// Step 7: image and statements into place, then the metadata that
/// describes them.
fn install_step(
    opts: &BuildOptions,
    linked: &Path,
    statement_files: &[PathBuf],
    made: Made,
) -> Result<Metadata, BuildError> {
    let package_files = made
        .contents
        .files
        .iter()
        .map(|f| FileHash::of(f, f))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| fail("packages")(e.to_string()))?;
    let mut stdlibs = made.contents.stdlibs.clone();
    stdlibs.sort();
    stdlibs.dedup();
    install(linked, &opts.output).map_err(fail("install"))?;
    merge_statements(statement_files, &statements_path(&opts.output)).map_err(fail("install"))?;
    let image = FileStamp::of(&opts.output).map_err(|e| fail("install")(e.to_string()))?;
    let meta = Metadata {
        format: metadata::FORMAT,
        built_by: env!("CARGO_PKG_VERSION").to_owned(),
        built_at: unix_now(),
        build_seconds: made.build_seconds,
        julia: made.julia,
        cpu: Cpu {
            target: opts.cpu_target.clone(),
            host: metadata::host_cpu(),
        },
        base: opts.base.name().to_owned(),
        stdlibs,
        worker: made.sources,
        packages: opts.packages.clone(),
        loaded: made.contents.loaded,
        project: metadata::env_value(&opts.env, "JULIA_PROJECT"),
        load_path: metadata::env_value(&opts.env, "JULIA_LOAD_PATH"),
        package_files,
        statements: made.contents.statements.unwrap_or(Statements {
            ok: 0,
            failed: 0,
            rejected: 0,
        }),
        image,
    };
    meta.write(&super::metadata_path(&opts.output))
        .map_err(|e| fail("install")(e.to_string()))?;
    Ok(meta)
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
