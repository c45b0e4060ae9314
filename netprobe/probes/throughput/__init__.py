"""`throughput`: constant-rate TCP both ways against a netprobe peer, judged against an SLA."""
from netprobe.probes.throughput.config import Config
from netprobe.probes.throughput.runner import Runner

SUMMARY = "constant-rate TCP both ways to a netprobe peer, TCP_INFO windows, SLA verdicts"
EXAMPLE = "netprobe probe throughput --peer 192.0.2.10 --rate 1G --rate-down 500M --max-rtt 30ms --duration 30s"

__all__ = ["Config", "Runner", "SUMMARY", "EXAMPLE"]
