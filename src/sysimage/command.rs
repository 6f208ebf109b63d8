//! `julia-fcgi sysimage build` and `julia-fcgi sysimage status`: what they
//! do for one pool, given its resolved settings. `main.rs` only turns the
//! command line into a [`BuildRequest`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::config::Config;
use super::{build, default_path, Base, BuildError, BuildOptions, Image, Inputs, Setting};

/// The pool an image is for.
#[derive(Debug, Clone)]
pub struct Pool<'a> {
    pub julia: &'a Path,
    pub worker_file: &'a Path,
    /// The workers' environment (`WorkerContract::env`).
    pub env: Vec<(OsString, OsString)>,
    pub config: &'a Config,
    /// How long a worker may take to become ready during the build.
    pub start_timeout: Duration,
}

/// `julia-fcgi sysimage build`'s options; what is not given comes from the
/// config.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// Where the image goes [default: the `sysimage` path, else
    /// [`default_path`]].
    pub output: Option<PathBuf>,
    pub base: Option<Base>,
    /// More statement files or trace directories (besides `sysimage_trace`).
    pub traces: Vec<PathBuf>,
    pub cpu_target: Option<String>,
    /// The C compiler that links the image [default: `cc`].
    pub cc: Option<PathBuf>,
    /// Build only when the image there does not fit the pool.
    pub if_stale: bool,
    pub keep_work_dir: bool,
}

impl Pool<'_> {
    fn inputs(&self) -> Inputs {
        Inputs::new(
            self.julia,
            self.worker_file,
            &self.config.packages,
            &self.env,
        )
    }

    /// The image the pool would look at.
    pub fn image_path(&self, output: Option<&Path>) -> PathBuf {
        match (output, &self.config.setting) {
            (Some(path), _) => path.to_owned(),
            (None, Setting::Path(path)) => path.clone(),
            (None, _) => default_path(self.worker_file),
        }
    }
}

/// Builds (unless `if_stale` and the image fits), printing progress on
/// stderr. `Ok(false)`: the image was up to date.
pub fn build_command(pool: &Pool, request: &BuildRequest) -> Result<bool, BuildError> {
    if pool.config.setting == Setting::Off && request.output.is_none() {
        eprintln!("sysimage build: sysimage = \"off\" in the config; nothing to build");
        return Ok(false);
    }
    let output = pool.image_path(request.output.as_deref());
    if request.if_stale {
        match Image::check(&output, &pool.inputs()) {
            Ok(image) => {
                eprintln!("sysimage build: {} is up to date", image.path.display());
                return Ok(false);
            }
            Err(refusal) if super::metadata_path(&output).exists() => {
                eprintln!("sysimage build: rebuilding, {}", refusal.why);
            }
            Err(_) => {}
        }
    }
    let mut traces = request.traces.clone();
    if let Some(dir) = &pool.config.trace_dir {
        if dir.is_dir() {
            traces.push(dir.clone());
        }
    }
    let mut opts = BuildOptions::new(pool.julia, pool.worker_file, pool.env.clone(), &output);
    opts.packages = pool.config.packages.clone();
    opts.base = request.base.unwrap_or(pool.config.base);
    opts.traces = traces;
    if let Some(target) = &request.cpu_target {
        opts.cpu_target = target.clone();
    }
    if let Some(cc) = &request.cc {
        opts.cc = cc.clone();
    }
    opts.keep_work_dir = request.keep_work_dir;
    // The build's workers start with --compiled-modules=no and, under the
    // packages, at low priority while the service starts too: on a slow
    // machine that takes many times a normal start (measured in the VM, an
    // emulated CPU: over 300 s). A worker that never gets ready still ends
    // the build, only later.
    opts.start_timeout = (pool.start_timeout * 4).max(Duration::from_secs(1800));
    let t0 = Instant::now();
    let built = build(&opts, &mut |line| {
        eprintln!(
            "sysimage build [{:6.1} s] {line}",
            t0.elapsed().as_secs_f64()
        );
    })?;
    let m = &built.image.metadata;
    let size = std::fs::metadata(&built.image.path).map_or(0, |m| m.len());
    eprintln!(
        "sysimage build: {} ({:.0} MB, {} base) built in {:.0} s; a worker is ready in \
         {:.2} s on it, {:.2} s from source",
        built.image.path.display(),
        size as f64 / 1e6,
        m.base,
        m.build_seconds,
        built.image_ready.as_secs_f64(),
        built.source_ready.as_secs_f64(),
    );
    Ok(true)
}

/// Says whether the pool uses its image; `true` when it does.
pub fn status_command(pool: &Pool) -> bool {
    let inputs = pool.inputs();
    if pool.config.setting == Setting::Off {
        println!("pool sysimage: off (sysimage = \"off\"); workers start from source");
        return false;
    }
    let path = pool.image_path(None);
    match Image::check(&path, &inputs) {
        Ok(image) => {
            println!("{}", image.describe());
            true
        }
        Err(_) if !super::metadata_path(&path).exists() => {
            println!(
                "pool sysimage: none at {}; workers start from source (`julia-fcgi sysimage \
                 build` makes one)",
                path.display()
            );
            false
        }
        Err(refusal) => {
            println!("{refusal}");
            false
        }
    }
}
