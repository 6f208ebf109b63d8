//! The pool sysimage: a Julia system image holding the worker (and the
//! pool's listed packages) compiled ahead, so that a worker starts in a
//! fraction of a second instead of compiling itself for seconds, and every
//! worker maps that code read-only from one file.
//!
//! # Theory of operation
//!
//! [`build`] makes one with nothing but julia and the C compiler (no
//! PackageCompiler, no package server): it records what a worker compiles
//! while it warms up and serves (`--trace-compile`), has julia load the
//! worker's modules and the packages and replay those statements with
//! `--output-o` (`julia/build/build.jl`), links the object with `cc`,
//! starts a worker on the result to see it serve, and only then puts image
//! and metadata in place (renamed, so running workers keep their mapping of
//! the old file). A failed build leaves the previous image alone.
//!
//! [`Image::discover`] decides, at every start and reload, whether the pool
//! uses an image: the metadata ([`metadata`]) says which julia (path,
//! version, files), which CPU, which worker sources and which packages it
//! was built from; anything different is a [`Refusal`], one log line saying
//! why, and the workers start from source as they always could. Nothing is
//! ever built behind the operator's back: `julia-fcgi sysimage build`, the
//! packages' maintainer scripts and `make sysimage` do that.
//!
//! A worker started with [`Image::julia_args`] finds its modules in `Main`
//! already (`julia/worker.jl`) and runs the same code as from source.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

mod build;
mod client;
pub mod command;
mod config;
pub mod metadata;
pub mod sha256;
mod trace;

pub use build::{build, Base, BuildError, BuildOptions, Built, MINIMAL_STDLIBS};
pub use config::Config;
pub use metadata::Metadata;
pub use trace::{run_worker, WorkerRun};

/// Where the packages keep the image (the maintainer scripts build it
/// there, as root: the service user may read it, never write it).
pub const INSTALLED_DIR: &str = "/var/cache/julia-fcgi";
/// The image's file name; the metadata is the same name with `.json`.
pub const IMAGE_FILE: &str = "sysimage.so";

/// The `sysimage` setting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Setting {
    /// The image `julia-fcgi sysimage build` makes by default for this
    /// worker ([`default_path`]), when there is a valid one.
    #[default]
    Auto,
    /// Always start workers from source.
    Off,
    /// This image (refused like any other when it does not fit).
    Path(PathBuf),
}

impl Setting {
    pub fn parse(text: &str) -> Result<Setting, String> {
        match text {
            "auto" => Ok(Setting::Auto),
            "off" => Ok(Setting::Off),
            path if Path::new(path).is_absolute() => Ok(Setting::Path(PathBuf::from(path))),
            other => Err(format!(
                "{other:?}: expected \"auto\", \"off\" or the absolute path of an image"
            )),
        }
    }
}

/// The metadata file of the image at `image`.
pub fn metadata_path(image: &Path) -> PathBuf {
    image.with_extension("json")
}

/// The file of precompile statements kept with the image at `image`: what
/// its builds replayed, merged, so that a rebuild keeps what traffic taught.
pub fn statements_path(image: &Path) -> PathBuf {
    image.with_extension("precompile.jl")
}

/// Where `sysimage = "auto"` looks and `julia-fcgi sysimage build` writes
/// by default: [`INSTALLED_DIR`] for the installed worker; next to the
/// build tree (`target/sysimage/`) for a worker run from a source tree by a
/// binary in `target/*/`, as the default worker file is found there.
pub fn default_path(worker_file: &Path) -> PathBuf {
    let installed = PathBuf::from(INSTALLED_DIR).join(IMAGE_FILE);
    let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    else {
        return installed;
    };
    let worker_dir = canonical(worker_file.parent().unwrap_or(Path::new("/")));
    if worker_dir == canonical(&exe_dir.join("../../julia")) {
        return canonical(&exe_dir.join(".."))
            .join("sysimage")
            .join(IMAGE_FILE);
    }
    installed
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// What an image must have been built from to serve a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The julia the pool runs, as configured.
    pub julia: PathBuf,
    pub worker_file: PathBuf,
    /// `sysimage_packages`.
    pub packages: Vec<String>,
    /// `JULIA_PROJECT` and `JULIA_LOAD_PATH` as the workers get them.
    pub project: Option<String>,
    pub load_path: Option<String>,
}

impl Inputs {
    /// The inputs of a pool whose workers get the environment `env`
    /// (`WorkerContract::env`).
    pub fn new(
        julia: &Path,
        worker_file: &Path,
        packages: &[String],
        env: &[(OsString, OsString)],
    ) -> Inputs {
        Inputs {
            julia: julia.to_owned(),
            worker_file: worker_file.to_owned(),
            packages: packages.to_vec(),
            project: metadata::env_value(env, "JULIA_PROJECT"),
            load_path: metadata::env_value(env, "JULIA_LOAD_PATH"),
        }
    }

    fn worker_dir(&self) -> PathBuf {
        canonical(self.worker_file.parent().unwrap_or(Path::new(".")))
    }
}

/// A valid image for the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub path: PathBuf,
    pub metadata: Metadata,
}

/// An image that exists but does not fit the pool, and why: one log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pool sysimage {}: not used, {why}; workers start from source (`julia-fcgi sysimage build` makes a new one)", .path.display())]
pub struct Refusal {
    pub path: PathBuf,
    pub why: String,
}

