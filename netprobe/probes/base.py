"""What every probe kind shares: common settings and the runner base class."""
import abc
import math
import re
import threading
from dataclasses import dataclass
from typing import ClassVar

from netprobe.config.schema import DURATION, INT, STR, setting
from netprobe.results import RESULT, Hysteresis, Record, event

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class ProbeConfig:
    """Settings common to every probe kind (the [[probe]] table, besides `kind`)."""
    # a RESULT every `interval`: the supervisor reports the probe stale when one is missing
    periodic: ClassVar[bool] = True
    name: str = setting(STR, "", "instance name, unique in the file; printed as name= on every line",
                        required=True)
    interval: float = setting(DURATION, 10.0, "time between interval results (s)", min=0.1, max=86400)
    breach_after: int = setting(INT, 3, "bad intervals in a row before a BREACH line", min=1, max=1000)
    clear_after: int = setting(INT, 3, "good intervals in a row before a CLEAR line", min=1, max=1000)

    def check(self, where):
        """Cross-field validation; subclasses extend. Raise where.error(key, msg)."""
        if not NAME_RE.fullmatch(self.name):
            raise where.error("name", f'"{self.name}" is not a name: use letters, digits, ".", "_" and "-" '
                                      "(it is printed as name=... on every line)")


def next_deadline(deadline, interval, now):
    """The first of deadline + k * interval (k >= 1) after `now`. A periodic probe keeps its
    interval ends on one grid: after a late one the next comes early, so two RESULTs never
    leave a stretch between them that neither covers; a stall skips whole slots (the stale
    check and its GAP say so) and never shifts the phase."""
    return deadline + interval * max(1, math.floor((now - deadline) / interval) + 1)


class ProbeRunner(abc.ABC):
    """Base of every probe's runner.py Runner.

    The worker process builds Runner(cfg, emit) and calls run(stop) on it;
    run() returns when `stop` (a threading.Event) is set, after emitting the
    final partial interval. Records go out through `emit(Record)`.
    Raise ProbeError for a condition the user must fix (one line, no traceback).
    """

    kind = "probe"

    def __init__(self, cfg, emit):
        self.cfg = cfg
        self.emit = emit
        self.hysteresis = Hysteresis(cfg.breach_after, cfg.clear_after)

    @abc.abstractmethod
    def run(self, stop: threading.Event):
        """Measure until `stop` is set, then emit the final interval and return."""

    def result(self, fields, ts=None):
        rec = Record(RESULT, self.kind, self.cfg.name, fields) if ts is None else \
            Record(RESULT, self.kind, self.cfg.name, fields, ts)
        self.emit(rec)

    def judge(self, key, bad, *, metric, value, op, threshold, window=None, **extra):
        """Feed one interval's SLA verdict for `key`; emits BREACH/CLEAR on a transition."""
        kind = self.hysteresis.update(key, bad)
        if kind is not None:
            self.emit(event(kind, self.kind, self.cfg.name, metric=metric, value=value, op=op,
                            threshold=threshold, window=window, **extra))
        return kind


__all__ = ["ProbeConfig", "ProbeRunner"]
