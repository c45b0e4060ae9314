"""`make soak`: every probe kind in the lab against a real peer while faults are injected,
then a verdict on whether every interval is accounted for and nothing grew or leaked.

    python -m tests.soak.soak --duration 2h [--json verdict.json]      (root)

Daemon A (namespace a) runs host, throughput, oneway, flows, retrans and capacity against
`netprobe serve` on B (namespace b), writing to stdout (kept as the oracle stream), to a
jsonfile on a small tmpfs, and to a private rsyslogd. A fault injector, bounded in time,
runs a cycle of faults (FAULTS, times in seconds from the cycle's start) again and again:
the peer killed and restarted, the peer paused (SIGSTOP) longer than its timeouts, a worker
killed (SIGKILL) and one frozen (SIGSTOP), SIGHUP every 30 s alternating an unchanged, an
invalid and a changed config, the jsonfile directory read-only then full, rsyslogd stopped
and restarted, the path black-holed with Alertmanager restarted while the breach is open,
Prometheus restarted. The clock step is skipped with its reason (SKIPPED); so are Prometheus
and Alertmanager when they are not installed.

The verdict, from the stdout stream alone (independent of the jsonfile under fault):
- per periodic probe, the interval slots after start-up, each covered by a RESULT
  (received), by a GAP record (explained), or by neither (unexplained: must be 0);
- RSS, open fds and threads of every process sampled each `--sample` seconds, with the
  slope of each process that lived through the run after warm-up;
- no zombie, no tracefs instance, namespace, qdisc or iptables rule left behind;
- for each fault that must breach, a BREACH after it began and a CLEAR after it ended;
- Alertmanager's own API holding the open breach again after its restart (the daemon
  re-posts) and no alert left active at the end; Prometheus scraping the daemon again after
  its restart.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

from scipy import stats

from netprobe.units import parse_duration
from tests.lab import netlab

ROOT = Path(__file__).resolve().parents[2]
PORT = 7171
INTERVAL = 2.0
STALE_GRACE = 2.0
PERIODIC = ("host", "throughput", "oneway", "flows", "retrans")
CYCLE = 300.0                      # s; faults at these offsets (scaled for nothing: times are absolute)
FAULTS = (                         # (offset s, name, hold s)
    (20, "worker_kill", 0),
    (35, "peer_pause", 40),        # longer than every timeout of the session
    (95, "peer_kill", 10),
    (120, "jsonfile_readonly", 20),
    (145, "jsonfile_full", 20),
    (170, "syslog_down", 20),
    (200, "blackhole", 45),
    (260, "worker_freeze", 0),
    (270, "prometheus_restart", 10),
)
HUP_EVERY = 30.0
SKIPPED = {"clock_step": "time namespaces offset CLOCK_MONOTONIC and CLOCK_BOOTTIME only; a 2 s step of "
                         "CLOCK_REALTIME would step the whole host and every other process on it"}
TRACEFS = Path("/sys/kernel/tracing/instances")
SCRAPE = "127.0.0.1:9471"          # daemon A's exporter; Prometheus and Alertmanager run in A's namespace
PROM = "127.0.0.1:9090"
AM = "127.0.0.1:9093"
RESEND = 5.0                       # s, the alertmanager sink's re-post period
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def parse_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def config_text(lab, state, jsonfile, syslog_sock):
    """Daemon A's config; `state` picks the SIGHUP variant: 0 unchanged, 1 invalid, 2 changed."""
    rtt = "50ms" if state != 2 else "60ms"          # a changed flows SLA: that probe restarts
    bad = 'interval = "soon"\n' if state == 1 else ""
    return f"""
[daemon]
restart_backoff = "200ms"
restart_backoff_max = "5s"
stale_grace = "{STALE_GRACE}s"
stop_timeout = "10s"
drops_interval = "5s"
{bad}
[[probe]]
kind = "host"
name = "host"
interval = "{INTERVAL}s"
require_clock_sync = false

[[probe]]
kind = "throughput"
name = "tp"
peer = "{lab.b4}:{PORT}"
rate = "20M"
interval = "{INTERVAL}s"
window = "4s"
min_ratio = 0.9
breach_after = 1
clear_after = 1

[[probe]]
kind = "oneway"
name = "ow"
peer = "{lab.b4}:{PORT}"
ecmp_width = 4
gap = "10ms"
interval = "{INTERVAL}s"
max_loss_pct = 5.0
breach_after = 1
clear_after = 1

[[probe]]
kind = "flows"
name = "fl"
dport = "{PORT}"
interval = "{INTERVAL}s"
max_rtt_p99 = "{rtt}"

[[probe]]
kind = "retrans"
name = "rt"
interval = "{INTERVAL}s"
ports = ["{PORT}"]

[[probe]]
kind = "capacity"
name = "cap"
peer = "{lab.b4}:{PORT}"
mode = "quick"
every = "2m"

[output.stdout]
format = "json"

[output.file]
type = "jsonfile"
path = "{jsonfile}"
rotate_size = "1M"
rotate_interval = "10s"
keep = 3

[output.syslog]
address = "{syslog_sock}"

[output.prom]
type = "prometheus"
listen = "{SCRAPE}"

[output.am]
type = "alertmanager"
urls = ["http://{AM}"]
resend = "{RESEND}s"
"""


