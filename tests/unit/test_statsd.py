"""[output.statsd] into a real UDP (and Unix datagram) listener, parsed with the statsd line protocol.

The grammar checked is statsd's: one `<name>:<value>|<type>` per line, type g (gauge),
c (counter) or ms (timer, milliseconds), lines separated by newlines, whole lines per
datagram; tagged names carry `,key=value` pairs (the InfluxDB/Telegraf statsd style).
"""
import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.config.schema import Where, build
from netprobe.errors import ConfigError
from netprobe.outputs.statsd import StatsdConfig, StatsdSink
from netprobe.results import BREACH, CLEAR, RESULT, Record, event, percent, rate, seconds

LINE = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)(?P<tags>(?:,[^,=:|\s]+=[^,=:|\s]+)*):"
                  r"(?P<value>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\|(?P<type>g|c|ms)")


def _sink(**table):
    return StatsdSink(build(StatsdConfig, table, Where("t.toml", "output.statsd")))


@pytest.fixture
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    yield s
    s.close()


def _receive(sock, max_packet):
    """Every datagram waiting, as parsed lines; each datagram under max_packet, whole lines only."""
    out = []
    sock.settimeout(0.5)
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return out
        assert len(data) <= max_packet and data.endswith(b"\n")
        for line in data.decode().splitlines():
            m = LINE.fullmatch(line)
            assert m, f"not a statsd line: {line!r}"
            out.append((m["name"], dict(kv.split("=") for kv in m["tags"][1:].split(",")) if m["tags"] else {},
                        float(m["value"]), m["type"]))


def _run(sink, records):
    sink.start({})
    try:
        for r in records:
            sink.write(r)
        sink.flush()
    finally:
        sink.close()


THROUGHPUT = Record(RESULT, "throughput", "dc1-dc2", {
    "dir": "a->b", "sla_rate": rate(950e6), "rate": rate(812.4e6), "rtt": seconds(0.0123), "retrans": 4,
    "retrans_pct": percent(0.25), "limited_by": "network", "fitness": None, "samples": 50})
ONEWAY = Record(RESULT, "oneway", "ow", {"peer": "192.0.2.10:7171", "interval_id": 7, "sent": 1000, "lost": 3,
                                        "loss": percent(0.3), "delay_p99": seconds(0.00042), "clock_synced": False})


def test_dotted_gauges_timers_and_counters(udp):
    port = udp.getsockname()[1]
    _run(_sink(address=f"udp://127.0.0.1:{port}"), [THROUGHPUT, ONEWAY])
    got = {name: (value, typ) for name, _, value, typ in _receive(udp, 1432)}
    assert got == {
        "netprobe.throughput.dc1-dc2.a_to_b.sla_rate": (950e6, "g"),
        "netprobe.throughput.dc1-dc2.a_to_b.rate": (812.4e6, "g"),
        "netprobe.throughput.dc1-dc2.a_to_b.rtt": (0.0123 * 1000, "ms"),
        "netprobe.throughput.dc1-dc2.a_to_b.retrans": (4, "g"),          # a sliding-window count: a gauge
        "netprobe.throughput.dc1-dc2.a_to_b.retrans_pct": (0.25, "g"),
        "netprobe.throughput.dc1-dc2.a_to_b.samples": (50, "g"),
        "netprobe.oneway.ow.sent": (1000, "c"),                           # counts of the interval: counters
        "netprobe.oneway.ow.lost": (3, "c"),
        "netprobe.oneway.ow.loss": (0.3, "g"),
        "netprobe.oneway.ow.delay_p99": (0.00042 * 1000, "ms"),
        "netprobe.oneway.ow.clock_synced": (0, "g"),
    }


def test_tagged_names_carry_probe_dir_and_port(udp):
    port = udp.getsockname()[1]
    rec = Record(RESULT, "oneway", "ow", {"peer": "192.0.2.10:7171", "port": 40001, "lost": 2,
                                          "delay_max": seconds(0.002)})
    _run(_sink(address=f"udp://127.0.0.1:{port}", format="tagged", prefix="np"), [rec, THROUGHPUT])
    got = _receive(udp, 1432)
    assert ("np.oneway.lost", {"probe": "ow", "port": "40001"}, 2.0, "c") in got
    assert ("np.oneway.delay_max", {"probe": "ow", "port": "40001"}, 2.0, "ms") in got
    assert ("np.throughput.rate", {"probe": "dc1-dc2", "dir": "a->b"}, 812.4e6, "g") in got


