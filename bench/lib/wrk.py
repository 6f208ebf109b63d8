"""One wrk run against one backend and workload: its figures, parsed from
wrk's output, and the CPU that nginx, the backend, wrk and everything else
used meanwhile."""
import re
import resource
import subprocess
import time

from .base import BENCH, CLK, NCPU, BenchError, find_prog
from .processes import cpu_ticks, nice_options, sys_cpu


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
    if not m:
        raise BenchError(f"cannot parse wrk latency {s!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError(f"no Requests/sec in wrk output:\n{out}")
    r["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if not m:
            raise BenchError(f"no {pct}% latency in wrk output (--latency):\n{out}")
        r[f"p{pct}"] = to_ms(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["sockerr"] = sum(int(x) for x in m.groups()) if m else 0
    r["sockerr_detail"] = m.group(0) if m else ""
    return r


def run_wrk(svc, args, backend, post, duration, rawfile=None):
    url = f"{svc.base()}/{backend}/{'post' if post else 'hello'}"
    cmd = [find_prog("wrk"), f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s",
           "--timeout", "5s", "--latency"]
    if post:
        cmd += ["-s", str(BENCH / "wrk" / "post.lua")]
    cmd.append(url)
    groups = {g: svc.pids(g) for g in ("nginx", backend)}
    before = {g: cpu_ticks(p) for g, p in groups.items()}
    s0, ru0, w0 = sys_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                       **nice_options())
    wall = time.time() - w0
    ru1, s1 = resource.getrusage(resource.RUSAGE_CHILDREN), sys_cpu()
    after = {g: cpu_ticks(p_) for g, p_ in groups.items()}
    out = p.stdout + p.stderr
    if rawfile:
        rawfile.write_text(" ".join(cmd) + "\n" + out)
    if p.returncode != 0:
        raise BenchError(f"wrk failed (status {p.returncode}): {' '.join(cmd)}\n{out}")
    r = parse_wrk(out)
    r["cmd"] = " ".join(cmd)
    tot, idle = s1[0] - s0[0], s1[1] - s0[1]
    r["cpu_total"] = 100.0 * NCPU * (tot - idle) / tot if tot else 0.0   # 100 = one core
    r["steal"] = 100.0 * NCPU * (s1[2] - s0[2]) / tot if tot else 0.0
    r["cpu_nginx"] = 100.0 * (after["nginx"] - before["nginx"]) / CLK / wall
    r["cpu_backend"] = 100.0 * (after[backend] - before[backend]) / CLK / wall
    r["cpu_wrk"] = 100.0 * ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall
    # CPU time the backend spent per request (master + workers/children), in
    # microseconds: less sensitive to other load than req/s
    r["us_per_req"] = 1e6 * (after[backend] - before[backend]) / CLK / r["requests"] if r["requests"] else 0.0
    r["cpu_other"] = max(0.0, r["cpu_total"] - r["cpu_nginx"] - r["cpu_backend"] - r["cpu_wrk"])
    return r
