//! What an image was built from, written next to it (`sysimage.json`), and
//! the checks that tell whether it still fits the pool.
//!
//! An image holds compiled copies of the worker's sources and of packages,
//! made by one julia for one CPU. It is right for a pool only while all of
//! that is unchanged, so the metadata records each input the way it can be
//! checked cheaply at every start and reload: the sources (small) by
//! content, julia's own files (large, and replaced as a whole by a package
//! upgrade) by size and modification time, the image by size and time too.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sha256;

/// Bumped whenever the layout or the meaning of the metadata changes: an
/// image of another format is rebuilt, never guessed at.
pub const FORMAT: u32 = 1;

/// The metadata of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub format: u32,
    /// The julia-fcgi version that built it.
    pub built_by: String,
    /// Unix time of the build's end.
    pub built_at: u64,
    pub build_seconds: f64,
    pub julia: Julia,
    pub cpu: Cpu,
    /// `julia` (on julia's own system image) or `minimal` (Base and the
    /// standard libraries in `stdlibs` only, built from Base's sources).
    pub base: String,
    /// The standard libraries the image holds.
    pub stdlibs: Vec<String>,
    pub worker: Sources,
    /// `sysimage_packages` as the build was asked for them, in order.
    pub packages: Vec<String>,
    /// Packages the image holds: the listed ones and their dependencies.
    pub loaded: Vec<Package>,
    /// `JULIA_PROJECT` and `JULIA_LOAD_PATH` of the build (the workers').
    pub project: Option<String>,
    pub load_path: Option<String>,
    /// The source files of `loaded`, with the project's own files.
    pub package_files: Vec<FileHash>,
    pub statements: Statements,
    pub image: FileStamp,
}

/// Which julia: as configured (the pool runs exactly this path), its
/// version, and its files (the executable, libjulia, its system image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Julia {
    pub path: PathBuf,
    pub version: String,
    pub files: Vec<FileStamp>,
}

/// `target` is Julia's `--cpu-target`; with `native` the image runs only on
/// a CPU like the build's, `host` (a digest of /proc/cpuinfo's model and
/// flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub target: String,
    pub host: String,
}

/// The worker's sources: the directory of worker.jl, and every `.jl` file
/// of it that can end up in the image (worker.jl, src/, build/), by path
/// relative to `dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sources {
    pub dir: PathBuf,
    pub files: Vec<FileHash>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub uuid: String,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statements {
    /// Compiled into the image.
    pub ok: u64,
    /// Well-formed but not compilable here (a page's own functions).
    pub failed: u64,
    /// Not a plain `precompile(T)`: never evaluated.
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    pub path: PathBuf,
    pub sha256: String,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            path: path.to_owned(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }

    /// `None` when the file is as stamped, else what differs.
    pub fn changed(&self) -> Option<String> {
        match FileStamp::of(&self.path) {
            Ok(now) if now == *self => None,
            Ok(_) => Some(format!("{} changed", self.path.display())),
            Err(e) => Some(format!("{}: {e}", self.path.display())),
        }
    }
}

impl FileHash {
    pub fn of(path: &Path, name: &Path) -> std::io::Result<FileHash> {
        Ok(FileHash {
            path: name.to_owned(),
            sha256: sha256::file_hex(path)?,
        })
    }
}

/// The worker's sources in `dir`, sorted: worker.jl and the `.jl` files
/// under src/ and build/.
pub fn worker_sources(dir: &Path) -> std::io::Result<Sources> {
    let mut names = vec![PathBuf::from("worker.jl")];
    for sub in ["src", "build"] {
        collect_jl(&dir.join(sub), Path::new(sub), &mut names)?;
    }
    names.sort();
    let files = names
        .iter()
        .map(|name| FileHash::of(&dir.join(name), name))
        .collect::<std::io::Result<_>>()?;
    Ok(Sources {
        dir: dir.to_owned(),
        files,
    })
}

fn collect_jl(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            collect_jl(&entry.path(), &name, out)?;
        } else if name.extension().is_some_and(|e| e == "jl") {
            out.push(name);
        }
    }
    Ok(())
}

