//! The pool's Julia packages: its project, its depot, the load path, and
//! the packages every worker loads at start-up.
//!
//! The config wins over the daemon's environment: `project` over
//! `JULIA_PROJECT`, `depot` over `JULIA_DEPOT_PATH`; what the config does not
//! set is passed on from the environment as it is (`JULIA_LOAD_PATH` has no
//! setting, it is only passed on).
//!
//! The depot is where Julia writes (compiled caches, installed packages,
//! logs), so it must be writable by the workers' user, or `using` a package
//! that needs precompiling fails in the middle of a request. Its default, in
//! this order: the `JULIA_DEPOT_PATH` julia-fcgi was started with; else
//! systemd's `StateDirectory=` (`$STATE_DIRECTORY`, first entry), made for
//! the service user and kept across restarts and upgrades; else Julia's own
//! default, `<home>/.julia`. A configured depot that the user cannot write is
//! an error; a default that cannot be written is said in the log (pages that
//! only use the standard library do not care).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::environment::Environment;
use super::file::FileConfig;
use super::paths::{check_use, Use};
use super::{invalid, ConfigError};
use crate::privileges::Identity;

/// The packages side of the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packages {
    pub project: Option<Project>,
    pub depot: Depot,
    /// `JULIA_LOAD_PATH` of the daemon's environment, passed on as it is.
    pub load_path: Option<OsString>,
    /// Loaded by every worker before it is ready, in this order.
    pub preload: Vec<PackageName>,
}

/// The workers' active project (`JULIA_PROJECT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Project {
    /// `project` in the config: a directory with a Project.toml.
    Configured(PathBuf),
    /// `JULIA_PROJECT` of the daemon's environment, as it is (it may be
    /// `@.` or a named environment, which only Julia can resolve).
    Inherited(OsString),
}

/// The workers' depot (`JULIA_DEPOT_PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Depot {
    /// `depot` in the config.
    Configured(PathBuf),
    /// `JULIA_DEPOT_PATH` of the daemon's environment, as it is.
    Inherited(OsString),
    /// systemd's `StateDirectory=`.
    StateDirectory(PathBuf),
    /// `<home>/.julia`, where Julia would put it anyway.
    Home(PathBuf),
}

impl Depot {
    /// The directory Julia writes into, when julia-fcgi chose it.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Depot::Configured(dir) | Depot::StateDirectory(dir) | Depot::Home(dir) => Some(dir),
            Depot::Inherited(_) => None,
        }
    }
}

/// A package name: a Julia identifier, so that `using NAME` means it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageName(String);

impl PackageName {
    pub fn parse(name: &str) -> Result<Self, String> {
        if let Some(stem) = name.strip_suffix(".jl") {
            return Err(format!("{name:?}: write the package's name, {stem:?}"));
        }
        let mut chars = name.chars();
        let starts_well = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_');
        if !starts_well
            || !chars.all(|c| c.is_alphanumeric() || c == '_' || c == '!')
            || KEYWORDS.contains(&name)
        {
            return Err(format!(
                "{name:?} is not a package name (a Julia identifier such as \"Dates\")"
            ));
        }
        Ok(PackageName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Julia's reserved words: identifiers in form, never names of packages.
const KEYWORDS: &[&str] = &[
    "baremodule",
    "begin",
    "break",
    "catch",
    "const",
    "continue",
    "do",
    "else",
    "elseif",
    "end",
    "export",
    "false",
    "finally",
    "for",
    "function",
    "global",
    "if",
    "import",
    "let",
    "local",
    "macro",
    "module",
    "quote",
    "return",
    "struct",
    "true",
    "try",
    "using",
    "while",
];

/// Validates the file's package settings for the workers' user `who`
/// (`None`: this process's user) with HOME `home`. `warnings` collects what
/// the log should say about defaults that will not work well.
pub(super) fn resolve(
    file: &FileConfig,
    env: &Environment,
    who: Option<&Identity>,
    home: &Path,
    warnings: &mut Vec<String>,
) -> Result<Packages, ConfigError> {
    let project = match &file.project {
        Some(dir) => Some(Project::Configured(check_project(dir, who)?)),
        None => env
            .var("JULIA_PROJECT")
            .map(|p| Project::Inherited(p.to_owned())),
    };
    let preload = file
        .preload
        .iter()
        .flatten()
        .map(|name| PackageName::parse(name).map_err(|e| invalid("preload", e)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(twice) = preload
        .iter()
        .enumerate()
        .find_map(|(i, name)| preload[..i].contains(name).then_some(name))
    {
        return Err(invalid(
            "preload",
            format!("{:?} is listed twice", twice.as_str()),
        ));
    }
    Ok(Packages {
        project,
        depot: resolve_depot(file.depot.as_deref(), env, who, home, warnings)?,
        load_path: env.var("JULIA_LOAD_PATH").map(ToOwned::to_owned),
        preload,
    })
}

fn check_project(dir: &Path, who: Option<&Identity>) -> Result<PathBuf, ConfigError> {
    let bad = |why: String| invalid("project", why);
    if !dir.is_absolute() {
        return Err(bad(format!(
            "{}: expected an absolute path (workers run in /)",
            dir.display()
        )));
    }
    if dir.is_file() {
        return Err(bad(format!(
            "{} is a file; give the directory that holds the Project.toml",
            dir.display()
        )));
    }
    check_use(dir, Use::Read, who).map_err(bad)?;
    let has_project = ["Project.toml", "JuliaProject.toml"]
        .iter()
        .any(|name| dir.join(name).is_file());
    if !has_project {
        return Err(bad(format!(
            "{} holds no Project.toml (create one with `julia --project={} -e 'using Pkg; \
             Pkg.instantiate()'`)",
            dir.display(),
            dir.display()
        )));
    }
    Ok(dir.to_owned())
}

fn resolve_depot(
    configured: Option<&Path>,
    env: &Environment,
    who: Option<&Identity>,
    home: &Path,
    warnings: &mut Vec<String>,
) -> Result<Depot, ConfigError> {
    if let Some(dir) = configured {
        if !dir.is_absolute() || dir.to_string_lossy().contains(':') {
            return Err(invalid(
                "depot",
                format!("{}: expected an absolute path without ':'", dir.display()),
            ));
        }
        check_use(dir, Use::Write, who).map_err(|why| invalid("depot", why))?;
        return Ok(Depot::Configured(dir.to_owned()));
    }
    if let Some(path) = env.var("JULIA_DEPOT_PATH") {
        return Ok(Depot::Inherited(path.to_owned()));
    }
    if let Some(dir) = env.first_dir("STATE_DIRECTORY") {
        match check_use(&dir, Use::Write, who) {
            Ok(()) => return Ok(Depot::StateDirectory(dir)),
            Err(why) => warnings.push(format!(
                "the state directory is not used as the workers' Julia depot: {why}"
            )),
        }
    }
    let dir = home.join(".julia");
    if let Err(why) = check_use(&dir, Use::Write, who) {
        warnings.push(format!(
            "the workers' Julia depot: {why}; pages cannot precompile or install packages \
             (set `depot` in the config)"
        ));
    }
    Ok(Depot::Home(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_identifiers() {
        for good in ["Dates", "MyLib", "_Private", "Ünïcode", "Mutate!"] {
            assert!(PackageName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "1Lib", "My-Lib", "a,b", "My Lib", "end", "Foo.Bar"] {
            assert!(PackageName::parse(bad).is_err(), "{bad}");
        }
        let err = PackageName::parse("MyLib.jl").unwrap_err();
        assert!(err.contains("\"MyLib\""), "{err}");
    }
}
