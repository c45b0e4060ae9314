"""`netprobe report` on what the daemon wrote in the netns lab while R injected a rate
limit (A -> B), then delay and loss (A -> B), then a lower bottleneck (B -> A), at known
times, for the throughput, oneway and capacity probes. Oracles: the test's own clock for
when each impairment was on, and the compliance computed here from the archive's RESULT
lines."""
import bisect
import gzip
import json
import math
import os
import subprocess
import sys
import time

import pytest

from netprobe.report.read import iso_to_unix

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
IV = 1.0
# a RESULT is stamped when its interval's figures are in: for oneway after the peer's grace
# (0.3 s) and the reply; the stamp of the interval that saw an edge may be that late
SLACK = 0.8
# throughput judges a sliding window: it reads below the SLA until the window has left the
# limited time; and after the tbf is deleted TCP recovers from the dropped backlog by a
# retransmission timeout (up to ~2 s)
WINDOW, TCP_RECOVERY = 3.0, 2.5
# the capacity probe measures B -> A through a one-frame token bucket on R (what it can see as a
# bottleneck): 80 Mbit/s normally, 20 Mbit/s while its breach is injected. An estimate every few
# seconds (trains for 30 % of the time): the throughput probe's ACKs cross the same bucket
WIRE, CAP_RATE, CAP_LOW, CAP_SLA = 1514, "80mbit", "20mbit", 50e6

CONFIG = """
[daemon]
log_level = "warning"

[[probe]]
kind = "throughput"
name = "wan"
peer = "{peer}"
rate = "40M"
interval = "1s"
window = "3s"
breach_after = 2
clear_after = 2

[[probe]]
kind = "oneway"
name = "wan-owd"
peer = "{peer}"
ecmp_width = 2
gap = "2ms"
interval = "1s"
grace = "300ms"
breach_after = 2
clear_after = 2
max_loss_pct = 2.0
max_delay_p99 = "15ms"
per_port = true

[[probe]]
kind = "capacity"
name = "wan-cap"
peer = "{peer}"
every = "3s"
max_load = 30.0
max_bytes = 3000000
max_time = "8s"
min_capacity = "50M"
breach_after = 1
clear_after = 1

[output.jsonfile]
path = "{path}"
rotate_size = "64K"
"""


def netprobe(*args):
    return [PY, "-m", "netprobe", *map(str, args)]


def archive_records(directory):
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt") as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out


def oracle(results, judged, good, first=None, restarts=()):
    """(measured, held) seconds: each RESULT covers the interval before its stamp, never
    overlapping the one before; with `first` (capacity, a RESULT per estimate), the time
    since the previous RESULT or the latest of `restarts` (GAP ends) after it, the first
    since `first`."""
    measured = held = 0.0
    prev = first
    for r in sorted(results, key=lambda r: r["ts"]):
        t = iso_to_unix(r["ts"])
        if first is not None:
            span = t - max([prev] + [g for g in restarts if prev < g < t])
        else:
            span = IV if prev is None else min(IV, t - prev)
        prev = t
        if judged(r):
            measured += span
            held += span if good(r) else 0.0
    return measured, held


