"""Probe kind `retrans`: which direction of which flow is losing packets.

Live (this kind): outgoing retransmits, SYN-ACK retransmits and resets from
the kernel's tcp tracepoints through the probe's own tracefs instance.
Offline: `netprobe pcap FILE...` (pcapfile.py over the compiled analyser in
pyx/pcapread.pyx) for both directions from capture files, also as a tcpdump
post-rotate hook (`netprobe-pcap`) and a directory watcher.
"""
from netprobe.probes.retrans.config import Config
from netprobe.probes.retrans.runner import Runner

SUMMARY = "TCP retransmits per direction and flow: outgoing from tracepoints, incoming from a header capture"
EXAMPLE = "netprobe probe retrans --ports 443,5201 --interval 10s --max-retrans 100"

__all__ = ["SUMMARY", "EXAMPLE", "Config", "Runner"]
