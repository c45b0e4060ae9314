"""The oneway probe's control connection (see PROTOCOL.md beside this file).

One TCP connection per session, opened with the peer handshake
(netprobe.peer.protocol: access list, optional shared-key challenge). After
"ok" both ends exchange JSON lines of at most MAX_LINE bytes; the probes
themselves travel as UDP datagrams in wire format v2 (pyx/includes/wire.pxd).
"""
from netprobe import sysinfo

MAX_LINE = 4 << 20           # a results line for 5000 ports with histograms stays far below
CLIENT_LINE = 4096           # the client's lines: {"close": I, "bye": true}
OPEN_INTERVALS = 4           # intervals the receiver keeps per port (NSLOTS): only these can hold data


def clock_state():
    """This host's clock as both ends report it: synced, maxerror_us (None if unknown)."""
    got, _ = sysinfo.clock_sync()
    if got is None:
        return {"synced": False, "maxerror_us": None}
    return {"synced": bool(got["synced"]), "maxerror_us": int(got["maxerror_us"])}
