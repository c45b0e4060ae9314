"""Sinks and their factory: golden lines, filtering, back-pressure, config errors, jsonfile rotation.

Real files, pipes and sockets throughout; the oracles are hand-written golden
lines, the gzip/json modules, and what a plain socket receives.
"""
import calendar
import gzip
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib

import pytest

from netprobe.errors import ConfigError
from netprobe.outputs import SINK_TYPES, build_sinks, validate_outputs
from netprobe.outputs.base import Sink, SinkRunner
from netprobe.outputs.jsonfile import JsonFileConfig
from netprobe.outputs.stdout import StdoutConfig, StdoutSink
from netprobe.outputs.syslog import (
    SyslogConfig,
    SyslogSink,
    SyslogUnavailable,
    format_message,
)
from netprobe.results import (
    BREACH,
    CLEAR,
    DROPS,
    ERROR,
    RESULT,
    Record,
    event,
    percent,
    rate,
    seconds,
)

TS = calendar.timegm((2026, 11, 23, 3, 25, 4)) + 0.25      # 2026-11-23T03:25:04.250Z

RESULT_REC = Record(RESULT, "throughput", "dc1-dc2",
                    {"dir": "a->b", "rate": rate(812.4e6), "rtt": seconds(0.0123), "loss": percent(0.5),
                     "retrans": 3, "ok": True, "note": "slow path"}, TS)
BREACH_REC = event(BREACH, "throughput", "dc1-dc2", metric="rate", value=rate(812.4e6), op=">=",
                   threshold=rate(950e6), window=seconds(15), dir="a->b", ts=TS)

RESULT_TEXT = ("2026-11-23T03:25:04.250Z RESULT probe=throughput name=dc1-dc2 dir=a->b rate=812.4Mbit/s "
               'rtt=12.3ms loss=0.5% retrans=3 ok=yes note="slow path"')
BREACH_TEXT = ("2026-11-23T03:25:04.250Z BREACH probe=throughput name=dc1-dc2 dir=a->b metric=rate "
               "value=812.4Mbit/s sla=>=950Mbit/s window=15s")
RESULT_JSON = ('{"ts":"2026-11-23T03:25:04.250Z","type":"RESULT","probe":"throughput","name":"dc1-dc2",'
               '"dir":"a->b","rate":812400000.0,"rtt":0.0123,"loss":0.5,"retrans":3,"ok":true,'
               '"note":"slow path","units":{"rate":"bit/s","rtt":"s","loss":"%"}}')
BREACH_JSON = ('{"ts":"2026-11-23T03:25:04.250Z","type":"BREACH","probe":"throughput","name":"dc1-dc2",'
               '"dir":"a->b","metric":"rate","value":812400000.0,"sla_op":">=","threshold":950000000.0,'
               '"window":15.0,"units":{"value":"bit/s","threshold":"bit/s","window":"s"}}')


def _run(sink, records, maxsize=10000, run_info=None):
    runner = SinkRunner(sink, maxsize)
    runner.start(run_info or {})
    for r in records:
        runner.submit(r)
    runner.close()
    return runner


def _numbered(n, start=0, pad=0):
    """n RESULT records with seq numbers, so order and completeness can be checked."""
    return [Record(RESULT, "host", "seq", {"seq": i, "pad": "x" * pad}, TS + i) for i in range(start, start + n)]


class ListSink(Sink):
    name = "list"

    def __init__(self, delay=0.0, fail_on=()):
        self.delay = delay
        self.fail_on = set(fail_on)
        self.written = []

    def write(self, record):
        if self.delay:
            time.sleep(self.delay)
        if record.name in self.fail_on:
            raise ValueError(f"boom on {record.name}")
        self.written.append(record)


