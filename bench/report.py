"""`netprobe report` on a month of 10 s intervals from 20 probes (~5 M records): time and
peak memory of the whole command (read, SLA, render). /usr/bin/time -v gives the CPU time
(the command and its read workers) and the largest single process; the memory of the
whole process tree (the command and its workers together) is sampled here from /proc.
The row fails (and `make bench` with it) over 60 s of wall time or 1 GiB of memory.

The archive is synthesized here: lines laid out exactly as Record.to_json writes them
(each kind's line is made by Record.to_json once, then its numbers substituted), in
rotated gzip files like the jsonfile sink's, with a few breaches and a stopped hour.
"""
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from netprobe.results import RESULT, Record, event, iso_time, percent, rate, seconds

INTERVAL = 10.0
DAYS = 30
LIMIT_S, LIMIT_MB = 60.0, 1024.0
FILE_LINES = 200_000          # ~64 MiB per rotated file, like the sink's default


def _template(rec):
    """Record -> a %-format line: every float field 7.25 + k becomes a slot, ts a slot."""
    line = rec.to_json().replace("%", "%%")
    line = line.replace(json.dumps(iso_time(rec.ts)), '"%s"')
    return re.sub(r"(?<=:)7\.25\d*(?=[,}])", "%.6g", line)


def templates():
    """(kind, template, columns) per record of one interval: 6 throughput x 2 directions,
    6 oneway, 1 capacity, 1 host = 20 probes, 20 records."""
    out = []
    for i in range(6):
        for d in ("a->b", "b->a"):
            f = {"dir": d, "sla_rate": rate(1e9), "rate": rate(7.25), "ratio": 7.25, "rtt": seconds(7.25),
                 "rtt_p50": seconds(7.25), "rtt_p99": seconds(7.25), "min_rtt": seconds(0.0002), "retrans": 3,
                 "retrans_pct": percent(7.25), "fitness": 0.99, "angle": 0.01, "limited_by": "pacer",
                 "window": seconds(10), "samples": 1000, "retrans_total": 12, "timer_overruns": 0,
                 "late_ticks": 1, "eagain": 0}
            out.append(("throughput", _template(Record(RESULT, "throughput", f"tput-{i}", f, 0.0)),
                        ("rate", "ratio", "rtt", "rtt_p50", "rtt_p99", "retrans_pct")))
    for i in range(6):
        f = {"peer": "10.0.0.2:7171", "interval_id": 1, "ports": 21, "sent": 10000, "received": 9990, "lost": 10,
             "loss": percent(7.25), "dup": 0, "reordered": 0, "delay_p50": seconds(7.25),
             "delay_p99": seconds(7.25), "delay_mean": seconds(0.001), "delay_min": seconds(0.0005),
             "delay_max": seconds(0.01), "delay_samples": 10000, "delay_from_kernel_tx": 10000,
             "clock_synced": True, "delay_bound": seconds(7.25), "clock_error": seconds(0.0001),
             "peer_clock_error": seconds(0.0001)}
        out.append(("oneway", _template(Record(RESULT, "oneway", f"ow-{i}", f, 0.0)),
                    ("loss", "delay_p50", "delay_p99", "delay_bound")))
    f = {"capacity": rate(7.25), "ci_lo": rate(7.25), "ci_hi": rate(7.25), "range": "940M-960M",
         "adr": rate(9e8), "confidence": 0.9, "method": "mode", "trains": 20}
    out.append(("capacity", _template(Record(RESULT, "capacity", "cap-0", f, 0.0)), ("capacity", "ci_lo", "ci_hi")))
    f = {"timer_interval": seconds(0.001), "ticks": 10000, "late_p50": seconds(7.25), "late_p99": seconds(7.25),
         "late_p999": seconds(0.001), "late_max": seconds(0.002), "overruns": 0, "missed": 0,
         "clock_synced": True, "clock_maxerror": seconds(7.25), "clock_esterror": seconds(0.0001),
         "clocksource": "tsc", "steal": percent(0.0)}
    out.append(("host", _template(Record(RESULT, "host", "self", f, 0.0)),
                ("late_p50", "late_p99", "clock_maxerror")))
    return out


def _values(kind, n, rng):
    """Plausible columns for n intervals."""
    if kind == "throughput":
        r = rng.normal(0.98e9, 1e7, n)
        return [r, r / 1e9, rng.gamma(2, 1e-4, n), rng.gamma(2, 1e-4, n), rng.gamma(4, 1e-4, n),
                rng.exponential(0.05, n)]
    if kind == "oneway":
        return [rng.exponential(0.05, n), rng.gamma(2, 2e-4, n), rng.gamma(4, 4e-4, n), np.full(n, 2e-4)]
    if kind == "capacity":
        c = rng.normal(9.5e8, 5e6, n)
        return [c, c - 1e7, c + 1e7]
    return [rng.gamma(2, 2e-5, n), rng.gamma(4, 5e-5, n), rng.gamma(2, 1e-4, n)]


