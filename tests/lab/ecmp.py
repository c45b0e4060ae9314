"""Equal-cost multipath lab for the path-tracing tests (root only).

    A -- J0 =={ M1.0 | M1.1 | ...}== J1 [=={ M2.0 | M2.1 }== J2] -- B

`stages` rows of `width` parallel member routers between junction routers
J0 .. Jn; every junction holds an equal-cost route over the next (or
previous) row, and every router hashes flows on the 5-tuple, so each UDP
source port keeps to one member per stage.  The hash is policy 3 with the
fields src/dst address, protocol, src/dst port (0x37), IPv4 and IPv6: the
5-tuple hash of policy 1 takes skb->hash when the packet has an L4 hash,
and veth keeps the sending socket's random txhash, so with policy 1 a
connected socket's flow would follow that socket's random number instead of
its 5-tuple (measured: 17 of 32 ports moved), unlike behind a real wire.
Routers send ICMP errors without rate limit unless
told to answer only every other one.

Addresses (benchmarking ranges only, as tests/lab/netlab.py; its host guard
routes are shared):
  A 198.18.1.2 / 2001:2:0:1::2 (J0 .1), B 198.18.2.2 / 2001:2:0:2::2 (Jn .1),
  member k of stage s: 198.18.(100+10s+k).2 on its A side (the address its
  ICMP time-exceeded comes from), 198.18.(150+10s+k).2 on its B side;
  2001:2:0:1sk::2 and 2001:2:0:5sk::2 likewise.

Impairments (A -> B direction, the way probes go): loss = iptables
statistic DROP in FORWARD, delay = the nfqdelay NFQUEUE helper, icmp_every=2
= drop every other ICMP error the router sends (OUTPUT chain).  The
TTL-expired answer is made before FORWARD, so a lossy member still answers
traces.  down() removes every namespace, rule and helper, also of a
half-built lab.
"""
import os
import re
import select
import shutil
import subprocess
import sys

from tests.lab import netlab
from tests.lab.netlab import LabError, sh

PREFIX = "labe"
_NAME_RE = re.compile(r"labe([0-9a-z]{1,5})[0-9a-z]")


class Node:
    """One namespace of the lab: name ("a", "j0", "m1.0" ...), netns, addresses."""

    def __init__(self, lab, name):
        self.name = name
        self.ns = "%s-%s" % (lab.name, name.replace(".", "_"))
        self.addr4 = None       # the address its ICMP errors towards A come from
        self.addr6 = None

    def __repr__(self):
        return "Node(%s %s)" % (self.name, self.addr4)


