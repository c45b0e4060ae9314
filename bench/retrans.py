"""pcap analysis speed: netprobe's analyser beside tshark and tcptrace on the same >= 1 M packet file.

The file (bench/data/retrans-1m.pcap, ~150 MB, not in git) is made once: a
lab capture (A -> B iperf3 at 400 Mbit/s for 3 s, offload off, 1 % loss on
R, tcpdump -s 128 in B, i.e. downstream of the loss) repeated with shifted
ports and times until it holds >= 1 M frames, so every copy is a real flow.
Making it needs root (the namespace lab); later runs reuse it.

Rows: per tool, wall seconds (median of the runs; tshark runs once, it
takes about a minute), frames per second, CPU seconds (user + sys of the
process or child), and the retransmissions each tool reports, summed over
all flows, so the speed is for the same work: ours (netprobe's verdict, and
the Wireshark-compatible count), `tshark -Y tcp.analysis.retransmission`,
`tcptrace -l` "rexmt data pkts". The capture is downstream of the loss, so
most retransmissions fill a hole: tcptrace counts those as "outoforder"
(shown as hole fills; ours are the retransmissions of segments lost before
the capture point plus out-of-order originals).

Then the cost of live monitoring: iperf3 A -> B and B -> A (-R) at full speed in the lab
(offload off, then on; no impairment, 3 s runs, 5 rounds alternating), without the
probe, with the live probe (tracefs instance only), with the probe plus
its header capture (--capture-iface), and with the capture of arriving data
only (--capture-direction in: A sends, so little arrives), the probe running
in A; and the floor of any capture of arriving packets: the capture's packet
ring in A with a filter that keeps nothing (what the tap and a filter cost
before any copy); and the floor of a stateful in-kernel filter that would thin
the capture (bench/ebpf_floor.py: one per-flow hash lookup and update per
arriving packet, nothing kept); and a bare `tcpdump -Q in` of the same packets (the
probe's snaplen and port filter, written to /dev/null), also with `--immediate-mode -U`.
Rows give the median receiver rate and its ratio to the run without the probe.
"""
import os
import re
import resource
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
FILE = DATA / "retrans-1m.pcap"
TARGET_FRAMES = 1_000_000


