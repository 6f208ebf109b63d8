"""The services under test, all started and stopped by PID: PHP-FPM,
julia-fcgi (with and without the access log) and the nginx in front of
them; and the check that each answers every workload correctly."""
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .base import (BIG_BYTES, CONF, IS_ROOT, JL_BIN, JL_KEYS, JULIA, NAMES, PAGES, POST_BYTES,
                   READY_TIMEOUT, RUN, WORKER, WORKLOADS, BenchError, find_prog, log)
from .processes import (descendants, kill_leftovers, nice_options, proc_stat, spawn, stop_tree,
                        wait_for)


def render(template, out, **kv):
    text = Path(template).read_text()
    for k, v in kv.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise BenchError(f"{template}: unfilled {left}")
    Path(out).write_text(text)


class Services:
    """PHP-FPM, julia-fcgi and nginx, all started by PID and stopped by PID."""

    def __init__(self, args):
        self.args = args
        self.php = self.jl = self.jla = self.jlb = self.nginx = None
        # per julia-fcgi key, how its master said the workers start (from
        # source, or from which pool sysimage): what an A/B run compared
        self.starts = {}

    # PHP-FPM: its own foreground master (-F) with 2 static children
    def start_php(self):
        conf = RUN / "php-fpm.conf"
        render(CONF / "php-fpm.conf.in", conf, RUN=RUN,
               USER_LINES="user = nobody\ngroup = nogroup" if IS_ROOT else "")
        self.php = spawn("php-fpm", [find_prog("php-fpm8.2"), "-F", "-y", conf],
                         RUN / "php-fpm.stdout.log")
        wait_for(lambda: (RUN / "php.sock").exists() and len(descendants([self.php.pid])) >= 3,
                 30, "php-fpm socket and 2 children", self.php, RUN / "php-fpm.log")
        log(f"  php-fpm ready: master {self.php.pid}, children "
            f"{[p for p in descendants([self.php.pid]) if p != self.php.pid]}")

    # julia-fcgi: master + 2 workers; waits for the "ready:" line. "jla" is
    # a second instance, the same but with --access-log; "jlb" one built
    # from --jlb-tree and/or given --jlb-args (B of an A/B comparison).
    def start_jl(self, key="jl"):
        binary, worker = jl_build(self.args, key)
        if not worker.exists():
            raise BenchError(f"{worker} does not exist (yet)")
        logf = RUN / ("julia-fcgi.log" if key == "jl" else f"julia-fcgi-{key}.log")
        home = RUN / f"{key}-home"   # the workers' HOME, writable by them
        home.mkdir(exist_ok=True)
        cmd = [binary, "-l", f"unix:{RUN}/{key}.sock", "-w", "2", "-b", JULIA, "-v", worker,
               "-h", home, "--socket-mode", "0666",
               # Its own runtime directory (scoreboard, lock, status socket): the
               # default (/run/julia-fcgi as root) is locked by any other instance.
               "--runtime-dir", RUN / f"{key}-runtime"]
        if key == "jla":
            cmd.append("--access-log")
        if key == "jlb":
            cmd += shlex.split(self.args.jlb_args)
        if IS_ROOT:  # like PHP-FPM's pool `user = nobody`: workers (and master) drop to nobody
            os.chown(home, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
            cmd += ["-u", "nobody", "-g", "nogroup"]
        # plain log lines in the file (its tracing output is coloured otherwise)
        proc = spawn(NAMES[key], cmd, logf, env=dict(os.environ, NO_COLOR="1"))
        setattr(self, key, proc)
        log(f"  waiting for {NAMES[key]} 'ready:' (up to {READY_TIMEOUT}s; Julia start-up and warm-up)")
        t = time.time()
        wait_for(lambda: "ready:" in logf.read_text(errors="replace"), READY_TIMEOUT,
                 f"{NAMES[key]} 'ready:' line", proc, logf)
        lines = logf.read_text(errors="replace").splitlines()
        line = next(l for l in lines if "ready:" in l)
        log(f"  {NAMES[key]} ready after {time.time() - t:.1f}s: {line.strip()[-120:]}")
        self.starts[key] = workers_start(lines)
        log(f"  {NAMES[key]}: {self.starts[key]}")
        log(f"  {NAMES[key]} master {proc.pid}, workers {self.jl_workers(key)}")

    def start_backends(self, backends):
        """The backends asked for, PHP-FPM first, then nginx in front of them."""
        if "php" in backends:
            self.start_php()
        for key in JL_KEYS:
            if key in backends:
                self.start_jl(key)
        self.start_nginx()

    def jl_workers(self, key="jl"):
        proc = getattr(self, key)
        return [p for p in descendants([proc.pid]) if p != proc.pid] if proc else []

    def start_nginx(self):
        tmp = RUN / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        if IS_ROOT:  # the worker runs as nobody and writes its temp files there
            os.chown(tmp, pwd.getpwnam("nobody").pw_uid, -1)
        conf = RUN / "nginx.conf"
        render(CONF / "nginx.conf.in", conf, RUN=RUN, CONF=CONF, PAGES=PAGES,
               PORT=self.args.port, USER_LINE="user nobody nogroup;" if IS_ROOT else "")
        cmd = [find_prog("nginx"), "-p", f"{RUN}/", "-c", conf, "-e", RUN / "nginx-error.log"]
        t = subprocess.run([str(c) for c in cmd] + ["-t"], capture_output=True, text=True)
        if t.returncode != 0:
            raise BenchError(f"nginx -t failed:\n{t.stderr}")
        self.nginx = spawn("nginx", cmd, RUN / "nginx.stdout.log")

        def up():
            return curl(f"{self.base()}/ping", quiet=True)[0] == 200
        wait_for(up, 15, f"nginx on 127.0.0.1:{self.args.port}", self.nginx, RUN / "nginx-error.log")
        log(f"  nginx ready on 127.0.0.1:{self.args.port} (pids {descendants([self.nginx.pid])})")

    def base(self):
        return f"http://127.0.0.1:{self.args.port}"

    def pids(self, who):
        p = {"php": self.php, "jl": self.jl, "jla": self.jla, "jlb": self.jlb,
             "nginx": self.nginx}[who]
        return descendants([p.pid]) if p else []

    def stop(self):
        if self.nginx:
            stop_tree("nginx", self.nginx.pid, signal.SIGQUIT, 10)
        for key in JL_KEYS:  # SIGTERM: graceful stop, the master stops its workers
            if getattr(self, key):
                stop_tree(NAMES[key], getattr(self, key).pid, signal.SIGTERM, 20)
        if self.php:
            stop_tree("php-fpm", self.php.pid, signal.SIGQUIT, 10)
        self.php = self.jl = self.jla = self.jlb = self.nginx = None
        kill_leftovers()


def workers_start(lines):
    """The master's log line (of `lines`) on what its workers start from
    (source or a pool sysimage, and why), without its timestamp and level."""
    line = next((l for l in lines if "workers start from" in l), None)
    if line is None:
        return "the log does not say what the workers start from"
    return re.sub(r"^\S+\s+(INFO|WARN|ERROR)\s+", "", line.strip())


def jl_build(args, key):
    """The julia-fcgi binary and worker file an instance runs: this tree's,
    or for "jlb" those of --jlb-tree."""
    if key == "jlb" and args.jlb_tree:
        tree = Path(args.jlb_tree)
        return tree / "target" / "release" / "julia-fcgi", tree / "julia" / "worker.jl"
    return JL_BIN, WORKER


def fresh_run_dir():
    """An empty bench/.run/ (refused while processes of an earlier run live)."""
    if RUN.exists():
        for pidfile in ("nginx.pid", "php-fpm.pid"):
            pf = RUN / pidfile
            if pf.exists():
                pid = pf.read_text().strip()
                if pid.isdigit() and proc_stat(int(pid)):
                    raise BenchError(f"{pf}: pid {pid} of an earlier run is still running; stop it first")
        shutil.rmtree(RUN)
    RUN.mkdir(mode=0o755)
    (RUN / "raw").mkdir()


def curl(url, post=False, quiet=False):
    """(status, headers dict lower-cased, body bytes) of one request with curl."""
    hdr, body = RUN / "curl.headers", RUN / "curl.body"
    cmd = [find_prog("curl"), "-s", "-o", str(body), "-D", str(hdr), "-w", "%{http_code}",
           "--max-time", "30"]
    if post:
        (RUN / "post.bin").write_bytes(b"a" * POST_BYTES)
        cmd += ["-H", "Content-Type: application/octet-stream", "--data-binary", f"@{RUN}/post.bin"]
    p = subprocess.run(cmd + [url], capture_output=True, text=True,
                       **nice_options())
    if p.returncode != 0:
        if not quiet:
            log(f"  curl {url}: exit {p.returncode} {p.stderr.strip()}")
        return 0, {}, b""
    headers = {}
    for line in hdr.read_text(errors="replace").splitlines()[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(p.stdout.strip() or 0), headers, body.read_bytes()


def verify(svc, backend):
    for wl, _, page, post in WORKLOADS:
        url = f"{svc.base()}/{backend}/{page}"
        st, h, body = curl(url, post)
        if post:
            ok = st == 200 and body == b"x" * BIG_BYTES and h.get("x-body-len") == str(POST_BYTES)
            got = f"status {st}, {len(body)} bytes, X-Body-Len {h.get('x-body-len')!r}"
        else:
            ok = st == 200 and body == b"hello"
            got = f"status {st}, body {body[:200]!r}"
        if not ok:
            raise BenchError(f"{NAMES[backend]} answered {'POST' if post else 'GET'} {url} wrongly: "
                             f"{got}, headers {h}")
        log(f"  curl check {NAMES[backend]:10s} {'POST' if post else 'GET ':4s} /{backend}/{page}: "
            f"OK ({got}, Content-Type {h.get('content-type')})")
