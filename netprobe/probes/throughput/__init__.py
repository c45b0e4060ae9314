"""`throughput`: constant-rate TCP both ways against a netprobe peer, judged against an SLA."""
from netprobe.probes.throughput.config import Config
from netprobe.probes.throughput.runner import Runner

SUMMARY = "constant-rate TCP both ways to a netprobe peer, TCP_INFO windows, SLA verdicts"

__all__ = ["Config", "Runner", "SUMMARY"]
