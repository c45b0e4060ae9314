"""netprobe.service under a real systemd: the rootfs with the .deb booted in
systemd-nspawn. Checks READY (Type=notify), the sandbox the process really
got, watchdog pings and a watchdog restart of a hung daemon, `systemctl
reload` (good and bad file), a clean stop,
and a BREACH line travelling netprobe -> syslog sink -> the rsyslog snippet
of docs/rsyslog-netprobe.conf -> an rsyslogd collector on the host."""
import json
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.package.conftest import ROOT
from tests.package.rootfs import Boot

# A BREACH every run can count on: wake-up lateness is never 0, so
# max_timer_p99 = "0s" breaches in the first interval (breach_after = 1).
CONFIG = """\
[daemon]
log_level = "info"

[[probe]]
kind = "host"
name = "self"
interval = "1s"
breach_after = 1
clear_after = 1000
max_timer_p99 = "0s"
max_steal = 100.0

[output.stdout]
format = "text"

[output.alerts]
type = "syslog"
address = "/run/netprobe-syslog.sock"
facility = "daemon"
types = ["BREACH", "CLEAR", "ERROR", "DROPS"]
"""
SECOND_PROBE = """
[[probe]]
kind = "host"
name = "second"
interval = "1s"
"""
# WatchdogSec of the shipped unit is 30 s; 3 s makes pings visible in a short test,
# and a short TimeoutAbortSec lets a hung daemon be killed quickly.
WATCHDOG_DROPIN = "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n"


