"""UDPing compatibility (sans-IO parts): UDPing's flags, ranges and messages, the fixed
session accounting against UDPing's known failures, and golden JSON / statsd lines."""
import numpy as np
import pytest

from netprobe.probes.oneway import udping as u

GOOD_CLIENT = ["-r", "server.example", "-p", "7000", "-l", "192.0.2.1", "-s", "7000", "-n", "10", "-d", "5",
               "-i", "1", "-m", "1400", "-a", "02:1a:b0:00:01:01"]


def without(argv, flag):
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


def replaced(argv, flag, value):
    i = argv.index(flag)
    return argv[:i + 1] + [value] + argv[i + 2:]


def test_client_options():
    o = u.client_options(GOOD_CLIENT)
    assert o["ports"] == list(range(7000, 7010)) and o["delay"] == 5 and o["macs"] == [bytes.fromhex("021ab0000101")]
    assert u.client_options(replaced(GOOD_CLIENT, "-s", "5000-5001,5005"))["ports"] == [5000, 5001, 5005]
    assert u.client_options(["-h"]) == {"help": True}
    assert u.server_options(["-h"]) == {"help": True}


@pytest.mark.parametrize("argv,msg", [
    (without(GOOD_CLIENT, "-r"), "No remote hostname provided\n"),
    (without(GOOD_CLIENT, "-p"), "Port number is out of range 1024-65532\n"),
    (replaced(GOOD_CLIENT, "-p", "1023"), "Port number is out of range 1024-65532\n"),
    (replaced(GOOD_CLIENT, "-p", "70000"), "Port number is out of range 1024-65532\n"),
    (without(GOOD_CLIENT, "-l"), "No local IP provided\n"),
    (replaced(GOOD_CLIENT, "-s", "60001"), "Starting port is out of range 1024-60000\n"),
    (replaced(GOOD_CLIENT, "-s", "50a0"), "Starting port is out of range 1024-60000\n"),
    (replaced(GOOD_CLIENT, "-n", "5001"), "Number of ports is out of range 1-5000\n"),
    (replaced(GOOD_CLIENT, "-d", "1001"), "Delay is out of range 0-1000 ms\n"),
    (replaced(GOOD_CLIENT, "-d", "-1"), "Delay is out of range 0-1000 ms\n"),
    (without(GOOD_CLIENT, "-i"), "Measurement interval is out of range 1-900 s\n"),
    (replaced(GOOD_CLIENT, "-i", "901"), "Measurement interval is out of range 1-900 s\n"),
    (replaced(GOOD_CLIENT, "-m", "2001"), "Max packet size is out of range 1-2000\n"),
    (without(GOOD_CLIENT, "-a"), "You must specify one or more next-hop MAC addresses\n"),
    (replaced(GOOD_CLIENT, "-a", "02:1a:b0:00:01"), "Invalid next-hop MAC address string\n"),
    (GOOD_CLIENT + ["-x"], "invalid option -- 'x'\n"),
])
def test_client_usage_errors(argv, msg):
    with pytest.raises(u.UsageExit) as e:
        u.client_options(argv)
    assert str(e.value) == (msg if msg.startswith("invalid option") else u.CLIENT_USAGE + msg)


@pytest.mark.parametrize("argv,msg", [
    (["-l", "h", "-k", "1"], "Port number is out of range 1024-65532\n"),
    (["-l", "h", "-p", "80", "-k", "1"], "Port number is out of range 1024-65532\n"),
    (["-p", "7000", "-k", "1"], "Hostname not provided\n"),
    (["-l", "h", "-p", "7000"], "Keepalive interval is out of range 1-60s\n"),
    (["-l", "h", "-p", "7000", "-k", "61"], "Keepalive interval is out of range 1-60s\n"),
])
def test_server_usage_errors(argv, msg):
    with pytest.raises(u.UsageExit) as e:
        u.server_options(argv)
    assert str(e.value) == u.SERVER_USAGE + msg


def test_server_options_defaults():
    o = u.server_options(["-l", "rx.example", "-p", "7000", "-k", "2", "-s", "stats", "-t", "tags:9125", "-q"])
    assert (o["recv_host"], o["statsd"], o["tagged"], o["metric"], o["quiet"]) == \
        ("rx.example", ("stats", 8125), ("tags", 9125), "udping", True)


GUID_A, GUID_B = "3fa9c0d2e1b47a6c9d0e", "00000000000000000abc"


