//! The .deb and the .rpm as `make packages` builds them: their files are the
//! install layout (`make install DESTDIR=…` gives the same tree), the
//! conffiles, maintainer scripts and metadata are right, one version runs
//! through everything, and lintian and rpmlint find nothing wrong.
//! `tests/vm/run-vm-package-test` installs the .deb in a real systemd.
//!
//! Needs the packaging tools: `make package-tools` (cargo-deb,
//! cargo-generate-rpm) and Debian's lintian, rpm and rpmlint. `make packages`
//! runs once per test run (the test processes take turns on a lock file, and
//! a stamp names the run that built them); its release build is cargo's to
//! reuse.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use clap::CommandFactory;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = env!("CARGO_PKG_DESCRIPTION");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command, panicking with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// An exclusive `flock` on a file, released on drop (or when the process
/// ends, whatever happens to it).
struct Lock(fs::File);

impl Lock {
    fn take(path: &Path) -> Lock {
        let file = fs::File::create(path).unwrap();
        // SAFETY: flock on a file descriptor this struct owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", path.display());
        Lock(file)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn lock() -> Lock {
    Lock::take(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("packages.lock"))
}

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
    /// The staged install the packages were made from.
    stage: PathBuf,
}

/// The packages of this test run, built by whichever test came first.
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        require_tools();
        let _lock = lock();
        let dir = repo().join("target/packages");
        let stamp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packages.stamp");
        // nextest runs each test in a process of its own, all with one run
        // id; `cargo test` runs them in one process.
        let run_id = std::env::var("NEXTEST_RUN_ID")
            .unwrap_or_else(|_| format!("pid {}", std::process::id()));
        if fs::read_to_string(&stamp).ok().as_deref() != Some(run_id.as_str()) {
            let made = run(Command::new("make")
                .args(["--no-print-directory", "packages"])
                .current_dir(repo()));
            eprintln!("{made}");
            fs::write(&stamp, &run_id).unwrap();
        }
        let deb = dir.join(format!("julia-fcgi_{VERSION}-1_amd64.deb"));
        let rpm = dir.join(format!("julia-fcgi-{VERSION}-1.x86_64.rpm"));
        assert!(
            deb.is_file() && rpm.is_file(),
            "no packages in {}",
            dir.display()
        );
        Packages {
            deb,
            rpm,
            stage: repo().join("target/pkgroot"),
        }
    })
}

fn require_tools() {
    let missing: Vec<&str> = [
        ("cargo-deb", &["deb", "--version"][..]),
        ("cargo-generate-rpm", &["generate-rpm", "--version"][..]),
    ]
    .iter()
    .filter(|(_, args)| {
        !Command::new("cargo")
            .args(*args)
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(|(name, _)| *name)
    .chain(
        ["lintian", "rpm", "rpmlint", "dpkg-deb"]
            .into_iter()
            .filter(|tool| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .output()
                    .map_or(true, |o| !o.status.success())
            }),
    )
    .collect();
    assert!(
        missing.is_empty(),
        "missing packaging tools {missing:?}: run `make package-tools` and \
         `apt-get install lintian rpm rpmlint` (scripts/setup-deps does both)"
    );
}

/// Files (no directories) under `root`, relative, with their permission bits.
fn tree(root: &Path) -> BTreeMap<String, u32> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, u32>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, files);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                files.insert(format!("/{rel}"), meta.permissions().mode() & 0o7777);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

/// The .deb's control area (maintainer scripts, conffiles), unpacked.
fn deb_control(deb: &Path) -> tempfile::TempDir {
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(control.path()));
    control
}

/// The .deb's files with their modes, and owners.
fn deb_files(deb: &Path) -> (BTreeMap<String, u32>, BTreeSet<String>) {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    let mut files = BTreeMap::new();
    let mut owners = BTreeSet::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        owners.insert(fields[1].to_owned());
        if !fields[0].starts_with('d') {
            let path = fields[5].trim_start_matches('.').to_owned();
            files.insert(path, perms(fields[0]));
        }
    }
    (files, owners)
}