def _make_file():
    """Lab capture, replicated to TARGET_FRAMES frames. Returns None or why not."""
    if os.geteuid() != 0:
        return "needs root once to capture in the namespace lab (then reused)"
    sys.path.insert(0, str(ROOT))
    import signal

    from tests.lab import netlab
    DATA.mkdir(exist_ok=True)
    raw = DATA / "retrans-lab.pcap"
    lab = netlab.Lab()
    try:
        lab.up(offload="off", loss_ab=1)
        lab.popen("b", ["iperf3", "-s", "-1", "-B", lab.b4])
        time.sleep(0.3)
        dump = lab.popen("b", ["tcpdump", "-n", "-i", lab.if_b, "-s", "128", "-B", "65536", "-w", str(raw),
                               "tcp port 5201"])
        time.sleep(0.5)
        lab.run("a", ["iperf3", "-c", lab.b4, "-t", "3", "-b", "400M"], timeout=60)
        time.sleep(0.5)
        dump.send_signal(signal.SIGINT)
        dump.communicate(timeout=10)
    finally:
        lab.down()
    data = raw.read_bytes()
    head, recs, o = data[:24], [], 24
    while o + 16 <= len(data):
        incl = struct.unpack_from("<I", data, o + 8)[0]
        recs.append(data[o:o + 16 + incl])
        o += 16 + incl
    span = struct.unpack_from("<I", recs[-1], 0)[0] - struct.unpack_from("<I", recs[0], 0)[0] + 1
    out = [head]
    copies = -(-TARGET_FRAMES // len(recs))
    for k in range(copies):
        for r in recs:
            r = bytearray(r)
            struct.pack_into("<I", r, 0, struct.unpack_from("<I", r, 0)[0] + k * span)
            # Ethernet + IPv4 (20-byte header assumed, as Linux sends): the client's port is
            # the one that is not 5201; move it by k so each copy is its own flow
            for off in (16 + 34, 16 + 36):
                port = struct.unpack_from(">H", r, off)[0]
                if port != 5201:
                    struct.pack_into(">H", r, off, (port + 97 * k) % 65536)
            out.append(bytes(r))
    FILE.write_bytes(b"".join(out))
    raw.unlink()
    return None


def _child_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _tool(argv, runs):
    walls, cpus, out = [], [], ""
    for _ in range(runs):
        c0, t0 = _child_cpu(), time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        walls.append(time.perf_counter() - t0)
        cpus.append(_child_cpu() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def run(quick=False):
    if not FILE.exists():
        why = _make_file()
        if why:
            return [{"tool": "all", "skipped": why}]
    sys.path.insert(0, str(ROOT))
    from netprobe.probes.retrans import pcapfile
    runs = 1 if quick else 3
    rows = []
    walls, cpus = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        res = pcapfile.analyse_file(str(FILE))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    frames = res.counters["frames"]
    rows.append({"tool": "netprobe pcap (ours)", "frames": frames, "wall_s": statistics.median(walls),
                 "cpu_s": statistics.median(cpus),
                 "retrans": sum(f.ab["retrans"] + f.ba["retrans"] for f in res.flows),
                 "retrans_ws": sum(f.ab["ws_retrans"] + f.ba["ws_retrans"] for f in res.flows),
                 "hole_fills": sum(f.ab["lost_retrans"] + f.ab["ooo"] + f.ba["lost_retrans"] + f.ba["ooo"]
                                   for f in res.flows)})
    wall, cpu, out = _tool(["tshark", "-n", "-r", str(FILE), "-Y", "tcp.analysis.retransmission",
                            "-T", "fields", "-e", "frame.number"], 1)
    rows.append({"tool": "tshark -Y tcp.analysis.retransmission", "frames": frames, "wall_s": wall,
                 "cpu_s": cpu, "retrans": len(out.splitlines())})
    wall, cpu, out = _tool(["tcptrace", "-n", "-l", "-r", str(FILE)], runs)
    rexmt = sum(int(a) + int(b) for a, b in re.findall(r"rexmt data pkts:\s+(\d+)\s+rexmt data pkts:\s+(\d+)", out))
    ooo = sum(int(a) + int(b) for a, b in re.findall(r"outoforder pkts:\s+(\d+)\s+outoforder pkts:\s+(\d+)", out))
    rows.append({"tool": "tcptrace -l", "frames": frames, "wall_s": wall, "cpu_s": cpu, "retrans": rexmt,
                 "hole_fills": ooo})
    for r in rows:
        r["frames_per_s"] = r["frames"] / r["wall_s"]
        r["frames_per_cpu_s"] = r["frames"] / r["cpu_s"] if r["cpu_s"] else None
    return rows + _live_cost(quick)


# The least any capture of arriving packets can cost: the capture's own packet ring on veth-a
# (netprobe._pcapread.PacketRing, not offered what the host sends, as `--capture-direction in`)
# with a filter that keeps nothing, so each arriving packet costs only the tap and the filter.
FLOOR = """
import socket, struct, time
from netprobe.errors import load_extension
keep_nothing = struct.pack("HBBI", 0x06, 0, 0, 0)      # BPF: ret #0
ring = load_extension("_pcapread").PacketRing(keep_nothing, socket.if_nametoindex("veth-a"),
                                              socket.if_nametoindex("lo"), ignore_outgoing=True)
print("up", flush=True)
time.sleep(120)
"""


def _tcpdump_in(options):
    """A bare tcpdump of the same arriving packets (the probe's snaplen and port filter) to /dev/null;
    its "listening" line (stderr) is its start signal on stdout."""
    return ["sh", "-c", f"exec tcpdump -n -i veth-a -Q in -s 128 {options}-w /dev/null 'tcp port 5201' 2>&1"]


def _live_cost(quick):
    """iperf3 rate without and with the live probe (same lab, alternating rounds), offload off then on."""
    if os.geteuid() != 0:
        return [{"mode": "all", "skipped": "needs root (namespace lab)"}]
    import json
    import select
    import signal

    from tests.lab import netlab
    probe = [sys.executable, "-m", "netprobe", "probe", "retrans", "--ports", "5201", "--interval", "1s", "--json"]
    modes = {"no probe": None, "probe (tracefs)": probe,
             "probe (tracefs + capture)": probe + ["--capture-iface", "veth-a"],
             "probe (tracefs + capture in)": probe + ["--capture-iface", "veth-a", "--capture-direction", "in"],
             "capture floor (filter keeps nothing)": [sys.executable, "-c", FLOOR],
             "eBPF per-flow filter floor": [sys.executable, "-m", "bench.ebpf_floor", "veth-a"],
             "tcpdump -Q in": _tcpdump_in(""),
             "tcpdump -Q in --immediate-mode -U": _tcpdump_in("--immediate-mode -U ")}
    ways = {"A -> B": [], "B -> A": ["-R"]}           # the probe's host sending, then receiving
    rows = []
    for offload in ("off", "on"):
        rates = {(w, m): [] for w in ways for m in modes}
        lab = netlab.Lab()
        try:
            lab.up(offload=offload)
            lab.popen("b", ["iperf3", "-s", "-B", lab.b4])
            time.sleep(0.3)
            for _ in range(1 if quick else 5):
                for way, reverse in ways.items():
                    for mode, argv in modes.items():
                        proc = None
                        if argv is not None:
                            proc = lab.popen("a", argv, cwd=str(ROOT))
                            if not select.select([proc.stdout], [], [], 20)[0]:
                                raise RuntimeError(f"{mode} did not start")
                            proc.stdout.readline()
                        out = lab.run("a", ["iperf3", "-c", lab.b4, "-t", "3", "-J", *reverse], timeout=60)
                        rates[way, mode].append(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"])
                        if proc is not None:
                            proc.send_signal(signal.SIGTERM)
                            proc.communicate(timeout=20)
        finally:
            lab.down()
        rows += [{"mode": f"{w}: {m}", "offload": offload, "rate_bps": statistics.median(r), "runs": len(r),
                  "ratio": statistics.median(r) / statistics.median(rates[w, "no probe"])}
                 for (w, m), r in rates.items()]
    return rows


def table(rows):
    if rows and "skipped" in rows[0]:
        return f"skipped: {rows[0]['skipped']}"
    live = [r for r in rows if "mode" in r]
    rows = [r for r in rows if "mode" not in r]
    lines = [f"{'tool':40} {'frames':>9} {'wall s':>8} {'frames/s':>11} {'frames/cpu-s':>13} {'retrans':>8}"]
    for r in rows:
        per_cpu = f"{r['frames_per_cpu_s']:>13,.0f}" if r["frames_per_cpu_s"] else f"{'-':>13}"
        extra = f" (Wireshark rule: {r['retrans_ws']})" if "retrans_ws" in r else ""
        if "hole_fills" in r:
            extra += f"; segments filling a hole: {r['hole_fills']}"
        lines.append(f"{r['tool']:40} {r['frames']:>9,} {r['wall_s']:>8.3f} {r['frames_per_s']:>11,.0f} "
                     f"{per_cpu} {r['retrans']:>8}{extra}")
    for offload in ("off", "on"):
        part = [r for r in live if r.get("offload", "off") == offload]
        if not part:
            continue
        lines.append("")
        lines.append(f"{f'iperf3 (probe in A), offload {offload}':44} {'Gbit/s':>9} {'vs none':>8} {'runs':>5}")
        for r in part:
            if "skipped" in r:
                lines.append(f"live cost skipped: {r['skipped']}")
                continue
            lines.append(f"{r['mode']:44} {r['rate_bps'] / 1e9:>9.3f} {r['ratio']:>8.3f} {r['runs']:>5}")
    return "\n".join(lines)
