"""Settings of the `host` probe: how well can this host measure at all?"""
import math
from dataclasses import dataclass

from netprobe.config.schema import BOOL, DURATION, FLOAT, setting
from netprobe.probes.base import ProbeConfig
from netprobe.units import format_duration

# Lateness samples held per interval (8 bytes each): bounds the probe's memory.
MAX_SAMPLES = 1_000_000


@dataclass(frozen=True)
class Config(ProbeConfig):
    """The [[probe]] table with kind = "host"."""
    timer_interval: float = setting(
        DURATION, 0.001, "period of the timerfd whose wake-up lateness is measured (s)",
        min=50e-6, max=1.0)
    max_timer_p99: float = setting(
        DURATION, 0.002, "BREACH metric=timer_p99 when the p99 wake-up lateness exceeds this "
        "(s)", min=0.0, max=10.0)
    require_clock_sync: bool = setting(
        BOOL, True, "BREACH metric=clock_sync when the kernel clock is not synchronised "
        "(adjtimex); false also turns off the clock_error check")
    max_clock_error: float = setting(
        DURATION, 0.1, "BREACH metric=clock_error when the kernel's maximum clock error "
        "(adjtimex maxerror) exceeds this (s)", min=0.0, max=86400)
    max_steal: float = setting(
        FLOAT, 10.0, "BREACH metric=steal when CPU time stolen by the hypervisor exceeds this "
        "(percent)", min=0.0, max=100.0)

    @property
    def samples_per_interval(self):
        """Timer wake-ups in one full interval, plus one for the partial slot."""
        return math.ceil(self.interval / self.timer_interval) + 1

    def check(self, where):
        super().check(where)
        if self.samples_per_interval > MAX_SAMPLES:
            raise where.error(
                "timer_interval",
                f"{format_duration(self.timer_interval)} gives {self.samples_per_interval} samples "
                f"per {format_duration(self.interval)} interval; at most {MAX_SAMPLES} "
                f"(raise timer_interval or shorten interval)")
