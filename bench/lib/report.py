"""The tables: per round, the summary with its verdict, the access log's
cost, and the Markdown results file."""
import math
import os
import statistics

from .base import ACCESS_BAR, NAMES, NCPU, RATIO_BAR, RESULTS, RSS_BAR_KIB, WORKLOADS


def fmt(x, nd=2):
    return f"{x:.{nd}f}"


def round_table(rows):
    out = ["| round | workload | backend | req/s | p50 ms | p99 ms | non-2xx | sock err "
           "| CPU % nginx | CPU % backend | CPU % wrk | CPU % other | CPU % total | backend CPU µs/req "
           "| jl/php req/s |",
           "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['round']} | {r['workload']} | {NAMES[r['backend']]} | {r['rps']:.0f} | "
            f"{fmt(r['p50'])} | {fmt(r['p99'])} | {r['non2xx']} | {r['sockerr']} | "
            f"{r['cpu_nginx']:.0f} | {r['cpu_backend']:.0f} | {r['cpu_wrk']:.0f} | "
            f"{r['cpu_other']:.0f} | {r['cpu_total']:.0f} | {r['us_per_req']:.0f} | {r.get('ratio_s', '')} |")
    return "\n".join(out)


def runs_by_backend(results, wl, backends):
    """Each backend's runs of workload `wl`."""
    return {b: [r for r in results if r["workload"] == wl and r["backend"] == b] for b in backends}


def compared(results, pair, key):
    """Per workload that has them: its label, each of the two backends' runs,
    and the per-round ratios kept under `key` in the second one's runs."""
    for wl, label, _, _ in WORKLOADS:
        rs = runs_by_backend(results, wl, pair)
        ratios = [r[key] for r in rs[pair[1]] if key in r]
        if ratios:
            yield label, rs, ratios


def median_cells(runs, field):
    """Per backend, the median of one figure over its runs, as a table cell."""
    return {b: f"{statistics.median(r[field] for r in rs):.0f}" for b, rs in runs.items()}


