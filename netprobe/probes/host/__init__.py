"""Probe kind `host`: measure the measurer.

How late this host wakes a periodic timer (timerfd), whether the kernel
clock is synchronised and how large its error bound is, and how much CPU the
hypervisor steals. Every other probe's accuracy rests on these.
"""
from netprobe.probes.host.config import Config
from netprobe.probes.host.runner import Runner

SUMMARY = "measure the measurer: timer wake-up lateness, clock sync, CPU steal"
EXAMPLE = "netprobe probe host --interval 1s --duration 10s"

__all__ = ["SUMMARY", "EXAMPLE", "Config", "Runner"]
