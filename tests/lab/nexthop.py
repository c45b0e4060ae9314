"""Next-hop lab for raw mode (root only): A picks the router by MAC, not by route.

    A --+-- sw (bridge) --+-- M1.0 -- B
                          +-- M1.1 -- B

A, M1.0 and M1.1 share one Ethernet segment (a bridge in namespace sw):
A 198.18.1.2 / 2001:2:0:1::2, member k 198.18.1.(10+k) / 2001:2:0:1::(10+k)
on its interface "l" (the address its ICMP time-exceeded comes from);
member k reaches B's service address 198.18.2.2 / 2001:2:0:2::2 (on B's
loopback) over its own link 198.18.(160+k).0/24 / 2001:2:0:16k::/64.  A's
route to B goes through M1.0 (the control connection takes it); frames sent
to member k's MAC cross member k.  B answers over M1.0, its reverse-path
filter off.

Built on EcmpLab: the same names (so its stale-lab cleanup covers this
one), commands, impairments (loss on a member is an iptables statistic DROP
in its FORWARD chain, in from "l"), counters and down().
"""
from tests.lab import ecmp
from tests.lab.netlab import sh


class NextHopLab(ecmp.EcmpLab):
    def __init__(self, width=2, name=None):
        super().__init__(stages=1, width=width, name=name)
        self.junctions = []
        self.sw = ecmp.Node(self, "sw")

    def nodes(self):
        return [self.a, self.b, self.sw, *self.members[0]]

    def mac(self, member):
        """The MAC of member's interface on A's segment (what A addresses frames to)."""
        return self.run(member, ["cat", "/sys/class/net/l/address"]).stdout.strip()

    def _build(self):
        for n in self.nodes():
            sh(["ip", "netns", "add", n.ns])
            sh(["ip", "-n", n.ns, "link", "set", "lo", "up"])
            sh(["ip", "netns", "exec", n.ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0"])
        for m in self.members[0]:
            sh(["ip", "netns", "exec", m.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0",
                "net.ipv4.icmp_msgs_per_sec=100000", "net.ipv4.icmp_msgs_burst=100000",
                "net.ipv6.conf.all.forwarding=1", "net.ipv6.icmp.ratelimit=0"])
        sh(["ip", "netns", "exec", self.b.ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0"])
        sh(["ip", "-n", self.sw.ns, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.sw.ns, "link", "set", "br0", "up"])
        for n, dev, port, host in [(self.a, "e0", "pa", 2)] + [(m, "l", "p%d" % k, 10 + k)
                                                               for k, m in enumerate(self.members[0])]:
            sh(["ip", "link", "add", port, "netns", self.sw.ns, "type", "veth", "peer", "name", dev, "netns", n.ns])
            sh(["ip", "-n", self.sw.ns, "link", "set", port, "master", "br0", "up"])
            sh(["ip", "-n", n.ns, "link", "set", "dev", dev, "up"])
            sh(["ip", "-n", n.ns, "addr", "add", "198.18.1.%d/24" % host, "dev", dev])
            sh(["ip", "-n", n.ns, "-6", "addr", "add", "2001:2:0:1::%d/64" % host, "dev", dev, "nodad"])
            n.addr4, n.addr6 = "198.18.1.%d" % host, "2001:2:0:1::%d" % host
        sh(["ip", "-n", self.b.ns, "addr", "add", self.b4 + "/32", "dev", "lo"])
        sh(["ip", "-n", self.b.ns, "-6", "addr", "add", self.b6 + "/128", "dev", "lo"])
        self.b.addr4, self.b.addr6 = self.b4, self.b6
        for k, m in enumerate(self.members[0]):
            net, net6 = "198.18.%d" % (160 + k), "2001:2:0:%d" % (160 + k)
            sh(["ip", "link", "add", "r", "netns", m.ns, "type", "veth", "peer", "name", "e%d" % k, "netns", self.b.ns])
            for n, dev, host in ((m, "r", 1), (self.b, "e%d" % k, 2)):
                sh(["ip", "-n", n.ns, "link", "set", "dev", dev, "up"])
                sh(["ip", "-n", n.ns, "addr", "add", "%s.%d/24" % (net, host), "dev", dev])
                sh(["ip", "-n", n.ns, "-6", "addr", "add", "%s::%d/64" % (net6, host), "dev", dev, "nodad"])
            sh(["ip", "-n", m.ns, "route", "add", self.b4, "via", net + ".2"])
            sh(["ip", "-n", m.ns, "-6", "route", "add", self.b6, "via", net6 + "::2"])
        sh(["ip", "-n", self.a.ns, "route", "add", "198.18.2.0/24", "via", self.members[0][0].addr4])
        sh(["ip", "-n", self.a.ns, "-6", "route", "add", "2001:2:0:2::/64", "via", self.members[0][0].addr6])
        sh(["ip", "-n", self.b.ns, "route", "add", "default", "via", "198.18.160.1"])
        sh(["ip", "-n", self.b.ns, "-6", "route", "add", "default", "via", "2001:2:0:160::1"])
        self._guard_and_check()