@pytest.mark.lab
def test_lab_breaches_and_compliance_in_the_report(make_lab, tmp_path):
    lab = make_lab(offload="off")
    base = {"rate_ba": CAP_RATE, "burst_ba": WIRE}      # the capacity probe's bottleneck, always there
    lab.set(**base)
    serve = lab.popen("b", netprobe("serve", "--listen", f"{lab.b4}:7171", "--allow", "198.18.0.0/15",
                                    "--duration", "120s"), cwd=ROOT)
    end = time.monotonic() + 15
    while ":7171" not in lab.run("b", ["ss", "-ltnH"], check=False).stdout:
        assert time.monotonic() < end, "peer in B did not come up"
        time.sleep(0.1)
    out = tmp_path / "archive"
    out.mkdir()
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text(CONFIG.format(peer=f"{lab.b4}:7171", path=out / "results.json"))
    daemon = lab.popen("a", netprobe("run", "-c", cfg, "--duration", "62s"), cwd=ROOT)
    try:
        time.sleep(7)
        lab.set(rate_ab="15mbit", **base)
        rate_on = time.time()
        time.sleep(8)
        lab.set(**base)
        rate_off = time.time()
        time.sleep(9)                     # the window, TCP's recovery and clear_after: the breach ends first
        lab.set(delay_ab=40, loss_ab=10, **base)
        owd_on = time.time()
        time.sleep(6)
        lab.set(**base)
        owd_off = time.time()
        time.sleep(8)                     # a few capacity estimates at the normal bottleneck
        lab.set(rate_ba=CAP_LOW, burst_ba=WIRE)
        cap_on = time.time()
        time.sleep(14)
        lab.set(**base)
        cap_off = time.time()
        daemon.wait(timeout=60)
    finally:
        lab.clear()
        if daemon.poll() is None:
            daemon.kill()
        serve.kill()
    assert daemon.returncode == 0, daemon.stderr.read() if daemon.stderr else ""

    p = subprocess.run(netprobe("report", out, "--json", "-o", tmp_path / "report.html"), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    rep = json.loads(p.stdout)

    recs = archive_records(out)
    tput = [r for r in recs if r["type"] == "RESULT" and r["probe"] == "throughput" and r["dir"] == "a->b"]
    owd = [r for r in recs if r["type"] == "RESULT" and r["probe"] == "oneway" and "port" not in r]
    cap = sorted((r for r in recs if r["type"] == "RESULT" and r["probe"] == "capacity"), key=lambda r: r["ts"])
    # capacity writes a RESULT per estimate: each covers the time since the previous one (the
    # first: since the daemon started); "one interval" at an edge is the span of the estimate
    # that was running (or about to start) when the impairment changed
    (started,) = {iso_to_unix(r["started"]) for r in recs if r["type"] == "HEADER"}
    cap_ts = [iso_to_unix(r["ts"]) for r in cap]
    print("capacity estimates (Mbit/s):", ", ".join(f"{(r['capacity'] or math.nan) / 1e6:.1f}" for r in cap))
    gaps = [r for r in recs if r["type"] == "GAP"]
    for r in gaps + [r for r in recs if r["type"] == "ERROR"]:
        print(r)                # a loaded host may stall a worker: what the archive says of it
    cap_restarts = [iso_to_unix(g["end"]) for g in gaps if g["name"] == "wan-cap"]
    # a worker the supervisor found frozen on a starved host is the host's doing; one that died is not
    crashed = [r for r in recs if r["type"] == "ERROR" and ("exited with code" in r.get("error", "")
                                                          or "killed by SIG" in r.get("error", ""))]
    assert not crashed, crashed

    def cap_span(t):
        j = bisect.bisect_right(cap_ts, t)
        assert 0 < j < len(cap_ts), (t, cap_ts)
        return cap_ts[j] - cap_ts[j - 1]

    def breach(name, path, metric, on, off, recovery=0.0, iv_on=IV, iv_off=IV):
        rows = [b for b in rep["breaches"] if (b["name"], b["path"], b["metric"]) == (name, path, metric)
                and b["end"] is not None and iso_to_unix(b["start"]) < off and iso_to_unix(b["end"]) > on]
        assert len(rows) == 1, (name, metric, rep["breaches"])
        start, stop = iso_to_unix(rows[0]["start"]), iso_to_unix(rows[0]["end"])
        assert on - iv_on - SLACK <= start <= on + iv_on + SLACK, (rows[0], on)
        assert off - iv_off - SLACK <= stop <= off + iv_off + SLACK + recovery, (rows[0], off)

    breach("wan", "a->b", "rate", rate_on, rate_off, recovery=WINDOW + TCP_RECOVERY)
    breach("wan-owd", "", "delay_p99", owd_on, owd_off)
    breach("wan-owd", "", "loss", owd_on, owd_off)
    breach("wan-cap", "", "capacity", cap_on, cap_off, iv_on=cap_span(cap_on), iv_off=cap_span(cap_off))
    want = {
        ("wan", "a->b", "rate"): oracle(tput, lambda r: r.get("ratio") is not None and r["limited_by"] != "sender",
                                        lambda r: r["ratio"] >= 0.95),
        ("wan-owd", "", "loss"): oracle(owd, lambda r: r.get("loss") is not None, lambda r: r["loss"] <= 2.0),
        ("wan-owd", "", "delay_p99"): oracle(owd, lambda r: r.get("delay_p99") is not None,
                                             lambda r: r["delay_p99"] <= 0.015),
        ("wan-cap", "", "capacity"): oracle(cap, lambda r: r.get("capacity") is not None,
                                            lambda r: r["capacity"] >= CAP_SLA, started, cap_restarts),
    }
    got = {(p_["name"], p_["path"], c["metric"]): c for p_ in rep["paths"] for c in p_["compliance"]}
    for key, (measured, held) in want.items():
        c = got[key]
        assert c["measured_s"] == pytest.approx(measured, abs=2e-3), key
        assert c["held_s"] == pytest.approx(held, abs=2e-3), key
        assert 0 < held < measured, key                       # the injected impairments cost compliance
    # the heatmap had per-port rows to draw
    assert len({r["port"] for r in recs if r["type"] == "RESULT" and "port" in r}) >= 2
