"""Daemon-wide settings and their defaults (the [daemon] table).

Probe and sink defaults live beside their code, in each config dataclass,
with a doc per field; `netprobe probe KIND --help` lists them.
"""
from dataclasses import dataclass

from netprobe.config.schema import CHOICE, DURATION, INT, setting

DEFAULT_OUTPUTS = {"stdout": {}}          # when the file has no [output.*] table


@dataclass(frozen=True)
class DaemonConfig:
    """The [daemon] table."""
    log_level: str = setting(CHOICE, "info", "diagnostic log level",
                             choices=("debug", "info", "warning", "error"))
    restart_backoff: float = setting(DURATION, 1.0, "first delay before restarting a failed probe (s)",
                                     min=0.01, max=3600)
    restart_backoff_max: float = setting(DURATION, 60.0, "longest delay between restarts (s); "
                                         "the delay doubles per failure up to this", min=0.01, max=86400)
    stop_timeout: float = setting(DURATION, 10.0, "time a probe gets to write its final results at "
                                  "shutdown before it is killed (s)", min=0.1, max=600)
    drops_interval: float = setting(DURATION, 60.0, "how often dropped-record counts of slow sinks "
                                    "are reported (s)", min=1, max=86400)
    max_probes: int = setting(INT, 64, "most [[probe]] tables one file may hold", min=1, max=4096)
    stale_grace: float = setting(DURATION, 5.0, "slack before a late interval counts as missing (s): a probe "
                                 "is stale (BREACH metric=stale) when no interval arrived within its interval "
                                 "plus the larger of its interval and this", min=0.1, max=3600)
    watchdog_stale_limit: float = setting(DURATION, 0.0, "under systemd, stop feeding the watchdog (so systemd "
                                          "restarts the daemon) once a probe has been stale this long (s); 0: "
                                          "never (a probe whose peer is down is stale too, and a restart does "
                                          "not bring the peer back)", min=0, max=86400)

    def check(self, where):
        if self.restart_backoff > self.restart_backoff_max:
            raise where.error("restart_backoff", "must not exceed restart_backoff_max")
