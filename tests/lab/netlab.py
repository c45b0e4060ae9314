"""Three-namespace network lab A - R - B for integration tests (root only).

    [A: NAME-a] veth-a ==== veth-ra [R: NAME-r] veth-rb ==== veth-b [B: NAME-b]

A and B route through R.  The addresses are the benchmarking ranges (RFC 2544
198.18.0.0/15, RFC 5180 2001:2::/48) and exist only inside the namespaces;
host "unreachable" guard routes for both ranges make a client started in the
host namespace by mistake fail at once instead of leaving by the default
route.  MACs are fixed so tests can address R as the next hop directly.

Impairments live on R, per direction ("ab" leaves R on veth-rb, "ba" on
veth-ra): rate = tbf root qdisc on the egress device, loss = iptables
`statistic` DROP in FORWARD, delay/jitter = FORWARD NFQUEUE rule served by
the nfqdelay helper (this package) running in R.  The kernel has no netem.

Lab names start with "labt" and embed the owner's pid, so `cleanup_stale`
can tell a crashed run's leftovers from a lab another process is using.
"""
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

NFQDELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nfqdelay.py")
PACKAGES = {"ip": "iproute2", "tc": "iproute2", "iptables": "iptables",
            "ip6tables": "iptables", "ethtool": "ethtool", "ping": "iputils-ping",
            "irtt": "irtt", "iperf3": "iperf3", "tcpdump": "tcpdump", "tshark": "tshark"}
GUARDS = (("-4", "198.18.0.0/15"), ("-6", "2001:2::/48"))
# direction -> (R's ingress device, R's egress device, NFQUEUE number)
DIRECTIONS = {"ab": ("veth-ra", "veth-rb", 0), "ba": ("veth-rb", "veth-ra", 1)}
IMPAIRMENTS = ("rate", "burst", "buffer", "loss", "loss_every", "delay", "jitter")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_NAME_RE = re.compile(r"labt([0-9a-z]{1,5})[0-9a-z]")
_seq = itertools.count()


class LabError(RuntimeError):
    """A lab command failed, or a tool it needs is missing."""


def stop_tcpdump(dump):
    """Stop a Lab.tcpdump() capture; LabError unless the kernel dropped none of its packets."""
    dump.send_signal(signal.SIGINT)
    err = dump.communicate(timeout=10)[1]
    if not re.search(r"^0 packets dropped by kernel", err, re.M):
        raise LabError(f"tcpdump lost packets or failed: {err.strip()[-300:]}")


