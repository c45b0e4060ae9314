"""`flows`: the congestion state of every matching TCP socket on this host, via inet_diag (cgmon)."""
from netprobe.probes.flows.config import Config
from netprobe.probes.flows.runner import Runner

SUMMARY = "congestion state of every matching TCP socket (inet_diag): per-flow summaries, per-group SLAs"
EXAMPLE = "netprobe probe flows --sport 80,443 --dport 2000-3000 --interval 100ms --duration 10s"

__all__ = ["Config", "Runner", "SUMMARY", "EXAMPLE"]
