"""The lab itself: R forwards, and each impairment measures as configured
(loss by ping and R's counters, delay by ping and irtt, rate by iperf3), and
down() leaves nothing behind.  All traffic stays inside the lab namespaces;
every traffic command is bounded in count and time.
"""
import json
import math
import os
import re
import statistics
import subprocess
import time

import pytest

from tests.lab import netlab

pytestmark = pytest.mark.lab


def ping(lab, dst, count, interval, quiet=False):
    """Ping dst from A; returns ping's stdout."""
    argv = ["ping", "-c", count, "-i", interval, "-W", "1", dst] + (["-q"] if quiet else [])
    return lab.run("a", argv, check=False, timeout=30).stdout


def ping_counts(out):
    """(transmitted, received) from ping's summary."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return int(m.group(1)), int(m.group(2))


def wait_listening(lab, host, proto, port, timeout=5.0):
    """Wait until a server in host's namespace listens on port."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if lab.run(host, ["ss", "-Hln" + proto, "sport = :%d" % port]).stdout.strip():
            return
        time.sleep(0.02)
    raise AssertionError("nothing listens on %s/%d in %s" % (proto, port, host))


def host_forward_rules():
    """The host namespace's FORWARD chains, IPv4 and IPv6."""
    return [netlab.sh([ipt, "-w", "-S", "FORWARD"]).stdout for ipt in ("iptables", "ip6tables")]


def test_r_forwards_ipv4_and_ipv6(lab):
    for dst, src in ((lab.b4, lab.a4), (lab.b6, lab.a6)):
        out = ping(lab, dst, 3, 0.05)
        assert ping_counts(out) == (3, 3), out
        assert re.findall(r"ttl=(\d+)", out) == ["63"] * 3, "R decrements the TTL/hop limit once"
        route = lab.run("b", ["ip", "route", "get", src]).stdout
        assert "via %s dev %s" % (lab.rb4 if src == lab.a4 else lab.rb6, lab.if_b) in route


def test_random_loss_matches_rate_and_drop_counter(lab):
    p = 0.10
    lab.set(loss_ab=100 * p)
    for family, dst, n in ((4, lab.b4, 1000), (6, lab.b6, 400)):
        sent, received = ping_counts(ping(lab, dst, n, 0.002, quiet=True))
        lost = sent - received
        tolerance = 4.5 * math.sqrt(n * p * (1 - p))
        print("IPv%d: %d of %d lost (%.1f %%), R dropped %d" % (
            family, lost, sent, 100.0 * lost / sent, lab.drops("ab", family)))
        assert sent == n
        assert abs(lost - n * p) <= tolerance, "%d lost, expected %g +- %.0f" % (lost, n * p, tolerance)
        assert lost == lab.drops("ab", family), "every loss is one of R's drops"
    assert lab.drops("ba") == 0


def test_delay_by_ping_rtt_and_irtt_one_way(lab, tmp_path):
    netlab.require("irtt")
    lab.set(delay=20)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", ping(lab, lab.b4, 100, 0.01))]
    assert len(rtts) == 100
    print("ping RTT median %.2f ms (min %.2f, max %.2f)" % (statistics.median(rtts), min(rtts), max(rtts)))
    assert 40.0 <= statistics.median(rtts) <= 43.0

    lab.popen("b", ["irtt", "server", "-b", "%s:2112" % lab.b4])
    wait_listening(lab, "b", "u", 2112)
    out = tmp_path / "irtt.json"
    lab.run("a", ["irtt", "client", "-i", "10ms", "-d", "3s", "-Q", "-o", out, "%s:2112" % lab.b4],
            timeout=20)
    stats = json.loads(out.read_text())["stats"]
    send, receive = stats["send_delay"]["median"] / 1e6, stats["receive_delay"]["median"] / 1e6
    print("irtt OWD median send %.2f ms, receive %.2f ms, %d packets" % (
        send, receive, stats["packets_received"]))
    assert stats["packets_received"] >= 250
    assert abs(send - 20.0) <= 1.5 and abs(receive - 20.0) <= 1.5


def test_rate_limits_tcp_goodput(lab):
    netlab.require("iperf3")
    lab.set(rate_ab="10mbit")
    server = lab.popen("b", ["iperf3", "-s", "-1", "-B", lab.b4, "-p", "5201"])
    wait_listening(lab, "b", "t", 5201)
    res = json.loads(lab.run("a", ["iperf3", "-c", lab.b4, "-p", "5201", "-t", "4", "-O", "1", "-J"],
                             timeout=20).stdout)
    server.wait(timeout=5)
    goodput = res["end"]["sum_received"]["bits_per_second"] / 1e6
    wire = goodput * 1514 / 1448  # tbf counts L2 bytes: 1448 B of payload is a 1514 B frame
    tbf = lab.qdisc_stats("ab")
    print("TCP goodput %.2f Mbit/s = %.2f Mbit/s of frames through tbf 10mbit "
          "(tbf overlimits %d, drops %d)" % (goodput, wire, tbf["overlimits"], tbf["drops"]))
    # tbf dequeues in softirq: a throttled 2-vCPU VM delivered 8.51 here once (a fresh-clone run)
    assert 8.0 <= wire <= 11.0
    assert tbf["kind"] == "tbf" and tbf["overlimits"] > 0, "R's tbf is what limits the rate"


def test_down_leaves_nothing_behind(make_lab):
    before = host_forward_rules()
    lab = make_lab(offload="off", rate="50mbit", loss_ab=1, delay_ba=5, jitter_ba=1)
    helpers = netlab.helper_pids(lab.name)
    stray = lab.popen("b", ["sleep", "30"])
    assert len(helpers) == 1 and lab.qdisc_stats("ab")["kind"] == "tbf"
    assert host_forward_rules() == before, "rules are only ever inside R"
    assert "tbf" not in netlab.sh(["tc", "qdisc", "show"]).stdout
    assert not any(os.path.exists("/sys/class/net/" + dev)
                   for dev in (lab.if_a, lab.if_ra, lab.if_rb, lab.if_b)), "no lab link in the host"
    assert len(netlab.guard_routes()) == 2

    lab.down()
    lab.down()
    assert not {lab.ns_a, lab.ns_r, lab.ns_b} & set(netlab.namespaces())
    assert lab.helper_stats["ba"].startswith("nfqdelay"), "helper exited cleanly, stats line printed"
    assert netlab.helper_pids(lab.name) == {}
    assert not any(os.path.exists("/proc/%d" % pid) for pid in helpers)
    assert stray.poll() is not None
    if not netlab.lab_names("lab"):
        assert netlab.guard_routes() == []
    assert host_forward_rules() == before


def test_down_half_built_and_cleanup_stale():
    half = netlab.Lab()
    try:
        netlab.sh(["ip", "netns", "add", half.ns_r])
        orphan = subprocess.Popen(half.argv("r", ["sleep", "30"]))
        half.down()
        orphan.wait(timeout=5)
        assert half.ns_r not in netlab.namespaces()
    finally:
        half.down()

    dead = subprocess.Popen(["true"])
    dead.wait()
    crashed = netlab.Lab(netlab.new_name(owner=dead.pid))
    try:
        for ns in (crashed.ns_a, crashed.ns_r):
            netlab.sh(["ip", "netns", "add", ns])
        assert crashed.name in netlab.cleanup_stale()
        assert not {crashed.ns_a, crashed.ns_r} & set(netlab.namespaces())
    finally:
        crashed.down()