def require(*tools):
    """Raise LabError naming the apt package of every missing tool."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = sorted({PACKAGES.get(t, t) for t in missing})
        raise LabError("missing %s: apt-get install -y %s" % (", ".join(missing), " ".join(pkgs)))


def sh(argv, check=True, timeout=30, **kw):
    """Run argv (captured text); on failure with check raise LabError with stderr."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode:
        raise LabError("%s -> exit %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p


def namespaces():
    """Names of all network namespaces known to `ip netns`."""
    return [line.split()[0] for line in sh(["ip", "netns", "list"]).stdout.splitlines() if line]


def lab_names(prefix="lab"):
    """Lab names (NAME of NAME-a/-r/-b) with namespaces present."""
    return sorted({n[:-2] for n in namespaces() if n.startswith(prefix) and n[-2:] in ("-a", "-r", "-b")})


def new_name(owner=None):
    """A free lab name "labt<owner pid base36><seq>" (<= 10 chars)."""
    owner = owner or os.getpid()
    pid, digits = owner, ""
    while True:
        pid, r = divmod(pid, 36)
        digits = _B36[r] + digits
        if not pid:
            break
    taken = set(lab_names("labt"))
    for _ in range(36):
        name = "labt%s%s" % (digits, _B36[next(_seq) % 36])
        if name not in taken:
            return name
    raise LabError("no free lab name for pid %d" % owner)


def owner_pid(name):
    """The owner pid embedded in a lab name from new_name(), else None."""
    m = _NAME_RE.fullmatch(name)
    return int(m.group(1), 36) if m else None


def _stale(name, mine):
    """A crashed run's lab (owner gone or unknown), or with mine=True also
    one of this process's own (leaked at the end of a session)."""
    pid = owner_pid(name)
    return pid is None or not os.path.exists("/proc/%d" % pid) or (mine and pid == os.getpid())


def helper_pids(prefix="labt"):
    """{pid: tag} of running nfqdelay helpers whose --tag starts with prefix."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.endswith("nfqdelay.py") for a in argv) and "--tag" in argv:
            tag = argv[argv.index("--tag") + 1]
            if tag.startswith(prefix):
                found[int(entry)] = tag
    return found


def _kill_pids(pids, wait=3.0):
    """SIGTERM the pids, then SIGKILL whatever is still there after `wait` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while time.monotonic() < end and any(os.path.exists("/proc/%d/ns/net" % p) for p in pids):
            time.sleep(0.02)


def guard_routes():
    """The host's guard routes that are present, as (family flag, prefix)."""
    return [(fam, pfx) for fam, pfx in GUARDS
            if sh(["ip", fam, "route", "show", "exact", pfx]).stdout.strip()]


def _remove_guards_if_unused():
    """Delete the host guard routes once no lab (ours or hand-run) is left."""
    if not lab_names("lab"):
        for fam, pfx in GUARDS:
            sh(["ip", fam, "route", "del", "unreachable", pfx], check=False)


def cleanup_stale(prefix="labt", mine=False):
    """Remove labs named prefix* whose owner process is gone (a crashed run;
    with mine=True also this process's own), orphaned nfqdelay helpers of
    such labs, and unused guard routes.  Returns the names of labs removed."""
    if shutil.which("ip") is None:
        return []
    stale = [n for n in lab_names(prefix) if _stale(n, mine)]
    for name in stale:
        Lab(name).down()
    _kill_pids([pid for pid, tag in helper_pids(prefix).items() if _stale(tag, mine)])
    _remove_guards_if_unused()
    return stale


def rate_bps(rate):
    """tc rate ("10mbit", "1.5gbit", "500kbps", or an int in bit/s) -> bit/s."""
    m = re.fullmatch(r"([0-9.]+)\s*([kmgt]?)(bit|bps)?", str(rate).strip().lower())
    if not m:
        raise ValueError("bad rate %r" % (rate,))
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2)]
    return int(float(m.group(1)) * scale * (8 if m.group(3) == "bps" else 1))


def parse_impairments(kw):
    """{"ab": {...}, "ba": {...}} from keywords like loss=1, delay_ab=20.
    A per-direction keyword wins over the both-direction shorthand."""
    out = {"ab": {}, "ba": {}}
    for key, value in sorted(kw.items(), key=lambda kv: kv[0][-3:] in ("_ab", "_ba")):
        base, _, d = key.rpartition("_")
        if d not in out:
            base, d = key, None
        if base not in IMPAIRMENTS:
            raise TypeError("unknown impairment %r" % key)
        if value is not None:
            for direction in ([d] if d else ["ab", "ba"]):
                out[direction][base] = value
    for o in out.values():
        if ("burst" in o or "buffer" in o) and "rate" not in o:
            raise ValueError("burst/buffer need a rate")
        if not 0 <= float(o.get("loss", 0)) <= 100:
            raise ValueError("loss is a percentage")
        if int(o.get("loss_every", 2)) < 2:
            raise ValueError("loss_every needs N >= 2")
        if float(o.get("delay", 0)) < 0 or float(o.get("jitter", 0)) < 0:
            raise ValueError("delay/jitter must be >= 0")
    return out


