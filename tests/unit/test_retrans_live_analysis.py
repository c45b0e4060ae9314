"""Live-mode parsing and verdicts (netprobe.probes.retrans.analysis), and the probe's config.

The trace lines are real trace_pipe output of this kernel (6.18) from the lab
(tcp_retransmit_skb over IPv4, tcp_send_reset); the IPv6 and SYN-ACK lines
follow the events' print formats (events/tcp/*/format).
"""
import ipaddress
from pathlib import Path

import pytest

import netprobe.config
from netprobe.config.load import load_file
from netprobe.config.schema import Where, build, fields
from netprobe.errors import ConfigError
from netprobe.probes.retrans import Config, analysis

CONFIG_DIR = Path(netprobe.config.__file__).parent

V4 = ("          iperf3-9072    [001] .N...  3385.008365: tcp_retransmit_skb: skbaddr=000000007ffb305e "
      "skaddr=000000000eccd592 family=AF_INET sport=38486 dport=5298 saddr=198.18.1.2 daddr=198.18.2.2 "
      "saddrv6=::ffff:198.18.1.2 daddrv6=::ffff:198.18.2.2 state=TCP_ESTABLISHED err=0")
RST = ("            bash-9103    [001] ..s1.  3387.293565: tcp_send_reset: skbaddr=00000000e484cf08 "
       "skaddr=0000000000000000 src=198.18.2.2:5297 dest=198.18.1.2:58444 state=UNKNOWN reason=NO_SOCKET")
V6 = ("          <idle>-0       [000] ..s1.  3390.000001: tcp_retransmit_skb: skbaddr=0000000011111111 "
      "skaddr=0000000022222222 family=AF_INET6 sport=40000 dport=443 saddr=0.0.0.0 daddr=0.0.0.0 "
      "saddrv6=2001:db8::1 daddrv6=2001:db8:1::9 state=TCP_ESTABLISHED err=0")
SYNACK = ("          <idle>-0       [000] ..s1.  3390.000002: tcp_retransmit_synack: family=AF_INET sport=443 "
          "dport=51000 saddr=10.0.0.1 daddr=10.9.9.9 saddrv6=::ffff:10.0.0.1 daddrv6=::ffff:10.9.9.9")


def test_parse_event():
    assert analysis.parse_event(V4) == ("retrans", "198.18.1.2", 38486, "198.18.2.2", 5298, 3385.008365)
    assert analysis.parse_event(RST) == ("resets", "198.18.2.2", 5297, "198.18.1.2", 58444, 3387.293565)
    assert analysis.parse_event(V6) == ("retrans", "2001:db8::1", 40000, "2001:db8:1::9", 443, 3390.000001)
    assert analysis.parse_event(SYNACK) == ("synack_retrans", "10.0.0.1", 443, "10.9.9.9", 51000, 3390.000002)
    for bad in ("", "# tracer: nop", V4.replace("sport=38486", "sport=x"), V4[:60]):
        assert analysis.parse_event(bad) is None


def test_counter_groups_filters_and_judges():
    c = analysis.LiveCounter(peers=[ipaddress.ip_network("198.18.0.0/15")], ports=(5298, 5297))
    c.add_lines([V4] * 3 + [RST, V6, SYNACK, "garbage"])
    recs, verdicts = c.records(name="n", interval_s=1.0, lost=2, out_segs=1000, retrans_segs=4, max_retrans=2,
                               now=1.0)
    host = recs[0].fields
    assert (host["dir"], host["events_lost"], host["unparsed"], host["host_retrans_pct"].value) == ("out", 2, 1, 0.4)
    assert "capture_drops" not in host             # no capture, no capture counters
    host = c.records(name="n", interval_s=1.0, lost=0, capture=(900, 12), now=2.0)[0][0].fields
    assert (host["capture_frames"], host["capture_drops"]) == (900, 12)
    by = {r.fields["dir"]: r.fields for r in recs[1:]}
    assert set(by) == {"198.18.1.2->198.18.2.2", "198.18.2.2->198.18.1.2"}   # V6, SYNACK: other peers
    assert by["198.18.1.2->198.18.2.2"]["retrans"] == 3 and by["198.18.2.2->198.18.1.2"]["resets"] == 1
    assert c.ignored == 2
    assert verdicts["198.18.1.2->198.18.2.2"] == (True, 3, "198.18.1.2:38486->198.18.2.2:5298(3)")
    assert verdicts["198.18.2.2->198.18.1.2"][0] is False


