"""Constant-rate TCP on loopback: netprobe's TcpPacedSender beside `iperf3 -b`, in one run.

Rates (1, 5, 10 Gbit/s; 10 s each, quick 3 s): achieved rate, worst 1 s
interval error, max 100 ms window, and the sender process's CPU seconds per
Gbit sent. Both are measured at the receiver: ours from the drain's 10 ms
rows (every 100 ms window, sliding), iperf3's from its server's 0.1 s
intervals (--get-server-output; back to back, not sliding, so if anything
its max is understated). CPU: ours is getrusage of the sender's own
process around its loop; iperf3's is its cpu_utilization_percent host_total.

Stall (1 Gbit/s): the receiver stops reading for 5 s, then resumes (ours:
TcpDrain.pause; iperf3: SIGSTOP/SIGCONT of its server). Max 100 ms window
after the resume, on the wire (tcpdump -s 80 on lo, the same oracle for
both) and as the sender's own writes (ours: app_bytes rows; iperf3: its
client's 0.1 s intervals).

`python -m bench.throughput send PORT RATE SECONDS` is the sender child.
"""
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from netprobe.errors import load_extension
from netprobe.probes.throughput.samples import COL, NCOLS

ROOT = Path(__file__).resolve().parents[1]
RATES_GBIT = (1, 5, 10)
STALL_RATE = 10**9
STALL_S = 5.0
CHUNK_NS = 100_000_000
EVERY_NS = 10_000_000
WINDOW_NS = 100_000_000


# -- our sender, in its own process -------------------------------------------------------------

def send_child(port, rate, seconds):
    """Pace to 127.0.0.1:port for `seconds`; print counters, CPU and (t, app_bytes, bytes_acked) rows."""
    pacer = load_extension("_pacer")
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    sender = pacer.TcpPacedSender(sock.fileno(), rate)
    buf = np.empty((64, NCOLS), dtype=np.int64)
    rows = []
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    error = 0
    while time.monotonic() - t0 < seconds:
        try:
            got = sender.run(buf, CHUNK_NS, EVERY_NS, 1)
        except OSError as exc:                      # the send failed; the chunk's counts are exc.result
            got, error = exc.result, exc.errno
        rows.append(buf[:got.rows, [0, COL["app_bytes"], COL["bytes_acked"]]].copy())
        if error:
            break
    ru1, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
    sock.close()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    json.dump({"cpu_s": cpu, "elapsed_s": elapsed, "error": error, "rows": np.concatenate(rows).tolist(),
               **{k: getattr(sender, k) for k in ("bytes_sent", "ticks", "timer_overruns", "late_ticks", "eagain")}},
              sys.stdout)


def ours(rate, seconds, port=0, stall_at=None):
    """One flow: sender child -> our drain here, listening on `port`. Returns (child report, drain rows,
    resume times)."""
    pacer = load_extension("_pacer")
    resumed = {}
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", port))
        lst.listen(1)
        lst.settimeout(10)
        child = subprocess.Popen([sys.executable, "-m", "bench.throughput", "send", str(lst.getsockname()[1]),
                                  str(rate), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            conn, _ = lst.accept()
            with conn:
                conn.setblocking(False)
                drain = pacer.TcpDrain(conn.fileno())
                if stall_at is not None:
                    threading.Thread(target=_stall_drain, args=(drain, stall_at, resumed), daemon=True).start()
                buf = np.empty((64, NCOLS), dtype=np.int64)
                rows = []
                deadline = time.monotonic() + seconds + 10
                while time.monotonic() < deadline:
                    try:
                        got = drain.run(buf, CHUNK_NS, EVERY_NS, 1)
                    except OSError:                 # recv failed: what came so far is the figure
                        break
                    rows.append(buf[:got.rows].copy())
                    if got.eof:
                        break
            out, _ = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    return json.loads(out), np.concatenate(rows), resumed


def _stall_drain(drain, at, resumed):
    time.sleep(at)
    drain.pause(True)
    time.sleep(STALL_S)
    drain.pause(False)
    resumed.update(wall=time.time(), mono_ns=time.monotonic_ns())


# -- iperf3 --------------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if f":{port} " in subprocess.run(["ss", "-Htln"], capture_output=True, text=True).stdout:
            return
        time.sleep(0.05)
    raise RuntimeError(f"iperf3 server did not listen on {port}")


def iperf3(rate, seconds, port, stall_at=None):
    """`iperf3 -c 127.0.0.1 -b RATE -t T -i 0.1 -J --get-server-output`; optional server SIGSTOP."""
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port), "-i", "0.1", "-J"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = {}
    try:
        _wait_listening(port)
        client = subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-b", str(rate), "-t", str(seconds),
                                   "-i", "0.1", "-J", "--get-server-output"], stdout=subprocess.PIPE, text=True)
        if stall_at is not None:
            time.sleep(stall_at)
            server.send_signal(signal.SIGSTOP)
            time.sleep(STALL_S)
            server.send_signal(signal.SIGCONT)
            resumed.update(wall=time.time())
        out, _ = client.communicate(timeout=seconds + 60)
    finally:
        server.send_signal(signal.SIGCONT)
        if server.poll() is None:
            server.kill()
        server.wait()
    return json.loads(out), resumed