# --- stdout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, expected", [("text", [RESULT_TEXT, BREACH_TEXT]), ("json", [RESULT_JSON, BREACH_JSON])])
def test_stdout_golden_lines(fmt, expected):
    buf = io.StringIO()
    runner = _run(StdoutSink(StdoutConfig(format=fmt), stream=buf), [RESULT_REC, BREACH_REC])
    assert buf.getvalue() == "".join(line + "\n" for line in expected)
    assert (runner.dropped, runner.failed) == (0, 0)


def test_stdout_json_lines_are_the_record_dicts():
    buf = io.StringIO()
    _run(StdoutSink(StdoutConfig(format="json"), stream=buf), [RESULT_REC, BREACH_REC])
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == [RESULT_REC.to_dict(), BREACH_REC.to_dict()]


def test_types_filter_through_the_factory(capsys):
    (runner,) = build_sinks({"stdout": {"types": ["BREACH", "CLEAR"]}}, "netprobe.toml")
    runner.start({})
    clear = event(CLEAR, "throughput", "dc1-dc2", metric="rate", value=rate(960e6), op=">=",
                  threshold=rate(950e6), ts=TS)
    for r in [RESULT_REC, BREACH_REC, Record(ERROR, "host", "x", {}, TS), clear, Record(DROPS, "host", "x", {}, TS)]:
        assert runner.submit(r)
    runner.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["BREACH", "CLEAR"]
    assert lines[0] == BREACH_TEXT
    assert runner.dropped == 0


def test_stdout_epipe_raises_one_stable_oserror_then_drops(caplog):
    r, w = os.pipe()
    os.close(r)
    stream = os.fdopen(w, "w")
    sink = StdoutSink(StdoutConfig(), stream=stream)
    sink.write(RESULT_REC)                       # buffered in the stream: no error yet
    with pytest.raises(OSError, match=r"^stdout: the reader closed the pipe \(EPIPE\); records are dropped$"):
        sink.flush()
    for _ in range(3):
        with pytest.raises(OSError, match=r"\(EPIPE\)"):
            sink.write(BREACH_REC)
    sink.flush()                                 # nothing more to say
    stream.close()                               # its fd now points at /dev/null: no BrokenPipeError
    caplog.set_level(logging.ERROR, logger="netprobe.outputs")
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as stream:
        _run(StdoutSink(StdoutConfig(), stream=stream), _numbered(20))
    assert [rec.getMessage() for rec in caplog.records] == [
        "sink stdout: close failed: stdout: the reader closed the pipe (EPIPE); records are dropped"]


