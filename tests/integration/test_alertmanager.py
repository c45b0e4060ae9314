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
from tests.integration.test_oneway import netprobe, wait_listening

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
    waits out its timeout) for 20 s: the host probe's 1 s intervals stay on time and the
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
        p = subprocess.run([sys.executable, "-m", "netprobe", "run", "-c", str(cfg), "--duration", "20s"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        hang.close()
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    ts = [datetime.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
          for r in recs if r["type"] == "RESULT"]
    assert len(ts) >= 18
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    assert max(gaps[:-1]) < 1.25, gaps          # the last one is the partial interval at stop
    assert any(r["type"] == "BREACH" and r["metric"] == "timer_p99" for r in recs)
    drops = [r for r in recs if r["type"] == "DROPS" and r["sink"] == "am"]
    assert drops and sum(d["dropped"] for d in drops) == drops[-1]["dropped_total"] > 0


POLLER = """
import json, sys, time, urllib.request
url, end = sys.argv[1], time.time() + float(sys.argv[2])
last = None
while time.time() < end:
    try:
        with urllib.request.urlopen(url + "/api/v2/alerts?active=true&silenced=false&inhibited=false", timeout=2) as r:
            now = [a["labels"] for a in json.loads(r.read()) if a["status"]["state"] == "active"]
    except OSError:
        now = None                                  # down (restarting)
    if now != last:
        print(json.dumps({"t": time.time(), "alerts": now}), flush=True)
        last = now
    time.sleep(0.02)
"""
HOOK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[2], "ab") as f:
            f.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _lines_into(stream, out):
    def read():
        for line in stream:
            out.append(line)
    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


@pytest.mark.lab
@pytest.mark.slow
def test_lab_loss_breach_is_an_alert_within_one_interval_and_resolves_on_clear(make_lab, tmp_path):
    """A oneway probe (1 s intervals, breach_after = clear_after = 1) through R; 50 % loss injected
    on R makes the BREACH, removing it the CLEAR. Alertmanager, its webhook receiver and a poller
    of its API run in A beside the daemon; the poller stamps every change of the active alerts."""
    assert AM, "prometheus-alertmanager missing: apt-get install -y prometheus-alertmanager"
    lab = make_lab(offload="off")
    py = sys.executable
    serve = lab.popen("b", netprobe("serve", "--listen", f"{lab.b4}:7171", "--allow", "198.18.0.0/15",
                                    "--duration", "90s"), cwd=ROOT)
    wait_listening(lab.b4, 7171, lab=lab)
    am_port, hook_port, hook_file = 19093, 19094, tmp_path / "hook.jsonl"
    lab.popen("a", ["timeout", "90", py, "-c", HOOK, str(hook_port), str(hook_file)])
    am_cfg = Alertmanager(tmp_path, hook_port).cfg

    def start_am():
        return lab.popen("a", ["timeout", "90", AM, f"--config.file={am_cfg}", f"--storage.path={tmp_path / 'am'}",
                               f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="])
    am = start_am()
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text(f"""
[[probe]]
kind = "oneway"
name = "ow"
peer = "{lab.b4}:7171"
ecmp_width = 2
gap = "2ms"
interval = "1s"
breach_after = 1
clear_after = 1
max_loss_pct = 5.0

[output.stdout]
format = "json"

[output.am]
type = "alertmanager"
urls = ["http://127.0.0.1:{am_port}"]
resend = "1s"
""")
    poll = lab.popen("a", ["timeout", "80", py, "-c", POLLER, f"http://127.0.0.1:{am_port}", "75"])
    changes, out = [], []
    _lines_into(poll.stdout, changes)
    daemon = lab.popen("a", netprobe("run", "-c", cfg, "--duration", "60s"), cwd=ROOT)
    _lines_into(daemon.stdout, out)

    def recs(kind):
        return [json.loads(x) for x in list(out) if x.startswith("{") and json.loads(x)["type"] == kind]

    def unix(r):
        return datetime.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()

    def state_at(t):
        """The active alerts the poller saw at wall time t (None: Alertmanager down)."""
        seen = [json.loads(c) for c in list(changes)]
        before = [c for c in seen if c["t"] <= t]
        return before[-1]["alerts"] if before else None

    try:
        wait(lambda: len(recs("RESULT")) >= 2, 20, "no RESULT lines")
        lab.set(loss_ab=50)
        (breach,) = wait(lambda: recs("BREACH"), 10, "no BREACH line under 50 % loss")
        assert breach["metric"] == "loss"
        t_b = unix(breach)
        wait(lambda: state_at(time.time() - 0.1), 10, "no active alert")
        alerts = state_at(t_b + 1.0)                   # one interval after the BREACH line
        assert alerts and alerts[0] == {"alertname": "NetprobeBreach", "probe": "ow", "kind": "oneway",
                                        "metric": "loss", "peer": f"{lab.b4}:7171",
                                        "host": socket.gethostname()}, alerts
        t_stop = time.time()
        am.terminate()
        am.wait(timeout=10)

        def since(t):
            return [c for c in (json.loads(x) for x in list(changes)) if c["t"] > t]
        wait(lambda: any(c["alerts"] is None for c in since(t_stop)), 10, "the poller did not see it down")
        am = start_am()                                # it keeps alerts in memory only: netprobe re-posts
        back = wait(lambda: [c for c in since(t_stop) if c["alerts"]], 15, "the alert did not come back")
        assert back[0]["alerts"] == alerts
        lab.clear()
        (clear,) = wait(lambda: recs("CLEAR"), 10, "no CLEAR once the loss stopped")
        t_c = unix(clear)
        wait(lambda: state_at(time.time() - 0.1) == [], 10, "the alert did not resolve")
        assert state_at(t_c + 1.0) == [], "not resolved within one interval of the CLEAR line"
        notes = wait(lambda: [json.loads(x) for x in hook_file.read_text().splitlines()]
                     if hook_file.exists() else [], 15, "the webhook got nothing")
        wait(lambda: any(json.loads(x)["status"] == "resolved" for x in hook_file.read_text().splitlines()), 15,
             "the webhook got no resolved notification")
        assert notes[0]["status"] == "firing" and notes[0]["alerts"][0]["labels"]["metric"] == "loss"
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        for p in (poll, am, serve):
            p.terminate()
            p.wait(timeout=10)


def test_annotations_read_like_the_breach_line():
    from netprobe.outputs.alertmanager import alert_of
    rec = event(BREACH, "host", "self", metric="clock_sync", value=False, op="", threshold=True,
                window=seconds(5))
    _, alert = alert_of(rec, "h")
    assert alert["annotations"] == {"value": "no", "sla": "yes", "window": "5s"}
    assert "value=no sla=yes window=5s" in rec.to_text()


def test_a_suspect_hop_is_an_alert_label():
    """The hop path localisation blames groups and routes alerts like any other label."""
    from netprobe.outputs.alertmanager import alert_of
    rec = event(BREACH, "oneway", "ow", metric="loss", value=percent(20), op="<=", threshold=percent(1),
                peer="192.0.2.10:7171", suspect_hop="198.18.11.2", hop=2, ports_bad="7/7")
    _, alert = alert_of(rec, "h")
    assert alert["labels"]["suspect_hop"] == "198.18.11.2"