class Lab:
    """One A - R - B lab.  `up()` builds it, `set()` impairs it, `down()`
    removes everything (also on a half-built lab; safe to call twice)."""

    a4, ra4, rb4, b4 = "198.18.1.2", "198.18.1.1", "198.18.2.1", "198.18.2.2"
    a6, ra6, rb6, b6 = "2001:2:0:1::2", "2001:2:0:1::1", "2001:2:0:2::1", "2001:2:0:2::2"
    mac_a, mac_ra, mac_rb, mac_b = ("02:1a:b0:00:01:02", "02:1a:b0:00:01:01",
                                    "02:1a:b0:00:02:01", "02:1a:b0:00:02:02")
    r_mac_facing_a = mac_ra
    if_a, if_ra, if_rb, if_b = "veth-a", "veth-ra", "veth-rb", "veth-b"

    def __init__(self, name=None, helper_lifetime=900.0):
        name = name or new_name()
        if not re.fullmatch(r"lab[A-Za-z0-9_]{0,7}", name):
            raise ValueError("lab name must be 'lab' + up to 7 [A-Za-z0-9_]: %r" % name)
        self.name = name
        self.ns_a, self.ns_r, self.ns_b = name + "-a", name + "-r", name + "-b"
        self.helper_lifetime = helper_lifetime
        self.mtu = 1500
        self.impairments = {}
        self.helper_stats = {}  # direction -> the helper's exit stats line
        self._helpers = {}      # direction -> Popen
        self._procs = []        # Popen from exec(), stopped by down()
        self._guard = False

    def __repr__(self):
        return "Lab(%r)" % self.name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()

    def ns(self, host):
        """Namespace of host "a", "r" or "b"."""
        return {"a": self.ns_a, "r": self.ns_r, "b": self.ns_b}[host.lower()]

    # -- commands inside the lab ------------------------------------------
    def argv(self, host, argv):
        """The command line that runs argv in host's namespace."""
        return ["ip", "netns", "exec", self.ns(host)] + [str(a) for a in argv]

    def exec(self, host, argv, **popen_kw):
        """Start argv in host's namespace; down() stops it if still running."""
        p = subprocess.Popen(self.argv(host, argv), **popen_kw)
        self._procs = [q for q in self._procs if q.poll() is None] + [p]
        return p

    def popen(self, host, argv, **kw):
        """exec() with stdout/stderr piped as text."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        return self.exec(host, argv, **kw)

    def run(self, host, argv, check=True, timeout=30, **kw):
        """Run argv in host's namespace to completion (bounded by timeout)."""
        return sh(self.argv(host, argv), check=check, timeout=timeout, **kw)

    def tcpdump(self, host, dev, path, expr, direction=None, snaplen=128):
        """tcpdump -w path on dev in host's namespace (-Q direction: in/out), once it listens;
        stop it with stop_tcpdump()."""
        dump = self.popen(host, ["tcpdump", "-n", "--immediate-mode", "-i", dev, "-s", str(snaplen), "-B", "16384",
                                 "-U", "-w", str(path)] + (["-Q", direction] if direction else []) + [expr])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "listening" not in dump.stderr.readline():
            pass
        return dump

    # -- build / tear down -------------------------------------------------
    def up(self, offload="on", mtu=1500, **impairments):
        """Build the lab (replacing any lab of this name); returns self.
        offload="off" turns TSO/GSO/GRO off on all veths, so every skb is one
        wire packet (loss, captures and counters then are per packet)."""
        if offload not in ("on", "off"):
            raise ValueError("offload must be 'on' or 'off'")
        require("ip", "tc", "iptables", "ip6tables", "ping", *(["ethtool"] if offload == "off" else []))
        self.down()
        self.mtu = mtu
        try:
            self._build(offload, mtu)
            self.set(**impairments)
        except BaseException:
            self.down()
            raise
        return self

    def _build(self, offload, mtu):
        for ns in (self.ns_a, self.ns_r, self.ns_b):
            sh(["ip", "netns", "add", ns])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0"])
        for (ns1, if1, mac1), (ns2, if2, mac2) in (
                ((self.ns_a, self.if_a, self.mac_a), (self.ns_r, self.if_ra, self.mac_ra)),
                ((self.ns_r, self.if_rb, self.mac_rb), (self.ns_b, self.if_b, self.mac_b))):
            sh(["ip", "link", "add", if1, "netns", ns1, "address", mac1, "mtu", str(mtu), "type",
                "veth", "peer", "name", if2, "netns", ns2, "address", mac2, "mtu", str(mtu)])
        links = ((self.ns_a, self.if_a, self.a4, self.a6), (self.ns_r, self.if_ra, self.ra4, self.ra6),
                 (self.ns_r, self.if_rb, self.rb4, self.rb6), (self.ns_b, self.if_b, self.b4, self.b6))
        # links up before addresses: with IPv6 addresses added while the link
        # was down, the first neighbour discovery stalls for 1 s (measured)
        for ns, dev, _, _ in links:
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
            if offload == "off":
                sh(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"])
        for ns, dev, a4, a6 in links:
            sh(["ip", "-n", ns, "addr", "add", a4 + "/24", "dev", dev])
            sh(["ip", "-n", ns, "-6", "addr", "add", a6 + "/64", "dev", dev, "nodad"])
        sh(["ip", "netns", "exec", self.ns_r, "sysctl", "-qw", "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1"])
        for ns, gw4, gw6 in ((self.ns_a, self.ra4, self.ra6), (self.ns_b, self.rb4, self.rb6)):
            sh(["ip", "-n", ns, "route", "add", "default", "via", gw4])
            sh(["ip", "-n", ns, "-6", "route", "add", "default", "via", gw6])
        self._guard = True
        for fam, pfx in GUARDS:
            sh(["ip", fam, "route", "replace", "unreachable", pfx])
        # end-to-end check, which also fills the neighbour caches
        for dst in (self.b4, self.b6):
            if self.run("a", ["ping", "-c1", "-W2", "-q", dst], check=False).returncode:
                raise LabError("%s: ping A -> %s through R failed" % (self.name, dst))

    def down(self):
        """Remove the lab: rules, helpers, our processes, namespaces, and the
        guard routes if we added them and no other lab is left."""
        present = set(namespaces())
        if self.ns_r in present:
            self.clear()
        else:
            self._stop_helpers()
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs = []
        ours = [ns for ns in (self.ns_a, self.ns_r, self.ns_b) if ns in present]
        pids = [int(x) for ns in ours for x in sh(["ip", "netns", "pids", ns], check=False).stdout.split()]
        _kill_pids(pids)
        for ns in ours:
            sh(["ip", "netns", "del", ns], check=False)
        if self._guard:
            self._guard = False
            _remove_guards_if_unused()
        left = set(ours) & set(namespaces())
        if left:
            raise LabError("%s: could not delete namespaces %s" % (self.name, sorted(left)))

    # -- impairments -------------------------------------------------------
    def set(self, **impairments):
        """Replace all impairments.  Keywords (suffix _ab/_ba for one
        direction, none for both): rate ("10mbit"), burst / buffer (bytes, tbf
        bucket / queue limit), loss (percent, random), loss_every (drop every
        Nth), delay (ms), jitter (+- ms uniform, order kept)."""
        spec = parse_impairments(impairments)
        self.clear()
        for d in ("ab", "ba"):
            self._apply(d, spec[d])
        self.impairments = {d: o for d, o in spec.items() if o}

    def clear(self):
        """Remove all impairments (rules first, so no packet waits on a
        stopped helper; the helpers release what they hold on SIGTERM)."""
        for ipt in ("iptables", "ip6tables"):
            self.run("r", [ipt, "-w", "-F", "FORWARD"], check=False)
        self._stop_helpers()
        for dev in (self.if_ra, self.if_rb):
            if "root" in sh(["tc", "-n", self.ns_r, "qdisc", "show", "dev", dev, "root"], check=False).stdout:
                sh(["tc", "-n", self.ns_r, "qdisc", "del", "dev", dev, "root"], check=False)
        self.impairments = {}

    def _apply(self, d, o):
        inn, out, qnum = DIRECTIONS[d]
        if "rate" in o:
            bps, l2mtu = rate_bps(o["rate"]), self.mtu + 14
            burst = int(o.get("burst") or max(l2mtu, bps // 8000))
            limit = int(o.get("buffer") or max(2 * l2mtu, bps // 160))
            sh(["tc", "-n", self.ns_r, "qdisc", "replace", "dev", out, "root", "tbf",
                "rate", "%dbit" % bps, "burst", str(burst), "limit", str(limit)])
        match = ["-A", "FORWARD", "-i", inn, "-o", out]
        rules = []
        if float(o.get("loss", 0)) > 0:
            p = "%.8f" % (float(o["loss"]) / 100)
            rules.append(match + ["-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP"])
        if o.get("loss_every"):
            rules.append(match + ["-m", "statistic", "--mode", "nth", "--every", str(int(o["loss_every"])),
                                  "--packet", "0", "-j", "DROP"])
        if o.get("delay") or o.get("jitter"):
            self._start_helper(d, qnum, float(o.get("delay", 0)), float(o.get("jitter", 0)))
            rules.append(match + ["-j", "NFQUEUE", "--queue-num", str(qnum)])
        for rule in rules:
            for ipt in ("iptables", "ip6tables"):
                self.run("r", [ipt, "-w"] + rule)

    def _start_helper(self, d, qnum, delay, jitter):
        """Start nfqdelay in R and wait for its READY line (the queue is
        bound), so the NFQUEUE rule never sends packets to nobody."""
        p = subprocess.Popen(self.argv("r", [
            sys.executable, NFQDELAY, "--queue", qnum, "--delay", delay, "--jitter", jitter,
            "--lifetime", self.helper_lifetime, "--tag", self.name]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._helpers[d] = p
        line = ""
        if select.select([p.stdout], [], [], 10)[0]:
            line = p.stdout.readline()
        if not line.startswith("READY"):
            self._stop_helpers()
            raise LabError("%s: nfqdelay (%s) did not start: %s %s" % (
                self.name, d, line.strip(), self.helper_stats.get(d, "")))

    def _stop_helpers(self):
        """SIGTERM the helpers and keep their stats line (or their stderr)."""
        for d, p in list(self._helpers.items()):
            if p.poll() is None:
                p.terminate()
            try:
                out, err = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            self.helper_stats[d] = (out.strip().splitlines() or [""])[-1] or err.strip()
            del self._helpers[d]

    # -- counters ----------------------------------------------------------
    def nstat(self, host, counter):
        """A kernel SNMP counter of host's namespace, absolute (nstat's name: TcpRetransSegs ...)."""
        return json.loads(self.run(host, ["nstat", "-az", "--json", counter]).stdout)["kernel"][counter]

    def drops(self, direction, family=None):
        """Packets dropped so far by the loss rules of direction "ab"/"ba"
        (IPv4 + IPv6, or only family 4 or 6)."""
        inn, out, _ = DIRECTIONS[direction]
        total = 0
        for fam, ipt in ((4, "iptables"), (6, "ip6tables")):
            if family in (None, fam):
                lines = self.run("r", [ipt, "-w", "-L", "FORWARD", "-v", "-n", "-x"]).stdout.splitlines()
                head = lines[1].split()
                for f in (line.split() for line in lines[2:]):
                    if len(f) >= len(head) and f[head.index("target")] == "DROP" \
                            and (f[head.index("in")], f[head.index("out")]) == (inn, out):
                        total += int(f[head.index("pkts")])
        return total

    def qdisc_stats(self, direction):
        """tc's JSON stats of R's root qdisc for direction (kind, bytes,
        packets, drops, overlimits, backlog, qlen ...)."""
        out = DIRECTIONS[direction][1]
        for q in json.loads(sh(["tc", "-n", self.ns_r, "-s", "-j", "qdisc", "show", "dev", out]).stdout):
            if q.get("root"):
                return q
        raise LabError("%s: no root qdisc on %s" % (self.name, out))