def rows(guid, seqs, ip=0x0A000001, port=7000, start=1_700_000_000, lat_ns=2_000_000):
    n = len(guid)
    v = int(guid, 16)
    hi, lo = (n << 16) | (v >> 64), v & (2**64 - 1)
    lo = lo - 2**64 if lo >= 2**63 else lo
    return np.array([[ip, port, hi, lo, start, s, 10**18, 10**18 + lat_ns] for s in seqs], dtype=np.int64)


def test_any_gap_is_counted_and_loss_is_never_negative():
    """UDPing froze maxSeq after a jump of >= 10 and reported count > targetCount."""
    ss = u.Sessions(keepalive=1)
    seqs = list(range(0, 10)) + list(range(30, 100))          # 20 in a row lost
    seqs[40], seqs[55] = seqs[55], seqs[40]                   # reordered by 15
    ss.add_rows(rows(GUID_A, seqs + [31, 31]), now=0.0)       # and two duplicates
    (s,) = ss.sweep(now=5.0)
    assert (s.count, s.target(), s.dups, s.guid) == (80, 100, 2, GUID_A)
    assert s.sum == pytest.approx(80 * 2.0) and s.max == pytest.approx(2.0)


def test_tail_loss_is_found_through_the_successor_guid():
    ss = u.Sessions(keepalive=1)
    ss.add_rows(rows(GUID_A, range(0, 90)), now=0.0)          # 90..99 lost at the end of the interval
    ss.add_rows(rows(GUID_B, range(100, 150)), now=1.0)
    (a,) = ss.sweep(now=1.6)
    assert (a.guid, a.count, a.target()) == (GUID_A, 90, 100)
    assert ss.sweep(now=1.6) == [] and len(ss.by_key) == 1    # B is still live
    (b,) = ss.sweep(now=9, everything=True)
    assert (b.count, b.target()) == (50, 50)


def test_golden_console_and_statsd_lines():
    ss = u.Sessions(keepalive=1)
    ss.add_rows(rows(GUID_A, [0, 1, 3], lat_ns=1_234_568), now=0.0)
    (s,) = ss.sweep(now=5.0)
    assert u.json_line(s, "client_example_com", "server_example_com", 7001) == (
        '{"from_host":"client_example_com","from_port":"7000","to_host":"server_example_com","to_port":"7001",'
        '"guid":"3fa9c0d2e1b47a6c9d0e","count":"3","targetCount":"4","sum":"3.703704",'
        '"sumOfSquares":"4.572474","max":"1.234568"}')
    assert u.statsd_lines(s, "client_example_com", "server_example_com", 7001) == (
        "client_example_com.7000.server_example_com.7001.count:3|c\n"
        "client_example_com.7000.server_example_com.7001.targetCount:4|c\n"
        "client_example_com.7000.server_example_com.7001.sum:3.7037|c\n"
        "client_example_com.7000.server_example_com.7001.sos:4.57247|c\n"
        "client_example_com.7000.server_example_com.7001.max:1.23457|g\n")
    assert u.tagged_lines(s, "udping", "c", "s", 7001).splitlines()[0] == \
        "udping.count,from_host=c,from_port=7000,to_host=s,to_port=7001:3|c"
    agg = u.host_aggregates([s, s], lambda ip: "c")
    assert u.host_statsd_lines(agg, "s", 7001).splitlines()[:2] == ["c.s.7001.count:6|c", "c.s.7001.targetCount:8|c"]
    assert u.host_tagged_lines(agg, "udping", "s", 7001).splitlines()[4] == \
        "udping.max,from_host=c,to_host=s,to_port=7001:1.23457|g"


def test_names_follow_udping():
    assert u.name_of("rx.example.com") == "rx_example_com"
    assert "." not in u.name_of("192.0.2.77")      # reverse-resolved if it has a name, dots replaced either way


def test_a_guid_and_its_successor_first_seen_in_one_batch_link_in_arrival_order():
    """GUIDs are grouped per batch; the successor links must follow arrival, not sort order."""
    ss = u.Sessions(keepalive=10)
    older, old, new = "77777777777777777777", "ffffffffffffffffffff", "00000000000000000001"   # new sorts first
    ss.add_rows(rows(older, range(0, 10)), now=0.0)
    ss.add_rows(np.concatenate([rows(old, [10, 11]), rows(new, range(12, 300))]), now=1.0)
    done = {s.guid: s for s in ss.sweep(now=50.0)}
    assert [(done[g].count, done[g].target()) for g in (older, old, new)] == [(10, 10), (2, 2), (288, 288)]