def test_stdout_closed_by_reader_in_a_real_process():
    """`netprobe ... | head -1`: the process must exit quietly, no traceback, no 'Exception ignored'."""
    code = ("from netprobe.outputs import build_sinks\n"
            "from netprobe.results import Record\n"
            "(r,) = build_sinks({'stdout': {}}, 't.toml')\n"
            "r.start({})\n"
            "import sys; sys.stdout.write('first\\n'); sys.stdout.flush()\n"
            "sys.stdin.read()\n"      # the parent closes our stdout reader, then our stdin
            "for i in range(5000): r.submit(Record('RESULT', 'host', 'x', {'i': i}))\n"
            "r.close()\n"
            "print('failed', r.failed, file=sys.stderr)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.stdout.readline() == b"first\n"
    proc.stdout.close()
    _, err = proc.communicate(b"", timeout=30)
    err = err.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "EPIPE" in err and re.search(r"failed [1-9]", err), err


# --- SinkRunner ---------------------------------------------------------------------------------

def test_slow_sink_never_blocks_submit_and_counts_drops_exactly():
    sink = ListSink(delay=0.02)
    runner = SinkRunner(sink, maxsize=10)
    runner.start({})
    records = _numbered(300)
    accepted, worst = [], 0.0
    t0 = time.perf_counter()
    for r in records:
        t = time.perf_counter()
        ok = runner.submit(r)
        worst = max(worst, time.perf_counter() - t)
        if ok:
            accepted.append(r)
    elapsed = time.perf_counter() - t0
    runner.close()
    assert elapsed < 0.2 and worst < 0.02, (elapsed, worst)
    assert runner.dropped > 0
    assert len(records) == len(sink.written) + runner.dropped
    assert sink.written == accepted          # everything accepted is written, in order


def test_failing_write_does_not_stop_later_records_and_logs_once(caplog):
    caplog.set_level(logging.ERROR, logger="netprobe.outputs")
    sink = ListSink(fail_on={"bad"})
    names = ["a", "bad", "b", "bad", "c", "bad", "d"]
    runner = _run(sink, [Record(RESULT, "host", n, {}, TS) for n in names])
    assert [r.name for r in sink.written] == ["a", "b", "c", "d"]
    assert runner.failed == 3
    assert [rec.getMessage() for rec in caplog.records] == ["sink list: write failed: boom on bad"]


# --- factory and config errors ------------------------------------------------------------------

def test_factory_builds_named_sinks_of_each_type(tmp_path):
    tables = {"stdout": {"format": "json"},
              "alerts": {"type": "syslog", "address": "udp://127.0.0.1:5514", "facility": "local3",
                         "types": ["BREACH", "CLEAR"], "queue": 50},
              "syslog": {},
              "archive": {"type": "jsonfile", "path": str(tmp_path / "r.json")}}
    runners = build_sinks(tables, "netprobe.toml")
    assert [(r.name, type(r.sink).__name__) for r in runners] == [
        ("stdout", "StdoutSink"), ("alerts", "SyslogSink"), ("syslog", "SyslogSink"), ("archive", "JsonFileSink")]
    assert runners[1].types == {"BREACH", "CLEAR"} and runners[1]._q.maxsize == 50
    assert runners[2].sink.cfg == SyslogConfig()          # defaults: /dev/log, daemon, all types
    assert set(SINK_TYPES) == {"stdout", "syslog", "jsonfile", "prometheus", "alertmanager",
                               "statsd", "elasticsearch"}
    cfgs = validate_outputs(tables, "netprobe.toml")
    assert cfgs["archive"] == JsonFileConfig(path=str(tmp_path / "r.json"))
    assert cfgs["archive"].rotate_size == 64 * 1024 * 1024 and cfgs["archive"].keep == 10


EX = "(examples: /dev/log, udp://127.0.0.1:514, tcp://logs.example.net:6514, udp://[::1]:514)"
FACILITIES = ('"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", '
              '"authpriv", "ftp", "ntp", "local0", "local1", "local2", "local3", "local4", "local5", '
              '"local6", "local7"')


@pytest.mark.parametrize("tables, message", [
    ({"syslog": {"address": "udp://x"}},
     f'netprobe.toml: output.syslog.address: "udp://x" is not a syslog address: no :PORT {EX}'),
    ({"syslog": {"address": "logs:514"}},
     ('netprobe.toml: output.syslog.address: "logs:514" is not a syslog address: neither a socket path '
      f"(starting with /) nor udp://HOST:PORT or tcp://HOST:PORT {EX}")),
    ({"syslog": {"address": "udp://::1:514"}},
     ('netprobe.toml: output.syslog.address: "udp://::1:514" is not a syslog address: an IPv6 address '
      f"goes in brackets, e.g. [::1]:514 {EX}")),
    ({"s": {"type": "syslog", "address": "tcp://[::1]:70000"}},
     ('netprobe.toml: output.s.address: "tcp://[::1]:70000" is not a syslog address: port "70000" is '
      f"not a number from 1 to 65535 {EX}")),
    ({"syslog": {"facility": "local9"}},
     f'netprobe.toml: output.syslog.facility: "local9" is not one of {FACILITIES}'),
    ({"syslog": {"adress": "/dev/log"}},
     "netprobe.toml: output.syslog.adress: unknown key; did you mean 'address'?"),
    ({"jsonfile": {"path": "/x.json", "rotate_size": "64X"}},
     'netprobe.toml: output.jsonfile.rotate_size: "64X" is not a size in bytes (examples: 1400, 64K, 1M)'),
    ({"jsonfile": {"path": "/x.json", "rotate_size": 100}},
     "netprobe.toml: output.jsonfile.rotate_size: 100 bytes is too small (valid: 0 = off, or at least 4096 bytes)"),
    ({"jsonfile": {"path": "/x.json", "rotate_intervall": "1h"}},
     "netprobe.toml: output.jsonfile.rotate_intervall: unknown key; did you mean 'rotate_interval'?"),
    ({"jsonfile": {}},
     ("netprobe.toml: output.jsonfile.path: missing (required: file to append JSON lines to; "
      "rotated files are kept beside it)")),
    ({"a": {"type": "jsonfile", "path": "r.json"}, "b": {"type": "jsonfile", "path": "./r.json"}},
     'netprobe.toml: output.b.path: "./r.json" is already the path of output.a'),
    ({"stdout": {"format": "xml"}},
     'netprobe.toml: output.stdout.format: "xml" is not one of "text", "json"'),
    ({"stdout": {"fromat": "json"}},
     "netprobe.toml: output.stdout.fromat: unknown key; did you mean 'format'?"),
    ({"stdout": {"types": ["BREACH", "BREAK"]}},
     'netprobe.toml: output.stdout.types: "BREAK" is not a record type '
     '(valid: RESULT, BREACH, CLEAR, ERROR, DROPS, GAP)'),
    ({"stdout": {"queue": 5}},
     "netprobe.toml: output.stdout.queue: 5 is out of range (valid: 10 to 1000000)"),
    ({"alerts": {"type": "syslg"}},
     ('netprobe.toml: output.alerts.type: "syslg" is not a sink type '
      '(valid: alertmanager, elasticsearch, jsonfile, prometheus, statsd, stdout, syslog); '
      'did you mean "syslog"?')),
    ({"alerts": {}},
     ('netprobe.toml: output.alerts: "alerts" is not a sink type '
      '(valid: alertmanager, elasticsearch, jsonfile, prometheus, statsd, stdout, syslog); '
      'name the table after one or set type = "..." in it')),
    ({"stdout": "yes"},
     'netprobe.toml: output.stdout: "yes" is not a table'),
])
def test_config_errors_are_one_line(tables, message):
    with pytest.raises(ConfigError) as info:
        build_sinks(tables, "netprobe.toml")
    assert str(info.value) == message
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("address", ["/dev/log", "/run/x/log.sock", "udp://127.0.0.1:514", "tcp://logs.example.net:6514",
                                     "udp://[::1]:514", "tcp://[fe80::1]:601", "udp://localhost:5514"])
def test_valid_syslog_addresses(address):
    assert validate_outputs({"syslog": {"address": address}}, "netprobe.toml")["syslog"].address == address


# --- syslog message format and transports -------------------------------------------------------

def test_syslog_message_golden():
    assert format_message(BREACH_REC, "local3", "host1", 4242) == (
        '<156>1 2026-11-23T03:25:04.250Z host1 netprobe 4242 BREACH [netprobe@32473 probe="throughput" '
        'name="dc1-dc2" dir="a->b" metric="rate" value="812.4Mbit/s" sla=">=950Mbit/s" window="15s"] '
        + BREACH_TEXT)


@pytest.mark.parametrize("rtype, severity", [(BREACH, 4), (CLEAR, 5), (RESULT, 6), (ERROR, 3), (DROPS, 4)])
def test_syslog_severity_per_type(rtype, severity):
    msg = format_message(Record(rtype, "host", "x", {}, TS), "daemon", "h", 1)
    assert msg.startswith(f"<{3 * 8 + severity}>1 ") and f" netprobe 1 {rtype} [" in msg


def test_syslog_structured_data_escaping_and_param_names():
    rec = Record(ERROR, "host", 'a"b]c\\d', {"bad key=x]": 'q"', "k" * 40: 1.5}, TS)
    msg = format_message(rec, "daemon", "h", 1)
    sd = msg[msg.index(" [") + 1 : msg.rindex("] 2026-") + 1]
    assert sd == ('[netprobe@32473 probe="host" name="a\\"b\\]c\\\\d" bad_key_x_="q\\"" '
                  + "k" * 32 + '="1.5"]')


def _udp_listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def test_syslog_udp_sends_one_datagram_per_record():
    rx = _udp_listener()
    with rx:
        sink = SyslogSink(SyslogConfig(address=f"udp://127.0.0.1:{rx.getsockname()[1]}", facility="local0"))
        runner = _run(sink, [RESULT_REC, BREACH_REC])
        got = [rx.recv(65535).decode() for _ in range(2)]
    host = socket.gethostname()
    assert got == [format_message(r, "local0", host, os.getpid()) for r in (RESULT_REC, BREACH_REC)]
    assert runner.failed == 0


def _tcp_server(port=0):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    srv.settimeout(5)
    return srv


def _read_frames(conn, count):
    """Parse RFC 6587 octet-counted frames: 'LEN SP MSG'."""
    buf, frames = b"", []
    conn.settimeout(5)
    while len(frames) < count:
        m = re.match(rb"(\d+) ", buf)
        if m and len(buf) >= m.end() + int(m.group(1)):
            end = m.end() + int(m.group(1))
            frames.append(buf[m.end():end].decode())
            buf = buf[end:]
            continue
        chunk = conn.recv(65536)
        assert chunk, f"connection closed after {len(frames)} frames"
        buf += chunk
    return frames, buf


def test_syslog_tcp_octet_counting_frames():
    with _tcp_server() as srv:
        sink = SyslogSink(SyslogConfig(address=f"tcp://127.0.0.1:{srv.getsockname()[1]}"))
        records = _numbered(100, pad=50)
        runner = _run(sink, records)
        conn, _ = srv.accept()
        with conn:
            frames, rest = _read_frames(conn, 100)
    assert frames == [format_message(r, "daemon", socket.gethostname(), os.getpid()) for r in records]
    assert rest == b"" and runner.failed == 0


def test_syslog_unix_datagram_and_stream_fallback(tmp_path):
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(str(tmp_path / "d.sock"))
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(tmp_path / "s.sock"))
    stream.listen()
    with dgram, stream:
        _run(SyslogSink(SyslogConfig(address=str(tmp_path / "d.sock"))), [BREACH_REC])
        assert dgram.recv(65535).decode() == format_message(BREACH_REC, "daemon", socket.gethostname(), os.getpid())
        _run(SyslogSink(SyslogConfig(address=str(tmp_path / "s.sock"))), [BREACH_REC, RESULT_REC])
        conn, _ = stream.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    assert data.decode().split("\0") == [format_message(r, "daemon", socket.gethostname(), os.getpid())
                                         for r in (BREACH_REC, RESULT_REC)] + [""]


