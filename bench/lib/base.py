"""What every part of the benchmark shares: where things are, the
workloads and backends, the bars, the log."""
import os
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
RUN = BENCH / ".run"                # private run directory (bench/.gitignore)
CONF = BENCH / "conf"
PAGES = BENCH / "pages"
RESULTS = BENCH / "results"
JULIA = "/usr/local/bin/julia"      # the wrapper written by scripts/setup-deps
JL_BIN = REPO / "target" / "release" / "julia-fcgi"
WORKER = REPO / "julia" / "worker.jl"
IS_ROOT = os.geteuid() == 0
CLK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

POST_BYTES = 4096
BIG_BYTES = 65536
RSS_BAR_KIB = 10 * 1024
RATIO_BAR = 1.0
READY_TIMEOUT = 180

WORKLOADS = [  # name, label, path suffix, post
    ("hello", "(a) GET hello world", "hello", False),
    ("post", "(b) POST 4 KiB -> 64 KiB", "post", True),
]
# Backends by key: the name in tables and logs. A new one needs a start
# method in services.Services and a location in conf/nginx.conf.in.
NAMES = {"php": "PHP-FPM", "jl": "julia-fcgi", "jla": "julia-fcgi+access log",
         "jlb": "julia-fcgi B"}
# The julia-fcgi instances (each a master with its workers).
JL_KEYS = ("jl", "jla", "jlb")
ACCESS_BAR = 0.03   # the access log stays off by default if it costs more
T0 = time.time()


class BenchError(Exception):
    """The benchmark cannot go on (not a performance verdict)."""


def log(msg):
    print(f"[bench {time.time() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def find_prog(name):
    p = shutil.which(name)
    if p:
        return p
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None
