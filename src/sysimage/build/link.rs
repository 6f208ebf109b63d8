//! The C compiler's part of a build: checked before anything is compiled,
//! then linking the image against julia's libraries.

use std::path::Path;
use std::process::{Command, Stdio};

use super::julia::Facts;
use super::{fail, BuildError, BuildOptions};

/// Step 5. `--whole-archive`: every symbol of the object stays, as julia
/// looks its tables up by name at start-up.
pub(super) fn link(
    opts: &BuildOptions,
    facts: &Facts,
    object: &Path,
    out: &Path,
) -> Result<(), BuildError> {
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
pub(super) fn check_linker(
    opts: &BuildOptions,
    facts: &Facts,
    work: &Path,
) -> Result<(), BuildError> {
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