def test_syslog_dead_target_fails_fast_and_logs_once(caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="netprobe.outputs")
    with _tcp_server() as srv:
        port = srv.getsockname()[1]          # closed again: connection refused from now on
    sink = SyslogSink(SyslogConfig(address=f"tcp://127.0.0.1:{port}"))
    with pytest.raises(SyslogUnavailable, match=r"^syslog tcp://127.0.0.1:\d+: Connection refused; records"):
        sink.write(BREACH_REC)
    t0 = time.monotonic()
    runner = _run(sink, _numbered(200))
    assert time.monotonic() - t0 < 1.0
    assert runner.failed == 200
    assert len(caplog.records) == 1 and "Connection refused" in caplog.records[0].getMessage()
    missing = SyslogSink(SyslogConfig(address=str(tmp_path / "nobody-listens.sock")))
    with pytest.raises(OSError, match="No such file or directory; records are dropped"):
        missing.write(BREACH_REC)


def test_syslog_reconnects_after_the_collector_restarts(caplog):
    caplog.set_level(logging.WARNING, logger="netprobe.outputs")
    srv = _tcp_server()
    port = srv.getsockname()[1]
    sink = SyslogSink(SyslogConfig(address=f"tcp://127.0.0.1:{port}"))
    runner = SinkRunner(sink, 1000)
    runner.start({})
    runner.submit(Record(RESULT, "host", "before", {}, TS))
    conn, _ = srv.accept()
    assert _read_frames(conn, 1)[0][0].endswith("name=before")
    conn.close()
    srv.close()                           # collector gone: sends fail, backoff starts
    for i in range(5):
        runner.submit(Record(RESULT, "host", f"down{i}", {}, TS))
        time.sleep(0.05)
    srv = _tcp_server(port)               # collector back on the same port
    done = threading.Event()

    def keep_sending():
        for i in range(200):
            if done.wait(0.02):
                return
            runner.submit(Record(RESULT, "host", f"after{i}", {}, TS))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    with srv:
        conn, _ = srv.accept()
        with conn:
            arrived = _read_frames(conn, 1)[0]
    done.set()
    sender.join()
    runner.close()
    assert "name=after" in arrived[0]
    assert runner.failed >= 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)