/// What differs between two sets of sources, for the log: the first file
/// changed, added or gone.
pub fn sources_differ(built: &Sources, now: &Sources) -> Option<String> {
    for old in &built.files {
        match now.files.iter().find(|f| f.path == old.path) {
            None => return Some(format!("{} is gone", old.path.display())),
            Some(new) if new.sha256 != old.sha256 => {
                return Some(format!("{} changed", old.path.display()))
            }
            Some(_) => {}
        }
    }
    now.files
        .iter()
        .find(|new| !built.files.iter().any(|old| old.path == new.path))
        .map(|new| format!("{} is new", new.path.display()))
}

/// The first of `files` (absolute paths) whose contents changed.
pub fn hashes_differ(files: &[FileHash]) -> Option<String> {
    files.iter().find_map(|f| match sha256::file_hex(&f.path) {
        Ok(hex) if hex == f.sha256 => None,
        Ok(_) => Some(format!("{} changed", f.path.display())),
        Err(e) => Some(format!("{}: {e}", f.path.display())),
    })
}

/// A digest of this machine's CPU model and feature flags, as the kernel
/// reports them: an image compiled for `native` runs on an equal one.
pub fn host_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let pick = |key: &str| {
        info.lines()
            .find(|line| line.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|line| line.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let mut flags: Vec<String> = pick("flags")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    flags.sort();
    sha256::hex(format!("{}\n{}", pick("model name"), flags.join(" ")).as_bytes())
}

/// `JULIA_PROJECT` or `JULIA_LOAD_PATH` in a worker environment.
pub fn env_value(env: &[(OsString, OsString)], name: &str) -> Option<String> {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string_lossy().into_owned())
}

impl Metadata {
    pub fn read(path: &Path) -> Result<Metadata, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // The format first, so that another version's metadata is said to
        // be that and not a parse error.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let format: Format =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if format.format != FORMAT {
            return Err(format!(
                "made by another julia-fcgi (metadata format {}, this one reads {FORMAT})",
                format.format
            ));
        }
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Written to a temporary file and renamed, so that a reader sees the
    /// old metadata or the new, never half of one.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("metadata always serializes");
        std::fs::write(&tmp, text + "\n")?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_compare_by_content_and_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/sub")).unwrap();
        std::fs::write(dir.path().join("worker.jl"), "main()").unwrap();
        std::fs::write(dir.path().join("src/A.jl"), "module A end").unwrap();
        std::fs::write(dir.path().join("src/sub/B.jl"), "module B end").unwrap();
        std::fs::write(dir.path().join("src/notes.txt"), "not a source").unwrap();
        let built = worker_sources(dir.path()).unwrap();
        let names: Vec<_> = built.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(
            names,
            ["src/A.jl", "src/sub/B.jl", "worker.jl"].map(PathBuf::from)
        );
        assert_eq!(
            sources_differ(&built, &worker_sources(dir.path()).unwrap()),
            None
        );

        std::fs::write(dir.path().join("src/A.jl"), "module A; f() = 1; end").unwrap();
        let now = worker_sources(dir.path()).unwrap();
        assert_eq!(
            sources_differ(&built, &now).as_deref(),
            Some("src/A.jl changed")
        );

        std::fs::write(dir.path().join("src/A.jl"), "module A end").unwrap();
        std::fs::write(dir.path().join("build/x.jl"), "").unwrap_err();
        std::fs::create_dir(dir.path().join("build")).unwrap();
        std::fs::write(dir.path().join("build/x.jl"), "").unwrap();
        let now = worker_sources(dir.path()).unwrap();
        assert_eq!(
            sources_differ(&built, &now).as_deref(),
            Some("build/x.jl is new")
        );
        assert_eq!(
            sources_differ(&now, &built).as_deref(),
            Some("build/x.jl is gone")
        );
    }

    #[test]
    fn stamps_notice_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("libjulia.so");
        std::fs::write(&file, "one").unwrap();
        let stamp = FileStamp::of(&file).unwrap();
        assert_eq!(stamp.changed(), None);
        std::fs::write(&file, "three").unwrap();
        assert!(stamp.changed().unwrap().contains("changed"));
        std::fs::remove_file(&file).unwrap();
        assert!(stamp.changed().is_some());
    }

    #[test]
    fn another_format_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sysimage.json");
        std::fs::write(&file, r#"{"format": 99, "whatever": true}"#).unwrap();
        let err = Metadata::read(&file).unwrap_err();
        assert!(err.contains("format 99"), "{err}");
    }
}