/// `-rwxr-xr-x` → 0o755.
fn perms(text: &str) -> u32 {
    text[1..]
        .chars()
        .fold(0, |mode, c| (mode << 1) | u32::from(c != '-'))
}

/// The .rpm's files: path → (mode, flags like "cn", owner).
fn rpm_files(rpm: &Path) -> BTreeMap<String, (u32, String, String)> {
    let listing = run(Command::new("rpm").arg("-qp").arg("--qf").arg(
        "[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEFLAGS:fflags}\t%{FILEUSERNAME}:%{FILEGROUPNAME}\n]",
    ).arg(rpm));
    listing
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (
                f[0].to_owned(),
                (perms(f[1]), f[2].to_owned(), f[3].to_owned()),
            )
        })
        .collect()
}

/// What every install must have, whatever else the layout grows.
const ESSENTIAL: &[&str] = &[
    "/usr/sbin/julia-fcgi",
    "/usr/share/julia-fcgi/worker.jl",
    "/usr/share/julia-fcgi/src/JuliaFCGI.jl",
    // `julia-fcgi sysimage build` finds its scripts next to the worker.
    "/usr/share/julia-fcgi/build/build.jl",
    "/usr/share/julia-fcgi/build/probe.jl",
    "/usr/share/julia-fcgi/build/base.jl",
    "/usr/lib/systemd/system/julia-fcgi.socket",
    "/usr/lib/systemd/system/julia-fcgi.service",
    "/usr/lib/sysusers.d/julia-fcgi.conf",
    "/usr/lib/tmpfiles.d/julia-fcgi.conf",
    "/etc/julia-fcgi/julia-fcgi.toml",
    "/etc/nginx/snippets/julia-fcgi.conf",
    "/usr/share/man/man8/julia-fcgi.8.gz",
    "/usr/share/bash-completion/completions/julia-fcgi",
    "/usr/share/zsh/vendor-completions/_julia-fcgi",
    "/usr/share/fish/vendor_completions.d/julia-fcgi.fish",
    "/usr/share/doc/julia-fcgi/README.md",
];

/// Files only the .deb has: Debian's copyright and changelog, written by
/// cargo-deb, and lintian's overrides.
const DEB_ONLY: &[&str] = &[
    "/usr/share/doc/julia-fcgi/copyright",
    "/usr/share/doc/julia-fcgi/changelog.Debian.gz",
    "/usr/share/lintian/overrides/julia-fcgi",
];

#[test]
fn make_install_is_the_layout_the_packages_ship() {
    let p = packages();
    let dest = tempfile::tempdir().unwrap();
    {
        let _lock = lock();
        run(Command::new("make")
            .args(["--no-print-directory", "install"])
            .arg(format!("DESTDIR={}", dest.path().display()))
            .current_dir(repo()));
    }
    let installed = tree(dest.path());
    for path in ESSENTIAL {
        assert!(installed.contains_key(*path), "make install: no {path}");
    }
    for sub in cli().get_subcommands() {
        let page = format!("/usr/share/man/man8/julia-fcgi-{}.8.gz", sub.get_name());
        assert!(installed.contains_key(&page), "make install: no {page}");
    }
    for page in fs::read_dir(repo().join("examples")).unwrap() {
        let name = page.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".jl") {
            let doc = format!("/usr/share/doc/julia-fcgi/examples/{name}");
            assert!(installed.contains_key(&doc), "example {name} not installed");
        }
    }
    for (path, mode) in &installed {
        let want = if path == "/usr/sbin/julia-fcgi" {
            0o755
        } else {
            0o644
        };
        assert_eq!(*mode, want, "mode of {path}");
    }
    // The staged tree the packages were made from is the same install.
    assert_eq!(tree(&p.stage), installed);

    // Files come from the source tree as they are.
    for (source, installed_path) in [
        (
            "packaging/julia-fcgi.toml",
            "etc/julia-fcgi/julia-fcgi.toml",
        ),
        (
            "packaging/nginx/julia-fcgi.conf",
            "etc/nginx/snippets/julia-fcgi.conf",
        ),
        (
            "systemd/julia-fcgi.socket",
            "usr/lib/systemd/system/julia-fcgi.socket",
        ),
        (
            "systemd/julia-fcgi.service",
            "usr/lib/systemd/system/julia-fcgi.service",
        ),
        ("julia/worker.jl", "usr/share/julia-fcgi/worker.jl"),
        (
            "julia/build/build.jl",
            "usr/share/julia-fcgi/build/build.jl",
        ),
        (
            "packaging/sysusers.d/julia-fcgi.conf",
            "usr/lib/sysusers.d/julia-fcgi.conf",
        ),
    ] {
        assert_eq!(
            fs::read(repo().join(source)).unwrap(),
            fs::read(dest.path().join(installed_path)).unwrap(),
            "{installed_path} differs from {source}"
        );
    }
}

