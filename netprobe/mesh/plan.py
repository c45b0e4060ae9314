"""Mesh + host name + time -> this host's derived probes and the exclusive-test timetable.

A pure function: every host computes the same timetable from the same mesh
file and its own wall clock, with no coordinator.

- Time is cut into slots of one length, `slot` = the longest exclusive test's
  duration plus the guard (both clocks' error bound plus the connect time),
  counted from the Unix epoch, so slot k covers [k*slot, (k+1)*slot) UTC.
- Each exclusive test (one host pair of an exclusive [[test]]) holds
  resources for its whole slot: "host:NAME" for both hosts, and "TAG:VALUE"
  for both hosts' values of every tag in exclusive_by.
- A test with `every` gets a period of n slots and an offset s in [0, n): it
  runs in the slots k with k mod n == s. n is `every` rounded down to whole
  slots and to a multiple of the next shorter period in the mesh (periods that
  do not divide each other would meet in some slot whatever the offsets), so a
  test runs at least once per `every`. Two tests with periods n, m and offsets s, t meet in some
  slot exactly when s == t (mod gcd(n, m)); a test takes the smallest offset
  that meets no test holding any of its resources.
- Tests are placed shortest period first, then in file order, then pair order,
  so the placement is the same on every host and in every process.
A mesh whose tests cannot all be placed raises PlanError naming each test
that found no slot and the resources that filled its period.
"""
import json
import math
from dataclasses import dataclass
from math import gcd

from netprobe.errors import ConfigError
from netprobe.mesh.model import EXCLUSIVE_KINDS

SHARED_KINDS = ("oneway",)        # background kinds whose peers one worker serves (peers = [...])


class PlanError(ConfigError):
    """The exclusive tests of a mesh do not fit their periods."""


@dataclass(frozen=True)
class Slotted:
    """One exclusive test: a host pair of an exclusive [[test]], with its place in the timetable."""
    test: int                   # index of its [[test]]
    kind: str
    a: str                      # runs the probe
    b: str                      # its peer
    resources: tuple
    period: int                 # slots
    offset: int


@dataclass(frozen=True)
class Run:
    """One scheduled occurrence of an exclusive test."""
    slotted: Slotted
    slot: int                   # slot number since the epoch
    start: float                # Unix time the test starts
    end: float                  # start + duration: when it should have measured
    slot_end: float             # its resources are held until here

    def to_json(self):
        from netprobe.results import iso_time
        s = self.slotted
        return {"kind": s.kind, "test": s.test, "a": s.a, "b": s.b, "start": iso_time(self.start),
                "end": iso_time(self.end), "slot_end": iso_time(self.slot_end),
                "resources": list(s.resources)}


@dataclass(frozen=True)
class DerivedProbe:
    """A [[probe]] table this host runs because of the mesh."""
    test: int
    kind: str
    peer: str                   # the peer's host name
    table: dict                 # a [[probe]] table: kind, name, peer address and the test's settings
    exclusive: bool

    @property
    def name(self):
        return self.table["name"]


@dataclass(frozen=True)
class Timetable:
    version: str
    slot: float                 # s
    guard: float                # s
    cycle: int                  # slots: the longest period, within which every test runs once at least
    placed: tuple               # Slotted, in placement order
    durations: dict             # test index -> duration (s)

    def runs(self, start, end, host=None):
        """Every Run whose slot starts in [start, end), in time order, optionally only those of `host`."""
        first = math.ceil(start / self.slot - 1e-9)
        last = math.ceil(end / self.slot - 1e-9)              # exclusive
        out = []
        for s in self.placed:
            if host is not None and host not in (s.a, s.b):
                continue
            k = first + (s.offset - first) % s.period
            while k < last:
                t0 = k * self.slot
                out.append(Run(s, k, t0, t0 + self.durations[s.test], t0 + self.slot))
                k += s.period
        out.sort(key=lambda r: (r.slot, r.slotted.test, r.slotted.a, r.slotted.b))
        return out

    def same_runs(self, other):
        """Whether `other` holds the same exclusive tests in the same slots (its version aside)."""
        return (self.slot, self.placed, self.durations) == (other.slot, other.placed, other.durations)

    def next_boundary(self, now):
        """The first slot boundary after `now`: when a changed mesh takes effect."""
        return (math.floor(now / self.slot + 1e-9) + 1) * self.slot

    def in_force(self, read_at, rollout):
        """When this timetable, read at `read_at`, replaces one that places its tests elsewhere: the
        first cycle boundary (a multiple of cycle x slot since the epoch) at least `rollout` later,
        by when every host has read it (see transition_runs)."""
        period = self.cycle * self.slot
        return math.ceil((read_at + rollout) / period - 1e-9) * period


def run_key(run):
    """What makes two runs the same test at the same time and place, whatever their versions."""
    s = run.slotted
    return (s.test, s.kind, s.a, s.b, s.resources, round(run.start, 6), round(run.slot_end, 6))


def transition_runs(new, base, start, end, host=None):
    """The runs of timetable `new` in [start, end) split by the rollout rule: (kept, deferred).

    While a host has loaded `new` but it is not yet in force, other hosts may still follow
    `base` (the last timetable in force), and yet others may already follow `new`. A run placed
    identically in both (same test, pair, resources and slot) is `kept`: every test running
    anywhere then is a run of `base` or of `new` at once, and each of those is overlap-free. A
    run of `new` that `base` does not hold is `deferred` until `new` is in force."""
    held = {run_key(r) for r in base.runs(start, end, host)} if base is not None else set()
    kept, deferred = [], []
    for r in new.runs(start, end, host):
        (kept if run_key(r) in held else deferred).append(r)
    return kept, deferred