# -- tcpdump on lo -------------------------------------------------------------------------------

class Capture:
    """tcpdump -s 80 of the data direction (dst port) on lo into a temporary pcap."""

    def __init__(self, port):
        self.path = Path(tempfile.mkdtemp(prefix="np-bench-")) / "lo.pcap"
        self.proc = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "80", "-B", "65536", "-n", "-w", str(self.path),
                                      f"tcp dst port {port}"], stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "listening" not in line:
            raise RuntimeError(f"tcpdump: {line.strip()}")

    def stop(self):
        """Stop; returns (wall times s, TCP payload bytes) per frame and the kernel's drop count."""
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate(timeout=30)[1]
        dropped = next((int(ln.split()[0]) for ln in err.splitlines() if "dropped by kernel" in ln), -1)
        data = self.path.read_bytes()
        shutil.rmtree(self.path.parent)
        return _pcap_payload(data), dropped


def _pcap_payload(data):
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    scale = {0xA1B2C3D4: 1e-6, 0xA1B23C4D: 1e-9}[magic]
    assert linktype == 1, f"lo capture should be Ethernet-framed, got linktype {linktype}"
    times, sizes, off = [], [], 24
    while off + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack_from("<IIII", data, off)
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ihl = (pkt[14] & 15) * 4
        times.append(sec + frac * scale)
        sizes.append(orig - 14 - ihl - (pkt[14 + ihl + 12] >> 4) * 4)
    return np.array(times), np.array(sizes, dtype=np.int64)


def wire_max_window(times, sizes, rate, t_from):
    """Largest payload in any 100 ms window that starts at a frame at or after t_from, / (rate * 100 ms)."""
    keep = times >= t_from
    t, c = times[keep], np.concatenate([[0], np.cumsum(sizes[keep])])
    j = np.searchsorted(t, t + WINDOW_NS / 1e9)
    return float(((c[j] - c[:-1]) * 8 / (rate * WINDOW_NS / 1e9)).max())


# -- figures -------------------------------------------------------------------------------------

def _windows(t_ns, nbytes, rate, span_ns, sliding):
    out, i = [], 0
    while i < len(t_ns):
        j = np.searchsorted(t_ns, t_ns[i] + span_ns)
        if j >= len(t_ns):
            break
        out.append(float(nbytes[j] - nbytes[i]) * 8e9 / (float(t_ns[j] - t_ns[i]) * rate))
        i = i + 1 if sliding else j
    return np.array(out)


def _span(rows, until_ns):
    """Rows from the last one before the first byte to until_ns: the flow itself."""
    rows = rows[rows[:, 0] <= until_ns]
    return rows[max(np.flatnonzero(rows[:, 1] > 0)[0] - 1, 0):]