#[test]
fn deb_files_are_the_layout() {
    let p = packages();
    let (files, owners) = deb_files(&p.deb);
    let mut expected = tree(&p.stage);
    for extra in DEB_ONLY {
        expected.insert((*extra).to_owned(), 0o644);
    }
    assert_eq!(files, expected);
    for owner in owners {
        assert!(owner == "0/0" || owner == "root/root", "owner {owner}");
    }
}

#[test]
fn rpm_files_are_the_layout() {
    let p = packages();
    let files = rpm_files(&p.rpm);
    // The one difference: zsh's fpath directory on RPM distributions.
    let expected: BTreeMap<String, u32> = tree(&p.stage)
        .into_iter()
        .map(|(path, mode)| {
            let path = path.replace("/zsh/vendor-completions/", "/zsh/site-functions/");
            (path, mode)
        })
        .collect();
    let got: BTreeMap<String, u32> = files.iter().map(|(p, (m, _, _))| (p.clone(), *m)).collect();
    assert_eq!(got, expected);
    for (path, (_, _, owner)) in &files {
        assert_eq!(owner, "root:root", "owner of {path}");
    }
}

#[test]
fn config_files_survive_upgrades() {
    let p = packages();
    let control = deb_control(&p.deb);
    let conffiles = fs::read_to_string(control.path().join("conffiles")).unwrap();
    let conffiles: BTreeSet<&str> = conffiles.lines().collect();
    let config = BTreeSet::from([
        "/etc/julia-fcgi/julia-fcgi.toml",
        "/etc/nginx/snippets/julia-fcgi.conf",
    ]);
    assert_eq!(conffiles, config, "the .deb's conffiles");

    let rpm_config: BTreeMap<String, String> = rpm_files(&p.rpm)
        .into_iter()
        .filter(|(_, (_, flags, _))| flags.contains('c'))
        .map(|(path, (_, flags, _))| (path, flags))
        .collect();
    assert_eq!(
        rpm_config
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        config,
        "the .rpm's %config files"
    );
    for (path, flags) in rpm_config {
        assert!(
            flags.contains('n'),
            "{path} is %config but not (noreplace): {flags}"
        );
    }
}

#[test]
fn deb_metadata() {
    let p = packages();
    let field = |name: &str| {
        run(Command::new("dpkg-deb").arg("-f").arg(&p.deb).arg(name))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "julia-fcgi");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Section"), "httpd");
    assert!(!field("Maintainer").is_empty());
    let description = field("Description");
    assert_eq!(description.lines().next(), Some(DESCRIPTION));
    assert!(description.lines().count() > 3, "no extended description");
    let depends = field("Depends");
    assert!(depends.starts_with("libc6 (>= "), "Depends: {depends}");
    assert!(
        depends.contains("systemd | systemd-standalone-sysusers | systemd-sysusers"),
        "Depends: {depends}"
    );
    assert!(
        !depends.contains("julia"),
        "Debian 12 has no julia to depend on: {depends}"
    );
    // gcc links the pool sysimage postinst builds.
    assert_eq!(field("Recommends"), "nginx | httpd, gcc");
    assert_eq!(field("Pre-Depends"), "");

    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&p.deb)
        .arg(root.path()));
    let copyright =
        fs::read_to_string(root.path().join("usr/share/doc/julia-fcgi/copyright")).unwrap();
    assert!(copyright.contains("License: MIT"), "{copyright}");
}

