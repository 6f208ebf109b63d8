"""Before measuring: what must be installed, the release build, and the
versions the results record."""
import datetime
import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .base import IS_ROOT, JL_BIN, JULIA, NCPU, REPO, WORKER, BenchError, find_prog, log


def setup_deps(force):
    need = {"nginx": find_prog("nginx"), "wrk": find_prog("wrk"), "curl": find_prog("curl"),
            "php-fpm8.2": find_prog("php-fpm8.2"), "julia wrapper": os.access(JULIA, os.X_OK)}
    missing = [k for k, v in need.items() if not v]
    if not missing and not force:
        log("dependencies present (nginx, wrk, curl, php-fpm8.2, " + JULIA + ")")
        return
    script = REPO / "scripts" / "setup-deps"
    if not IS_ROOT:
        raise BenchError(f"missing {', '.join(missing)}: run as root so {script} can install them")
    log(f"running {script} ({'forced' if force else 'missing: ' + ', '.join(missing)})")
    if subprocess.run([str(script)]).returncode != 0:
        raise BenchError(f"{script} failed")


def cargo_build(tree=REPO):
    """cargo build --release in `tree` (the repo root by default). Under
    sudo, build as the invoking user when that user has cargo (target/
    stays theirs)."""
    cmd, who = None, "this user"
    sudo_user = os.environ.get("SUDO_USER")
    if IS_ROOT and sudo_user and sudo_user != "root":
        try:
            home = pwd.getpwnam(sudo_user).pw_dir
            if os.access(f"{home}/.cargo/bin/cargo", os.X_OK):
                cmd = ["runuser", "-u", sudo_user, "--", "env", f"HOME={home}",
                       f"{home}/.cargo/bin/cargo"]
                who = sudo_user
        except KeyError:
            pass
    if cmd is None:
        cargo = shutil.which("cargo") or next(
            (c for c in (os.path.expanduser("~/.cargo/bin/cargo"), "/root/.cargo/bin/cargo")
             if os.access(c, os.X_OK)), None)
        if not cargo:
            raise BenchError("cargo not found (PATH, ~/.cargo/bin)")
        cmd = [cargo]
    log(f"cargo build --release in {tree} (as {who}; a first build takes a few minutes)")
    p = subprocess.Popen(cmd + ["build", "--release", "--color", "never"], cwd=tree,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in p.stdout:  # progress: one line per crate compiled
        out.append(line)
        if line.strip():
            log("  cargo: " + line.strip())
    rc = p.wait()
    if rc != 0:
        raise BenchError(f"cargo build --release failed (status {rc}):\n{''.join(out)[-4000:]}")
    binary = Path(tree) / "target" / "release" / "julia-fcgi"
    if not os.access(binary, os.X_OK):
        raise BenchError(f"{binary} missing after the build")


def versions(jlb_tree=""):
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            lines = (p.stdout + p.stderr).strip().splitlines()
            return lines[0] if lines else "?"
        except Exception as e:  # noqa: BLE001
            return f"? ({e})"
    def git(tree):
        head = first_line(["git", "-C", str(tree), "log", "-1", "--format=%h %s"])
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "src", "julia",
                                "Cargo.toml", "Cargo.lock"], capture_output=True, text=True).stdout
        return head + (f" (+ uncommitted changes in {len(dirty.splitlines())} file(s) of src/, julia/)"
                       if dirty.strip() else "")

    def ident(path, tree=REPO):
        try:
            h = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
            t = datetime.datetime.fromtimestamp(os.stat(path).st_mtime).strftime("%Y-%m-%d %H:%M:%S")
            return f"{Path(path).relative_to(tree)} sha256 {h}…, modified {t}"
        except (OSError, ValueError):
            return f"{path} (missing)"
    b = {}
    if jlb_tree:
        tree = Path(jlb_tree).resolve()
        b["julia-fcgi B"] = (f"{tree}: {git(tree)}; "
                             + ident(tree / "target" / "release" / "julia-fcgi", tree) + "; "
                             + ident(tree / "julia" / "worker.jl", tree))
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": f"{os.uname().sysname} {os.uname().release}, {NCPU} CPU(s), " + next(
            (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "git": git(REPO),
        "nginx": first_line([find_prog("nginx") or "nginx", "-v"]),
        "php-fpm": first_line([find_prog("php-fpm8.2") or "php-fpm8.2", "-v"]),
        "wrk": first_line([find_prog("wrk") or "wrk", "-v"]),
        "julia": first_line([JULIA, "--version"]),
        "julia-fcgi": ident(JL_BIN) + "; " + ident(WORKER),
        **b,
    }
