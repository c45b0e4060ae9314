"""A fleet lab for mesh tests (root only): sites behind rate-limited uplinks to one core.

    [host ns] -- br0 [site router ns] == uplink (tbf both ways) == [core ns] == ... other sites

Site s (0, 1, ...) is the LAN 198.18.s.0/24 on a bridge in its router
namespace (gateway .254); host i of the site is 198.18.s.(i+1). The router's
uplink to the core is 198.18.(100+s).2/30 (core side .1), shaped by a tbf
root qdisc on both ends, so all of a site's traffic to the others shares
one uplink of `uplink` bit/s each way. `serve_file` runs an HTTP server in the
core namespace (a mesh URL every host reaches). Namespace names are
"labm<owner pid base36>-..."; `down()` removes them and every process in
them, and `cleanup_stale()` removes those of owners that are gone.
"""
import contextlib
import datetime
import hashlib
import http.server
import itertools
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

from tests.lab.netlab import require, sh

PREFIX = "labm"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _b36(n):
    digits = ""
    while True:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
        if not n:
            return digits


def _namespaces():
    return [line.split()[0] for line in sh(["ip", "netns", "list"]).stdout.splitlines() if line]


def _remove(ns):
    pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    sh(["ip", "netns", "del", ns], check=False)


def cleanup_stale():
    """Remove mesh-lab namespaces whose owner process is gone."""
    for ns in _namespaces():
        m = re.fullmatch(PREFIX + r"([0-9a-z]+)-.*", ns)
        if m and not os.path.exists(f"/proc/{int(m.group(1), 36)}"):
            _remove(ns)