#[test]
fn rpm_metadata() {
    let p = packages();
    let info = run(Command::new("rpm")
        .args([
            "-qp",
            "--qf",
            "%{NAME}|%{VERSION}|%{RELEASE}|%{LICENSE}|%{ARCH}|%{SUMMARY}",
        ])
        .arg(&p.rpm));
    assert_eq!(
        info,
        format!("julia-fcgi|{VERSION}|1|MIT|x86_64|{DESCRIPTION}")
    );
    let requires = run(Command::new("rpm").arg("-qpR").arg(&p.rpm));
    let requires: BTreeSet<&str> = requires.lines().map(str::trim).collect();
    assert!(requires.contains("libc.so.6()(64bit)"), "{requires:?}");
    assert!(
        requires.contains("(systemd or systemd-standalone-sysusers)"),
        "{requires:?}"
    );
    assert!(
        !requires
            .iter()
            .any(|r| r.contains("julia") && !r.starts_with("config(julia-fcgi)")),
        "{requires:?}"
    );
    let recommends = run(Command::new("rpm")
        .arg("-qp")
        .arg("--recommends")
        .arg(&p.rpm));
    assert_eq!(recommends.trim(), "gcc", "gcc links the pool sysimage");
}

/// Runs a maintainer script with every command it may call replaced by a
/// stub that logs its arguments, under a throw-away `DPKG_ROOT` (which also
/// keeps the scripts away from this machine's systemd).
fn run_script(script: &Path, args: &[&str], root: &Path) -> Vec<String> {
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    for stub in [
        "systemd-sysusers",
        "systemd-tmpfiles",
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "systemctl",
    ] {
        let path = bin.path().join(stub);
        fs::write(
            &path,
            format!("#!/bin/sh\necho \"{stub} $*\" >> {}\n", log.display()),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    run(Command::new("sh")
        .arg(script)
        .args(args)
        .env("PATH", path)
        .env("DPKG_ROOT", root));
    fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|line| line.replace(&root.display().to_string(), "$DPKG_ROOT"))
        .collect()
}

#[test]
fn deb_maintainer_scripts() {
    let p = packages();
    let control = deb_control(&p.deb);
    let script = |name: &str| control.path().join(name);
    for name in ["postinst", "prerm", "postrm"] {
        let path = script(name);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#!/bin/sh\n"),
            "{name}: not a /bin/sh script"
        );
        assert!(text.contains("\nset -e\n"), "{name}: no set -e");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755,
            "{name}"
        );
        run(Command::new("sh").arg("-n").arg(&path));
        // The socket must stay open through upgrades: nothing restarts it.
        assert!(
            !text.contains("restart 'julia-fcgi.socket'"),
            "{name} restarts the socket"
        );
    }
    let postinst = fs::read_to_string(script("postinst")).unwrap();
    assert!(postinst.contains("deb-systemd-invoke start 'julia-fcgi.socket'"));
    assert!(postinst.contains("deb-systemd-invoke try-restart 'julia-fcgi.service'"));
    assert!(
        !postinst.contains("enable 'julia-fcgi.service'"),
        "the service is socket-activated"
    );
    let prerm = fs::read_to_string(script("prerm")).unwrap();
    assert!(
        prerm.contains("[ \"$1\" = remove ]"),
        "prerm must stop only on removal"
    );
    assert!(prerm.contains("deb-systemd-invoke stop 'julia-fcgi.socket' 'julia-fcgi.service'"));
    assert!(prerm.contains("deb-systemd-invoke stop 'julia-fcgi-sysimage.service'"));
    // The pool sysimage: built unless up to date, in the background under
    // systemd, into the directory purge removes; never fatal.
    for needle in [
        "$jf status",
        "build --if-stale",
        "systemd-run --quiet --no-block --unit=julia-fcgi-sysimage.service",
        "systemctl try-reload-or-restart julia-fcgi.service",
        "STATE_DIRECTORY=/var/lib/julia-fcgi",
        "JULIA_FCGI_NO_SYSIMAGE",
        // No compiler (gcc is only recommended): said at once, no build.
        "elif ! command -v cc >/dev/null 2>&1; then",
        "linking it needs a C compiler (apt install gcc)",
    ] {
        assert!(postinst.contains(needle), "postinst lacks {needle:?}");
    }

    let root = tempfile::tempdir().unwrap();
    // A fresh installation: the user, its home, the socket enabled.
    assert_eq!(
        run_script(&script("postinst"), &["configure", ""], root.path()),
        [
            "systemd-sysusers --root=$DPKG_ROOT julia-fcgi.conf",
            "systemd-tmpfiles --root=$DPKG_ROOT --create julia-fcgi.conf",
            "deb-systemd-helper --quiet was-enabled julia-fcgi.socket",
            "deb-systemd-helper enable julia-fcgi.socket",
        ]
    );
    assert_eq!(
        run_script(&script("prerm"), &["upgrade", VERSION], root.path()),
        Vec::<String>::new()
    );
    // A new julia (the trigger): nothing to do in a DPKG_ROOT.
    assert_eq!(
        run_script(
            &script("postinst"),
            &["triggered", "/usr/lib/x86_64-linux-gnu/julia"],
            root.path()
        ),
        Vec::<String>::new()
    );
    // Purge: the enablement and the user's state go.
    for dir in [
        "var/lib/julia-fcgi/.julia",
        "run/julia-fcgi",
        "var/cache/julia-fcgi",
        "var/lib/other",
    ] {
        fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    assert_eq!(
        run_script(&script("postrm"), &["purge"], root.path()),
        ["deb-systemd-helper purge julia-fcgi.socket julia-fcgi.service"]
    );
    assert!(!root.path().join("var/lib/julia-fcgi").exists());
    assert!(!root.path().join("run/julia-fcgi").exists());
    assert!(
        !root.path().join("var/cache/julia-fcgi").exists(),
        "the pool sysimage survived the purge"
    );
    assert!(
        root.path().join("var/lib/other").exists(),
        "purge removed too much"
    );
}

