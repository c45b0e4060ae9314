"""One host running the oneway kind against 200 peers: one worker (`peers = [...]`), 10 probes/s
per peer over 16 source ports each, peers on loopback addresses 127.0.1.1 .. 127.0.1.200 (four
`netprobe serve` processes, 50 listen addresses each).

Figures, from /proc (not from netprobe): the worker's CPU (utime + stime over the measured
stretch, after every session opened) and its peak RSS (VmHWM); from the records: whether every
peer had a RESULT for every interval (interval ids without a hole, no two results of a peer
further apart than 1.5 intervals), the probes sent and lost in all, and how late the one send
thread sent them (each interval's send_late_p99, median and worst over all peers' intervals).
"""
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time

PEERS = 200
SERVES = 4
GAP = "100ms"                   # 10 probes/s per peer
PORTS = "40000-40015"           # 16 source ports, the same for every peer
INTERVAL = 2.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _netprobe(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "netprobe", *args], cwd=ROOT, **kw)


def _cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK        # utime + stime


def _hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _workers(pid):
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "netprobe.supervisor.worker" in line]


def _ts(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _wait_listening(addr, port, until):
    while time.monotonic() < until:
        try:
            socket.create_connection((addr, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def run(quick=False):
    seconds = 16.0 if quick else 30.0
    port = _free_port()
    addrs = [f"127.0.1.{i}" for i in range(1, PEERS + 1)]
    serves, probe = [], None
    try:
        for k in range(SERVES):
            listen = [a for addr in addrs[k::SERVES] for a in ("--listen", f"{addr}:{port}")]
            serves.append(_netprobe("serve", *listen, "--max-sessions", str(PEERS), "--max-sessions-per-address",
                                    str(PEERS), "--duration", f"{seconds + 30:g}s",
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        until = time.monotonic() + 30
        if not all(_wait_listening(a, port, until) for a in addrs[:SERVES]):
            raise RuntimeError("the peers did not start listening")
        spec = ",".join(f"p{i + 1}={addr}:{port}" for i, addr in enumerate(addrs))
        probe = _netprobe("probe", "oneway", "--json", "--name", "fleet", "--peers", spec, "--gap", GAP,
                          "--ports", PORTS, "--interval", f"{INTERVAL:g}s", "--duration", f"{seconds:g}s",
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        t_start = time.monotonic()
        time.sleep(4.0)                      # start-up: imports, 200 handshakes
        workers = _workers(probe.pid)
        worker = workers[0] if len(workers) == 1 else None
        c0, t0 = (_cpu_s(worker), time.monotonic()) if worker else (None, None)
        time.sleep(max(1.0, seconds - 2.0 - (time.monotonic() - t_start)))
        c1, t1 = (_cpu_s(worker), time.monotonic()) if worker else (None, None)
        hwm = _hwm_kb(worker) if worker else None
        out, _ = probe.communicate(timeout=seconds + 60)
    finally:
        for p in [probe, *serves]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    by_peer = {}
    for line in out.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("type") == "RESULT" and r.get("probe") == "oneway":
                by_peer.setdefault(r["name"], []).append(r)
    holes = 0
    for res in by_peer.values():
        ids = [r["interval_id"] for r in res]
        ts = [_ts(r["ts"]) for r in res]
        if ids != list(range(len(ids))) or any(b - a > 1.5 * INTERVAL for a, b in zip(ts, ts[1:], strict=False)):
            holes += 1
    counts = [len(v) for v in by_peer.values()] or [0]
    late = [r["send_late_p99"] for v in by_peer.values() for r in v if r.get("send_late_p99") is not None] or [0]
    return [{"peers": PEERS, "ports_per_peer": 16, "probes_per_s_per_peer": 10, "seconds": seconds,
             "interval_s": INTERVAL, "workers": len(workers),
             "worker_cpu_pct": None if worker is None else 100.0 * (c1 - c0) / (t1 - t0),
             "worker_rss_mb": None if hwm is None else hwm / 1024.0,
             "peers_reporting": len(by_peer), "peers_with_a_hole": holes,
             "intervals_min": min(counts), "intervals_max": max(counts),
             "send_late_p99_ms_median": 1e3 * statistics.median(late), "send_late_p99_ms_max": 1e3 * max(late),
             "sent": sum(r["sent"] for v in by_peer.values() for r in v),
             "lost": sum(r["lost"] for v in by_peer.values() for r in v)}]


def table(rows):
    lines = [f"{'oneway, one host':28} {'peers':>6} {'workers':>8} {'CPU %':>7} {'RSS MB':>7} "
             f"{'reporting':>10} {'holes':>6} {'intervals':>10} {'sent':>8} {'lost':>6} {'late p99 ms':>12}"]
    for r in rows:
        cpu = "-" if r["worker_cpu_pct"] is None else f"{r['worker_cpu_pct']:.1f}"
        rss = "-" if r["worker_rss_mb"] is None else f"{r['worker_rss_mb']:.0f}"
        lines.append(f"{'10/s x 16 ports per peer':28} {r['peers']:6} {r['workers']:8} {cpu:>7} {rss:>7} "
                     f"{r['peers_reporting']:10} {r['peers_with_a_hole']:6} "
                     f"{r['intervals_min']:>4}-{r['intervals_max']:<5} {r['sent']:8} {r['lost']:6} "
                     f"{r['send_late_p99_ms_median']:5.2f}/{r['send_late_p99_ms_max']:<6.2f}")
    lines.append("target: one worker; every peer a result every interval (holes 0); "
                 "late p99: median/worst over the peers' intervals")
    return "\n".join(lines)
