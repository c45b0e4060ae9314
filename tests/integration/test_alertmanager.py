"""[output.alertmanager] against a real Alertmanager (Debian's 0.25) on loopback.

Alertmanager's own API (/api/v2/alerts) and a webhook receiver configured in it are
the oracles: the alert netprobe posts must show up there with the right labels,
stay through an Alertmanager restart (netprobe re-posts), resolve on CLEAR, and
reach the webhook. With Alertmanager down, the daemon's probes keep their intervals
and the states that could not be delivered are counted in DROPS records.
"""
import datetime
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from netprobe.config.schema import Where, build
from netprobe.outputs.alertmanager import AlertmanagerConfig, AlertmanagerSink
from netprobe.results import BREACH, CLEAR, event, percent, seconds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AM = shutil.which("prometheus-alertmanager")
pytestmark = pytest.mark.skipif(AM is None and os.geteuid() != 0,
                                reason="prometheus-alertmanager is installed by make test-deps (root)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webhook:
    """A webhook receiver: every notification Alertmanager posts, parsed."""

    def __init__(self):
        self.got = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """prometheus-alertmanager on loopback, lifetime bounded by `timeout`, no clustering."""

    def __init__(self, tmp_path, hook_port):
        assert AM, "prometheus-alertmanager missing: apt-get install -y prometheus-alertmanager"
        self.port = _free_port()
        self.cfg = tmp_path / "alertmanager.yml"
        self.cfg.write_text(
            "route:\n  receiver: hook\n  group_by: [alertname, probe, metric]\n  group_wait: 100ms\n"
            "  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n"
            f"      - url: http://127.0.0.1:{hook_port}/\n        send_resolved: true\n")
        self.data = tmp_path / "am-data"
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(["timeout", "120", AM, f"--config.file={self.cfg}",
                                      f"--storage.path={self.data}", f"--web.listen-address=127.0.0.1:{self.port}",
                                      "--cluster.listen-address="], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait(lambda: self._ready(), 20, "alertmanager did not become ready")

    def _ready(self):
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def alerts(self):
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?active=true&silenced=false&inhibited=false",
                                    timeout=5) as r:
            return [a for a in json.loads(r.read()) if a["status"]["state"] == "active"]


def wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(what)


@pytest.fixture
def am(tmp_path):
    hook = Webhook()
    mgr = Alertmanager(tmp_path, hook.port)
    mgr.hook = hook
    mgr.start()
    yield mgr
    mgr.stop()
    hook.close()


def _sink(**table):
    return AlertmanagerSink(build(AlertmanagerConfig, table, Where("t.toml", "output.am")))


def _loss(kind, ts=None):
    return event(kind, "oneway", "dc1-dc2", metric="loss", value=percent(7.5), op="<=", threshold=percent(1),
                 window=seconds(5), peer="192.0.2.10:7171", ts=ts)


def test_breach_is_an_alert_through_a_restart_and_resolves_on_clear(am, tmp_path):
    interval = 1.0
    sink = _sink(urls=[am.url], resend="1s")
    sink.start({"host": {"hostname": "probe-host-1"}})
    try:
        sink.write(_loss(BREACH))
        (alert,) = wait(am.alerts, interval, "the BREACH is not an active alert within one interval")
        assert alert["labels"] == {"alertname": "NetprobeBreach", "probe": "dc1-dc2", "kind": "oneway",
                                   "metric": "loss", "peer": "192.0.2.10:7171", "host": "probe-host-1"}
        assert alert["annotations"] == {"value": "7.5%", "sla": "<=1%", "window": "5s"}
        note = wait(lambda: [n for n in am.hook.got if n["status"] == "firing"], 10, "no webhook notification")
        assert note[0]["alerts"][0]["labels"]["alertname"] == "NetprobeBreach"
        am.stop()                                     # Alertmanager keeps alerts in memory only
        am.start()
        (again,) = wait(am.alerts, 3 * interval, "the alert did not come back after the restart")
        assert again["labels"] == alert["labels"] and again["startsAt"] == alert["startsAt"]
        sink.write(_loss(CLEAR))
        wait(lambda: not am.alerts(), interval, "the CLEAR did not resolve the alert within one interval")
        wait(lambda: [n for n in am.hook.got if n["status"] == "resolved"], 10, "no resolved notification")
        assert sink.dropped == 0
    finally:
        sink.close()


def test_each_url_of_an_ha_pair_gets_every_alert(am, tmp_path):
    (tmp_path / "b").mkdir()
    other = Alertmanager(tmp_path / "b", am.hook.port)
    other.start()
    sink = _sink(urls=[am.url, other.url], resend="1s")
    sink.start({})
    try:
        sink.write(_loss(BREACH))
        for mgr in (am, other):
            (a,) = wait(mgr.alerts, 1.0, f"{mgr.url} did not get the alert")
            assert a["labels"]["probe"] == "dc1-dc2"
    finally:
        sink.close()
        other.stop()


def test_a_clear_lost_while_alertmanager_is_down_is_counted(am):
    """Down from after the BREACH: the CLEAR (the one state change made meanwhile) cannot be
    delivered within give_up, so exactly one is dropped; re-posts of the then-active alert are
    replaced by the CLEAR, not counted."""
    sink = _sink(urls=[am.url], resend="1s", give_up="1.5s", timeout="500ms")
    sink.start({})
    try:
        sink.write(_loss(BREACH))
        wait(am.alerts, 1.0, "the BREACH is not an active alert")
        am.stop()
        time.sleep(0.3)
        sink.write(_loss(CLEAR))
        time.sleep(3.5)
        assert sink.dropped == 1
    finally:
        sink.close()


@pytest.mark.slow
def test_daemon_keeps_its_intervals_and_reports_drops_while_alertmanager_hangs(tmp_path):
    """An Alertmanager that accepts connections and never answers (the worst case: every POST
    waits out its timeout) for 8 s: the host probe's 1 s intervals stay on time and the
    undelivered alert states arrive as DROPS records of the alertmanager sink."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text(f"""
[daemon]
drops_interval = "1s"

[[probe]]
kind = "host"
name = "self"
interval = "1s"
breach_after = 1
max_timer_p99 = "0s"

[output.stdout]
format = "json"

[output.am]
type = "alertmanager"
urls = ["http://127.0.0.1:{hang.getsockname()[1]}"]
resend = "500ms"
timeout = "2s"
give_up = "1s"
""")
    try:
        p = subprocess.run([sys.executable, "-m", "netprobe", "run", "-c", str(cfg), "--duration", "8s"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        hang.close()
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    ts = [datetime.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
          for r in recs if r["type"] == "RESULT"]
    assert len(ts) >= 6
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    assert max(gaps[:-1]) < 1.25, gaps          # the last one is the partial interval at stop
    assert any(r["type"] == "BREACH" and r["metric"] == "timer_p99" for r in recs)
    drops = [r for r in recs if r["type"] == "DROPS" and r["sink"] == "am"]
    assert drops and sum(d["dropped"] for d in drops) == drops[-1]["dropped_total"] > 0