#[test]
fn rpm_scriptlets() {
    let p = packages();
    let scripts = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&p.rpm));
    // "NAME scriptlet:" (or "NAME scriptlet (using PROG):") heads each
    // scriptlet's body; without a PROG, rpm runs it with /bin/sh.
    let mut bodies: BTreeMap<String, String> = BTreeMap::new();
    let mut current = None;
    for line in scripts.lines() {
        let head = line
            .strip_suffix(" scriptlet:")
            .or_else(|| line.strip_suffix(" scriptlet (using /bin/sh):"));
        if let Some(name) = head {
            current = Some(name.to_owned());
            bodies.insert(name.to_owned(), String::new());
        } else if let Some(name) = &current {
            let body = bodies.get_mut(name).unwrap();
            body.push_str(line);
            body.push('\n');
        }
    }
    let section = |name: &str| {
        bodies
            .get(name)
            .unwrap_or_else(|| panic!("no {name} scriptlet:\n{scripts}"))
            .clone()
    };
    let post = section("postinstall");
    assert!(post.contains("systemd-sysusers julia-fcgi.conf"), "{post}");
    assert!(
        post.contains("systemd-tmpfiles --create julia-fcgi.conf"),
        "{post}"
    );
    assert!(post.contains("if [ \"$1\" -eq 1 ]"), "{post}");
    assert!(
        post.contains("preset julia-fcgi.socket julia-fcgi.service"),
        "{post}"
    );
    for needle in [
        "$jf status",
        "build --if-stale",
        "julia-fcgi-sysimage.service",
        "linking it needs a C compiler (dnf install gcc)",
    ] {
        assert!(post.contains(needle), "%post lacks {needle:?}:\n{post}");
    }
    let preun = section("preuninstall");
    assert!(preun.contains("if [ \"$1\" -eq 0 ]"), "{preun}");
    assert!(
        preun.contains("disable --now julia-fcgi.socket julia-fcgi.service"),
        "{preun}"
    );
    let postun = section("postuninstall");
    assert!(postun.contains("daemon-reload"), "{postun}");
    assert!(postun.contains("if [ \"$1\" -ge 1 ]"), "{postun}");
    assert!(
        postun.contains("try-restart julia-fcgi.service"),
        "{postun}"
    );
    assert!(postun.contains("rm -rf /var/cache/julia-fcgi"), "{postun}");
    for (name, body) in [("post", &post), ("preun", &preun), ("postun", &postun)] {
        assert!(
            !body.contains("restart julia-fcgi.socket"),
            "%{name} restarts the socket"
        );
        run(Command::new("sh").args(["-n", "-c", body]));
    }
}