def test_breach_and_clear_set_a_gauge(udp):
    port = udp.getsockname()[1]
    kw = {"metric": "rate", "value": rate(8e8), "op": ">=", "threshold": rate(9.5e8), "dir": "a->b"}
    _run(_sink(address=f"udp://127.0.0.1:{port}"),
         [event(BREACH, "throughput", "dc1-dc2", **kw), event(CLEAR, "throughput", "dc1-dc2", **kw)])
    assert _receive(udp, 1432) == [("netprobe.throughput.dc1-dc2.a_to_b.breach.rate", {}, 1.0, "g"),
                                   ("netprobe.throughput.dc1-dc2.a_to_b.breach.rate", {}, 0.0, "g")]



def test_a_suspect_hop_names_the_breach_gauge(udp):
    port = udp.getsockname()[1]
    kw = {"metric": "loss", "value": percent(20), "op": "<=", "threshold": percent(1), "suspect_hop": "198.18.11.2"}
    _run(_sink(address=f"udp://127.0.0.1:{port}"), [event(BREACH, "oneway", "ow", **kw)])
    _run(_sink(address=f"udp://127.0.0.1:{port}", format="tagged"), [event(CLEAR, "oneway", "ow", **kw)])
    assert _receive(udp, 1432) == [("netprobe.oneway.ow.hop.198_18_11_2.breach.loss", {}, 1.0, "g"),
                                   ("netprobe.oneway.breach.loss", {"probe": "ow", "suspect_hop": "198.18.11.2"},
                                    0.0, "g")]

def test_115_ports_are_packed_under_the_mtu_without_losing_a_line(udp):
    port = udp.getsockname()[1]
    recs = [Record(RESULT, "oneway", "ow", {"port": 40000 + i, "sent": 100 + i, "received": 99, "lost": 1,
                                            "loss": percent(1.0), "delay_p99": seconds(1e-4 * i)})
            for i in range(115)]
    _run(_sink(address=f"udp://127.0.0.1:{port}", max_packet=512), recs)
    got = _receive(udp, 512)
    assert len(got) == 115 * 5
    sent = {name: v for name, _, v, t in got if name.endswith(".sent") and t == "c"}
    assert sent == {f"netprobe.oneway.ow.port.{40000 + i}.sent": 100 + i for i in range(115)}


def test_unix_datagram_socket(tmp_path):
    path = str(tmp_path / "statsd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        _run(_sink(address=path), [ONEWAY])
        assert ("netprobe.oneway.ow.sent", {}, 1000.0, "c") in _receive(s, 1432)


def test_no_listener_is_reported_not_raised_into_the_probe(tmp_path):
    sink = _sink(address=str(tmp_path / "nobody.sock"))
    sink.start({})
    sink.write(ONEWAY)
    with pytest.raises(OSError, match="cannot send to"):      # the sink runner logs it once and goes on
        sink.flush()
    sink.close()


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=64), direction=st.text(max_size=40), group=st.text(max_size=40),
       fmt=st.sampled_from(["dotted", "tagged"]))
def test_any_names_give_parseable_lines(name, direction, group, fmt):
    from netprobe.outputs.statsd import metric_lines
    rec = Record(RESULT, "flows", name, {"scope": "group", "dir": direction, "group": group, "flows": 3,
                                         "rtt_p99": seconds(0.001)})
    lines = metric_lines(rec, fmt, "netprobe")
    assert len(lines) == 2
    for line in lines:
        assert LINE.fullmatch(line), line


@pytest.mark.parametrize("table, message", [
    ({"address": "127.0.0.1:8125"}, 'output.statsd.address: "127.0.0.1:8125": not udp://HOST:PORT'),
    ({"address": "udp://::1:8125"}, "not udp://HOST:PORT (IPv6: udp://[::1]:8125)"),
    ({"address": "udp://h:0"}, '"0" is not a port'),
    ({"format": "json"}, 'output.statsd.format: "json" is not one of'),
    ({"prefix": "a b"}, 'output.statsd.prefix: "a b" is not a metric prefix'),
    ({"max_packet": 10}, "output.statsd.max_packet: 10 is out of range"),
])
def test_config_errors_name_the_key(table, message):
    with pytest.raises(ConfigError) as exc:
        _sink(**table)
    assert message in str(exc.value)