def synthesize(directory, days=DAYS, interval=INTERVAL, seed=1):
    """Write the archive; returns the number of records."""
    rng = np.random.default_rng(seed)
    start = 1_795_000_000.0
    n = int(days * 86400 / interval)
    stopped = (n // 2, n // 2 + int(3600 / interval))     # the daemon stopped for an hour mid-month
    tpls = templates()
    cols = [_values(kind, n, rng) for kind, _, _ in tpls]
    header = json.dumps({"type": "HEADER", "version": "bench", "started": iso_time(start),
                         "config_effective": {"probe": [
                             *({"kind": "throughput", "name": f"tput-{i}", "interval": interval, "rate": 1e9,
                                "min_ratio": 0.95, "max_rtt": 0.001} for i in range(6)),
                             *({"kind": "oneway", "name": f"ow-{i}", "interval": interval, "max_loss_pct": 0.5,
                                "max_delay_p99": 0.005} for i in range(6)),
                             {"kind": "capacity", "name": "cap-0", "interval": interval},
                             {"kind": "host", "name": "self", "interval": interval}]}},
                        separators=(",", ":"))
    stamps = [iso_time(start + (i + 1) * interval) for i in range(n)]
    events = [event(k, "throughput", "tput-0", metric="rate", value=rate(5e8), op=">=", threshold=rate(9.5e8),
                    window=seconds(10), dir="a->b", ts=start + t * interval).to_json()
              for k, t in (("BREACH", n // 4), ("CLEAR", n // 4 + 60))]
    count, part, buf = 0, 0, []

    def spill():
        nonlocal part, buf
        name = os.path.join(directory, f"results.json.{part:08d}T000000Z.gz")
        with gzip.open(name, "wb", compresslevel=1) as fh:
            fh.write(("\n".join([header, *buf]) + "\n").encode())
        part, buf = part + 1, []

    for i in range(n):
        if stopped[0] <= i < stopped[1]:
            continue
        ts = stamps[i]
        for (_, tpl, _), c in zip(tpls, cols, strict=True):
            buf.append(tpl % (ts, *(col[i] for col in c)))
        count += len(tpls)
        if i in (n // 4, n // 4 + 60):
            buf.append(events.pop(0))
        if len(buf) >= FILE_LINES:
            spill()
    spill()
    return count


def _tree_rss(root):
    """Resident bytes of `root` and all its descendants (from /proc; 0 for one that just left)."""
    children, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/statm") as fh:
                pages = int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


def measure(directory, out):
    """Run `netprobe report` under /usr/bin/time -v: (wall s, CPU s, peak MiB of the process tree,
    peak MiB of its largest process, exit code, stderr tail). CPU time is given beside the wall
    time: on a shared host the wall time measures the others too."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "netprobe", "report", directory, "-o", out]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    try:
        while p.poll() is None and time.monotonic() - t0 < 600:
            peak = max(peak, _tree_rss(p.pid))
            time.sleep(0.05)
        _, err = p.communicate(timeout=max(1.0, 600 - (time.monotonic() - t0)))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    wall = time.monotonic() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", err))
    largest = int(m.group(1)) / 1024 if m else float("nan")
    return wall, cpu, peak / 2**20, largest, p.returncode, err.strip()[-300:]


def run(quick=False):
    days = 3 if quick else DAYS
    with tempfile.TemporaryDirectory(prefix="netprobe-bench-report-") as d:
        t0 = time.monotonic()
        n = synthesize(d, days=days)
        made = time.monotonic() - t0
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        load = os.getloadavg()[0]
        wall, cpu, rss, largest, rc, err = measure(d, os.path.join(d, "report.html"))
    row = {"case": f"{days} days x 20 probes, 10 s intervals", "records": n, "gz_MiB": round(size / 2**20, 1),
           "synth_s": round(made, 1), "report_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "load_before": round(load, 1), "peak_rss_MiB": round(rss, 1), "largest_process_MiB": round(largest, 1),
           "exit": rc, "within": bool(rc == 0 and wall < LIMIT_S and rss < LIMIT_MB)}
    if rc:
        row["stderr"] = err
    return [row]


def table(rows):
    lines = [f"{'case':40} {'records':>9} {'gz MiB':>7} {'wall s':>7} {'CPU s':>6} {'load':>5} {'peak MiB':>9} "
             f"{'largest':>8}  limit {LIMIT_S:.0f} s wall, {LIMIT_MB:.0f} MiB (all processes)"]
    for r in rows:
        lines.append(f"{r['case']:40} {r['records']:>9} {r['gz_MiB']:>7} {r['report_s']:>7} {r['cpu_s']:>6} "
                     f"{r['load_before']:>5} {r['peak_rss_MiB']:>9} {r['largest_process_MiB']:>8}  "
                     f"{'ok' if r['within'] else 'OVER' if not r['exit'] else 'FAILED: ' + r.get('stderr', '')}")
    return "\n".join(lines)