# --- jsonfile -----------------------------------------------------------------------------------

RUN_INFO = {"version": "9.9.9", "config_file": "/etc/netprobe/netprobe.toml",
            "config_supplied": {"output": {"jsonfile": {"path": "r.json"}}},
            "config_effective": {"probe": [{"kind": "host", "interval": 10.0}]},
            "host": {"kernel": "6.1.0", "clocksource": "tsc"}}


def _jsonfile(tmp_path, **table):
    table.setdefault("path", str(tmp_path / "r.json"))
    (runner,) = build_sinks({"j": {"type": "jsonfile", **table}}, "netprobe.toml")
    return runner


def _content(path):
    """A file's bytes, decompressed if it is .gz."""
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if path.endswith(".gz") else raw


def _lines(path):
    raw = _content(path)
    assert raw.endswith(b"\n"), f"{path} ends in a partial line"
    return [json.loads(line) for line in raw.decode().splitlines()]


def _files_in_order(tmp_path, base="r.json"):
    """Rotated files oldest first (by UTC stamp, then .N), then the current file."""
    rotated = []
    for name in os.listdir(tmp_path):
        m = re.fullmatch(re.escape(base) + r"\.(\d{8}T\d{6}Z)(?:\.(\d+))?(\.gz)?", name)
        if m:
            rotated.append(((m.group(1), int(m.group(2) or 0)), str(tmp_path / name)))
        else:
            assert name == base, f"unexpected file {name}"
    return [p for _, p in sorted(rotated)] + [str(tmp_path / base)]