class MeshLab:
    def __init__(self, sites, uplink="20mbit"):
        """sites: {site name: number of hosts}; hosts are named SITE1, SITE2, ..."""
        self.tag = PREFIX + _b36(os.getpid())
        self.sites = dict(sites)
        self.uplink = uplink
        self.hosts = {}             # host name -> (namespace, address, site)
        self.procs = []

    def ns(self, host):
        return self.hosts[host][0]

    def up(self):
        require("ip", "tc")
        cleanup_stale()
        self.down()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self):
        core = f"{self.tag}-c"
        self._netns(core)
        for s, (site, count) in enumerate(self.sites.items()):
            router = f"{self.tag}-s{s}"
            self._netns(router)
            sh(["ip", "link", "add", f"to{s}", "netns", core, "type", "veth",
                "peer", "name", "uplink", "netns", router])
            sh(["ip", "-n", core, "addr", "add", f"198.18.{100 + s}.1/30", "dev", f"to{s}"])
            sh(["ip", "-n", router, "addr", "add", f"198.18.{100 + s}.2/30", "dev", "uplink"])
            for ns, dev in ((core, f"to{s}"), (router, "uplink")):
                sh(["ip", "-n", ns, "link", "set", dev, "up"])
                sh(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", self.uplink,
                    "burst", "32kb", "latency", "50ms"])
            sh(["ip", "-n", core, "route", "add", f"198.18.{s}.0/24", "via", f"198.18.{100 + s}.2"])
            sh(["ip", "-n", router, "route", "add", "default", "via", f"198.18.{100 + s}.1"])
            sh(["ip", "-n", router, "link", "add", "br0", "type", "bridge"])
            sh(["ip", "-n", router, "addr", "add", f"198.18.{s}.254/24", "dev", "br0"])
            sh(["ip", "-n", router, "link", "set", "br0", "up"])
            for i in range(count):
                name = f"{site}{i + 1}"
                ns, addr = f"{self.tag}-{name}", f"198.18.{s}.{i + 1}"
                self._netns(ns, forward=False)
                sh(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}",
                    "netns", router])
                sh(["ip", "-n", router, "link", "set", f"p{i}", "master", "br0", "up"])
                sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
                sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
                sh(["ip", "-n", ns, "route", "add", "default", "via", f"198.18.{s}.254"])
                self.hosts[name] = (ns, addr, site)

    def _netns(self, ns, forward=True):
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        if forward:
            sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def popen(self, host, argv, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *map(str, argv)], **kw)
        self.procs.append(p)
        return p

    def daemon(self, host, directory):
        """`netprobe run -c DIR/HOST.toml` in the host's namespace, its stderr appended to DIR/HOST.err."""
        with open(os.path.join(directory, f"{host}.err"), "a") as err:
            return self.popen(host, [sys.executable, "-m", "netprobe", "run", "-c",
                                     os.path.join(directory, f"{host}.toml")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)

    @property
    def core(self):
        return f"{self.tag}-c"

    def serve_file(self, path, log, port=8080):
        """Serve the file `path` (read at each request) at the returned URL, from the core
        namespace, with a strong ETag and 304 for a matching If-None-Match; one line per request
        in `log`: time, status, the If-None-Match sent."""
        p = subprocess.Popen(["ip", "netns", "exec", self.core, sys.executable, "-m", "tests.lab.mesh",
                              str(path), str(port), str(log)],
                             cwd=ROOT)
        self.procs.append(p)
        end = time.monotonic() + 10
        while sh(["ip", "netns", "exec", self.core, "ss", "-Hltn", f"sport = :{port}"]).stdout.strip() == "":
            assert p.poll() is None and time.monotonic() < end, "the mesh URL server did not start"
            time.sleep(0.05)
        return f"http://198.18.100.1:{port}/mesh.toml"

    def ping(self, a, b):
        """True when host a reaches host b (one ping, 2 s)."""
        return sh(["ip", "netns", "exec", self.ns(a), "ping", "-c1", "-W2", self.hosts[b][1]],
                  check=False).returncode == 0

    def down(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []
        for ns in _namespaces():
            if ns.startswith(self.tag + "-"):
                _remove(ns)
        self.hosts = {}


@contextlib.contextmanager
def running(sites, uplink):
    """A MeshLab up for one test, taken down even when the test fails."""
    lab = MeshLab(sites, uplink=uplink).up()
    try:
        yield lab
    finally:
        lab.down()


def write(path, text):
    """Replace a file whole, as an operator's deploy would (never a half-written mesh file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def throughput_spans(records):
    """Throughput tests as the hosts measured them ({host: its jsonfile's records}): (first
    interval's start, last RESULT, host, peer); a pair's RESULTs more than 3 s apart are two runs."""
    spans = []
    for n, recs in records.items():
        stamps = defaultdict(list)
        for r in recs:
            if r["probe"] == "throughput" and r["type"] == "RESULT" and "rate" in r:
                stamps[r["peer_name"]].append(datetime.datetime.fromisoformat(r["ts"]).timestamp())
        for peer, ts in stamps.items():
            ts.sort()
            group = [ts[0]]
            for t in ts[1:] + [None]:
                if t is None or t - group[-1] > 3.0:
                    spans.append((group[0] - 1.0, group[-1], n, peer))
                    group = []
                if t is not None:
                    group.append(t)
    return spans


def overlapping(spans, site):
    """The pairs of spans that held one host or one site's uplink at once."""
    def held(a, b):
        return {f"host:{a}", f"host:{b}", f"site:{site[a]}", f"site:{site[b]}"}
    return [(x, y) for x, y in itertools.combinations(spans, 2)
            if held(x[2], x[3]) & held(y[2], y[3]) and x[0] < y[1] and y[0] < x[1]]


def _serve(path, port, log):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with open(path, "rb") as fh:
                body = fh.read()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            sent = self.headers.get("If-None-Match")
            status = 304 if sent == etag else 200
            with open(log, "a") as fh:
                fh.write(f"{time.time():.3f} {status} {sent}\n")
            self.send_response(status)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0" if status == 304 else str(len(body)))
            self.end_headers()
            if status == 200:
                self.wfile.write(body)

        def log_message(self, *_):
            pass

    http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