def terminate(proc, timeout):
    """SIGTERM, then SIGKILL after timeout seconds; a process already gone (or None) is left."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Rsyslogd:
    """A private rsyslogd on a unix socket, stopped and restarted by the injector."""

    def __init__(self, workdir):
        self.dir = workdir
        self.sock = str(workdir / "log.sock")
        self.conf = workdir / "rsyslog.conf"
        (workdir / "rs").mkdir(exist_ok=True)
        self.conf.write_text(f'global(workDirectory="{workdir}/rs")\n'
                             f'module(load="imuxsock" SysSock.Use="off")\n'
                             f'input(type="imuxsock" Socket="{self.sock}")\n'
                             f'*.* action(type="omfile" file="{workdir}/syslog.out")\n')
        self.proc = None

    def start(self):
        exe = shutil.which("rsyslogd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        self.proc = subprocess.Popen([exe, "-n", "-f", str(self.conf), "-i", str(self.dir / "rs.pid")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while not os.path.exists(self.sock) and time.monotonic() < end:
            time.sleep(0.05)

    def stop(self):
        terminate(self.proc, 5)
        self.proc = None


class Service:
    """Prometheus or Alertmanager (Debian's packages) in daemon A's namespace, restarted by the
    injector; `get` reads its HTTP API from inside the namespace."""

    def __init__(self, lab, workdir, name, argv, listen):
        self.lab, self.dir, self.name, self.argv, self.listen = lab, workdir, name, argv, listen
        self.proc = None

    def start(self):
        self.proc = self.lab.exec("a", self.argv, stdout=subprocess.DEVNULL,
                                  stderr=open(self.dir / f"{self.name}.stderr", "a"))
        end = time.monotonic() + 30
        while self.get("/-/ready", raw=True) is None:
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} did not become ready (see {self.dir}/{self.name}.stderr)")
            time.sleep(0.2)

    def stop(self):
        terminate(self.proc, 15)
        self.proc = None

    def get(self, path, raw=False):
        """The body (parsed JSON unless raw), or None while it does not answer."""
        out = self.lab.run("a", [sys.executable, "-c", FETCH, f"http://{self.listen}{path}"], check=False, timeout=15)
        if out.returncode != 0:
            return None
        return out.stdout if raw else json.loads(out.stdout)


def services(lab, workdir):
    """Prometheus scraping daemon A every second and an Alertmanager without receivers, or
    ({}, reasons) for those not installed."""
    have, skipped = {}, {}
    prom, am = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    if prom:
        (workdir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n"
            f"  - job_name: netprobe\n    static_configs:\n      - targets: ['{SCRAPE}']\n")
        have["prometheus"] = Service(lab, workdir, "prometheus", [
            prom, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={PROM}"], PROM)
    else:
        skipped["prometheus_restart"] = "prometheus is not installed (apt-get install prometheus)"
    if am:
        (workdir / "alertmanager.yml").write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
        have["alertmanager"] = Service(lab, workdir, "alertmanager", [
            am, f"--config.file={workdir / 'alertmanager.yml'}", f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address={AM}", "--cluster.listen-address="], AM)
    else:
        skipped["alertmanager_restart"] = ("prometheus-alertmanager is not installed "
                                           "(apt-get install prometheus-alertmanager)")
    return have, skipped


class Soak:
    def __init__(self, duration, sample, workdir):
        self.duration = duration
        self.sample = sample
        self.dir = workdir
        self.lab = None
        self.peer = None
        self.daemon = None
        self.records = []
        self.events = []          # (wall time, fault, "begin"|"end")
        self.samples = []         # (wall, pid, role, rss kB, fds, threads)
        self.errors = []
        self.stop = threading.Event()
        self.tmpfs = workdir / "results"
        self.cfg = workdir / "a.toml"
        self.hup_state = 0
        self.checks = []          # what Prometheus and Alertmanager showed around their restarts
        self.services = {}

    # ---- set-up ------------------------------------------------------------------------
    def start(self):
        self.snap_before = self.host_state()
        self.lab = netlab.Lab().up()
        self.tmpfs.mkdir()
        netlab.sh(self.mount_argv("rw"))
        self.syslog = Rsyslogd(self.dir)
        self.syslog.start()
        self.start_peer()
        self.services, self.skipped = services(self.lab, self.dir)
        for svc in self.services.values():
            svc.start()
        self.cfg.write_text(config_text(self.lab, 0, self.tmpfs / "a.jsonl", self.syslog.sock))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.dir / "notify.sock"))
        self.ready = None
        threading.Thread(target=self._notified, daemon=True).start()
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", NOTIFY_SOCKET=str(self.dir / "notify.sock"))
        self.daemon = self.lab.exec("a", [sys.executable, "-m", "netprobe", "run", "-c", str(self.cfg)],
                                    stdout=subprocess.PIPE, stderr=open(self.dir / "a.stderr", "w"),
                                    text=True, env=env)
        self.t0 = time.time()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def mount_argv(self, mode):
        return ["mount", "-t", "tmpfs", "-o", f"{mode},size=4m,mode=0700", "netprobe-soak", str(self.tmpfs)]

    def in_daemon_ns(self, argv):
        """argv run in the daemon's mount namespace, where its jsonfile directory is."""
        return ["nsenter", "-t", str(self.daemon.pid), "-m", "--", *argv]

    def start_peer(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.peer = self.lab.exec("b", [sys.executable, "-m", "netprobe", "serve", "--listen", f"[::]:{PORT}",
                                        "--allow", "198.18.0.0/15", "--allow", "2001:2::/48"],
                                  stdout=subprocess.DEVNULL, stderr=open(self.dir / "b.stderr", "a"), env=env)

    def _notified(self):
        """The daemon's sd_notify datagrams, read all along: READY (its workers are spawned, the
        clock of the verdict starts), then STATUS and RELOADING lines."""
        while True:
            try:
                msg = self.notify.recv(4096)
            except OSError:
                return
            if b"READY=1" in msg and self.ready is None:
                self.ready = time.time()

    def _read(self):
        with open(self.dir / "a.stdout", "w") as keep:
            for line in self.daemon.stdout:
                keep.write(line)
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    self.errors.append(f"daemon wrote a line that is not JSON: {line[:200]!r}")

    # ---- faults ------------------------------------------------------------------------
    def workers(self):
        out = subprocess.run(["pgrep", "-P", str(self.daemon.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def worker_of(self, kind):
        """The worker pid running probe `kind` (from the daemon's 'started probe' log lines)."""
        text = (self.dir / "a.stderr").read_text()
        pids = [int(p) for p in re.findall(rf"started probe \S+ \({kind}\) pid=(\d+)", text)]
        live = set(self.workers())
        return next((p for p in reversed(pids) if p in live), None)

    def mark(self, name, what):
        self.events.append((time.time(), name, what))

    def fault(self, name, hold):
        self.mark(name, "begin")
        if name == "worker_kill":
            pid = self.worker_of("oneway")
            if pid:
                os.kill(pid, signal.SIGKILL)
        elif name == "worker_freeze":
            pid = self.worker_of("host")
            if pid:
                os.kill(pid, signal.SIGSTOP)     # the supervisor must kill it; SIGCONT at the end if not
                self.frozen = pid
        elif name == "peer_pause":
            self.peer.send_signal(signal.SIGSTOP)
            self.stop.wait(hold)
            self.peer.send_signal(signal.SIGCONT)
        elif name == "peer_kill":
            self.peer.kill()
            self.peer.wait()
            self.stop.wait(hold)
            self.start_peer()
        elif name == "jsonfile_readonly":
            # in the daemon's own mount namespace (`ip netns exec` gave it one): a busy tmpfs
            # cannot be remounted read-only, so detach it (the open file keeps writing to the
            # detached copy) and mount a read-only one in its place: the next rotation (every
            # 10 s) meets EROFS; then a fresh writable one
            netlab.sh(self.in_daemon_ns(["umount", "-l", str(self.tmpfs)]))
            netlab.sh(self.in_daemon_ns(self.mount_argv("ro")))
            self.stop.wait(hold)
            netlab.sh(self.in_daemon_ns(["umount", "-l", str(self.tmpfs)]))
            netlab.sh(self.in_daemon_ns(self.mount_argv("rw")))
        elif name == "jsonfile_full":
            filler = self.tmpfs / "filler"
            subprocess.run(self.in_daemon_ns(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"]),
                           capture_output=True, check=False)
            self.stop.wait(hold)
            netlab.sh(self.in_daemon_ns(["rm", "-f", str(filler)]))
        elif name == "syslog_down":
            self.syslog.stop()
            self.stop.wait(hold)
            self.syslog.start()
        elif name == "blackhole":
            t_end = time.time() + hold
            for ipt in ("iptables", "ip6tables"):
                self.lab.run("r", [ipt, "-I", "FORWARD", "-j", "DROP"])
            if "alertmanager" in self.services:
                self.stop.wait(10)
                self.restart_alertmanager(t_end)
            self.stop.wait(max(0.0, t_end - time.time()))
            for ipt in ("iptables", "ip6tables"):
                self.lab.run("r", [ipt, "-D", "FORWARD", "-j", "DROP"])
        elif name == "prometheus_restart" and "prometheus" in self.services:
            self.restart_prometheus(hold)
        self.mark(name, "end")

    def open_breaches(self):
        """(probe name, metric) of the BREACHes in the stdout stream not CLEARed since."""
        open_ = set()
        for r in list(self.records):
            if r.get("type") in ("BREACH", "CLEAR"):
                key = (r.get("name"), r.get("metric"))
                (open_.add if r["type"] == "BREACH" else open_.discard)(key)
        return open_

    def am_alerts(self):
        got = self.services["alertmanager"].get("/api/v2/alerts?active=true&silenced=false&inhibited=false")
        return None if got is None else {(a["labels"].get("probe"), a["labels"].get("metric")) for a in got
                                         if a["labels"].get("alertname") == "NetprobeBreach"}

    def restart_alertmanager(self, deadline):
        """Alertmanager keeps alerts in memory: restarted while the black hole's breach is open,
        it must hold that breach again within a few re-posts (read from its own API)."""
        am = self.services["alertmanager"]
        self.mark("alertmanager_restart", "begin")
        t0 = time.time()
        am.stop()
        self.stop.wait(5)
        am.start()
        t_up = time.time()
        seen = None
        want = self.open_breaches()
        while time.time() < min(deadline, t_up + 6 * RESEND) and not self.stop.is_set():
            got = self.am_alerts()
            want = self.open_breaches()
            if got and want and want <= got:
                seen = time.time()
                break
            self.stop.wait(0.5)
        self.mark("alertmanager_restart", "end")
        self.checks.append({"fault": "alertmanager_restart", "begin_s": round(t0 - self.t0, 1),
                            "end_s": round(t_up - self.t0, 1), "record": "alert re-posted",
                            "open_breaches": sorted(map(list, want)),
                            "seen_s": None if seen is None else round(seen - self.t0, 1), "ok": seen is not None})

    def restart_prometheus(self, hold):
        """Prometheus restarted: it must scrape the daemon again (its own `up` and a fresh
        netprobe series after the restart)."""
        prom = self.services["prometheus"]
        t0 = time.time()
        prom.stop()
        self.stop.wait(hold)
        prom.start()
        t_up = time.time()
        seen = None
        while time.time() < t_up + 30 and not self.stop.is_set():
            self.stop.wait(2)
            span = max(1, int(time.time() - t_up))
            q = urllib.parse.urlencode({"query": f'max_over_time(up{{job="netprobe"}}[{span}s]) * on(instance) '
                                                 f'count_over_time(netprobe_oneway_sent_total[{span}s])'})
            got = prom.get(f"/api/v1/query?{q}")
            if got and got.get("data", {}).get("result") and float(got["data"]["result"][0]["value"][1]) > 0:
                seen = time.time()
                break
        self.checks.append({"fault": "prometheus_restart", "begin_s": round(t0 - self.t0, 1),
                            "end_s": round(t_up - self.t0, 1), "record": "scraped again",
                            "seen_s": None if seen is None else round(seen - self.t0, 1), "ok": seen is not None})

    def hup(self):
        self.hup_state = (self.hup_state + 1) % 3
        self.cfg.write_text(config_text(self.lab, self.hup_state, self.tmpfs / "a.jsonl", self.syslog.sock))
        name = f"sighup_{('unchanged', 'invalid', 'changed')[self.hup_state]}"
        self.mark(name, "begin")
        self.daemon.send_signal(signal.SIGHUP)
        self.mark(name, "end")

    def run_faults(self):
        """The fault cycle, repeated; a quiet tail of 3 stale allowances before the end."""
        end = self.t0 + self.duration - 3 * (INTERVAL + max(INTERVAL, STALE_GRACE)) - 10
        cycle_start = self.t0
        next_hup = self.t0 + HUP_EVERY
        next_sample = self.t0
        pending = list(FAULTS)
        while time.time() < end and not self.stop.is_set():
            now = time.time()
            if now >= next_sample:
                self.take_sample()
                next_sample = now + self.sample
            if now >= next_hup:
                self.hup()
                next_hup = now + HUP_EVERY
            if pending and now >= cycle_start + pending[0][0]:
                offset, name, hold = pending.pop(0)
                if now + hold < end:
                    self.fault(name, hold)
            elif not pending and now >= cycle_start + CYCLE:
                cycle_start, pending = now, list(FAULTS)
            if self.daemon.poll() is not None:
                self.errors.append(f"daemon exited with {self.daemon.returncode} during the soak")
                return
            self.stop.wait(0.2)
        while time.time() < self.t0 + self.duration:
            if time.time() >= next_sample:
                self.take_sample()
                next_sample = time.time() + self.sample
            self.stop.wait(0.5)

    def take_sample(self):
        now = time.time()
        roles = [(self.daemon.pid, "daemon"), (self.peer.pid, "peer")] + [(p, "worker") for p in self.workers()]
        for pid, role in roles:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            rss = re.search(r"VmRSS:\s+(\d+)", status)
            threads = re.search(r"Threads:\s+(\d+)", status)
            if rss and threads:             # an exiting process has no VmRSS
                self.samples.append((now, pid, role, int(rss.group(1)), fds, int(threads.group(1))))

    # ---- tear-down ---------------------------------------------------------------------
    def finish(self):
        self.t_end = time.time()
        if "alertmanager" in self.services and self.services["alertmanager"].proc:
            # Alertmanager holds the breaches still open at the end, and nothing else (the
            # quiet tail clears the injected ones); a state just changed gets a few re-posts
            end = time.time() + 3 * RESEND
            while True:
                left, want = self.am_alerts(), self.open_breaches()
                if left == want or time.time() > end:
                    break
                time.sleep(0.5)
            self.checks.append({"fault": "alertmanager_at_end", "begin_s": round(self.t_end - self.t0, 1),
                                "record": "alerts equal to the open breaches", "seen_s": None,
                                "active": None if left is None else sorted(map(list, left)),
                                "open_breaches": sorted(map(list, want)), "ok": left == want})
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.errors.append("daemon did not stop within 60 s of SIGTERM")
                self.daemon.kill()
        if self.daemon:
            self.reader.join(timeout=10)
        pid = getattr(self, "frozen", None)
        if pid and os.path.exists(f"/proc/{pid}"):
            self.errors.append(f"the frozen worker {pid} was never killed by the supervisor")
            os.kill(pid, signal.SIGCONT)
        self.zombies = self.find_zombies()
        if self.peer and self.peer.poll() is None:
            self.peer.terminate()
            self.peer.wait(timeout=15)
        self.syslog.stop()
        for svc in self.services.values():
            svc.stop()
        self.notify.close()
        if self.lab:
            self.lab.down()
        while self.tmpfs.is_mount():
            netlab.sh(["umount", "-l", str(self.tmpfs)])
        self.snap_after = self.host_state()

    def find_zombies(self):
        out = subprocess.run(["ps", "-eo", "pid=,ppid=,stat=,comm="], capture_output=True, text=True).stdout
        ours = {self.daemon.pid, self.peer.pid}
        return [line.strip() for line in out.splitlines()
                if line.split()[2].startswith("Z") and int(line.split()[1]) in ours]

    def host_state(self):
        """What a leak would change in the host namespace: iptables rules, qdiscs, tracefs
        instances of netprobe, this run's namespaces."""
        def out(argv):
            return subprocess.run(argv, capture_output=True, text=True).stdout
        # rules only: a table's "*filter"/"COMMIT" lines appear once anything loads it
        rules = [r for r in out(["iptables-save"]).splitlines() if r.startswith("-A")]
        inst = sorted(p.name for p in TRACEFS.iterdir() if "netprobe" in p.name) if TRACEFS.exists() else []
        labs = [n for n in netlab.namespaces() if self.lab and n.startswith(self.lab.name)]
        return {"iptables": rules, "qdiscs": out(["tc", "qdisc", "show"]).splitlines(), "tracefs": inst,
                "namespaces": labs}

    # ---- verdict -----------------------------------------------------------------------
    def verdict(self):
        recs = [r for r in self.records if r.get("probe") in PERIODIC or r.get("type") == "GAP"]
        # start-up: workers spawned at READY, their first interval's allowance
        begin = (self.ready or self.t0) + STALE_GRACE + INTERVAL
        stop = self.t_end - INTERVAL
        probes = {}
        for kind in PERIODIC:
            stamps = sorted(parse_ts(r["ts"]) for r in recs if r["type"] == "RESULT" and r["probe"] == kind)
            gaps = [(parse_ts(r["start"]), parse_ts(r["end"])) for r in recs
                    if r["type"] == "GAP" and r["probe"] == kind]
            probes[kind] = account(stamps, gaps, begin, stop, self.t0)
        return {
            "duration_s": round(self.t_end - self.t0, 1),
            "probes": probes,
            "unexplained": sum(p["unexplained"] for p in probes.values()),
            "growth": self.growth(),
            "faults": self.fault_records() + self.checks,
            "skipped": {**SKIPPED, **getattr(self, "skipped", {})},
            "leaks": self.leaks(),
            "errors": self.errors,
        }

    def growth(self):
        """Slope per process (pids sampled at least 5 times after warm-up): kB/h, fds/h, threads/h.

        Warm-up is the first half of the run. Under the injector's faults a process's RSS keeps
        rising for tens of minutes while its Python heap stays flat: the allocators touch pages
        of their arenas for the first time (pymalloc's 1 MiB arenas, glibc's heaps) and the
        rise slows as they fill (the supervisor 7.3 %/h at 18-28 min, 3.7 %/h at 28-38 min).
        A leak keeps its slope in the second half; this rise does not."""
        warm = self.t0 + 0.5 * (self.t_end - self.t0)
        by_pid = {}
        for t, pid, role, rss, fds, thr in self.samples:
            if t >= warm:
                by_pid.setdefault((pid, role), []).append((t, rss, fds, thr))
        out = []
        for (pid, role), rows in sorted(by_pid.items()):
            if len(rows) < 5:
                continue
            t = [(r[0] - rows[0][0]) / 3600 for r in rows]
            fit = {name: stats.linregress(t, [r[i] for r in rows]).slope for i, name in
                   ((1, "rss_kb_per_h"), (2, "fds_per_h"), (3, "threads_per_h"))}
            mean_rss = sum(r[1] for r in rows) / len(rows)
            out.append({"pid": pid, "role": role, "samples": len(rows), "rss_kb_mean": round(mean_rss),
                        "rss_pct_per_h": round(100 * fit["rss_kb_per_h"] / mean_rss, 3),
                        "fds_first_last": [rows[0][2], rows[-1][2]],
                        "threads_first_last": [rows[0][3], rows[-1][3]],
                        **{k: round(v, 3) for k, v in fit.items()}})
        return out

    def fault_records(self):
        """Each injected fault and the records it should have given, in order."""
        recs = [(parse_ts(r["ts"]), r) for r in self.records]
        begins = {}
        out = []
        for t, name, what in self.events:
            if what == "begin":
                begins.setdefault(name, []).append(t)
                continue
            t_begin = begins[name][-1]
            want = EXPECT.get(name)
            if want is None:
                continue
            typ, pred = want
            after = [(ts, r) for ts, r in recs if ts >= t_begin and pred(r)]
            first = after[0][0] if after else None
            clear = None
            if typ == "BREACH" and first is not None:
                keys = {(r["probe"], r.get("metric")) for ts, r in after if r["type"] == "BREACH"}
                clears = [ts for ts, r in recs if ts >= first and r["type"] == "CLEAR"
                          and (r["probe"], r.get("metric")) in keys]
                clear = clears[0] if clears else None
            out.append({"fault": name, "begin_s": round(t_begin - self.t0, 1), "end_s": round(t - self.t0, 1),
                        "record": typ, "seen_s": None if first is None else round(first - self.t0, 1),
                        "cleared_s": None if clear is None else round(clear - self.t0, 1),
                        "ok": first is not None and (typ != "BREACH" or clear is not None)})
        return out

    def leaks(self):
        before, after = self.snap_before, self.snap_after
        out = {k: sorted(set(after[k]) - set(before[k])) for k in after}
        out["zombies"] = self.zombies
        return out


def is_breach(metrics):
    return lambda r: r["type"] == "BREACH" and r.get("metric") in metrics


# What each fault must give (type, predicate on a record); SIGHUPs and jsonfile faults are
# judged from their own records.
EXPECT = {
    "worker_kill": ("GAP", lambda r: r["type"] == "GAP" and r["probe"] == "oneway"
                    and "SIGKILL" in r.get("reason", "")),
    "worker_freeze": ("GAP", lambda r: r["type"] == "GAP" and r["probe"] == "host" and "frozen" in r.get("reason", "")),
    "peer_pause": ("BREACH", is_breach({"connection", "stale", "rate"})),
    "peer_kill": ("BREACH", is_breach({"connection", "stale"})),
    "blackhole": ("BREACH", is_breach({"loss", "path_blackhole", "rate", "connection", "stale"})),
    "jsonfile_readonly": ("ERROR", lambda r: r["type"] == "ERROR" and r.get("sink") == "file"),
    "jsonfile_full": ("ERROR", lambda r: r["type"] == "ERROR" and r.get("sink") == "file"),
    "sighup_changed": ("GAP", lambda r: r["type"] == "GAP" and "reload" in r.get("reason", "")),
    "sighup_invalid": ("ERROR", lambda r: r["type"] == "ERROR" and "reload failed" in r.get("error", "")),
    "syslog_down": ("ERROR", lambda r: r["type"] == "ERROR" and r.get("sink") == "syslog"),
}


def account(stamps, gaps, begin, stop, t0):
    """The interval slots of [begin, stop): each received (half covered by RESULT spans), else
    explained (half covered by GAP spans), else unexplained; `stamps` are the RESULT times, sorted.

    A RESULT spans the interval before it. A late one, which the next RESULT catches up on (the
    two within two intervals, plus half of one, of the RESULT before them: no interval missing,
    and within the daemon's stale allowance, so it rightly said nothing), spans back to the
    RESULT before it."""
    spans = []
    for i, ts in enumerate(stamps):
        lo = ts - INTERVAL
        if 0 < i < len(stamps) - 1 and stamps[i + 1] - stamps[i - 1] <= 2.5 * INTERVAL \
                and ts - stamps[i - 1] <= INTERVAL + max(INTERVAL, STALE_GRACE):
            lo = min(lo, stamps[i - 1])
        spans.append((lo, ts))
    slots = int((stop - begin) // INTERVAL)
    got = explained = unexplained = 0
    holes = []
    for k in range(slots):
        lo = begin + k * INTERVAL
        hi = lo + INTERVAL
        if covered(spans, lo, hi) >= 0.5 * INTERVAL:
            got += 1
        elif covered(spans + gaps, lo, hi) >= 0.5 * INTERVAL:
            explained += 1
        else:
            unexplained += 1
            holes.append(round(lo - t0, 1))
    return {"expected": slots, "received": got, "explained_by_gap": explained,
            "unexplained": unexplained, "unexplained_at_s": holes[:20]}

def covered(spans, lo, hi):
    """Seconds of [lo, hi] inside the union of spans."""
    cut = sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi)
    total, end = 0.0, lo
    for a, b in cut:
        a = max(a, end)
        if b > a:
            total += b - a
            end = b
    return total


def failures(v, slope_limit):
    """The verdict's failed checks, one line each. Growth is judged on runs of an hour or more
    (slope_limit); shorter runs report it (a restarted peer or worker warms up for minutes)."""
    out = []
    if v["unexplained"]:
        out.append(f"{v['unexplained']} unexplained intervals: " +
                   ", ".join(f"{k} at {p['unexplained_at_s']}" for k, p in v["probes"].items() if p["unexplained"]))
    for f in v["faults"]:
        if not f["ok"]:
            out.append(f"fault {f['fault']} at {f['begin_s']} s gave no {f['record']}"
                       + ("" if f["seen_s"] is None else " CLEAR"))
    for g in v["growth"] if v["duration_s"] >= 3600 else ():
        if g["rss_pct_per_h"] > slope_limit:
            out.append(f"{g['role']} {g['pid']} RSS grows {g['rss_pct_per_h']} %/h (limit {slope_limit})")
        if g["fds_first_last"][1] > g["fds_first_last"][0] + 2:
            out.append(f"{g['role']} {g['pid']} fds grew {g['fds_first_last']}")
    for k, items in v["leaks"].items():
        if items:
            out.append(f"leaked {k}: {items[:5]}")
    out.extend(v["errors"])
    return out


def run(duration, sample, slope_limit=None, keep=None):
    if os.geteuid() != 0:
        raise SystemExit("the soak needs root (network namespaces, tmpfs, tracefs)")
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="netprobe-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(duration, sample, workdir)
    # SIGTERM (a timeout, make's Ctrl-C) unwinds through the clean-up below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        soak.start()
        soak.run_faults()
    finally:
        soak.stop.set()
        soak.finish()
    v = soak.verdict()
    v["failures"] = failures(v, slope_limit)
    # the samples behind the slopes, one JSON row each (time, pid, role, RSS kB, fds, threads)
    with open(workdir / "samples.jsonl", "w") as fh:
        fh.writelines(json.dumps(dict(zip(("t", "pid", "role", "rss_kb", "fds", "threads"), row, strict=True))) + "\n"
                      for row in soak.samples)
    v["workdir"] = str(workdir)
    return v


def main():
    ap = argparse.ArgumentParser(prog="python -m tests.soak.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", default="2h", help="how long (default 2h; units s, m, h)")
    ap.add_argument("--sample", default="60s", help="RSS/fd/thread sampling period (default 60s)")
    ap.add_argument("--slope-limit", type=float, default=1.0,
                    help="largest RSS growth per process after warm-up, %% per hour (default 1)")
    ap.add_argument("--json", help="write the verdict here too")
    ap.add_argument("--keep", help="work in this directory (default: a new temporary one)")
    args = ap.parse_args()
    v = run(parse_duration(args.duration), parse_duration(args.sample), args.slope_limit, args.keep)
    text = json.dumps(v, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    if v["failures"]:
        print("\nsoak FAILED:\n  " + "\n  ".join(v["failures"]), file=sys.stderr)
        return 1
    print(f"\nsoak passed: {v['duration_s']} s, 0 unexplained intervals", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
