"""udping_server under a flood of spoofed sources, in the lab: a real udping_client in A
sends raw frames through R to the server in B while R sends valid UDPing v1 probes from
100,000 spoofed (address, port) sources in 60 s. The server must stay within 64 MB of its
idle RSS (/proc VmHWM), spend the same CPU per packet at the end of the flood as once its
session table is full (/proc utime + stime; the first 16,384 sources fill it, from then on
each new one evicts one, so the 20-40 % stretch of the flood is compared with the last 20 %),
and count the client's packets exactly (every GUID's count and targetCount equal to the probes
tcpdump saw reach B). The statsd series it creates stay
within --max-series (tcpdump on B's lo). UDPING_SPOOF_SOURCES / UDPING_SPOOF_SECONDS scale
the flood (make soak-udping runs a longer one)."""
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.lab.netlab import stop_tcpdump
from tests.reference.oneway import V1, decode_v1

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = int(os.environ.get("UDPING_SPOOF_SOURCES", 100_000))
SECONDS = float(os.environ.get("UDPING_SPOOF_SECONDS", 60))
PORT, STATSD, CLIENT_PORTS = 7000, 8125, range(41000, 41004)
MAX_SERIES = 1000
WINDOW = 16384                  # the v2 receiver's duplicate window, which udping_server's sessions share
MAX_SESSIONS = 16384            # udping_server's default --max-sessions: full before 20 % of the sources
RSS_SLACK_KB = 64 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def entry(name, *args):
    return [sys.executable, "-c", f"import sys; from netprobe.probes.oneway.udping import {name}; sys.exit({name}())",
            *map(str, args)]


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def spoof(dst, pid, sources, seconds):
    """Run in R: valid v1 probes from `sources` spoofed (10.x.y.z, port) sources, spread evenly
    over `seconds`: from each, two whose sequence numbers open the session's whole seen window;
    from every tenth also a duplicate, a jump past the window and one left behind it (stale),
    the last of these malformed for every hundredth. Prints one JSON line: the packets sent and
    the server's CPU ticks at 20, 40, 80 and 100 % of the sources, and its highest RSS seen."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rng = random.Random(7)
    dst_ip = socket.inet_aton(dst)
    marks = {sources // 5: None, sources * 2 // 5: None, sources * 4 // 5: None, sources: None}
    sent, rss_max, t0 = 0, 0, time.monotonic()          # marks: time since t0, packets sent, CPU ticks
    next_rss = t0
    for i in range(sources + 1):
        if i in marks:
            marks[i] = (time.monotonic() - t0, sent, cpu_ticks(pid))
        if i == sources:
            break
        while time.monotonic() < t0 + seconds * i / sources:
            time.sleep(0.002)
        if time.monotonic() >= next_rss:
            rss_max, next_rss = max(rss_max, status_kb(pid, "VmRSS")), next_rss + 0.5
        src = struct.pack("!I", 0x0A000000 + 1 + i * 167 % (1 << 24))       # distinct for 16.7 M sources
        sport, now, seq = rng.randrange(1024, 65536), time.time_ns(), rng.randrange(1 << 31)
        guid = "%020x" % rng.getrandbits(80)
        seqs = [seq, seq + WINDOW - 1] + ([seq, seq + 40_000, seq + 3] if i % 10 == 0 else [])
        for q in seqs:
            data = V1.pack(1, now // 10**9, guid.encode(), q, now // 10**9, now % 10**9, V1.size)
            if i % 100 == 0 and q == seq + 3:
                data = data[:40]
            udp = struct.pack("!HHHH", sport, PORT, 8 + len(data), 0) + data
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst_ip)
            raw.sendto(hdr + udp, (dst, 0))
            sent += 1
    print(json.dumps({"marks": [marks[k] for k in sorted(marks)], "rss_max_kb": rss_max}), flush=True)


def read_pcap(path):
    """Ethernet / IPv4 / UDP payloads of a classic pcap file."""
    with open(path, "rb") as fh:
        data = fh.read()
    magic = struct.unpack_from("<I", data)[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off, out = 24, []
    while off + 16 <= len(data):
        incl = struct.unpack_from(end + "I", data, off + 8)[0]
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ihl = (frame[14] & 15) * 4
        out.append((struct.unpack_from("!H", frame, 14 + ihl)[0], frame[14 + ihl + 8:]))
    return out


@pytest.mark.lab
@pytest.mark.slow
def test_server_under_spoofed_sources_is_bounded_flat_and_exact(make_lab, tmp_path):
    lab = make_lab(offload="off")
    legit_pcap, statsd_pcap = tmp_path / "legit.pcap", tmp_path / "statsd.pcap"
    dump = lab.tcpdump("b", lab.if_b, legit_pcap, f"udp and src host {lab.a4} and dst port {PORT}", direction="in",
                       snaplen=400)
    sdump = lab.tcpdump("b", "lo", statsd_pcap, f"udp and dst port {STATSD}", direction="in", snaplen=1600)
    out_path = tmp_path / "server.out"
    with open(out_path, "w") as out:
        srv = lab.exec("b", entry("server_main", "-l", lab.b4, "-p", PORT, "-k", "60", "-s", f"127.0.0.1:{STATSD}",
                                  "--max-series", MAX_SERIES),
                       cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    cli = lab.popen("a", entry("client_main", "-r", lab.b4, "-p", PORT, "-l", lab.a4, "-s", CLIENT_PORTS[0], "-n",
                               len(CLIENT_PORTS), "-d", "1", "-i", "5", "-m", "300", "-a", lab.r_mac_facing_a),
                    cwd=ROOT)
    time.sleep(3.0)
    idle_kb = status_kb(srv.pid, "VmRSS")
    flood = lab.run("r", [sys.executable, "-c", "import sys; from tests.integration.test_udping_spoof import spoof; "
                          f"spoof({lab.b4!r}, {srv.pid}, {SOURCES}, {SECONDS})"],
                    timeout=SECONDS + 60, cwd=ROOT)
    hwm_kb = status_kb(srv.pid, "VmHWM")
    cli.send_signal(signal.SIGTERM)
    cli.communicate(timeout=10)
    time.sleep(1.0)
    srv.send_signal(signal.SIGTERM)
    err = srv.communicate(timeout=60)[1]
    stop_tcpdump(dump)
    stop_tcpdump(sdump)
    assert cli.returncode == 0 and srv.returncode == 0, err

    report = json.loads(flood.stdout)
    (t0, n0, c0), (t1, n1, c1), (t2, n2, c2), (t3, n3, c3) = report["marks"]
    first, last = (c1 - c0) / (n1 - n0), (c3 - c2) / (n3 - n2)
    summary = dict(x.split("=") for x in err.strip().splitlines()[-1].split()[1:])
    figures = (f"RSS idle {idle_kb // 1024} MB, peak {max(hwm_kb, report['rss_max_kb']) // 1024} MB; "
               f"CPU per packet {first / CLK_TCK * 1e6:.1f} us at 20-40 %, {last / CLK_TCK * 1e6:.1f} us last 20 %; "
               f"{n3} packets in {t3:.1f} s; server: {summary}")
    print(figures)
    assert t3 < SECONDS + 5, figures                       # the flood was as fast as asked
    assert max(hwm_kb, report["rss_max_kb"]) - idle_kb < RSS_SLACK_KB, figures
    assert last <= 1.5 * first + 2 / (n3 - n2), figures   # flat: 50 % and a tick or two of slack
    assert SOURCES // 5 >= MAX_SESSIONS and int(summary["evicted"]) >= SOURCES - MAX_SESSIONS
    assert (summary["malformed"], summary["dups"], summary["stale"]) == \
        (str(SOURCES // 100), str(SOURCES // 10), str(SOURCES // 10 - SOURCES // 100))      # none lost

    sent = {}                                              # the client's probes that reached B, per GUID
    for sport, payload in read_pcap(legit_pcap):
        v = decode_v1(payload)
        assert isinstance(v, dict) and sport in CLIENT_PORTS
        sent.setdefault(v["guid"], {"port": sport, "seqs": set()})["seqs"].add(v["seq"])
    lines = [json.loads(x) for x in out_path.read_text().splitlines()]
    mine = {x["guid"]: x for x in lines if int(x["from_port"]) in CLIENT_PORTS and x["from_host"].startswith("198")}
    assert set(mine) == set(sent) and len(sent) >= 4 * (SECONDS // 5), (len(mine), len(sent))
    for guid, want in sent.items():
        got = mine[guid]
        assert (int(got["from_port"]), got["count"], got["targetCount"]) == \
            (want["port"], str(len(want["seqs"])), str(max(want["seqs"]) - min(want["seqs"]) + 1)), figures
        assert len(want["seqs"]) == max(want["seqs"]) - min(want["seqs"]) + 1    # nothing lost on the way

    series = {line.split(":")[0].rsplit(".", 1)[0]                 # statsd name prefixes: the cap, all used,
              for _, payload in read_pcap(statsd_pcap) for line in payload.decode().splitlines()}
    assert len(series) == MAX_SERIES + 2, len(series)              # and the two overflow rows
    assert {"_overflow._overflow.198_18_2_2.7000", "_overflow.198_18_2_2.7000"} <= series
