"""The syslog sink against a real rsyslogd over UDP, TCP and a unix socket.

rsyslogd runs as a plain process with its own config in tmp_path: a private
unix socket (the system socket off), UDP and TCP on free high ports on
127.0.0.1, and mmpstrucdata, which parses the RFC 5424 structured data into
JSON: an independent parser checks our escaping and framing. No root, no
/dev/log, no system config.

What we found about imuxsock: with its default UseSpecialParser="on" it
parses every message as the traditional local format, so an RFC 5424 message
comes out as app-name "1", msgid "-" and empty structured data with the whole
header left in MSG. UseSpecialParser="off" sends the message through the
normal parser chain, whose RFC 5424 parser reads HOSTNAME, APP-NAME, PROCID,
MSGID and SD correctly (ParseHostname="on" only matters for the legacy
RFC 3164 parser, so it is not needed here).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from netprobe.outputs import build_sinks
from netprobe.results import BREACH, CLEAR, event, percent, rate, seconds

SEP = "|"
FIELDS = ("severity", "facility", "app", "procid", "msgid", "msg", "sd")


def _rsyslogd():
    path = shutil.which("rsyslogd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pytest.fail("rsyslogd is not installed; install it with: apt-get install rsyslog")
    return path


def _free_port(socktype):
    with socket.socket(socket.AF_INET, socktype) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(proto, port):
    """True if /proc/net/<proto> shows 127.0.0.1:port bound (and LISTEN for TCP)."""
    local = f"0100007F:{port:04X}"
    with open(f"/proc/net/{proto}") as f:
        for line in f.read().splitlines()[1:]:
            cols = line.split()
            if cols[1] == local and (proto == "udp" or cols[3] == "0A"):
                return True
    return False


class Rsyslog:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.sock = str(tmp_path / "log.sock")
        self.out = tmp_path / "all.log"
        self.udp = _free_port(socket.SOCK_DGRAM)
        self.tcp = _free_port(socket.SOCK_STREAM)
        self.conf = tmp_path / "rsyslog.conf"
        (tmp_path / "work").mkdir()
        self.conf.write_text(f"""\
global(workDirectory="{tmp_path}/work")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{self.sock}" UseSpecialParser="off")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{self.udp}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{self.tcp}")
module(load="mmpstrucdata")
template(name="t" type="string" string="%syslogseverity-text%{SEP}%syslogfacility-text%{SEP}\
%app-name%{SEP}%procid%{SEP}%msgid%{SEP}%msg%{SEP}%$!rfc5424-sd%\\n")
action(type="mmpstrucdata")
*.* action(type="omfile" file="{self.out}" template="t" flushOnTXEnd="on" asyncWriting="off")
""")

    def lines(self):
        """Parsed output lines: one dict per message, structured data as rsyslog decoded it."""
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text().splitlines():
            row = dict(zip(FIELDS, line.split(SEP, len(FIELDS) - 1), strict=True))
            row["sd"] = json.loads(row["sd"]) if row["sd"].startswith("{") else {}
            out.append(row)
        return out

    def wait_for(self, count, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.lines()
            if len(rows) >= count:
                return rows
            time.sleep(0.02)
        raise AssertionError(f"rsyslogd wrote {len(self.lines())} of {count} expected lines to {self.out}")


@pytest.fixture
def rsyslog(tmp_path):
    exe = _rsyslogd()
    rs = Rsyslog(tmp_path)
    check = subprocess.run([exe, "-N1", "-f", str(rs.conf)], capture_output=True, text=True, timeout=30,
                           check=False)
    assert check.returncode == 0, f"rsyslogd -N1 rejected the config:\n{check.stdout}{check.stderr}"
    with open(tmp_path / "rsyslogd.stderr", "w") as log:
        proc = subprocess.Popen([exe, "-n", "-f", str(rs.conf), "-i", str(tmp_path / "rsyslogd.pid")],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not (os.path.exists(rs.sock) and _listening("udp", rs.udp) and _listening("tcp", rs.tcp)):
            assert proc.poll() is None, f"rsyslogd exited: {(tmp_path / 'rsyslogd.stderr').read_text()}"
            assert time.monotonic() < deadline, "rsyslogd did not open its socket and ports within 10 s"
            time.sleep(0.02)
        yield rs
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _send(address, records, facility="local3"):
    """Build a syslog sink from config the way the daemon does, send records, close it."""
    (runner,) = build_sinks({"alerts": {"type": "syslog", "address": address, "facility": facility}},
                            "netprobe.toml")
    runner.start({})
    for r in records:
        assert runner.submit(r)
    runner.close()
    assert (runner.dropped, runner.failed) == (0, 0)


def _breach(name="dc1-dc2"):
    return event(BREACH, "throughput", name, metric="rate", value=rate(812.4e6), op=">=",
                 threshold=rate(950e6), window=seconds(15), dir="a->b")


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_breach_arrives_with_severity_facility_and_structured_data(rsyslog, transport):
    address = {"udp": f"udp://127.0.0.1:{rsyslog.udp}", "tcp": f"tcp://127.0.0.1:{rsyslog.tcp}",
               "unix": rsyslog.sock}[transport]
    rec = _breach()
    _send(address, [rec])
    (row,) = rsyslog.wait_for(1)
    assert (row["severity"], row["facility"], row["app"], row["procid"], row["msgid"]) == \
        ("warning", "local3", "netprobe", str(os.getpid()), "BREACH")
    assert row["sd"] == {"netprobe@32473": {
        "probe": "throughput", "name": "dc1-dc2", "dir": "a->b", "metric": "rate",
        "value": "812.4Mbit/s", "sla": ">=950Mbit/s", "window": "15s"}}
    assert row["msg"] == rec.to_text()


def test_clear_arrives_at_notice(rsyslog):
    clear = event(CLEAR, "oneway", "edge", metric="loss", value=percent(0.1), op="<=",
                  threshold=percent(1), window=seconds(30))
    _send(f"udp://127.0.0.1:{rsyslog.udp}", [clear], facility="daemon")
    (row,) = rsyslog.wait_for(1)
    assert (row["severity"], row["facility"], row["msgid"]) == ("notice", "daemon", "CLEAR")
    assert row["sd"]["netprobe@32473"]["metric"] == "loss"


def test_escaped_values_and_many_tcp_frames_survive(rsyslog):
    """SD escaping (\\ " ]) and octet-counting framing, checked by rsyslog's own parsers."""
    names = [f'odd"name]{i}\\x' for i in range(50)]
    _send(f"tcp://127.0.0.1:{rsyslog.tcp}", [_breach(n) for n in names])
    rows = rsyslog.wait_for(50)
    assert [r["sd"]["netprobe@32473"]["name"] for r in rows] == names
