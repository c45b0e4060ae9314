"""Capacity estimates against tbf bottlenecks with a one-frame bucket (--burst 1514), in the netns lab.

For each rate (10 to 200 Mbit/s, round and not) and run: the L2 rate a 3 s UDP flow of
full-size frames gets through the same tbf (iperf3: on a busy host the flow, not the
configured rate, is the ground truth), then `netprobe probe capacity` in quick mode (and in full mode with --full).
Figures: our estimate, its error against the configured rate and against the UDP flow, the
share of runs within 5 % of each, confidence, method, time, probe bytes on R's qdisc; and, from
the same run's raw timestamps, what loco's formula (8 * max size * L / dispersion, no headers)
makes of the same max-size pairs: pathrate and loco themselves are not packaged for Debian.
Root only (network namespaces).
"""
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RATES = ("10mbit", "23.5mbit", "47mbit", "100mbit", "137mbit", "200mbit")
QUICK_RATES = ("23.5mbit", "100mbit", "137mbit")
WIRE, PAYLOAD = 1514, 1472


def _loco(record):
    """loco 0.4's reading of our max-size pairs: 8 * max_size * L / dispersion (its L, not L - 1)."""
    from netprobe.probes.capacity import analysis
    from netprobe.probes.capacity.runner import load_record
    rx, plan, meta = load_record(record)
    m = analysis.measure(rx, plan, ip_udp=meta["ip_udp"], overhead=meta["overhead"])
    ok = (m.n == 2) & (m.size == meta["max_size"]) & (m.disp_ns > 0)
    return float(np.median(8 * meta["max_size"] * 2 / (m.disp_ns[ok] / 1e9))) if ok.any() else float("nan")


def run(quick=False, full_mode=False):
    sys.path.insert(0, str(ROOT))
    from tests.integration.test_capacity_lab import probe, serve_in_b, udp_oracle
    from tests.lab import netlab
    if os.geteuid() != 0:
        return [{"error": "needs root (network namespaces)"}]
    runs = 2 if quick else 5
    rows = []
    lab = netlab.Lab()
    try:
        lab.up(offload="off")
        serve_in_b(lab)
        for r in (QUICK_RATES if quick else RATES):
            for mode in (("quick", "full") if full_mode else ("quick",)):
                for i in range(runs):
                    lab.set(rate_ba=r, burst_ba=WIRE)
                    configured = netlab.rate_bps(r)
                    oracle = udp_oracle(lab, configured)
                    with tempfile.TemporaryDirectory() as tmp:
                        rec = os.path.join(tmp, "run.npz")
                        recs, took, wire = probe(lab, "--mode", mode, "--record", rec, timeout=180)
                        loco = _loco(rec) if os.path.exists(rec) else float("nan")
                    res = next((x for x in recs if x["type"] == "RESULT"), {})
                    cap = res.get("capacity") or float("nan")
                    rows.append({"rate": r, "mode": mode, "run": i, "configured": configured, "udp_flow": oracle,
                                 "capacity": cap, "adr": res.get("adr"), "confidence": res.get("confidence"),
                                 "method": res.get("method"), "seconds": round(took, 1), "wire_bytes": wire,
                                 "loco_formula": loco, "err_configured": cap / configured - 1,
                                 "err_udp": cap / oracle - 1})
                    time.sleep(0.2)
    finally:
        lab.down()
    return rows


def table(rows):
    if rows and "error" in rows[0]:
        return rows[0]["error"]
    out = [f"{'rate':>9} {'mode':>5} {'runs':>4} {'UDP flow':>9} {'ours (median)':>13} {'vs rate':>8} "
           f"{'<=5% rate':>9} {'vs flow':>8} {'<=5% flow':>9} {'ADR':>7} {'loco fmt':>8} {'conf':>14} "
           f"{'s max':>6} {'MB max':>6}"]
    keys = sorted({(r["rate"], r["mode"]) for r in rows}, key=lambda k: (float(k[0].rstrip("mbit")), k[1]))
    for rate, mode in keys:
        g = [r for r in rows if (r["rate"], r["mode"]) == (rate, mode)]
        caps = [r["capacity"] for r in g]
        within_rate = sum(abs(r["err_configured"]) <= 0.05 for r in g)
        within_flow = sum(abs(r["err_udp"]) <= 0.05 for r in g)
        conf = ",".join(sorted({f"{r['confidence']}/{r['method']}" for r in g}))
        out.append(f"{rate:>9} {mode:>5} {len(g):>4} {statistics.median(r['udp_flow'] for r in g) / 1e6:>9.2f} "
                   f"{statistics.median(caps) / 1e6:>13.2f} {statistics.median(r['err_configured'] for r in g):>+8.1%} "
                   f"{within_rate:>4}/{len(g):<4} {statistics.median(r['err_udp'] for r in g):>+8.1%} "
                   f"{within_flow:>4}/{len(g):<4} {statistics.median(r['adr'] or 0 for r in g) / 1e6:>7.2f} "
                   f"{statistics.median(r['loco_formula'] for r in g) / 1e6:>8.1f} {conf:>14} "
                   f"{max(r['seconds'] for r in g):>6.1f} {max(r['wire_bytes'] for r in g) / 1e6:>6.2f}")
    n = len(rows)
    ok_rate = sum(abs(r["err_configured"]) <= 0.05 for r in rows)
    ok10 = sum(abs(r["err_configured"]) <= 0.10 for r in rows)
    out.append(f"all runs: {ok_rate}/{n} within 5 % of the configured rate, {ok10}/{n} within 10 %; "
               f"{sum(abs(r['err_udp']) <= 0.05 for r in rows)}/{n} within 5 % of the UDP flow")
    return "\n".join(out)


if __name__ == "__main__":
    rows = run(quick="--quick" in sys.argv, full_mode="--full" in sys.argv)
    print(json.dumps(rows, indent=1) if "--json" in sys.argv else table(rows))
