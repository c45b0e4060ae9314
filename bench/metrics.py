"""[output.prometheus]: scrape time and CPU of a daemon's worth of series.

A PrometheusSink with its real HTTP listener is fed the records of 20 probes per
interval (1 host, 4 throughput, 4 flows with 3 groups, 11 oneway), then scraped over
HTTP like Prometheus does. Two cases: one oneway probe reporting per port (115 ports,
`ports = "auto"` for 16 ECMP paths), and the worst case where all 11 do. The CPU a
scrape adds is the process CPU time of a scrape (the listener thread included) over a
15 s scrape interval; the CPU of taking one interval's records in is reported beside it.
Wall times include waiting for a CPU: the row keeps the load average it ran under, and
the least CPU a scrape took (what an idle core would need).
"""
import os
import time
import urllib.request

import numpy as np

from netprobe.config.schema import Where, build
from netprobe.outputs.prometheus import PrometheusConfig, PrometheusSink
from netprobe.results import RESULT, Record, percent, rate, seconds

SCRAPE_INTERVAL = 15.0
PORTS = 115


def _host(name):
    return Record(RESULT, "host", name, {
        "timer_interval": seconds(1e-3), "ticks": 10000, "late_p50": seconds(3e-5), "late_p99": seconds(1.2e-4),
        "late_p999": seconds(3e-4), "late_max": seconds(8e-4), "overruns": 3, "missed": 2, "clock_synced": True,
        "clock_maxerror": seconds(0.01), "clock_esterror": seconds(0.001), "clocksource": "tsc",
        "steal": percent(0.1)})


def _throughput(name, d):
    return Record(RESULT, "throughput", name, {
        "dir": d, "sla_rate": rate(1e9), "rate": rate(9.9e8), "ratio": 0.99, "rtt": seconds(2e-3),
        "rtt_p50": seconds(1.9e-3), "rtt_p99": seconds(4e-3), "min_rtt": seconds(1.5e-3), "retrans": 3,
        "retrans_pct": percent(0.01), "fitness": 0.98, "angle": 0.01, "limited_by": "none", "window": seconds(10),
        "samples": 100, "retrans_total": 1234, "timer_overruns": 5, "late_ticks": 7, "eagain": 0})


def _flows(name):
    out = [Record(RESULT, "flows", name, {
        "scope": "group", "group": g, "flows": 40, "rtt_p50": seconds(2e-3), "rtt_p99": seconds(9e-3),
        "retrans": 12, "retrans_pct": percent(0.2), "rcv_ooopack": 1, "rcv_ooo_pct": percent(0.01),
        "window": seconds(10)}) for g in ("web", "app", "all")]
    out.append(Record(RESULT, "flows", name, {
        "scope": "sampler", "dumps": 10, "sockets": 120, "tracked": 120, "stored": 120, "flows_written": 3,
        "dump_p50": seconds(4e-4), "dump_max": seconds(9e-4), "track_p50": seconds(2e-4), "cpu": percent(0.5),
        "late": 0, "errors": 0, "overflow": 0, "malformed": 0, "truncated": 0, "dump_intr": 0, "filtered": 0,
        "window": seconds(10)}))
    return out


def _oneway(name, per_port):
    peer = "192.0.2.10:7171"
    out = [Record(RESULT, "oneway", name, {
        "peer": peer, "interval_id": 7, "ports": PORTS, "sent": 10000, "received": 9990, "lost": 10,
        "loss": percent(0.1), "dup": 0, "reordered": 2, "delay_p50": seconds(5e-3), "delay_p99": seconds(7e-3),
        "delay_mean": seconds(5.1e-3), "delay_min": seconds(4.8e-3), "delay_max": seconds(9e-3),
        "delay_samples": 9990, "delay_from_kernel_tx": 9990, "clock_synced": True, "delay_bound": seconds(2e-3),
        "clock_error": seconds(1e-3), "peer_clock_error": seconds(1e-3), "worst_port": 40007,
        "worst_port_loss": percent(2.0), "late_arrivals": 0, "malformed": 0, "unauthenticated": 0,
        "unknown_session": 0, "receiver_overrun": 0, "send_errors": 0, "send_late_p50": seconds(3e-5),
        "send_late_p99": seconds(1e-4)})]
    if per_port:
        out += [Record(RESULT, "oneway", name, {
            "peer": peer, "interval_id": 7, "port": 40000 + p, "sent": 87, "received": 87, "lost": 0,
            "loss": percent(0.0), "dup": 0, "reordered": 0, "delay_mean": seconds(5e-3),
            "delay_p99": seconds(7e-3), "delay_max": seconds(8e-3)}) for p in range(PORTS)]
    return out


def interval_records(per_port_probes):
    recs = [_host("self")]
    for i in range(4):
        recs += [_throughput(f"tp{i}", "a->b"), _throughput(f"tp{i}", "b->a")]
        recs += _flows(f"fl{i}")
    for i in range(11):
        recs += _oneway(f"ow{i}", i < per_port_probes)
    return recs


def _measure(per_port_probes, scrapes):
    sink = PrometheusSink(build(PrometheusConfig, {"listen": "127.0.0.1:0"}, Where("bench", "output.prometheus")))
    sink.start({"host": {"hostname": "bench", "kernel": "x", "clocksource": "tsc"}})
    try:
        recs = interval_records(per_port_probes)
        c0 = time.process_time()
        for r in recs:
            sink.write(r)
        feed_cpu = time.process_time() - c0
        url = f"http://127.0.0.1:{sink.server.port}/metrics"
        wall, cpu, size = [], [], 0
        for _ in range(scrapes):
            c0, t0 = time.process_time(), time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            size = len(body)
        samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    finally:
        sink.close()
    return {"case": f"20 probes, {per_port_probes} oneway per port ({PORTS} ports)", "records": len(recs),
            "samples": samples, "bytes": size,
            "scrape_ms_p50": 1e3 * float(np.median(wall)), "scrape_ms_max": 1e3 * float(max(wall)),
            "cpu_ms_per_scrape": 1e3 * float(np.median(cpu)), "cpu_ms_min": 1e3 * float(min(cpu)),
            "cpu_pct_at_15s": 100 * float(np.median(cpu)) / SCRAPE_INTERVAL,
            "feed_ms_per_interval": 1e3 * feed_cpu, "loadavg_1m": os.getloadavg()[0]}


def run(quick=False):
    scrapes = 10 if quick else 50
    return [_measure(1, scrapes), _measure(11, scrapes)]


def table(rows):
    head = f"{'case':<44} {'samples':>8} {'KB':>6} {'scrape p50':>11} {'max':>8} {'CPU/scrape':>11} {'min':>7} " \
           f"{'CPU @15s':>9} {'feed/interval':>14} {'load':>5}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['case']:<44} {r['samples']:>8} {r['bytes'] / 1024:>6.0f} {r['scrape_ms_p50']:>9.1f}ms "
                     f"{r['scrape_ms_max']:>6.1f}ms {r['cpu_ms_per_scrape']:>9.1f}ms {r['cpu_ms_min']:>5.1f}ms "
                     f"{r['cpu_pct_at_15s']:>8.3f}% "
                     f"{r['feed_ms_per_interval']:>12.1f}ms {r['loadavg_1m']:>5.1f}")
    return "\n".join(lines)