#[test]
fn lintian_finds_no_error_or_warning() {
    let p = packages();
    let out = output(
        Command::new("lintian")
            .args(["--fail-on", "error,warning"])
            .arg(&p.deb),
    );
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "lintian:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{report}"
    );
}

#[test]
fn rpmlint_finds_no_error() {
    let p = packages();
    let out = output(
        Command::new("rpmlint")
            .arg("--config")
            .arg(repo().join("packaging/rpm/rpmlint.toml"))
            .arg(&p.rpm),
    );
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "rpmlint:\n{report}");
    assert!(report.contains(" 0 errors,"), "{report}");
}

/// A man page from the staged install, uncompressed: `julia-fcgi` or
/// `julia-fcgi-SUBCOMMAND`.
fn man_page(p: &Packages, name: &str) -> String {
    let gz = fs::read(p.stage.join(format!("usr/share/man/man8/{name}.8.gz"))).unwrap();
    let mut gunzip = Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut gunzip.stdin.take().unwrap(), &gz).unwrap();
    let out = gunzip.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The long options of a command, e.g. `socket-mode`.
fn long_options(cmd: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .collect()
}

/// The command line, as `julia-fcgi --help` knows it.
fn cli() -> clap::Command {
    // As build.rs sees it: clap's own `help` subcommand has no page.
    let mut cmd = julia_fcgi::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// `\fB\-\-long\-option\fR`, as clap_mangen writes an option's name.
fn roff_option(long: &str) -> String {
    format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"))
}

#[test]
fn man_page_is_generated_from_the_command_line() {
    let man = man_page(packages(), "julia-fcgi");
    assert!(
        man.lines().any(|l| l.starts_with(".TH julia-fcgi 8 ")
            && l.contains(&format!("\"julia-fcgi {VERSION}\""))),
        "title line with the version:\n{}",
        &man[..man.len().min(400)]
    );
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "CONFIGURATION",
        "FILES",
        "SIGNALS",
        "SYSTEMD",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        assert!(
            man.contains(&format!("\n.SH {section}\n")),
            "no {section} section"
        );
    }
    let cli = cli();
    for long in long_options(&cli) {
        assert!(
            man.contains(&roff_option(&long)),
            "--{long} is not in the man page"
        );
    }
    // Each subcommand has a page of its own, like git's.
    for sub in cli.get_subcommands() {
        let name = format!("julia-fcgi-{}", sub.get_name());
        assert!(
            man.contains(&format!("{}(8)", name.replace('-', "\\-"))),
            "julia-fcgi(8) does not name {name}(8)"
        );
        let page = man_page(packages(), &name);
        assert!(
            page.contains(&format!("\"julia-fcgi {VERSION}\"")),
            "{name}(8): no version"
        );
        for long in long_options(sub) {
            assert!(
                page.contains(&roff_option(&long)),
                "--{long} is not in {name}(8)"
            );
        }
    }
    for signal in ["SIGTERM", "SIGINT", "SIGHUP"] {
        assert!(man.contains(signal), "{signal} undocumented");
    }
}

fn rust_sources(dir: &Path) -> Vec<String> {
    let mut texts = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            texts.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            texts.push(fs::read_to_string(&path).unwrap());
        }
    }
    texts
}