def _records_across(files):
    out = []
    for f in files:
        lines = _lines(f)
        assert lines[0]["type"] == "HEADER", f
        assert all(line["type"] != "HEADER" for line in lines[1:])
        out.extend(lines[1:])
    return out


def test_jsonfile_header_then_every_record(tmp_path):
    runner = _jsonfile(tmp_path)
    runner.start(RUN_INFO)
    records = _numbered(500) + [BREACH_REC]
    for r in records:
        assert runner.submit(r)
    runner.close()
    lines = _lines(str(tmp_path / "r.json"))
    header = lines[0]
    assert {k: header[k] for k in RUN_INFO} == RUN_INFO
    assert header["type"] == "HEADER" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", header["started"])
    assert lines[1:] == [r.to_dict() for r in records]


def test_jsonfile_header_tolerates_missing_run_info(tmp_path):
    runner = _jsonfile(tmp_path)
    runner.start({})
    runner.close()
    (header,) = _lines(str(tmp_path / "r.json"))
    assert header["type"] == "HEADER" and header["config_file"] is None and header["host"] == {}


def test_jsonfile_rotation_by_size_gzips_and_loses_nothing(tmp_path):
    runner = _jsonfile(tmp_path, rotate_size="4K", keep=1000)
    runner.start(RUN_INFO)
    records = _numbered(600, pad=40)
    for r in records:
        assert runner.submit(r)
    runner.close()
    files = _files_in_order(tmp_path)
    assert len(files) > 10 and all(f.endswith(".gz") for f in files[:-1])
    for f in files:
        assert len(_content(f)) <= 4096, f
    assert _records_across(files) == [r.to_dict() for r in records]