def resources(mesh, test, a, b):
    """What one exclusive test holds: both hosts, and both hosts' value of each exclusive_by tag."""
    out = []
    for key in test.exclusive_by:
        for h in (a, b):
            value = h if key == "host" else mesh.by_name[h].tag(key)
            if value is not None:
                r = f"{key}:{value}"
                if r not in out:
                    out.append(r)
    return tuple(out)


def timetable(mesh):
    """Place every exclusive test of `mesh`; PlanError if some do not fit."""
    excl = [t for t in mesh.tests if t.kind in EXCLUSIVE_KINDS]
    guard = mesh.schedule.guard
    if not excl:
        return Timetable(mesh.version, 1.0, guard, 1, (), {})
    slot = round(max(t.duration for t in excl) + guard, 6)
    periods, failures = _periods(sorted({t.every for t in excl}), slot), []
    jobs = []
    for t in excl:
        n = periods[t.every]
        if n < 1:
            failures.append(f"test[{t.index}] ({t.kind}): every = {t.every:g}s is shorter than one slot "
                            f"({slot:g}s = longest duration + guard {guard:g}s)")
            continue
        for a, b in t.pairs:
            jobs.append((n, t.index, a, b, resources(mesh, t, a, b), t.kind))
    if failures:
        raise PlanError("; ".join(failures), file=mesh.file, path="test")
    jobs.sort(key=lambda j: (j[0], j[1]))        # stable: pair order within a test is kept
    taken = {}                                   # resource -> {period: bitmask of offsets taken}
    folds = {}                                   # (resource, period) -> {g: offsets taken mod g}
    placed = []
    for n, index, a, b, res, kind in jobs:
        full = (1 << n) - 1
        blocked = 0
        for r in res:
            for m, mask in taken.get(r, {}).items():
                g = gcd(n, m)
                cache = folds.setdefault((r, m), {})
                fm = cache.get(g)
                if fm is None:
                    fm = cache[g] = _fold(mask, m, g)
                blocked |= fm * (full // ((1 << g) - 1)) if g < n else fm   # repeat the g bits n/g times
        free = full & ~blocked
        if not free:
            failures.append(_why(index, kind, a, b, n, slot, res, taken))
            continue
        s = (free & -free).bit_length() - 1
        for r in res:
            per = taken.setdefault(r, {})
            per[n] = per.get(n, 0) | (1 << s)
            cache = folds.get((r, n))
            if cache:
                for g in cache:
                    cache[g] |= 1 << (s % g)
        placed.append(Slotted(index, kind, a, b, res, n, s))
    if failures:
        shown = failures[:5] + ([f"and {len(failures) - 5} more"] if len(failures) > 5 else [])
        raise PlanError(f"{len(failures)} exclusive test(s) do not fit: " + "; ".join(shown),
                        file=mesh.file, path="test")
    cycle = max(s.period for s in placed) if placed else 1
    return Timetable(mesh.version, slot, guard, cycle, tuple(placed),
                     {t.index: t.duration for t in excl})


def _periods(everys, slot):
    """`every` -> period in slots, each a whole multiple of the next shorter one (rounded down),
    so that tests sharing a resource never have coprime periods (which would always meet)."""
    out, base = {}, 1
    for every in everys:
        n = base * int(every / (base * slot) + 1e-9)
        out[every] = n
        base = max(n, 1)
    return out


def _fold(mask, m, g):
    """Offsets mod m (bitmask) -> offsets mod g, for g dividing m."""
    out = 0
    while mask:
        out |= mask & ((1 << g) - 1)
        mask >>= g
    return out


def _why(index, kind, a, b, n, slot, res, taken):
    busiest = max(res, key=lambda r: sum(bin(mask).count("1") / m for m, mask in taken.get(r, {}).items()))
    load = sum(bin(mask).count("1") / m for m, mask in taken.get(busiest, {}).items())
    return (f"test[{index}] {kind} {a}->{b}: no free slot in its period of {n} slots of {slot:g}s; "
            f"{busiest} is already {load:.0%} booked")


def probes(mesh, host):
    """The [[probe]] tables `host` runs: a oneway probe to every peer its oneway tests name (both ways
    of a pair run one, each measuring what it sends), and an exclusive probe for each exclusive test
    it starts (it is `a` of the pair)."""
    out = []
    for t in mesh.tests:
        exclusive = t.kind in EXCLUSIVE_KINDS
        for a, b in t.pairs:
            if a == host:
                peer = b
            elif b == host and not exclusive:
                peer = a
            else:
                continue
            table = {"kind": t.kind, **t.settings, "name": f"{peer}.t{t.index}",
                     "peer": mesh.by_name[peer].address}
            if t.kind == "capacity":
                table["every"] = 0            # one estimate per slot; the timetable repeats it
            out.append(DerivedProbe(t.index, t.kind, peer, table, exclusive))
    return out


def shared_workers(mesh, derived):
    """The workers that serve several background probes: {worker name: [DerivedProbe, ...]}, one
    per shared kind and identical test settings, named after the first such [[test]]."""
    groups = {}
    for p in derived:
        if p.kind in SHARED_KINDS and not p.exclusive:
            key = (p.kind, json.dumps(mesh.tests[p.test].settings, sort_keys=True, default=str))
            groups.setdefault(key, []).append(p)
    return {f"{kind}.mesh-t{members[0].test}": members for (kind, _), members in groups.items()}