def our_figures(rate, report, drain_rows):
    tx = np.array(report["rows"], dtype=np.int64)
    rx = _span(drain_rows[:, [0, COL["app_bytes"]]], tx[-1, 0])
    t, b = rx[:, 0], rx[:, 1]
    secs = _windows(t, b, rate, 10**9 - EVERY_NS // 2, sliding=False)
    return {"achieved_gbit": float((b[-1] - b[0]) * 8 / (t[-1] - t[0])),
            "worst_1s_err_pct": float(np.abs(secs - 1).max() * 100),
            "interval_1s_min_max_gbit": [float(secs.min() * rate / 1e9), float(secs.max() * rate / 1e9)],
            "max_100ms_pct": float(_windows(t, b, rate, WINDOW_NS, sliding=True).max() * 100),
            "cpu_s_per_gbit": report["cpu_s"] / (report["bytes_sent"] * 8 / 1e9),
            "timer_overruns": report["timer_overruns"], "eagain": report["eagain"]}


def iperf3_figures(rate, d):
    srv = [iv["sum"] for iv in d["server_output_json"]["intervals"]]
    bps = np.array([iv["bits_per_second"] for iv in srv])
    per_s = np.array([sum(iv["bytes"] for iv in srv[k:k + 10]) * 8 / sum(iv["seconds"] for iv in srv[k:k + 10])
                      for k in range(0, len(srv) - 9, 10)]) / rate
    sent, recv = d["end"]["sum_sent"], d["end"]["sum_received"]
    cpu_s = d["end"]["cpu_utilization_percent"]["host_total"] / 100 * sent["seconds"]
    return {"achieved_gbit": recv["bytes"] * 8 / recv["seconds"] / 1e9,
            "worst_1s_err_pct": float(np.abs(per_s - 1).max() * 100),
            "interval_1s_min_max_gbit": [float(per_s.min() * rate / 1e9), float(per_s.max() * rate / 1e9)],
            "max_100ms_pct": float(bps.max() / rate * 100),
            "cpu_s_per_gbit": cpu_s / (sent["bytes"] * 8 / 1e9)}


def rate_rows(seconds):
    rows = []
    for gbit in RATES_GBIT:
        rate = gbit * 10**9
        report, drain_rows, _ = ours(rate, seconds)
        rows.append({"kind": "rate", "tool": "netprobe TcpPacedSender", "rate_gbit": gbit,
                     **our_figures(rate, report, drain_rows)})
        d, _ = iperf3(rate, seconds, _free_port())
        rows.append({"kind": "rate", "tool": "iperf3 -b", "rate_gbit": gbit, **iperf3_figures(rate, d)})
    return rows


def stall_rows(seconds):
    stall_at = 2.0
    port = _free_port()
    cap = Capture(port)
    d, resumed = iperf3(STALL_RATE, seconds, port, stall_at=stall_at)
    (times, sizes), dropped = cap.stop()
    # The client's intervals are near 0 during the stall; any burst comes after the resume.
    after = [iv["sum"]["bits_per_second"] for iv in d["intervals"] if iv["sum"]["start"] >= stall_at + 1]
    iperf = {"kind": "stall", "tool": "iperf3 -b (server SIGSTOPped)",
             "wire_max_100ms_pct": wire_max_window(times, sizes, STALL_RATE, resumed["wall"] - 0.1) * 100,
             "sender_max_100ms_pct": max(after) / STALL_RATE * 100, "tcpdump_dropped": dropped}

    port = _free_port()
    cap = Capture(port)
    report, _, resumed = ours(STALL_RATE, seconds, port, stall_at=stall_at)
    (times, sizes), dropped = cap.stop()
    tx = np.array(report["rows"], dtype=np.int64)
    after = tx[tx[:, 0] >= resumed["mono_ns"] - WINDOW_NS]
    mine = {"kind": "stall", "tool": "netprobe TcpPacedSender (drain paused)",
            "wire_max_100ms_pct": wire_max_window(times, sizes, STALL_RATE, resumed["wall"] - 0.1) * 100,
            "sender_max_100ms_pct": float(_windows(after[:, 0], after[:, 1], STALL_RATE, WINDOW_NS, True).max() * 100),
            "acked_max_100ms_pct": float(_windows(after[:, 0], after[:, 2], STALL_RATE, WINDOW_NS, True).max() * 100),
            "tcpdump_dropped": dropped}
    return [iperf, mine]


def run(quick=False):
    if not shutil.which("iperf3") or not shutil.which("tcpdump") or os.geteuid() != 0:
        raise SystemExit("bench throughput needs iperf3, tcpdump and root (apt-get install iperf3 tcpdump)")
    seconds = 3 if quick else 10
    return rate_rows(seconds) + stall_rows(10 if quick else 12)


def table(rows):
    lines = [f"{'loopback TCP, one way':29} {'achieved':>9} {'1 s intervals':>17} {'worst 1 s':>10} "
             f"{'max 100 ms':>11} {'CPU s':>9}",
             f"{'rate  tool':29} {'Gbit/s':>9} {'min-max Gbit/s':>17} {'err %':>10} {'window %':>11} {'per Gbit':>9}"]
    for r in rows:
        if r["kind"] == "rate":
            lo, hi = r["interval_1s_min_max_gbit"]
            lines.append(f"{str(r['rate_gbit']) + 'G':5} {r['tool']:23} {r['achieved_gbit']:9.4f} "
                         f"{f'{lo:.4f}-{hi:.4f}':>17} {r['worst_1s_err_pct']:10.3f} {r['max_100ms_pct']:11.1f} "
                         f"{r['cpu_s_per_gbit']:9.4f}")
    lines.append("")
    lines.append(f"stall: receiver stops reading {STALL_S:g} s at {STALL_RATE / 1e9:g} Gbit/s; "
                 "max 100 ms window after the resume, % of the rate")
    lines.append(f"{'tool':40} {'wire (tcpdump)':>15} {'sender writes':>14} {'tcpdump drops':>14}")
    for r in rows:
        if r["kind"] == "stall":
            lines.append(f"{r['tool']:40} {r['wire_max_100ms_pct']:15.1f} {r['sender_max_100ms_pct']:14.1f} "
                         f"{r['tcpdump_dropped']:14d}")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["send"]:
        send_child(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        raise SystemExit("usage: python -m bench.throughput send PORT RATE SECONDS (the bench: python -m bench)")