class EcmpLab:
    """A - J0 - (stages x width members) - Jn - B.  `up()` builds, `down()` removes."""

    a4, b4, a6, b6 = "198.18.1.2", "198.18.2.2", "2001:2:0:1::2", "2001:2:0:2::2"

    def __init__(self, stages=1, width=2, name=None, helper_lifetime=900.0):
        if not 1 <= stages <= 3 or not 2 <= width <= 8:
            raise ValueError("stages 1..3, width 2..8")
        self.name = name or _new_name()
        if not re.fullmatch(r"labe[0-9a-z]{1,7}", self.name):
            raise ValueError("ecmp lab name must be 'labe' + up to 7 [0-9a-z]: %r" % self.name)
        self.stages, self.width = stages, width
        self.helper_lifetime = helper_lifetime
        self.a, self.b = Node(self, "a"), Node(self, "b")
        self.junctions = [Node(self, "j%d" % i) for i in range(stages + 1)]
        self.members = [[Node(self, "m%d.%d" % (s, k)) for k in range(width)] for s in range(1, stages + 1)]
        self._helpers = []
        self._guard = False

    def nodes(self):
        return [self.a, self.b, *self.junctions, *(m for row in self.members for m in row)]

    def routers(self):
        return [*self.junctions, *(m for row in self.members for m in row)]

    def node(self, name):
        return next(n for n in self.nodes() if n.name == name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()

    # -- commands -----------------------------------------------------------
    def argv(self, node, argv):
        node = node if isinstance(node, Node) else self.node(node)
        return ["ip", "netns", "exec", node.ns] + [str(a) for a in argv]

    def run(self, node, argv, check=True, timeout=30, **kw):
        return sh(self.argv(node, argv), check=check, timeout=timeout, **kw)

    def popen(self, node, argv, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        p = subprocess.Popen(self.argv(node, argv), **kw)
        self._helpers.append(p)
        return p

    # -- build ----------------------------------------------------------------
    def up(self):
        netlab.require("ip", "iptables", "ip6tables", "ping")
        self.down()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _link(self, n1, if1, a1, n2, if2, a2, net4, net6):
        sh(["ip", "link", "add", if1, "netns", n1.ns, "type", "veth", "peer", "name", if2, "netns", n2.ns])
        for n, dev, host in ((n1, if1, a1), (n2, if2, a2)):
            sh(["ip", "-n", n.ns, "link", "set", "dev", dev, "up"])
            sh(["ip", "-n", n.ns, "addr", "add", "%s.%d/24" % (net4, host), "dev", dev])
            sh(["ip", "-n", n.ns, "-6", "addr", "add", "%s::%d/64" % (net6, host), "dev", dev, "nodad"])

    def _build(self):
        for i, n in enumerate(self.nodes()):
            sh(["ip", "netns", "add", n.ns])
            sh(["ip", "-n", n.ns, "link", "set", "lo", "up"])
            sysctls = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
            if n not in (self.a, self.b):
                sysctls += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                            "net.ipv4.fib_multipath_hash_policy=3", "net.ipv6.fib_multipath_hash_policy=3",
                            "net.ipv4.fib_multipath_hash_fields=0x37", "net.ipv6.fib_multipath_hash_fields=0x37",
                            "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0",
                            "net.ipv4.icmp_msgs_per_sec=100000", "net.ipv4.icmp_msgs_burst=100000",
                            # its own hash seed (IPv4 and IPv6), as real routers have: with one seed
                            # J1 would pick member k of row 2 for exactly the flows J0 sent to member k
                            "net.ipv4.fib_multipath_hash_seed=%d" % (1000 + i)]
            sh(["ip", "netns", "exec", n.ns, "sysctl", "-qw", *sysctls])
        j0, jn = self.junctions[0], self.junctions[-1]
        self._link(self.a, "e0", 2, j0, "ea", 1, "198.18.1", "2001:2:0:1")
        self._link(self.b, "e0", 2, jn, "eb", 1, "198.18.2", "2001:2:0:2")
        self.a.addr4, self.a.addr6, self.b.addr4, self.b.addr6 = self.a4, self.a6, self.b4, self.b6
        for s, row in enumerate(self.members, 1):
            left, right = self.junctions[s - 1], self.junctions[s]
            for k, m in enumerate(row):
                ln, rn = 100 + 10 * s + k, 150 + 10 * s + k
                self._link(left, "m%d" % k, 1, m, "l", 2, "198.18.%d" % ln, "2001:2:0:%d" % ln)
                self._link(m, "r", 2, right, "p%d" % k, 1, "198.18.%d" % rn, "2001:2:0:%d" % rn)
                m.addr4, m.addr6 = "198.18.%d.2" % ln, "2001:2:0:%d::2" % ln
                # routes: A's side through the left junction, B's side through the right
                for fam, gw_l, gw_r, a_net, b_net in self._nets(ln, rn):
                    sh(["ip", "-n", m.ns, fam, "route", "add", a_net, "via", gw_l])
                    sh(["ip", "-n", m.ns, fam, "route", "add", b_net, "via", gw_r])
        for fam, gw, dst in (("-4", "198.18.1.1", "default"), ("-6", "2001:2:0:1::1", "default")):
            sh(["ip", "-n", self.a.ns, fam, "route", "add", dst, "via", gw])
        for fam, gw, dst in (("-4", "198.18.2.1", "default"), ("-6", "2001:2:0:2::1", "default")):
            sh(["ip", "-n", self.b.ns, fam, "route", "add", dst, "via", gw])
        for s in range(self.stages + 1):
            j = self.junctions[s]
            if s < self.stages:        # towards B over row s+1
                self._multipath(j, "198.18.2.0/24", "2001:2:0:2::/64",
                                [(100 + 10 * (s + 1) + k) for k in range(self.width)], False)
            if s > 0:                  # towards A over row s
                self._multipath(j, "198.18.1.0/24", "2001:2:0:1::/64",
                                [(150 + 10 * s + k) for k in range(self.width)], True)
        self._fix_junction_addresses()
        self._guard_and_check()

    def _guard_and_check(self):
        """The host's guard routes on (so lab traffic never leaves), then A must reach B over IPv4 and IPv6."""
        self._guard = True
        for fam, pfx in netlab.GUARDS:
            sh(["ip", fam, "route", "replace", "unreachable", pfx])
        for dst in (self.b4, self.b6):
            if self.run(self.a, ["ping", "-c1", "-W2", "-q", dst], check=False).returncode:
                raise LabError("%s: ping A -> %s failed" % (self.name, dst))

    @staticmethod
    def _nets(ln, rn):
        return (("-4", "198.18.%d.1" % ln, "198.18.%d.1" % rn, "198.18.1.0/24", "198.18.2.0/24"),
                ("-6", "2001:2:0:%d::1" % ln, "2001:2:0:%d::1" % rn, "2001:2:0:1::/64", "2001:2:0:2::/64"))

    def _multipath(self, j, net4, net6, nets, src):
        """Equal-cost routes from junction j over the links `nets` (the far end is .2);
        with `src`, the route back to A says which address the junction's ICMP errors
        come from (its first link's), so every port sees the same hop address."""
        for fam, dst, gws, pref in (
                ("-4", net4, ["198.18.%d.2" % n for n in nets], "198.18.%d.1" % nets[0]),
                ("-6", net6, ["2001:2:0:%d::2" % n for n in nets], "2001:2:0:%d::1" % nets[0])):
            hops = []
            for gw in gws:
                hops += ["nexthop", "via", gw]
            sh(["ip", "-n", j.ns, fam, "route", "add", dst] + (["src", pref] if src else []) + hops)

    def _fix_junction_addresses(self):
        """The address each junction's time-exceeded to A comes from: the source the
        kernel picks for a packet to A (asked with `ip route get`, not guessed)."""
        for j in self.junctions:
            for fam, dst, attr in (("-4", self.a4, "addr4"), ("-6", self.a6, "addr6")):
                out = sh(["ip", "-n", j.ns, fam, "route", "get", dst]).stdout
                m = re.search(r"\bsrc (\S+)", out)
                if not m:
                    raise LabError("%s: no source address for %s in %s" % (self.name, dst, j.name))
                setattr(j, attr, m.group(1))

    # -- ground truth -------------------------------------------------------
    def flow_members(self, ports, dport, family=4, count=3, send=None):
        """{port: [member Node per stage]}: which member each flow A:port -> B:dport is
        forwarded by, from per-port iptables counters in every member.  send() must get
        at least `count` datagrams of each flow through (default: fresh sockets in A)."""
        ipt = "iptables" if family == 4 else "ip6tables"
        members = [m for row in self.members for m in row]
        for m in members:
            rules = "*filter\n:NPCOUNT - [0:0]\n-I FORWARD 1 -i l -j NPCOUNT\n" + "".join(
                "-A NPCOUNT -p udp --sport %d --dport %d\n" % (p, dport) for p in ports) + "COMMIT\n"
            self.run(m, [ipt + "-restore", "-w", "--noflush"], input=rules)
        try:
            if send is None:
                self._send_unconnected(ports, dport, family, count)
            else:
                send()
            seen = {p: [] for p in ports}
            for m in members:
                for line in self.run(m, [ipt, "-w", "-L", "NPCOUNT", "-v", "-n", "-x"]).stdout.splitlines()[2:]:
                    sport = int(re.search(r"spt:(\d+)", line).group(1))
                    if int(line.split()[0]) >= count:
                        seen[sport].append(m)
        finally:
            for m in members:
                self.run(m, [ipt, "-w", "-D", "FORWARD", "-i", "l", "-j", "NPCOUNT"], check=False)
                self.run(m, [ipt, "-w", "-F", "NPCOUNT"], check=False)
                self.run(m, [ipt, "-w", "-X", "NPCOUNT"], check=False)
        for p, got in seen.items():
            if len(got) != self.stages:
                raise LabError("%s: port %d crossed %s, not one member per stage" % (self.name, p, got))
        return seen

    def _send_unconnected(self, ports, dport, family, count):
        dst = self.b4 if family == 4 else self.b6
        send = ("import socket,sys\nfor p in map(int, sys.argv[3:]):\n"
                " s=socket.socket(socket.AF_INET%s,socket.SOCK_DGRAM); s.bind(('',p))\n"
                " [s.sendto(b'count', (sys.argv[1], int(sys.argv[2]))) for _ in range(%d)]; s.close()"
                % ("" if family == 4 else "6", count))
        self.run(self.a, [sys.executable, "-c", send, dst, dport, *ports])

    def expected_hops(self, members, family=4):
        """The hop addresses a trace through these members (one per stage) must report."""
        attr = "addr4" if family == 4 else "addr6"
        hops = [self.junctions[0]]
        for s, m in enumerate(members, 1):
            hops += [m, self.junctions[s]]
        return [getattr(n, attr) for n in hops]

    # -- impairments (A -> B) ---------------------------------------------------
    def _in_dev(self, node):
        if node in self.junctions:
            return "ea" if node is self.junctions[0] else None
        return "l"

    def impair(self, node, loss=0.0, delay_ms=0.0, icmp_every=0, qnum=0):
        """Impair `node` (a Node or name) for traffic towards B: loss percent, delay ms,
        icmp_every=N: send only ... of its ICMP errors (drop every Nth, N=2 halves them)."""
        node = node if isinstance(node, Node) else self.node(node)
        match = ["-A", "FORWARD"] + (["-o", "eb"] if node in self.junctions[-1:] else [])
        dev = self._in_dev(node)
        if dev:
            match += ["-i", dev]
        rules = []
        if loss:
            if not 0 < loss <= 100:
                raise ValueError("loss is a percentage")
            rules.append((None, match + ["-m", "statistic", "--mode", "random", "--probability",
                                         "%.6f" % (loss / 100), "-j", "DROP"]))
        if delay_ms:
            self._start_delay(node, qnum, delay_ms)
            rules.append((None, match + ["-j", "NFQUEUE", "--queue-num", str(qnum)]))
        if icmp_every:
            if icmp_every < 2:
                raise ValueError("icmp_every needs N >= 2")
            nth = ["-m", "statistic", "--mode", "nth", "--every", str(icmp_every), "--packet", "0", "-j", "DROP"]
            rules.append(("iptables", ["-A", "OUTPUT", "-p", "icmp", "--icmp-type", "time-exceeded"] + nth))
            rules.append(("ip6tables", ["-A", "OUTPUT", "-p", "ipv6-icmp", "--icmpv6-type", "time-exceeded"] + nth))
        for only, rule in rules:
            for ipt in ([only] if only else ["iptables", "ip6tables"]):
                self.run(node, [ipt, "-w"] + rule)

    def drops(self, node):
        """Packets the FORWARD DROP rules of `node` dropped (IPv4 + IPv6), from iptables' counters."""
        node = node if isinstance(node, Node) else self.node(node)
        total = 0
        for ipt in ("iptables", "ip6tables"):
            for line in self.run(node, [ipt, "-w", "-L", "FORWARD", "-v", "-n", "-x"]).stdout.splitlines()[2:]:
                f = line.split()
                if len(f) > 2 and f[2] == "DROP":
                    total += int(f[0])
        return total

    def clear(self):
        """Remove every impairment of every router."""
        for n in self.routers():
            for ipt in ("iptables", "ip6tables"):
                for chain in ("FORWARD", "OUTPUT"):
                    self.run(n, [ipt, "-w", "-F", chain], check=False)
        self._stop_helpers()

    def _start_delay(self, node, qnum, delay_ms):
        p = self.popen(node, [sys.executable, netlab.NFQDELAY, "--queue", qnum, "--delay", delay_ms,
                              "--jitter", 0, "--lifetime", self.helper_lifetime, "--tag", self.name],
                       stdin=subprocess.DEVNULL)
        line = p.stdout.readline() if select.select([p.stdout], [], [], 10)[0] else ""
        if not line.startswith("READY"):
            raise LabError("%s: nfqdelay in %s did not start: %s" % (self.name, node.name, line.strip()))

    def _stop_helpers(self):
        for p in self._helpers:
            if p.poll() is None:
                p.terminate()
        for p in self._helpers:
            try:
                p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        self._helpers = []

    # -- tear down ------------------------------------------------------------
    def down(self):
        """Remove helpers, every namespace of this lab (killing what runs there) and,
        when no lab is left, the guard routes."""
        self._stop_helpers()
        present = set(netlab.namespaces())
        ours = [n.ns for n in self.nodes() if n.ns in present]
        pids = [int(x) for ns in ours for x in sh(["ip", "netns", "pids", ns], check=False).stdout.split()]
        netlab._kill_pids(pids)
        for ns in ours:
            sh(["ip", "netns", "del", ns], check=False)
        if self._guard:
            self._guard = False
            netlab._remove_guards_if_unused()
        left = set(ours) & set(netlab.namespaces())
        if left:
            raise LabError("%s: could not delete namespaces %s" % (self.name, sorted(left)))


def _new_name():
    pid, digits = os.getpid(), ""
    while True:
        pid, r = divmod(pid, 36)
        digits = netlab._B36[r] + digits
        if not pid:
            break
    taken = {ns.split("-")[0] for ns in netlab.namespaces() if ns.startswith(PREFIX)}
    for _ in range(36):
        name = "%s%s%s" % (PREFIX, digits, netlab._B36[next(netlab._seq) % 36])
        if name not in taken:
            return name
    raise LabError("no free ecmp lab name")


def cleanup_stale(mine=False):
    """Remove ecmp labs whose owner process is gone (or, with mine, this process's own)."""
    if shutil.which("ip") is None:
        return []
    names = sorted({ns.split("-")[0] for ns in netlab.namespaces() if ns.startswith(PREFIX)})
    stale = []
    for name in names:
        m = _NAME_RE.fullmatch(name)
        pid = int(m.group(1), 36) if m else None
        if pid is None or not os.path.exists("/proc/%d" % pid) or (mine and pid == os.getpid()):
            for ns in [ns for ns in netlab.namespaces() if ns.split("-")[0] == name]:
                pids = [int(x) for x in sh(["ip", "netns", "pids", ns], check=False).stdout.split()]
                netlab._kill_pids(pids)
                sh(["ip", "netns", "del", ns], check=False)
            stale.append(name)
    netlab._kill_pids([pid for pid, tag in netlab.helper_pids(PREFIX).items()
                       if (m := _NAME_RE.fullmatch(tag)) is None or not os.path.exists("/proc/%d" % int(m.group(1), 36))
                       or (mine and int(m.group(1), 36) == os.getpid())])
    netlab._remove_guards_if_unused()
    return stale