def _free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector:
    """The central syslog server: rsyslogd on the host, TCP on 127.0.0.1, structured data parsed."""

    def __init__(self, tmp):
        self.port = _free_tcp_port()
        self.out = tmp / "collected.log"
        (tmp / "work").mkdir()
        self.conf = tmp / "collector.conf"
        self.conf.write_text(f"""\
global(workDirectory="{tmp}/work")
module(load="imtcp")
module(load="mmpstrucdata")
input(type="imtcp" address="127.0.0.1" port="{self.port}")
template(name="t" type="string" string="%hostname%|%app-name%|%msgid%|%syslogseverity-text%|%$!rfc5424-sd%|%msg%\\n")
action(type="mmpstrucdata")
*.* action(type="omfile" file="{self.out}" template="t" flushOnTXEnd="on" asyncWriting="off")
""")
        self.pidfile = tmp / "collector.pid"
        self.proc = subprocess.Popen(["/usr/sbin/rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None, "the collector rsyslogd exited"
            time.sleep(0.05)
        raise AssertionError("the collector rsyslogd did not listen within 10 s")

    def rows(self):
        if not self.out.exists():
            return []
        keys = ("host", "app", "msgid", "severity", "sd", "msg")
        rows = [dict(zip(keys, line.split("|", 5), strict=True)) for line in self.out.read_text().splitlines()]
        for r in rows:
            r["sd"] = json.loads(r["sd"]) if r["sd"].startswith("{") else {}
        return rows

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@pytest.fixture
def collector(tmp_path):
    c = Collector(tmp_path)
    yield c
    c.close()


@pytest.fixture
def booted(system, collector, tmp_path, timed):
    system.sh(f"dpkg -s netprobe >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends {system.deb}")
    system.put(CONFIG, "/etc/netprobe/netprobe.toml")
    system.put(WATCHDOG_DROPIN, "/etc/systemd/system/netprobe.service.d/watchdog.conf")
    snippet = (ROOT / "docs" / "rsyslog-netprobe.conf").read_text()
    assert 'target="logs.example.net" port="6514"' in snippet
    system.put(snippet.replace('target="logs.example.net" port="6514"',
                               f'target="127.0.0.1" port="{collector.port}"'), "/etc/rsyslog.d/netprobe.conf")
    system.umount()              # nspawn mounts its own /proc, /sys, /dev
    try:
        # nspawn's own seccomp filter denies @clock to the whole container;
        # let the read-only adjtimex through so that the unit's filter is what is tested
        with timed("nspawn: boot to `systemctl is-system-running`"):
            boot = Boot(system, tmp_path / "nspawn.log",
                        extra=["--system-call-filter=adjtimex clock_adjtime"]).__enter__()
        try:
            yield boot
        finally:
            with timed("nspawn: poweroff"):
                boot.__exit__(None, None, None)
    finally:
        shutil.rmtree(system.path / "etc/systemd/system/netprobe.service.d")
        (system.path / "etc/rsyslog.d/netprobe.conf").unlink()
        system.mount()


def test_service_under_systemd(booted, collector, system, timed):
    b = booted
    with timed("nspawn: netprobe.service active (READY=1 received)"):
        # Type=notify: systemd reports active/running only after READY=1
        wait_for(lambda: b.show("netprobe", "ActiveState")["ActiveState"] == "active", 60, "netprobe active")
    props = b.show("netprobe", "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts", "Result",
                   "WatchdogUSec", "WatchdogTimestampMonotonic", "ExecMainStartTimestampMonotonic")
    assert (props["ActiveState"], props["SubState"], props["Result"]) == ("active", "running", "success"), props
    assert props["StatusText"] == "running 1 probes", props          # STATUS= sent with READY=1
    assert props["WatchdogUSec"] == "3s", props
    main = int(props["MainPID"])
    failed = b.sh("systemctl --failed --no-legend --plain").stdout
    assert "netprobe" not in failed, failed

    # the sandbox the process really got
    status = b.sh(f"cat /proc/{main}/status").stdout
    field = dict(re.findall(r"^(\w+):\s+(.*)$", status, re.M))
    uid = b.sh("id -u netprobe").stdout.strip()
    assert field["Uid"].split() == [uid] * 4
    assert field["CapEff"] == field["CapPrm"] == field["CapBnd"] == field["CapAmb"] == "0000000000000000"
    assert field["NoNewPrivs"] == "1" and field["Seccomp"] == "2"
    denied = b.sh(f"nsenter -t {main} -m sh -c 'touch /etc/netprobe/x' 2>&1", check=False)
    assert "Read-only file system" in denied.stdout, denied.stdout

    # watchdog: pings every WatchdogSec/2
    t0 = int(props["WatchdogTimestampMonotonic"])
    wait_for(lambda: int(b.show("netprobe", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]) > t0,
             10, "a WATCHDOG=1 ping")

    # the host probe reads the kernel clock state through the unit's syscall filter
    journal = lambda: b.sh("journalctl -u netprobe -o cat --no-pager").stdout   # noqa: E731
    result = wait_for(lambda: re.search(r"RESULT probe=host name=self .*", journal()), 20, "a RESULT line")
    assert "clock_synced=-" not in result.group(0), result.group(0)
    assert "adjtimex failed" not in journal()

    # BREACH: journal (stdout sink), rsyslog's local file and the collector
    with timed("BREACH: netprobe -> rsyslog snippet -> collector"):
        rows = wait_for(lambda: [r for r in collector.rows() if r["msgid"] == "BREACH"], 60,
                        "a BREACH line at the collector")
    row = rows[0]
    assert (row["app"], row["severity"]) == ("netprobe", "warning"), row
    sd = row["sd"]["netprobe@32473"]
    assert (sd["probe"], sd["name"], sd["metric"], sd["sla"]) == ("host", "self", "timer_p99", "<=0s"), row
    assert row["msg"].split(" ", 1)[1].startswith("BREACH probe=host name=self metric=timer_p99 "), row
    assert row["msg"].rstrip() in journal(), "the same line as on stdout"
    assert all(r["msgid"] in ("BREACH", "CLEAR") for r in collector.rows()), "only BREACH/CLEAR forwarded"
    local = (system.path / "var/log/netprobe/alerts.log").read_text()
    assert " BREACH " in local and "metric=timer_p99" in local

    # reload: a second probe starts, the first keeps running, same main process
    worker = b.sh(f"cat /proc/{main}/task/*/children").stdout.split()
    assert len(worker) == 1
    conf = system.path / "etc/netprobe/netprobe.toml"
    conf.write_text(CONFIG + SECOND_PROBE)
    with timed("systemctl reload netprobe (good file)"):
        b.sh("systemctl reload netprobe")
    wait_for(lambda: b.show("netprobe", "StatusText")["StatusText"] == "running 2 probes", 10, "RELOADING/READY")
    after = b.show("netprobe", "MainPID", "ActiveState")
    assert after == {"MainPID": str(main), "ActiveState": "active"}
    children = lambda: b.sh(f"cat /proc/{main}/task/*/children").stdout.split()   # noqa: E731
    workers = wait_for(lambda: (w := children()) and len(w) == 2 and w, 10, "two workers")
    assert worker[0] in workers, "the unchanged probe kept running"
    assert "reloaded /etc/netprobe/netprobe.toml: 1 probes kept, 1 started, 0 stopped" in journal()

    # a broken file: the reload fails (ExecReload's check-config), the daemon keeps running as it was
    conf.write_text(CONFIG + "bogus = [\n")
    bad = b.sh("systemctl reload netprobe", check=False)
    assert bad.returncode != 0
    assert b.show("netprobe", "MainPID", "ActiveState", "StatusText") == \
        {"MainPID": str(main), "ActiveState": "active", "StatusText": "running 2 probes"}
    conf.write_text(CONFIG)

    # a hung main loop (SIGSTOP: no more WATCHDOG=1) is killed and restarted
    with timed("watchdog: stopped daemon killed and restarted"):
        b.sh(f"kill -STOP {main}")
        wait_for(lambda: b.show("netprobe", "NRestarts")["NRestarts"] == "1", 30, "a watchdog restart")
        wait_for(lambda: b.show("netprobe", "ActiveState")["ActiveState"] == "active", 30, "active again")
    assert b.show("netprobe", "MainPID")["MainPID"] != str(main)
    assert "Watchdog timeout" in b.sh("journalctl -u netprobe --no-pager").stdout

    # stop: STOPPING=1, the final interval, exit 0
    with timed("systemctl stop netprobe"):
        b.sh("systemctl stop netprobe")
    stopped = b.show("netprobe", "ActiveState", "Result", "ExecMainStatus")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, stopped


def test_peer_service_answers_a_probe(booted, system):
    """netprobe-peer.service (not enabled by the package) serves a throughput probe."""
    b = booted
    assert b.show("netprobe-peer", "UnitFileState")["UnitFileState"] == "disabled"
    port = _free_tcp_port()
    peer = (system.path / "etc/netprobe/peer.toml").read_text()
    assert 'listen = ["[::]:7171"]' in peer
    (system.path / "etc/netprobe/peer.toml").write_text(peer.replace('["[::]:7171"]', f'["127.0.0.1:{port}"]'))
    try:
        b.sh("systemctl start netprobe-peer")
        assert b.show("netprobe-peer", "ActiveState", "StatusText") == \
            {"ActiveState": "active", "StatusText": "running 1 probes"}
        out = b.sh(f"setpriv --reuid=netprobe --regid=netprobe --init-groups netprobe probe throughput "
                   f"--peer 127.0.0.1:{port} --rate 20M --interval 1s --duration 5s --json", timeout=60).stdout
        recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert not [r for r in recs if r["type"] == "ERROR"], recs
        for direction in ("a->b", "b->a"):
            rates = [r["rate"] for r in recs
                     if r["type"] == "RESULT" and r["dir"] == direction and "rate" in r][:-1]
            assert rates, recs
            assert all(0.5 * 20e6 <= r <= 1.1 * 20e6 for r in rates), (direction, rates)   # as in test_deb
        b.sh("systemctl stop netprobe-peer")
    finally:
        (system.path / "etc/netprobe/peer.toml").write_text(peer)

