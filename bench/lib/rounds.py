"""The measured runs: for each round and each workload, every backend one
after the other (the order alternating per round), each after a warm-up;
the same-round ratios; and the julia-fcgi processes' memory afterwards."""
from .base import NAMES, RUN, WORKLOADS, log
from .processes import status_kib, wait_quiet
from .report import fmt, round_table
from .wrk import run_wrk


def measure(svc, args, backends):
    """Every measured run's figures, with the ratios of each pair."""
    n_runs = args.rounds * len(WORKLOADS) * len(backends)
    eta = n_runs * (args.duration + args.warmup + 1)
    log(f"{args.rounds} round(s) x {len(WORKLOADS)} workloads x {len(backends)} backend(s): "
        f"{n_runs} measured runs, about {eta // 60}m{eta % 60:02d}s")
    results = []
    done = 0
    for rnd in range(1, args.rounds + 1):
        order = backends if rnd % 2 == 1 else list(reversed(backends))
        round_rows = []
        for wl, label, _, post in WORKLOADS:
            if args.quiet_wait > 0:
                busy = wait_quiet(args.quiet_wait)
                if busy > 25:
                    log(f"  machine busy ({busy:.0f}% of a core) before round {rnd} {wl}; going on")
            pair = {}
            for b in order:
                done += 1
                r = measure_one(svc, args, rnd, (wl, label, post), b, (done, n_runs))
                pair[b] = r
                round_rows.append(r)
                results.append(r)
            add_ratios(pair)
        print(f"\nRound {rnd} (order: {', '.join(NAMES[b] for b in order)})\n", flush=True)
        print(round_table(round_rows) + "\n", flush=True)
    return results


def measure_one(svc, args, rnd, workload, b, progress):
    """One backend on one workload: a warm-up, then the measured run."""
    wl, label, post = workload
    if args.warmup > 0:
        log(f"round {rnd}/{args.rounds} {label}: {NAMES[b]} warm-up {args.warmup}s")
        w = run_wrk(svc, args, b, post, args.warmup)
        if w["non2xx"] or w["sockerr"]:
            log(f"  warm-up errors: non-2xx {w['non2xx']}, {w['sockerr_detail']}")
    log(f"round {rnd}/{args.rounds} {label}: {NAMES[b]} measuring {args.duration}s "
        f"[{progress[0]}/{progress[1]}]")
    r = run_wrk(svc, args, b, post, args.duration, RUN / "raw" / f"r{rnd}-{wl}-{b}.txt")
    r.update(round=rnd, workload=wl, backend=b)
    log(f"  {r['rps']:8.0f} req/s  p50 {fmt(r['p50'])} ms  p99 {fmt(r['p99'])} ms  "
        f"non-2xx {r['non2xx']}  sock err {r['sockerr']}  CPU nginx {r['cpu_nginx']:.0f}% "
        f"backend {r['cpu_backend']:.0f}% ({r['us_per_req']:.0f} µs/req) wrk {r['cpu_wrk']:.0f}% other {r['cpu_other']:.0f}%")
    if r["non2xx"] or r["sockerr"]:
        log(f"  ERRORS in this run: non-2xx {r['non2xx']}, {r['sockerr_detail']}")
    return r


def add_ratios(pair):
    """julia-fcgi (A and B) / PHP-FPM, julia-fcgi with / without the access
    log, and B / A, of one round's runs."""
    for jl in ("jl", "jlb"):
        if "php" in pair and jl in pair:
            ratio = pair[jl]["rps"] / pair["php"]["rps"]
            pair[jl]["ratio"] = ratio
            pair[jl]["ratio_s"] = f"{ratio:.3f}"
    if "jl" in pair and "jlb" in pair:
        ratio = pair["jlb"]["rps"] / pair["jl"]["rps"]
        pair["jlb"]["b_ratio"] = ratio
        pair["jlb"]["ratio_s"] = (pair["jlb"].get("ratio_s", "") + f" ({ratio:.3f} B/A)").strip()
    if "jl" in pair and "jla" in pair:
        ratio = pair["jla"]["rps"] / pair["jl"]["rps"]
        pair["jla"]["access_ratio"] = ratio
        pair["jla"]["ratio_s"] = f"{ratio:.3f} (jla/jl)"


def memory(svc, workers_before):
    """The julia-fcgi master's and workers' RSS after the runs (and PHP-FPM's,
    for information); None without julia-fcgi."""
    if not svc.jl:
        return None
    now = sorted(svc.jl_workers())
    if now != workers_before:
        log(f"NOTE: julia-fcgi workers changed during the runs: {workers_before} -> {now} "
            "(a worker died and was replaced; see julia-fcgi.log)")
    rss = {"master_pid": svc.jl.pid,
           "master_rss": status_kib(svc.jl.pid, "VmRSS"),
           "master_hwm": status_kib(svc.jl.pid, "VmHWM") or 0,
           "workers": [(p, status_kib(p, "VmRSS") or 0) for p in now],
           "workers_changed": now != workers_before}
    if svc.php:
        rss["php"] = [(p, status_kib(p, "VmRSS") or 0) for p in svc.pids("php")]
    log(f"julia-fcgi master pid {svc.jl.pid}: VmRSS {rss['master_rss']} kB, "
        f"VmHWM {rss['master_hwm']} kB")
    return rss
