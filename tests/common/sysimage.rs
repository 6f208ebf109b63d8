//! The pool sysimage the tests run on, built for real once for every test
//! process that asks (nextest runs each test in a process of its own; a
//! build takes 3-5 min on a busy 2-core machine; the others wait on a
//! lock) and kept in `target/test-sysimage/` between runs for as long as
//! the worker and the example project are unchanged: a copy of the worker
//! with the example project's local package `Greeting` compiled in.
//! tests/sysimage.rs checks the image itself; other tests run their daemon
//! on it where a worker's start-up time is what they measure around
//! (tests/reliability.rs: a page that crashes its worker every 2 s).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use julia_fcgi::sysimage::{self, BuildOptions, Image, Inputs};

use super::Daemon;

/// The image and what it was built from. Built once for every test process
/// (nextest runs each test in a process of its own; a build takes minutes)
/// and kept in `target/test-sysimage/` between runs for as long as the
/// worker and the example project are unchanged.
pub struct Fixture {
    /// Per-process scratch space (twins of the image).
    pub scratch: tempfile::TempDir,
    pub root: PathBuf,
    /// The worker's copy the image was built from.
    pub worker_file: PathBuf,
    pub project: PathBuf,
    pub depot: PathBuf,
    pub image: PathBuf,
    /// `julia -J image "$@"`.
    pub image_julia: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    pub source_ready: Duration,
    pub image_ready: Duration,
}

/// What the fixture copies from the repository: (from, to under the root).
fn sources() -> Vec<(PathBuf, &'static str)> {
    let repo = super::repo();
    vec![
        (repo.join("julia/worker.jl"), "julia/worker.jl"),
        (repo.join("julia/src"), "julia/src"),
        (repo.join("julia/build"), "julia/build"),
        (repo.join("julia/test"), "julia/test"),
        // The worker's tests serve the example pages next to it.
        (super::examples(), "examples"),
        (super::examples().join("project"), "project"),
    ]
}

/// The same files with the same contents (a file or a tree).
fn same_tree(a: &Path, b: &Path) -> bool {
    if a.is_file() {
        return std::fs::read(a).ok() == std::fs::read(b).ok();
    }
    let files = |dir: &Path| -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = super::files_under(dir)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| p.strip_prefix(dir).unwrap().to_owned())
            .collect();
        all.sort();
        all
    };
    let names = files(a);
    names == files(b)
        && names
            .iter()
            .all(|n| std::fs::read(a.join(n)).ok() == std::fs::read(b.join(n)).ok())
}

/// An exclusive lock on `path`, held until the file is dropped.
fn lock(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(path).unwrap();
    // SAFETY: flock on a descriptor this function owns.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    file
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = super::repo().join("target/test-sysimage");
        std::fs::create_dir_all(&root).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        let _lock = lock(&root.join(".lock"));
        let depot = root.join("depot");
        let worker_file = root.join("julia/worker.jl");
        let project = root.join("project");
        let env: Vec<(OsString, OsString)> = [
            ("HOME", root.clone().into_os_string()),
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
            ("JULIA_NUM_THREADS", "1".into()),
            ("JULIA_PROJECT", project.clone().into_os_string()),
            ("JULIA_DEPOT_PATH", format!("{}:", depot.display()).into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .collect();
        let image = root.join("image/sysimage.so");
        let times_file = root.join("image/ready-times");
        let inputs = Inputs::new(&super::julia(), &worker_file, &["Greeting".into()], &env);
        let kept = sources()
            .iter()
            .all(|(from, to)| same_tree(from, &root.join(to)))
            && Image::check(&image, &inputs).is_ok();
        let kept_times = std::fs::read_to_string(&times_file)
            .ok()
            .and_then(|text| {
                let (a, b) = text.trim().split_once(' ')?;
                Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?))
            })
            .filter(|_| kept);
        let (source_ready, image_ready) = match kept_times {
            Some((source, image)) => {
                eprintln!("the image in {} is up to date: not rebuilt", root.display());
                (
                    Duration::from_secs_f64(source),
                    Duration::from_secs_f64(image),
                )
            }
            None => {
                for part in ["julia", "examples", "project", "depot", "image"] {
                    let _ = std::fs::remove_dir_all(root.join(part));
                }
                for (from, to) in sources() {
                    if from.is_dir() {
                        super::copy_dir(&from, &root.join(to));
                    } else {
                        std::fs::create_dir_all(root.join(to).parent().unwrap()).unwrap();
                        std::fs::copy(&from, root.join(to)).unwrap();
                    }
                }
                std::fs::create_dir_all(&depot).unwrap();
                let mut opts =
                    BuildOptions::new(&super::julia(), &worker_file, env.clone(), &image);
                opts.packages = vec!["Greeting".into()];
                let t0 = Instant::now();
                let built = sysimage::build(&opts, &mut |line| {
                    eprintln!("[build {:5.0} s] {line}", t0.elapsed().as_secs_f64())
                })
                .unwrap_or_else(|e| panic!("the image did not build: {e}"));
                std::fs::write(
                    &times_file,
                    format!(
                        "{} {}\n",
                        built.source_ready.as_secs_f64(),
                        built.image_ready.as_secs_f64()
                    ),
                )
                .unwrap();
                (built.source_ready, built.image_ready)
            }
        };
        let image_julia = root.join("julia-with-image");
        std::fs::write(
            &image_julia,
            format!(
                "#!/bin/sh\nexec {} -J {} \"$@\"\n",
                super::julia().display(),
                image.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&image_julia, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fixture {
            scratch: tempfile::tempdir().unwrap(),
            root,
            worker_file,
            project,
            depot,
            image,
            image_julia,
            env,
            source_ready,
            image_ready,
        }
    })
}

impl Fixture {
    pub fn inputs(&self) -> Inputs {
        Inputs::new(
            &super::julia(),
            &self.worker_file,
            &["Greeting".into()],
            &self.env,
        )
    }

    /// The real master with `workers` workers and `sysimage` set to the
    /// fixture's image, once it says its workers start from it.
    pub fn daemon_on_image(&self, workers: u32, config: &str) -> Daemon {
        let d = self.daemon(
            &super::julia(),
            workers,
            &format!(
                "sysimage = {:?}\nsysimage_packages = [\"Greeting\"]\n{config}",
                self.image.display().to_string()
            ),
        );
        d.wait_for_log(
            "workers start from the pool sysimage",
            Duration::from_secs(5),
        );
        d
    }

    /// The real master, its `workers` workers on `julia`, with the
    /// fixture's project and depot and `config`.
    pub fn daemon(&self, julia: &Path, workers: u32, config: &str) -> Daemon {
        Daemon::start(super::Options {
            workers,
            config: Some(format!(
                "project = {:?}\ndepot = {:?}\n{config}",
                self.project.display().to_string(),
                self.depot.display().to_string()
            )),
            julia: Some(julia.to_owned()),
            worker_file: Some(self.worker_file.clone()),
            ..super::Options::default()
        })
    }
}
