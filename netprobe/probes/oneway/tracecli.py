"""`netprobe probe trace`: one Paris-style trace per source port, once.

    netprobe probe trace --peer 192.0.2.10 --ports 5000-5031 --dst-port 7000 [--json]

One RESULT line per source port (scope=path, its hop list, * for a hop that
did not answer), the same hops the oneway probe's trace = true reports.
The destination port should be open (a netprobe peer's oneway port) or
closed: either way the path ends at the peer.
"""
import socket

from netprobe.errors import EXIT_OK, ProbeError, UsageError
from netprobe.probes.oneway import pathwatch, trace
from netprobe.probes.oneway.config import parse_ports
from netprobe.results import RESULT, Record


def add_arguments(p):
    p.add_argument("--peer", required=True, metavar="HOST", help="address or name of the far end")
    p.add_argument("--ports", required=True, metavar="PORTS",
                   help='source ports, e.g. "5000-5031" or "5000,5005" (1024-60000)')
    p.add_argument("--dst-port", required=True, type=int, metavar="PORT", help="destination UDP port (1-65535)")
    p.add_argument("--max-hops", type=int, default=16, metavar="N", help="highest TTL tried (1-64, default 16)")
    p.add_argument("--rate", type=float, default=20.0, metavar="PPS",
                   help="trace packets per second at most (1-1000, default 20)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="tries again for a silent hop (0-5, default 2)")
    p.add_argument("--local", default="", metavar="ADDR", help="local address to send from")
    p.add_argument("--name", default="trace", help="name= on every line (default trace)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of key=value text")


def run(args):
    try:
        ports = parse_ports(args.ports)
    except ValueError as exc:
        raise UsageError(f"--ports: {exc}") from None
    for opt, v, lo, hi in (("--dst-port", args.dst_port, 1, 65535), ("--max-hops", args.max_hops, 1, 64),
                           ("--rate", args.rate, 1, 1000), ("--retries", args.retries, 0, 5)):
        if not lo <= v <= hi:
            raise UsageError(f"{opt} must be {lo} to {hi} (got {v})")
    try:
        dst = socket.getaddrinfo(args.peer, args.dst_port, type=socket.SOCK_DGRAM)[0][4][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--peer {args.peer!r}: {exc}") from None
    try:
        got = trace.trace(dst, args.dst_port, ports, local=args.local or None, max_hops=args.max_hops,
                          rate=args.rate, retries=args.retries)
    except OSError as exc:
        raise ProbeError(f"cannot trace from {args.local or 'this host'} to {dst}: {exc.strerror or exc}") from None
    for port in ports:
        path = got[port]
        rec = Record(RESULT, "trace", args.name, {"scope": "path", "peer": dst, "dst_port": args.dst_port,
                                                  "port": port, "hops": pathwatch.hop_list(path.hops),
                                                  "hop_count": len(path.hops), "reached": path.reached,
                                                  "sent": path.sent})
        print(rec.to_json() if args.json else rec.to_text(), flush=True)
    return EXIT_OK
