"""Timer wake-up lateness at 1 ms: netprobe's timerfd loop beside a plain Python
select() loop with absolute deadlines and irtt's own `irtt sleep` test, in one run.

irtt prints only a mean error per sleep length, so that is the figure compared
with irtt; the percentiles are compared with the Python loop.
"""
import re
import select
import shutil
import subprocess
import time

import numpy as np

from netprobe.selftest import timer_selftest

INTERVAL = 0.001


def python_select_loop(interval, duration):
    """Lateness (ns) of select() wake-ups against an absolute 1 ms schedule."""
    n = int(duration / interval)
    late = np.empty(n, dtype=np.int64)
    start = time.monotonic_ns()
    step = round(interval * 1e9)
    for i in range(n):
        due = start + (i + 1) * step
        wait = (due - time.monotonic_ns()) / 1e9
        if wait > 0:
            select.select([], [], [], wait)
        late[i] = time.monotonic_ns() - due
    return late


def irtt_sleep_mean_1ms():
    """Mean error of irtt's 1 ms sleep (ns), or None without irtt."""
    if not shutil.which("irtt"):
        return None
    out = subprocess.run(["irtt", "sleep"], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"^\s*1ms\s+([0-9.]+)(ns|µs|ms)", out, re.MULTILINE)
    if not m:
        return None
    return float(m.group(1)) * {"ns": 1, "µs": 1e3, "ms": 1e6}[m.group(2)]


def _pcts(late_ns):
    return {"p50": float(np.percentile(late_ns, 50)), "p99": float(np.percentile(late_ns, 99)),
            "p999": float(np.percentile(late_ns, 99.9)), "max": float(late_ns.max()),
            "mean": float(late_ns.mean())}


def run(quick=False):
    duration = 2.0 if quick else 5.0
    ours = timer_selftest(INTERVAL, duration)
    py = _pcts(python_select_loop(INTERVAL, duration))
    irtt_mean = irtt_sleep_mean_1ms()
    lat = ours["lateness_ns"]
    rows = [
        {"tool": "netprobe selftest timer (timerfd)", **{k: lat[k] for k in ("p50", "p99", "p999", "max", "mean")},
         "overruns": ours["overruns"], "ticks": ours["ticks"]},
        {"tool": "python select() loop", **py},
        {"tool": "irtt sleep 1ms (mean only)", "mean": irtt_mean},
    ]
    return rows


def table(rows):
    def us(v):
        return f"{'-':>9}" if v is None else f"{v / 1e3:9.1f}"
    ours, py, irtt = rows
    lines = [f"{'1 ms timer lateness (us)':36} {'p50':>9} {'p99':>9} {'p99.9':>9} {'max':>9} {'mean':>9}"]
    for r in rows:
        lines.append(f"{r['tool']:36} " + " ".join(us(r.get(k)) for k in ("p50", "p99", "p999", "max", "mean")))
    if py["p99"]:
        lines.append(f"ratio ours/python: p50 {ours['p50'] / max(py['p50'], 1):.2f}, "
                     f"p99 {ours['p99'] / max(py['p99'], 1):.2f}")
    if irtt.get("mean"):
        lines.append(f"ratio ours/irtt (mean): {ours['mean'] / irtt['mean']:.2f}")
    lines.append(f"overruns counted by netprobe: {ours['overruns']} in {ours['ticks']} ticks")
    return "\n".join(lines)