A, B = ipaddress.ip_address("198.18.1.2"), ipaddress.ip_address("198.18.2.2")
FLOW = (A, 38486, B, 5298)                      # V4's socket


def at(line, t):
    """The trace line as if the event happened at time t (the instance's CLOCK_MONOTONIC)."""
    return line.replace("3385.008365", f"{t:.6f}")


def test_segments_come_from_the_sockets_count_and_events_only_for_closed_sockets():
    c = analysis.LiveCounter(ports=(5298,))
    other = (A, 40001, B, 5298)
    c.add_dump([(7, FLOW, 10), (8, other, 4)], 100.0)      # before us: not counted
    c.add_lines([at(V4, 100.5)] * 2)                        # two skbs ...
    c.add_dump([(7, FLOW, 16), (8, other, 4)], 101.0)      # ... were 6 segments (GSO)
    c.add_lines([at(V4, 101.5)])
    c.add_dump([(8, other, 4), (9, (A, 40002, B, 5298), 3)], 102.0)   # FLOW closed after 1 more event; new socket
    recs, verdicts = c.records(name="n", interval_s=1.0, lost=0, max_retrans=8)
    f = recs[1].fields
    assert (f["dir"], f["retrans"], f["retrans_events"], f["flows_retransmitting"]) == \
        ("198.18.1.2->198.18.2.2", 6 + 1 + 3, 3, 2)
    assert f["retrans_at_close"] == 1          # the event of the closed socket: a lower bound, and said so
    assert verdicts["198.18.1.2->198.18.2.2"] == \
        (True, 10, "198.18.1.2:38486->198.18.2.2:5298(7),198.18.1.2:40002->198.18.2.2:5298(3)")
    c.reset()
    c.add_dump([(8, other, 5), (9, (A, 40002, B, 5298), 3)], 103.0)
    recs, _ = c.records(name="n", interval_s=1.0, lost=0)      # the next interval: only what is new
    assert [(r.fields["retrans"], r.fields["retrans_events"], r.fields["retrans_at_close"]) for r in recs[1:]] \
        == [(1, 0, 0)]


def test_an_event_read_after_the_dump_that_counted_it_is_not_counted_again():
    c = analysis.LiveCounter()
    c.add_dump([], 100.0)
    c.add_dump([(7, FLOW, 2)], 101.0)          # 2 resends, their events still in the trace buffer
    c.add_lines([at(V4, 100.9)] * 2)           # read now: before the dump's end, already counted
    c.add_dump([], 102.0)                      # the socket closed
    recs, _ = c.records(name="n", interval_s=1.0, lost=0)
    assert (recs[1].fields["retrans"], recs[1].fields["retrans_events"]) == (2, 2)


def test_segment_counter_ignores_unwatched_sockets_and_counts_events_without_dumps():
    c = analysis.LiveCounter(peers=[ipaddress.ip_network("10.0.0.0/8")])
    c.add_dump([], 1.0)
    c.add_dump([(1, FLOW, 50)], 2.0)                # a peer outside 10/8: not ours
    recs, _ = c.records(name="n", interval_s=1.0, lost=0)
    assert recs[1:] == []
    c = analysis.LiveCounter()
    c.add_lines([V4] * 4)                           # no dumps at all (another namespace's sockets)
    recs, _ = c.records(name="n", interval_s=1.0, lost=0)
    assert (recs[1].fields["retrans"], recs[1].fields["retrans_events"]) == (4, 4)


def test_prefix_grouping_v6():
    c = analysis.LiveCounter(v6len=32)
    c.add_lines([V6, V6])
    recs, _ = c.records(name="n", interval_s=1.0, lost=0)
    assert [r.fields["dir"] for r in recs[1:]] == ["2001:db8::/32->2001:db8::/32"]
    assert recs[1].fields["flows_retransmitting"] == 1


def test_config_ports_checked():
    w = Where("t.toml", "probe[0]")
    assert build(Config, {"name": "r", "ports": ["443", "5201"]}, w).port_numbers == (443, 5201)
    with pytest.raises(ConfigError, match=r'probe\[0\].ports: "http" is not a TCP port'):
        build(Config, {"name": "r", "ports": ["http"]}, w)


def test_example_documents_every_retrans_key():
    cfg = load_file(CONFIG_DIR / "example.toml")
    table = next(p.table for p in cfg.probes if p.kind == "retrans")
    assert {f.name for f in fields(Config)} <= set(table)
