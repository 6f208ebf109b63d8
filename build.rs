//! Build-time documentation, generated from the command line itself so that
//! it cannot drift from it: the `julia-fcgi(8)` man page, one page per
//! subcommand (`julia-fcgi-status(8)`), and the bash, zsh and fish
//! completions, written to `OUT_DIR/man/` and `OUT_DIR/completions/`.
//!
//! `src/cli.rs` depends on clap only, so it is compiled into this script as
//! a module of its own. The man page is clap_mangen's rendering of `Cli`
//! (name, synopsis, description, every option with its default) followed by
//! the hand-written sections clap knows nothing about — configuration, files,
//! signals, systemd integration, exit status — from
//! `packaging/man/julia-fcgi.8.sections`, with the documented default config
//! (`packaging/julia-fcgi.toml`, the installed file) shown as it is. Its
//! version is `CARGO_PKG_VERSION`, the same one `--version` prints and the
//! packages carry.
//!
//! The Makefile (`make`, `make install`, `make packages`) picks them up from
//! there.

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

// The real command-line definition; nothing here reads the parsed fields.
#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

const SECTIONS: &str = "packaging/man/julia-fcgi.8.sections";
/// The documented default configuration, shown in the CONFIGURATION section.
const DEFAULT_CONFIG: &str = "packaging/julia-fcgi.toml";

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed={SECTIONS}");
    println!("cargo:rerun-if-changed={DEFAULT_CONFIG}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let mut cmd = cli::Cli::command().disable_help_subcommand(true);
    // Gives subcommands their display names (julia-fcgi-status).
    cmd.build();
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    write_man_page(&cmd, &man)?;
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_subcommand_page(sub, &man)?;
    }
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    write_completions(&mut cmd, &completions)
}

fn man(cmd: &clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .date(man_date())
        .manual("System Manager's Manual")
}

/// `julia-fcgi.8`: the generated sections, the hand-written ones, then the
/// version.
fn write_man_page(cmd: &clap::Command, dir: &Path) -> io::Result<()> {
    let man = man(cmd);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    // `after_help` (signals and exit codes in one line each) is left out: the
    // hand-written sections say the same at length.
    let sections = fs::read_to_string(SECTIONS)?;
    let config = literal_block(&fs::read_to_string(DEFAULT_CONFIG)?);
    page.extend(sections.replace("@DEFAULT_CONFIG@\n", &config).into_bytes());
    man.render_version_section(&mut page)?;
    fs::write(dir.join("julia-fcgi.8"), page)
}

/// `julia-fcgi-SUBCOMMAND.8`, all generated, like git's pages.
fn write_subcommand_page(sub: &clap::Command, dir: &Path) -> io::Result<()> {
    let man = man(sub).source(format!("julia-fcgi {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render(&mut page)?;
    fs::write(dir.join(man.get_filename()), page)
}

/// Text shown as it is (no filling), escaped for roff: backslashes, a
/// leading `.` or `'`, and `-` as a real minus, so that it can be copied.
fn literal_block(text: &str) -> String {
    let mut roff = String::from(".PP\n.RS 4\n.nf\n");
    for line in text.lines() {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        if line.starts_with(['.', '\'']) {
            roff.push_str("\\&");
        }
        roff.push_str(&line);
        roff.push('\n');
    }
    roff.push_str(".fi\n.RE\n");
    roff
}

/// The page's date: `SOURCE_DATE_EPOCH` when set (reproducible builds),
/// else today. The script reruns only when the CLI or the sections change,
/// so that is the date of the last change to the page's content.
fn man_date() -> String {
    let secs = env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `julia-fcgi.bash`, `_julia-fcgi` (zsh) and `julia-fcgi.fish`.
fn write_completions(cmd: &mut clap::Command, dir: &Path) -> io::Result<()> {
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, cmd, "julia-fcgi", dir)?;
    }
    Ok(())
}
