"""Processes the benchmark starts, found, measured and stopped by PID (a
PID is ours only while its start time is the one we saw), and the
machine's CPU."""
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from .base import NCPU, BenchError, log

STARTED = {}   # pid -> (name, start time from /proc/PID/stat): PIDs get reused
NICE = 0       # --nice, set by use_nice()


def proc_stat(pid):
    """Fields of /proc/PID/stat from #3 (state) on, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()


def is_ours(pid):
    f = proc_stat(pid)
    return f is not None and f[0] not in ("Z", "X") and \
        (pid not in STARTED or STARTED[pid][1] == f[19])


def descendants(roots):
    """The live processes among roots and all their descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = proc_stat(d)
            if f:
                kids.setdefault(int(f[1]), []).append(int(d))
    out, stack = [], [r for r in roots if is_ours(r)]
    while stack:
        p = stack.pop()
        if p not in out and is_ours(p):
            out.append(p)
            stack.extend(kids.get(p, []))
    return out


def cpu_ticks(pids):
    t = 0
    for p in pids:
        f = proc_stat(p)
        if f:
            t += int(f[11]) + int(f[12])  # utime + stime
    return t


def sys_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v), v[3] + v[4], v[7]  # total, idle + iowait, steal


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become_subreaper():
    """Orphans of what we start are re-parented to us, so we can stop them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001
        pass


def use_nice(value):
    """From now on every process started runs at nice `value` (0: as we do)."""
    global NICE
    NICE = value


def set_nice(pid=0):
    """Nice value for pid and, with autogroup scheduling (each session its own
    scheduling group; every service here is started in a session of its own),
    for its session's autogroup: without that, nice only orders processes
    inside one session and does nothing against other sessions' load."""
    if not NICE:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, NICE)
    except OSError as e:
        print(f"setpriority({pid}, {NICE}): {e}", file=sys.stderr)
    try:
        with open(f"/proc/{pid or 'self'}/autogroup", "w") as f:
            f.write(str(NICE))
    except OSError:
        pass  # no autogroup scheduling: setpriority is enough


def nice_options():
    """subprocess options for a short-lived client (curl, wrk) under --nice."""
    return {"start_new_session": bool(NICE), "preexec_fn": set_nice if NICE else None}


def spawn(name, cmd, logfile, env=None):
    log(f"starting {name}: {' '.join(shlex.quote(str(c)) for c in cmd)}")
    with open(logfile, "ab") as lf:
        p = subprocess.Popen([str(c) for c in cmd], stdout=lf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                             preexec_fn=set_nice if NICE else None)  # after setsid, before exec
    f = proc_stat(p.pid)
    STARTED[p.pid] = (name, f[19] if f else None)
    return p


def stop_tree(name, pid, sig, grace):
    """Signal pid (a master), wait for it and its descendants to exit, then
    SIGKILL whatever is left, by PID."""
    tree = descendants([pid])
    if not tree:
        return
    log(f"stopping {name} (pid {pid}, {len(tree)} process(es))")
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.time() + grace
    while time.time() < deadline:
        reap_all()
        if not any(is_ours(p) for p in tree):
            return
        time.sleep(0.05)
    for p in tree:
        if is_ours(p):
            log(f"  {name}: pid {p} still there after {grace:.0f}s, SIGKILL")
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.2)
    reap_all()


def kill_leftovers():
    """Anything we started (or inherited as subreaper) that is still there."""
    for pid in descendants([os.getpid()]):
        if pid != os.getpid():
            log(f"  leftover pid {pid}: SIGKILL")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    reap_all()


def wait_for(pred, timeout, what, proc=None, logfile=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            tail = Path(logfile).read_text(errors="replace")[-3000:] if logfile else ""
            raise BenchError(f"{what}: process exited with status {proc.returncode}\n{tail}")
        time.sleep(0.1)
    tail = Path(logfile).read_text(errors="replace")[-3000:] if logfile else ""
    raise BenchError(f"timeout ({timeout}s) waiting for {what}\n{tail}")


def machine_busy():
    a = sys_cpu()
    time.sleep(1.0)
    b = sys_cpu()
    tot = b[0] - a[0]
    return 100.0 * NCPU * (tot - (b[1] - a[1])) / tot if tot else 0.0


def wait_quiet(max_wait, limit=25.0):
    """Bounded wait for a nearly idle machine (others may be compiling)."""
    deadline = time.time() + max_wait
    busy = machine_busy()
    while busy > limit and time.time() < deadline:
        busy = machine_busy()
    return busy
