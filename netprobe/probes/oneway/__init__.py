"""`oneway`: one-way delay, loss, reordering and duplicates per ECMP source port to a netprobe peer."""
from netprobe.probes.oneway.config import Config
from netprobe.probes.oneway.runner import Runner

SUMMARY = "one-way delay, loss, reorder and dup per ECMP source port to a netprobe peer (UDPing, protocol v2)"
EXAMPLE = "netprobe probe oneway --peer 192.0.2.10 --ecmp-width 16 --gap 1ms --interval 5s --duration 30s"

__all__ = ["Config", "Runner", "SUMMARY", "EXAMPLE"]
