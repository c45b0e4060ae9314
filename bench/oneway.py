"""oneway probe figures on loopback, beside irtt and sockperf from the same run (and the
receiver's memory over a long run: 1,000 ports, 10 min; 30 s with --quick):

1. packet rate: netprobe._udpio sender and receiver flat out (64-128 byte probes,
   full per-packet accounting), packets per second of each thread's own CPU time,
   received/sent and the self-inflicted loss, also with kernel TX stamps (one
   error-queue read per packet) and with 1 Mpps offered to the peer's receive
   lanes (two sockets of one SO_REUSEPORT group, one thread each); beside
   `sockperf tp` (64 B, its server's count and CPU) and `irtt --timer=busy` at a
   10 us interval.
2. send-time error at a 1 ms interval (fixed gaps): each probe's send stamp minus
   its slot; beside irtt's own timer error (`irtt client -i 1ms --timer=busy`, and
   its default comp timer), from its JSON; and how far the user-space send stamp
   runs ahead of the kernel's TX time, the part kernel TX stamps take out.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import numpy as np

from netprobe.errors import load_extension
from netprobe.probes.oneway import analysis, responder

udpio = load_extension("_udpio")
SID = 0xBE4C
SO_RCVBUFFORCE = 33           # <asm-generic/socket.h>; the socket module lacks it


def _receive_socket():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:                                  # beyond net.core.rmem_max when we may (root)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except OSError:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return rx


def _pair(nports, lanes=1):
    """A receive socket (with lanes > 1 the peer's SO_REUSEPORT group of that many, a list)
    and nports connected sending sockets."""
    if lanes > 1:
        rxs, _ = responder.receive_sockets(socket.AF_INET, "127.0.0.1", [0], lanes)
    else:
        rxs = [_receive_socket()]
        rxs[0].bind(("127.0.0.1", 0))
    tx = []
    for _ in range(nports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind(("127.0.0.1", 0))
        s.connect(rxs[0].getsockname())
        tx.append(s)
    return (rxs[0] if lanes == 1 else rxs), tx


def ours_rate(duration, nports, gap_ns, tx_stamp=False, lanes=1):
    """Sender on its own thread, the receiver (lanes > 1: the peer's receive lanes, one
    thread each) on another; CPU time of the sender's thread and of the receiver's lanes."""
    rsocks, txs = _pair(nports, lanes)
    rsocks = rsocks if lanes > 1 else [rsocks]
    try:
        rx = udpio.UdpProbeReceiver([r.fileno() for r in rsocks] if lanes > 1 else rsocks[0].fileno())
        rx.add_session(SID, nports)
        tx = udpio.UdpProbeSender([s.fileno() for s in txs], SID, time.time_ns(), gap_ns, min_len=64, max_len=128,
                                  poisson=False, tx_stamp=tx_stamp)
        def receive():                    # the send time and 0.5 s, then until the sockets are empty
            rx.run(round((duration + 0.5) * 1e9))
            while rx.run(100_000_000).datagrams:
                pass

        th = threading.Thread(target=receive)
        th.start()
        time.sleep(0.05)
        t = time.thread_time()
        got = tx.run(round(duration * 1e9))
        tx_cpu = time.thread_time() - t
        tx.end_interval(1)
        th.join()
        received = sum(p["received"] for p in rx.close_through(SID, 0)[0]["ports"])
        rx_cpu = rx.counters["cpu_ns"] / 1e9
    finally:
        for x in txs + rsocks:
            x.close()
    sent = got.sent
    stamps = ", kernel TX stamps" if tx_stamp else ""
    spread = f", {lanes} rx lanes" if lanes > 1 else ""
    return {"section": "rate", "tool": f"netprobe udpio {1e6 / gap_ns:g}k offered, {nports} port(s){stamps}{spread}",
            "sent_pps": sent / duration, "recv_pps": received / duration, "tx_kpps_per_core": sent / tx_cpu / 1e3,
            "rx_kpps_per_core": received / rx_cpu / 1e3, "recv_of_sent": received / sent if sent else None,
            "loss_pct": 100.0 * (sent - received) / sent if sent else None, "send_errors": got.send_errors}


def _cpu_s(pid):
    """utime + stime of a process so far (s), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sockperf_rate(duration):
    """sockperf throughput (64 B) for `duration`: the client's send rate, the server's count
    (printed when SIGINT ends it) and the server's CPU time."""
    name = "sockperf tp 64 B, server on 1 thread"
    if not shutil.which("sockperf"):
        return {"section": "rate", "tool": name, "note": "sockperf not installed"}
    port = 11_000 + os.getpid() % 1000
    srv = subprocess.Popen(["sockperf", "sr", "-i", "127.0.0.1", "-p", str(port)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        cpu0 = _cpu_s(srv.pid)
        out = subprocess.run(["sockperf", "tp", "-i", "127.0.0.1", "-p", str(port), "-m", "64", "-t",
                              str(int(duration))], capture_output=True, text=True, timeout=duration + 30).stdout
        time.sleep(0.2)
        cpu = _cpu_s(srv.pid) - cpu0
    finally:
        srv.send_signal(signal.SIGINT)
        try:
            srv_out = srv.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            srv.kill()
            srv_out = srv.communicate()[0]
    sent = re.search(r"Total of (\d+) messages sent", out)
    got = re.search(r"Total (\d+) messages received", srv_out)
    if not (sent and got):
        return {"section": "rate", "tool": name, "note": "no sockperf summary"}
    sent, got = int(sent.group(1)), int(got.group(1))
    return {"section": "rate", "tool": name, "sent_pps": sent / duration, "recv_pps": got / duration,
            "recv_of_sent": got / sent, "rx_kpps_per_core": got / cpu / 1e3 if cpu else None,
            "loss_pct": 100.0 * max(sent - got, 0) / sent}


def irtt_json(interval, duration, timer=None):
    if not shutil.which("irtt"):
        return None
    port = 2300 + os.getpid() % 1000
    srv = subprocess.Popen(["irtt", "server", "-b", f"127.0.0.1:{port}", "-i", "0", "-d", "0"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "irtt.json")
            cmd = ["irtt", "client", "-i", interval, "-d", f"{duration}s", "-Q", "-o", out, f"127.0.0.1:{port}"]
            if timer:
                cmd.insert(2, f"--timer={timer}")
            subprocess.run(cmd, capture_output=True, timeout=duration + 30)
            with open(out) as f:
                return json.load(f)["stats"]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    finally:
        srv.terminate()
        srv.wait()


def irtt_rate(duration):
    st = irtt_json("10us", duration, "busy")
    if st is None:
        return {"section": "rate", "tool": "irtt -i 10us --timer=busy", "note": "irtt not available"}
    return {"section": "rate", "tool": "irtt -i 10us --timer=busy", "sent_pps": st["packets_sent"] / duration,
            "recv_pps": st["packets_received"] / duration, "loss_pct": st["packet_loss_percent"]}


def ours_timer(duration, spin_ns):
    rxs, txs = _pair(1)
    try:
        tx = udpio.UdpProbeSender([txs[0].fileno()], SID, time.time_ns(), 1_000_000, min_len=64, max_len=128,
                                  poisson=False, spin_ns=spin_ns)
        late = np.zeros(int(duration * 1000) + 100, dtype=np.int64)
        got = tx.run(round(duration * 1e9), late)
    finally:
        for x in txs + [rxs]:
            x.close()
    lat = np.abs(late[:got.late])
    mode = "sleep+spin 1ms" if spin_ns else "sleep only"
    return {"section": "timer", "tool": f"netprobe udpio 1ms fixed, {mode}", **_pcts(lat), "n": int(len(lat)),
            "missed": got.missed}


def ours_stamp_to_tx(duration):
    """How far the user-space send stamp runs ahead of the kernel's TX time (what each
    follow-up corrects): the follow-ups of 1 ms fixed probes, read from the datagrams."""
    rxs, txs = _pair(1)
    try:
        tx = udpio.UdpProbeSender([txs[0].fileno()], SID, time.time_ns(), 1_000_000, min_len=64, max_len=128,
                                  poisson=False, tx_stamp=True)
        tx.run(round(duration * 1e9))
        tx.end_interval(1)
        rxs.setblocking(False)
        follow = []
        while True:
            try:
                h = udpio.pull_header(rxs.recv(2048))
            except BlockingIOError:
                break
            if h["flags"] & udpio.F_TXTIME:
                follow.append(h["tx_follow_up"])
    finally:
        for x in txs + [rxs]:
            x.close()
    return {"section": "timer", "tool": "netprobe send stamp -> kernel TX", **_pcts(np.array(follow)),
            "n": len(follow), "missed": "-"}


def irtt_timer(duration, timer):
    st = irtt_json("1ms", duration, timer)
    name = f"irtt -i 1ms --timer={timer}"
    if st is None:
        return {"section": "timer", "tool": name, "note": "irtt not available"}
    te = st["timer_error"]
    return {"section": "timer", "tool": name, "p50": te.get("median"), "mean": te.get("mean"), "max": te.get("max"),
            "n": te.get("n"), "missed": st.get("timer_misses")}


def ours_rss(duration, nports=1000, gap_ns=100_000):
    """Receiver memory over a long run: 1,000 source ports at 10 kpps, 1 s intervals closed
    0.3 s late as the peer does; RSS of this process sampled every interval."""
    import queue
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, nports + 512)), hard))
    rxs, txs = _pair(nports)
    closes, stop, rss = queue.SimpleQueue(), threading.Event(), []
    lost = [0, 0]
    try:
        rx = udpio.UdpProbeReceiver(rxs.fileno())
        rx.add_session(SID, nports)
        tx = udpio.UdpProbeSender([s.fileno() for s in txs], SID, time.time_ns(), gap_ns, min_len=64, max_len=128)

        def receive():
            pending = []
            while not stop.is_set() or pending:
                rx.run(50_000_000)
                while not closes.empty():
                    pending.append((time.monotonic() + 0.3, *closes.get()))
                due = [p for p in pending if p[0] <= time.monotonic()]
                for p in due:
                    pending.remove(p)
                    s = analysis.summarize(rx.close_through(SID, p[1])[-1], p[2])
                    lost[0] += s["lost"]
                    lost[1] += s["expected"]
                    with open("/proc/self/statm") as f:
                        rss.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))

        th = threading.Thread(target=receive)
        th.start()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            tx.run(1_000_000_000)
            closes.put((tx.interval, tx.end_interval(1)))
        stop.set()
        th.join()
    finally:
        for x in txs + [rxs]:
            x.close()
    first = rss[max(1, len(rss) // 10)]
    return {"section": "memory", "tool": f"netprobe receiver, {nports} ports, {duration:g} s", "rss_start": first,
            "rss_end": rss[-1], "growth_pct": 100.0 * (rss[-1] - first) / first,
            "loss_pct": 100.0 * lost[0] / max(lost[1], 1)}


def _pcts(v):
    return {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
            "p9999": float(np.percentile(v, 99.99)), "max": float(v.max()), "mean": float(v.mean())}


def run(quick=False):
    d = 2.0 if quick else 5.0
    rows = [ours_rate(d, 1, 10_000), ours_rate(d, 8, 10_000), ours_rate(d, 8, 10_000, tx_stamp=True),
            ours_rate(d, 1, 1_000), ours_rate(d, 8, 1_000), ours_rate(d, 8, 1_000, lanes=2), sockperf_rate(d),
            irtt_rate(min(d, 3.0))]
    rows += [ours_timer(d, 1_000_000), ours_timer(d, 0), ours_stamp_to_tx(d), irtt_timer(d, "busy"),
             irtt_timer(d, "comp")]
    rows.append(ours_rss(30.0 if quick else 600.0))
    return rows


def table(rows):
    def num(v, scale=1.0, fmt="9.1f"):
        return f"{'-':>9}" if v is None else f"{v / scale:{fmt}}"
    lines = [f"{'packet rate, loopback, 64-128 B':54} {'sent kpps':>9} {'recv kpps':>9} {'recv/sent':>9} "
             f"{'tx kpps/cpu':>11} {'rx kpps/cpu':>11} {'loss %':>9}"]
    for r in (r for r in rows if r["section"] == "rate"):
        if "note" in r:
            lines.append(f"{r['tool']:54} {r['note']}")
            continue
        lines.append(f"{r['tool']:54} {num(r.get('sent_pps'), 1e3)} {num(r.get('recv_pps'), 1e3)} "
                     f"{num(r.get('recv_of_sent'), 1, '9.4f')} "
                     f"{num(r.get('tx_kpps_per_core')):>11} {num(r.get('rx_kpps_per_core')):>11} "
                     f"{num(r.get('loss_pct'), 1, '9.4f')}")
    lines.append("'2 rx lanes': the peer's receiver on a SO_REUSEPORT group of two sockets, one thread each,\n"
                 "each taking every other port; rx kpps/cpu: received over the lanes' CPU time (sockperf: its\n"
                 "server's). sockperf ran in this run, for the same time; sent is its client's rate, received\n"
                 "the count its server prints at exit (including a few warm-up messages).")
    lines += ["", f"{'send-time error at 1 ms (us)':54} {'p50':>9} {'p99':>9} {'p99.99':>9} {'max':>9} {'mean':>9} "
                  f"{'missed':>7}"]
    for r in (r for r in rows if r["section"] == "timer"):
        if "note" in r:
            lines.append(f"{r['tool']:54} {r['note']}")
            continue
        lines.append(f"{r['tool']:54} " + " ".join(num(r.get(k), 1e3) for k in ("p50", "p99", "p9999", "max", "mean"))
                     + f" {r.get('missed', '-')!s:>7}")
    lines.append("irtt's JSON gives the timer error's mean and max (median when it has one), not p99; irtt skips\n"
                 "the sends it is late for ('missed') and leaves them out, netprobe sends them late and counts them.\n"
                 "'send stamp -> kernel TX' is not a timer error: it is how much later than its user-space stamp\n"
                 "each probe left the driver, which its follow-up takes out of the delay (tx_timestamps).")
    for r in (r for r in rows if r["section"] == "memory"):
        lines += ["", f"{r['tool']}: RSS {r['rss_start'] / 2**20:.1f} MiB after 10 % of the run, "
                      f"{r['rss_end'] / 2**20:.1f} MiB at the end ({r['growth_pct']:+.1f} %), "
                      f"loss {r['loss_pct']:.4f} %"]
    return "\n".join(lines)