def test_jsonfile_rotation_by_interval(tmp_path):
    runner = _jsonfile(tmp_path, rotate_interval="200ms", gzip=False)
    runner.start(RUN_INFO)
    batches = [_numbered(5, start=10 * b) for b in range(3)]
    for batch in batches:
        for r in batch:
            runner.submit(r)
        time.sleep(0.3)
    runner.close()
    files = _files_in_order(tmp_path)
    assert len(files) == 3 and not any(f.endswith(".gz") for f in files)
    assert [[line["seq"] for line in _lines(f)[1:]] for f in files] == [[r.fields["seq"] for r in b] for b in batches]


def test_jsonfile_keep_deletes_the_oldest(tmp_path):
    runner = _jsonfile(tmp_path, rotate_size=4096, keep=3)
    runner.start(RUN_INFO)
    records = _numbered(600, pad=40)
    for r in records:
        runner.submit(r)
    runner.close()
    files = _files_in_order(tmp_path)
    assert len(files) == 4
    kept = _records_across(files)
    assert kept == [r.to_dict() for r in records[-len(kept):]]     # the newest, contiguous


def test_jsonfile_restart_rotates_the_previous_run(tmp_path):
    first, second = _numbered(50), _numbered(50, start=50)
    for batch in (first, second):
        runner = _jsonfile(tmp_path)
        runner.start(RUN_INFO)
        for r in batch:
            runner.submit(r)
        runner.close()
    files = _files_in_order(tmp_path)
    assert len(files) == 2 and files[0].endswith(".gz")
    assert _records_across(files) == [r.to_dict() for r in first + second]


def test_jsonfile_unwritable_path_reports_one_clear_error(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="netprobe.outputs")
    runner = _jsonfile(tmp_path, path=str(tmp_path / "missing-dir" / "r.json"))
    runner.start(RUN_INFO)
    for r in _numbered(10):
        runner.submit(r)
    runner.close()
    assert runner.failed == 10
    messages = {r.getMessage() for r in caplog.records}
    assert any(f"cannot open {tmp_path}/missing-dir/r.json: No such file or directory" in m for m in messages)
    assert len([m for m in messages if "write failed" in m]) == 1


def test_tables_straight_from_toml(tmp_path):
    doc = tomllib.loads(f"""
[output.stdout]
format = "json"
types = ["BREACH", "CLEAR"]

[output.alerts]
type = "syslog"
address = "tcp://[::1]:6514"
facility = "local7"

[output.archive]
type = "jsonfile"
path = "{tmp_path}/r.json"
rotate_size = "1M"
rotate_interval = "1h"
gzip = false
keep = 3
""")
    cfgs = validate_outputs(doc["output"], "netprobe.toml")
    assert cfgs == {
        "stdout": StdoutConfig(types=("BREACH", "CLEAR"), format="json"),
        "alerts": SyslogConfig(address="tcp://[::1]:6514", facility="local7"),
        "archive": JsonFileConfig(path=f"{tmp_path}/r.json", rotate_size=1024 ** 2, rotate_interval=3600.0,
                                  gzip=False, keep=3),
    }


def test_syslog_message_is_scrubbed_of_registered_keys():
    """The structured data carries fields as they are; a key quoted in one (a peer's refusal,
    say) is replaced there too, not only in the text part."""
    from netprobe import redact
    key = os.urandom(16).hex()
    redact.register(key)
    rec = Record(ERROR, "throughput", "tp", {"error": f"peer refused key {key}"}, TS)
    msg = format_message(rec, "daemon", "h", 1)
    assert key not in msg and msg.count("<redacted>") == 2