def access_summary(results):
    """What --access-log costs: julia-fcgi with it against julia-fcgi without
    it, in the same rounds (informational: it decides the default, not the
    exit status)."""
    lines = ["| access log (jla) vs none (jl) | julia-fcgi req/s | +access log req/s "
             "| CPU µs/req without / with | per-round ratios jla/jl | median ratio | cost | "
             f"on by default only if cost <= {ACCESS_BAR:.0%} |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for label, rs, ratios in compared(results, ("jl", "jla"), "access_ratio"):
        med = statistics.median(ratios)
        cost = 1.0 - med
        rps, us = median_cells(rs, "rps"), median_cells(rs, "us_per_req")
        lines.append(f"| {label} | {rps['jl']} | {rps['jla']} | {us['jl']} / {us['jla']} | "
                     + ", ".join(f"{x:.3f}" for x in ratios)
                     + f" | **{med:.3f}** | {cost:+.1%} | "
                     + ("could be on" if cost <= ACCESS_BAR else "keep off") + " |")
    return "\n".join(lines)


def b_summary(results, args, starts):
    """julia-fcgi B against A in the same rounds: each one's ratio to PHP-FPM
    and B / A per round (informational: it compares two builds or
    configurations, the exit status stays A's). `starts`: what each one's
    workers started from, as its master said."""
    what = ", ".join(x for x in (f"tree {args.jlb_tree}" if args.jlb_tree else "this tree",
                                f"options {args.jlb_args!r}" if args.jlb_args else "") if x)
    lines = [f"julia-fcgi B: {what}.", "",
             f"- A: {starts.get('jl', '-')}", f"- B: {starts.get('jlb', '-')}", "",
             "| B vs A | A req/s | B req/s | CPU µs/req A / B | per-round jl/php A | "
             "per-round jl/php B | median A | median B | per-round B/A | median B/A "
             "| geometric mean B/A (about 95 % interval) |",
             "|---|---:|---:|---:|---|---|---:|---:|---|---:|---:|"]
    for label, rs, b_a in compared(results, ("jl", "jlb"), "b_ratio"):
        to_php = {b: [r["ratio"] for r in rs[b] if "ratio" in r] for b in rs}
        rps, us = median_cells(rs, "rps"), median_cells(rs, "us_per_req")
        lines.append(f"| {label} | {rps['jl']} | {rps['jlb']} | {us['jl']} / {us['jlb']} | "
                     f"{ratio_list(to_php['jl'])} | {ratio_list(to_php['jlb'])} | "
                     f"{median_ratio(to_php['jl'])} | {median_ratio(to_php['jlb'])} | "
                     f"{ratio_list(b_a)} | **{median_ratio(b_a)}** | {geo_interval(b_a)} |")
    lines += ["", "B/A above 1: B served more requests per second than A. The interval is the "
              "geometric mean of the per-round B/A times/divided by two standard errors: when it "
              "holds 1, this run cannot tell A and B apart."]
    return "\n".join(lines)


def median_ratio(xs):
    return f"{statistics.median(xs):.3f}" if xs else "-"


def ratio_list(xs):
    return ", ".join(f"{x:.3f}" for x in xs) or "-"


def geo_interval(xs):
    """The geometric mean of `xs` and about a 95 % interval for it
    (± two standard errors of the mean of the logs); "-" with < 2 values."""
    if len(xs) < 2:
        return "-"
    logs = [math.log(x) for x in xs]
    m, se = statistics.mean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    return f"{math.exp(m):.3f} ({math.exp(m - 2 * se):.3f}–{math.exp(m + 2 * se):.3f})"


def summarize(results, backends, rss, args, starts):
    """The summary tables and the verdict: True, False, or None without both
    sides to compare. `starts`: per julia-fcgi backend, what its workers
    started from."""
    both = {"php", "jl"} <= set(backends)
    lines, verdicts = speed_table(results, both)
    lines.append("")
    if "jl" in starts and "jlb" not in backends:
        lines += [f"julia-fcgi: {starts['jl']}", ""]
    if rss:
        memory, ok = memory_table(rss)
        verdicts.append(ok)
        lines += memory + [""]
    if "jl" in backends and "jla" in backends:
        lines.append(access_summary(results))
        lines.append("")
    if "jl" in backends and "jlb" in backends:
        lines.append(b_summary(results, args, starts))
        lines.append("")
    overall = ("PASS" if verdicts and all(verdicts) else "FAIL") if both else "no verdict (one backend only)"
    lines.append(f"**Overall: {overall}**")
    return "\n".join(lines), (all(verdicts) if both and verdicts else None)


def medians(results, wl, b):
    """req/s, p50 / p99 and CPU µs/req of one backend on one workload,
    medians over rounds, as table cells."""
    rs = [r for r in results if r["workload"] == wl and r["backend"] == b]
    if not rs:
        return ("-", "-", "-")
    return (f"{statistics.median(r['rps'] for r in rs):.0f}",
            f"{fmt(statistics.median(r['p50'] for r in rs))} / "
            f"{fmt(statistics.median(r['p99'] for r in rs))}",
            f"{statistics.median(r['us_per_req'] for r in rs):.0f}")


def speed_table(results, both):
    """Per workload: both sides' medians, the per-round ratios and the bar."""
    lines = ["| workload | PHP-FPM req/s | julia-fcgi req/s | PHP-FPM p50 / p99 ms "
             "| julia-fcgi p50 / p99 ms | CPU µs/req PHP-FPM / julia-fcgi "
             "| per-round ratios jl/php | median ratio | bar | result |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    verdicts = []
    for wl, label, _, _ in WORKLOADS:
        cell = {b: medians(results, wl, b) for b in ("php", "jl")}
        ratios = [r["ratio"] for r in results
                  if r["workload"] == wl and r["backend"] == "jl" and "ratio" in r]
        errors = sum(r["non2xx"] + r["sockerr"] for r in results if r["workload"] == wl)
        if both and ratios:
            med = statistics.median(ratios)
            ok = med >= RATIO_BAR and errors == 0
            res = ("PASS" if ok else "FAIL") + ("" if errors == 0 else f" ({errors} errors)")
            verdicts.append(ok)
            med_s, rat_s = f"**{med:.3f}**", ", ".join(f"{x:.3f}" for x in ratios)
        else:
            res, med_s, rat_s = "-", "-", "-"
        lines.append(f"| {label} | {cell['php'][0]} | {cell['jl'][0]} | {cell['php'][1]} | "
                     f"{cell['jl'][1]} | {cell['php'][2]} / {cell['jl'][2]} | {rat_s} | {med_s} | >= {RATIO_BAR:.1f} | {res} |")
    return lines, verdicts


def memory_table(rss):
    """The master's RSS against its bar, the rest for information."""
    ok = rss["master_rss"] is not None and rss["master_rss"] <= RSS_BAR_KIB
    lines = ["| julia-fcgi memory | value | bar | result |",
             "|---|---:|---:|---|",
             f"| master VmRSS (pid {rss['master_pid']}, after the last run) | "
             f"{rss['master_rss'] / 1024:.2f} MiB ({rss['master_rss']} kB) | <= 10 MiB | "
             f"{'PASS' if ok else 'FAIL'} |",
             f"| master VmHWM (peak) | {rss['master_hwm'] / 1024:.2f} MiB | (info) | |"]
    for pid, kib in rss["workers"]:
        lines.append(f"| worker pid {pid} VmRSS | {kib / 1024:.1f} MiB | (info) | |")
    for pid, kib in rss.get("php", []):
        lines.append(f"| (PHP-FPM pid {pid} VmRSS) | {kib / 1024:.1f} MiB | (info) | |")
    return lines, ok


def notes(results, rss):
    """What to know when reading the summary: errors, replaced workers, the
    load on the machine."""
    out = []
    errs = [r for r in results if r["non2xx"] or r["sockerr"]]
    if errs:
        out.append("Runs with errors: " + "; ".join(
            f"round {r['round']} {r['workload']} {NAMES[r['backend']]}: non-2xx {r['non2xx']}, "
            f"{r['sockerr_detail']}" for r in errs))
    if rss and rss["workers_changed"]:
        out.append("julia-fcgi workers were replaced during the runs (see .run/julia-fcgi.log).")
    heavy = [r for r in results if r["cpu_other"] > 20]
    if results:
        out.append(
            "Load: CPU % total (100 = one core, of " + str(NCPU * 100) + ") median "
            f"{statistics.median(r['cpu_total'] for r in results):.0f}; wrk itself median "
            f"{statistics.median(r['cpu_wrk'] for r in results):.0f}, nginx "
            f"{statistics.median(r['cpu_nginx'] for r in results):.0f}; other load (processes "
            f"not part of the benchmark) median {statistics.median(r['cpu_other'] for r in results):.0f}, "
            f"max {max(r['cpu_other'] for r in results):.0f}"
            + (f" -- {len(heavy)} of {len(results)} run(s) above 20: the machine was not quiet, "
               "trust the same-round ratios more than the absolute req/s." if heavy else "."))
    return out


def write_results(stamp, meta, command, args, summary, notes_, results):
    """bench/results/<stamp>.md: the command, the versions, the summary, the
    rounds and the wrk commands. Returns its path."""
    RESULTS.mkdir(exist_ok=True)
    md = RESULTS / f"{stamp}.md"
    md.write_text(
        f"# julia-fcgi vs PHP-FPM, {meta['date']}\n\n"
        f"Command: `{command}`\n\n"
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency "
        f"(warm-up {args.warmup}s before each run), {args.rounds} round(s), order alternating per round; "
        f"nginx 1 worker, unix sockets, fastcgi_keep_conn off; PHP-FPM pm=static 2 children "
        f"(OPcache on); julia-fcgi -w 2; nice {os.getpriority(os.PRIO_PROCESS, 0)}. CPU % columns: 100 = one core, measured over the run.\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in meta.items()) + "\n"
        "## Summary (medians over rounds)\n\n" + summary + "\n\n"
        + "".join(f"{n}\n\n" for n in notes_)
        + "## Rounds\n\n" + round_table(results) + "\n\n"
        "## wrk commands\n\n" + "".join(
            f"- `{c}`\n" for c in dict.fromkeys(r["cmd"] for r in results)))
    return md
