"""When each probe's next interval is due, and what its absence means (sans-IO: explicit now).

The supervisor feeds every worker's lines, starts and exits in here. This module says:

- **stale**: a periodic probe's interval did not arrive within `interval + max(interval,
  grace)` of the previous one (or of its start plus `grace`): BREACH metric=stale, and
  CLEAR when results resume. It judges from the outside, by the clock, whatever the
  probe's own code believes.
- **frozen**: the worker wrote no line, not even the heartbeat its process writes every
  HEARTBEAT seconds, for as long as a stale interval would take (START_ALLOWANCE before
  its first line): it is stopped
  (SIGSTOP), wedged or holding the interpreter, so the supervisor kills it and the
  restart path takes over.
- **gaps**: a restart, a crash, a reload, a frozen worker or a stale stretch opens a gap at
  the end of the last measured interval; the first result after it closes the gap, and a
  GAP record with the reasons and the span says what was not measured. Gaps still open at
  shutdown are written with the shutdown as their end.

Times: `now` is CLOCK_MONOTONIC seconds, `wall` Unix seconds (the span of a GAP is wall
time, like every record's ts).
"""
from dataclasses import dataclass, field

HEARTBEAT = 1.0         # s between a worker's heartbeat lines
MAX_REASONS = 8         # distinct reasons one gap keeps: a worker in a crash loop repeats one, counted
START_ALLOWANCE = 30.0  # s a new worker may take to its first line (interpreter start-up and imports
                        # on a loaded host took over 4 s): silence before it is not yet frozen


@dataclass
class Gap:
    start: float                      # wall time the last measured interval ended
    reasons: dict = field(default_factory=dict)     # reason -> times it happened
    others: int = 0                   # events beyond MAX_REASONS distinct reasons
    explicit: bool = False            # a restart or reload: written even when short

    def add(self, reason):
        if reason in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        else:
            self.others += 1

    def texts(self):
        """The reasons as written in the GAP record, a repeated one with its count."""
        out = [r if n == 1 else f"{r} ({n} times)" for r, n in self.reasons.items()]
        return out + ([f"{self.others} more of other kinds"] if self.others else [])


@dataclass(frozen=True)
class Verdict:
    """What check() found: `stale` is new (BREACH due), `frozen` asks for a kill."""
    stale: bool = False
    frozen: bool = False
    age: float = 0.0                  # s since the last interval (or since the start allowance)


class Liveness:
    """One probe instance's due times, across restarts of its worker."""

    def __init__(self, interval, grace, periodic=True):
        self.interval = interval
        self.grace = grace
        self.periodic = periodic
        self.base = None              # monotonic time the next interval is counted from
        self.last_beat = None
        self.spoke = False            # the current worker has written a line
        self.last_result_wall = None
        self.started_wall = None
        self.stale_since = None       # monotonic, while stale
        self.gap = None

    @property
    def allowed(self):
        """Seconds after `base` by which the next interval must have arrived."""
        return self.interval + max(self.interval, self.grace)

    @property
    def hang(self):
        """Seconds of silence (no line at all) after which a worker counts as frozen."""
        return max(self.allowed, 3 * HEARTBEAT)

    def started(self, now, wall):
        """A worker (re)started: its first interval is due after the start allowance."""
        self.base = now + self.grace
        self.last_beat = now
        self.spoke = False
        self.started_wall = wall

    def beat(self, now):
        """Any line from the worker shows its process runs."""
        self.last_beat = now
        self.spoke = True

    def lost(self, wall, reason, explicit=True):
        """Measurement stopped (exit, kill, reload, stale): open a gap or add the reason."""
        if self.gap is None:
            start = next((t for t in (self.last_result_wall, self.started_wall) if t is not None), wall)
            self.gap = Gap(min(start, wall))
        self.gap.add(reason)
        self.gap.explicit = self.gap.explicit or explicit

    def result(self, now, ts):
        """A RESULT with record time `ts` arrived. Returns (cleared, gap): cleared is the time
        without an interval when a stale stretch ended (else None), gap a (start, end, reasons)
        span to write or None."""
        self.beat(now)
        cleared = None
        if self.stale_since is not None:
            cleared = now - self.base         # since the last interval (or the start allowance)
            self.stale_since = None
        gap, self.gap = self.gap, None
        self.base = now
        self.last_result_wall = ts
        if gap is None:
            return cleared, None
        # the first interval after the gap began `interval` before its record, and not before
        # the worker that wrote it started
        end = ts - self.interval if self.periodic else (self.started_wall or ts)
        if self.started_wall is not None:
            end = max(end, self.started_wall)
        end = max(gap.start, min(end, ts))
        if not gap.explicit and end - gap.start < self.interval / 2:
            return cleared, None      # late, not missing: the late record covered its time
        return cleared, (gap.start, end, gap.texts())

    def check(self, now, wall, running):
        """The verdict at `now` for a worker that is `running` (has a live process)."""
        if not running or self.base is None:
            return Verdict()
        frozen = now - self.last_beat > (self.hang if self.spoke else max(self.hang, START_ALLOWANCE))
        if not self.periodic:
            return Verdict(frozen=frozen, age=now - self.last_beat)
        age = now - self.base
        if age <= self.allowed:
            return Verdict(frozen=frozen, age=age)
        new = self.stale_since is None
        if new:
            self.stale_since = now
            self.lost(wall, f"stale: no interval for {age:.1f}s", explicit=False)
        return Verdict(stale=new, frozen=frozen, age=age)

    def stale_for(self, now):
        """Seconds this probe has been stale (0 when it is not)."""
        return 0.0 if self.stale_since is None else now - self.stale_since

    def pending(self, wall):
        """The open gap at shutdown as (start, end, reasons), or None."""
        if self.gap is None:
            return None
        gap, self.gap = self.gap, None
        return gap.start, max(gap.start, wall), gap.texts() + ["daemon stopped"]