/// The keys of the config file: `FileConfig`'s fields, read from its
/// source.
fn config_keys() -> Vec<String> {
    let source = rust_sources(&repo().join("src"))
        .into_iter()
        .find(|text| text.contains("pub struct FileConfig {"))
        .expect("FileConfig somewhere in src/");
    let body = source.split_once("pub struct FileConfig {").unwrap().1;
    let body = &body[..body.find("\n}").unwrap()];
    let keys: Vec<String> = body
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub ")?
                .split_once(':')
                .map(|(k, _)| k.to_owned())
        })
        .collect();
    assert!(keys.len() > 10, "cannot read FileConfig's fields: {keys:?}");
    keys
}

/// The man page says every long option has a config key of the same name,
/// but for these.
#[test]
fn long_options_are_config_keys() {
    let keys = config_keys();
    for long in long_options(&cli()) {
        if !["config", "socket", "help", "version"].contains(&long.as_str()) {
            let key = long.replace('-', "_");
            assert!(keys.contains(&key), "--{long} has no config key {key}");
        }
    }
}

/// The man page shows the installed default config, which documents every
/// key the config file may have.
#[test]
fn every_config_key_is_documented() {
    let man = man_page(packages(), "julia-fcgi");
    let default_config = fs::read_to_string(repo().join("packaging/julia-fcgi.toml")).unwrap();
    for line in default_config.lines().filter(|l| !l.is_empty()) {
        let roff = line.replace('\\', "\\e").replace('-', "\\-");
        assert!(
            man.contains(&roff),
            "the man page lacks the default config's line {line:?}"
        );
    }
    let undocumented: Vec<String> = config_keys()
        .into_iter()
        .filter(|key| {
            !default_config
                .lines()
                .any(|l| l.trim_start_matches('#').starts_with(&format!("{key} =")))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "config keys missing from packaging/julia-fcgi.toml (the documented \
         default config, shown in the man page too): {undocumented:?}"
    );
}

#[test]
fn shell_completions() {
    let p = packages();
    let read = |path: &str| fs::read_to_string(p.stage.join(path)).unwrap();
    let bash = read("usr/share/bash-completion/completions/julia-fcgi");
    assert!(bash.contains("complete -F"), "{bash}");
    let zsh = read("usr/share/zsh/vendor-completions/_julia-fcgi");
    assert!(zsh.starts_with("#compdef julia-fcgi"), "{zsh}");
    let fish = read("usr/share/fish/vendor_completions.d/julia-fcgi.fish");
    assert!(fish.contains("complete -c julia-fcgi"), "{fish}");
    let cli = cli();
    let subcommands = cli.get_subcommands().flat_map(long_options);
    for long in long_options(&cli).into_iter().chain(subcommands) {
        assert!(bash.contains(&format!("--{long}")), "bash: no --{long}");
        assert!(zsh.contains(&format!("--{long}")), "zsh: no --{long}");
        assert!(fish.contains(&format!("-l {long}")), "fish: no --{long}");
    }
}

#[test]
fn one_version_everywhere() {
    let p = packages();
    let version = run(Command::new(p.stage.join("usr/sbin/julia-fcgi")).arg("--version"));
    assert_eq!(version.trim(), format!("julia-fcgi {VERSION}"));
    assert!(man_page(p, "julia-fcgi").contains(&format!("julia-fcgi {VERSION}")));
    let deb = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&p.deb)
        .arg("Version"));
    assert_eq!(deb.trim(), format!("{VERSION}-1"));
    let rpm = run(Command::new("rpm")
        .args(["-qp", "--qf", "%{VERSION}"])
        .arg(&p.rpm));
    assert_eq!(rpm, VERSION);
    let changelog = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {} | tar -xOf - ./usr/share/doc/julia-fcgi/changelog.Debian.gz | gzip -dc",
        p.deb.display()
    )));
    assert!(
        changelog.starts_with(&format!("julia-fcgi ({VERSION}-1) ")),
        "{changelog}"
    );
}
