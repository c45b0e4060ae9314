"""`capacity`: bottleneck capacity of the path from a netprobe peer, from packet pairs and trains."""
from netprobe.probes.capacity.config import Config
from netprobe.probes.capacity.runner import Runner

SUMMARY = "bottleneck capacity from packet pairs and trains sent by a netprobe peer (pathrate, loco)"
EXAMPLE = "netprobe probe capacity --peer 192.0.2.10 --mode quick"

__all__ = ["Config", "Runner", "SUMMARY", "EXAMPLE"]