impl Image {
    /// The image the pool should use: `Ok(None)` when the setting is `off`
    /// or `auto` finds none, `Err` when the one there does not fit (the
    /// caller logs it and starts workers from source).
    pub fn discover(setting: &Setting, inputs: &Inputs) -> Result<Option<Image>, Refusal> {
        let path = match setting {
            Setting::Off => return Ok(None),
            Setting::Auto => {
                let path = default_path(&inputs.worker_file);
                if !metadata_path(&path).exists() {
                    return Ok(None);
                }
                path
            }
            Setting::Path(path) => path.clone(),
        };
        Image::check(&path, inputs).map(Some)
    }

    /// The image at `path`, if it fits `inputs`.
    pub fn check(path: &Path, inputs: &Inputs) -> Result<Image, Refusal> {
        let refuse = |why: String| Refusal {
            path: path.to_owned(),
            why,
        };
        let metadata = Metadata::read(&metadata_path(path)).map_err(refuse)?;
        if let Some(why) = misfit(&metadata, inputs) {
            return Err(refuse(why));
        }
        Ok(Image {
            path: path.to_owned(),
            metadata,
        })
    }

    /// What to put before the worker file on julia's command line.
    pub fn julia_args(&self) -> Vec<OsString> {
        vec!["-J".into(), self.path.clone().into_os_string()]
    }

    /// One line for the log: which image, for what.
    pub fn describe(&self) -> String {
        let m = &self.metadata;
        let packages = if m.packages.is_empty() {
            String::from("no packages")
        } else {
            format!("packages {}", m.packages.join(", "))
        };
        format!(
            "workers start from the pool sysimage {} (julia {}, {} base, {packages}, \
             {} precompile statements, built {})",
            self.path.display(),
            m.julia.version,
            m.base,
            m.statements.ok,
            age(m.built_at)
        )
    }
}

fn age(built_at: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(built_at);
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        7200..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// Why the image described by `m` does not fit `inputs`, or `None`.
fn misfit(m: &Metadata, inputs: &Inputs) -> Option<String> {
    image_misfit(m)
        .or_else(|| julia_misfit(m, inputs))
        .or_else(|| worker_misfit(m, inputs))
        .or_else(|| packages_misfit(m, inputs))
}

/// The image file is not the one its metadata describes, or unreadable.
fn image_misfit(m: &Metadata) -> Option<String> {
    if let Some(why) = m.image.changed() {
        return Some(format!("the image does not match its metadata ({why})"));
    }
    // Workers run as this process's user: what it cannot read, they cannot.
    if let Err(e) = std::fs::File::open(&m.image.path) {
        return Some(format!("cannot read {}: {e}", m.image.path.display()));
    }
    None
}

/// Another julia, a changed one, or another CPU.
fn julia_misfit(m: &Metadata, inputs: &Inputs) -> Option<String> {
    if canonical(&m.julia.path) != canonical(&inputs.julia) {
        return Some(format!(
            "built for julia {} at {}, the pool runs {}",
            m.julia.version,
            m.julia.path.display(),
            inputs.julia.display()
        ));
    }
    if let Some(why) = m.julia.files.iter().find_map(|f| f.changed()) {
        return Some(format!(
            "julia changed since the build (built for {}: {why})",
            m.julia.version
        ));
    }
    if m.cpu.target == "native" && m.cpu.host != metadata::host_cpu() {
        return Some(String::from(
            "compiled for another CPU (build it on this machine, or with a portable --cpu-target)",
        ));
    }
    None
}

/// Another worker, or one changed since the build.
fn worker_misfit(m: &Metadata, inputs: &Inputs) -> Option<String> {
    let worker_dir = inputs.worker_dir();
    if canonical(&m.worker.dir) != worker_dir {
        return Some(format!(
            "built from the worker in {}, the pool runs {}",
            m.worker.dir.display(),
            worker_dir.display()
        ));
    }
    match metadata::worker_sources(&worker_dir) {
        Ok(now) => {
            if let Some(why) = metadata::sources_differ(&m.worker, &now) {
                return Some(format!("the worker changed since the build ({why})"));
            }
        }
        Err(e) => {
            return Some(format!(
                "cannot read the worker in {}: {e}",
                worker_dir.display()
            ))
        }
    }
    None
}

/// Other packages, another project or load path, or a package changed.
fn packages_misfit(m: &Metadata, inputs: &Inputs) -> Option<String> {
    if m.packages != inputs.packages {
        return Some(format!(
            "it holds the packages [{}], sysimage_packages lists [{}]",
            m.packages.join(", "),
            inputs.packages.join(", ")
        ));
    }
    if !m.packages.is_empty() {
        if m.project != inputs.project {
            return Some(format!(
                "built for the project {}, the pool's is {}",
                m.project.as_deref().unwrap_or("(none)"),
                inputs.project.as_deref().unwrap_or("(none)")
            ));
        }
        if m.load_path != inputs.load_path {
            return Some(String::from("built with another JULIA_LOAD_PATH"));
        }
        if let Some(why) = metadata::hashes_differ(&m.package_files) {
            return Some(format!("a package changed since the build ({why})"));
        }
    }
    None
}

#[cfg(test)]
mod tests;
