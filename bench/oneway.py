"""oneway probe figures on loopback, beside irtt and sockperf from the same run (and the
receiver's memory over a long run: 1,000 ports, 10 min; 30 s with --quick):

1. packet rate: netprobe._udpio sender and receiver flat out (64-128 byte probes,
   full per-packet accounting), packets per second of each thread's own CPU time,
   received/sent and the self-inflicted loss, also with kernel TX stamps (one
   error-queue read per packet) and with the ports spread over two receivers
   sharing the port (SO_REUSEPORT, one thread each); beside `sockperf tp` (64 B)
   and `irtt --timer=busy` at a 10 us interval.
2. send-time error at a 1 ms interval (fixed gaps): each probe's send stamp minus
   its slot; beside irtt's own timer error (`irtt client -i 1ms --timer=busy`, and
   its default comp timer), from its JSON; and how far the user-space send stamp
   runs ahead of the kernel's TX time, the part kernel TX stamps take out.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import numpy as np

from netprobe.errors import load_extension
from netprobe.probes.oneway import analysis

udpio = load_extension("_udpio")
SID = 0xBE4C
SO_RCVBUFFORCE = 33           # <asm-generic/socket.h>; the socket module lacks it


def _receive_socket(reuseport=False):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuseport:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:                                  # beyond net.core.rmem_max when we may (root)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except OSError:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return rx


def _pair(nports, nrx=1):
    """nrx receive sockets on one port (SO_REUSEPORT when more than one: the kernel hashes
    each source port to one of them) and nports connected sending sockets."""
    rxs = [_receive_socket(nrx > 1) for _ in range(nrx)]
    rxs[0].bind(("127.0.0.1", 0))
    for r in rxs[1:]:
        r.bind(rxs[0].getsockname())
    tx = []
    for _ in range(nports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind(("127.0.0.1", 0))
        s.connect(rxs[0].getsockname())
        tx.append(s)
    return (rxs[0] if nrx == 1 else rxs), tx


def ours_rate(duration, nports, gap_ns, tx_stamp=False, nrx=1):
    """Sender and nrx receivers on their own threads (each releases the GIL); CPU time per
    thread. With nrx > 1 the receivers share the port (SO_REUSEPORT) and each sees whole
    source ports, so their per-port counts add up."""
    rsocks, txs = _pair(nports, nrx)
    rsocks = [rsocks] if nrx == 1 else rsocks
    try:
        rxs = [udpio.UdpProbeReceiver(r.fileno()) for r in rsocks]
        for rx in rxs:
            rx.add_session(SID, nports)
        tx = udpio.UdpProbeSender([s.fileno() for s in txs], SID, time.time_ns(), gap_ns, min_len=64, max_len=128,
                                  poisson=False, tx_stamp=tx_stamp)
        cpu = [0.0] * nrx

        def receive(i):
            t = time.thread_time()
            rxs[i].run(round((duration + 0.5) * 1e9))
            cpu[i] = time.thread_time() - t

        ths = [threading.Thread(target=receive, args=(i,)) for i in range(nrx)]
        for th in ths:
            th.start()
        time.sleep(0.05)
        t = time.thread_time()
        got = tx.run(round(duration * 1e9))
        tx_cpu = time.thread_time() - t
        tx.end_interval(1)
        for th in ths:
            th.join()
        received = sum(p["received"] for rx in rxs for p in rx.close_through(SID, 0)[0]["ports"])
    finally:
        for x in txs + rsocks:
            x.close()
    sent = got.sent
    stamps = ", kernel TX stamps" if tx_stamp else ""
    spread = f", {nrx} rx" if nrx > 1 else ""
    return {"section": "rate", "tool": f"netprobe udpio {1e6 / gap_ns:g}k offered, {nports} port(s){stamps}{spread}",
            "sent_pps": sent / duration, "recv_pps": received / duration, "tx_kpps_per_core": sent / tx_cpu / 1e3,
            "rx_kpps_per_core": received / sum(cpu) / 1e3, "recv_of_sent": received / sent if sent else None,
            "loss_pct": 100.0 * (sent - received) / sent if sent else None, "send_errors": got.send_errors}


def sockperf_rate(duration):
    if not shutil.which("sockperf"):
        return {"section": "rate", "tool": "sockperf tp 64 B", "note": "sockperf not installed"}
    port = 11_000 + os.getpid() % 1000
    srv = subprocess.Popen(["sockperf", "sr", "-i", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["sockperf", "tp", "-i", "127.0.0.1", "-p", str(port), "-m", "64", "-t",
                              str(int(duration))], capture_output=True, text=True, timeout=duration + 30).stdout
    finally:
        srv.terminate()
        srv.wait()
    m = re.search(r"Summary: Message Rate is (\d+) \[msg/sec\]", out)
    return {"section": "rate", "tool": "sockperf tp 64 B", "sent_pps": float(m.group(1)) if m else None}


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
            ours_rate(d, 1, 1_000), ours_rate(d, 8, 1_000), ours_rate(d, 8, 1_000, nrx=2), sockperf_rate(d),
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
    lines.append("'2 rx': two receivers, one thread each, sharing the port with SO_REUSEPORT (the kernel\n"
                 "hashes each source port to one of them); sockperf's rate is its client's, from this run.")
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
