"""The mesh inside the daemon: which probe workers this host runs at a given time.

The supervisor asks `specs(now)` for the derived probes due now (every
background probe, and the exclusive ones whose slot is running), `due` for
when that answer next changes, and hands each record of a derived probe to
`annotate`, which adds the peer's name and tags and feeds the rollup. A mesh
that changed (SIGHUP, `refresh`, a new copy at the URL) takes effect at the
next slot boundary, so the timetable of a slot never changes under it. If its
timetable places exclusive tests elsewhere, it is not in force before every
host has read it (`[schedule] rollout` later, at a cycle boundary); until then
this host starts only the runs both timetables place alike and reports each
other one as deferred (`deferrals`, a GAP record), see plan.transition_runs. What
is in force and the rollout under way are kept in `[mesh] state` (mesh.state),
so a restarted daemon goes on with the rollout.
"""
import ipaddress
import logging
import socket
from dataclasses import dataclass, replace

from netprobe.config import schema
from netprobe.config.load import ProbeSpec, build_probe_config
from netprobe.errors import ConfigError
from netprobe.mesh import fetch, plan, rollup, state
from netprobe.results import BREACH, ERROR, GAP, RESULT, Record, iso_time, seconds

log = logging.getLogger("netprobe.mesh")
ANNOTATED = ("RESULT", "BREACH", "CLEAR", "GAP")


@dataclass(frozen=True)
class Transition:
    """A loaded timetable that moves exclusive tests and is not in force yet."""
    base: object          # plan.Timetable in force before (the first one, over chained changes)
    until: float          # when the loaded one comes into force
    base_mesh: object     # model.Mesh of `base`: what a restart needs (mesh.state)
    read_at: float        # when the loaded version was read


def local_host(mesh):
    """The one [[host]] whose address this machine owns (a bind to it succeeds)."""
    from netprobe.serve import split_address
    found = []
    for h in mesh.hosts:
        host, _ = split_address(h.address)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue                      # a DNS name: never guessed, name it with [mesh] self
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((str(ip), 0))
            except OSError:
                continue
        found.append(h.name)
    if len(found) != 1:
        which = ", ".join(found) if found else "none"
        raise ConfigError(f"cannot tell which [[host]] this is (local addresses match: {which}); "
                          "set [mesh] self", file=mesh.file)
    return found[0]


class MeshRuntime:
    def __init__(self, cfg, now):
        self.cfg = cfg
        self.source = fetch.Source(cfg)
        got = self.source.get()
        self.self_name = cfg.self or local_host(got.mesh)
        self.derived = {}
        self.tt = None
        self._also = (None, ())           # (the versions it was worked out for, also_accepted())
        self.missed = {}                  # derived probe -> timetabled runs its peer answered busy to
        self.deferred = {}                # derived probe -> runs deferred by a rollout (transition)
        self.transition = None            # Transition, while rolling out
        self._checked = now               # deferred runs that start before this are reported
        self._kept = None                 # what cfg.state holds: (in force, rolling, read at)
        self._errors = []                 # ERROR records not yet handed out (errors())
        self._install(got.mesh)
        self._resume(now)
        self.pending = None               # (mesh, time it takes effect, its timetable, time read)
        self.next_refresh = now + cfg.refresh
        self.next_flush = now + self.flush_every if self.flush_every else None

    def _install(self, mesh):
        if self.self_name not in mesh.by_name:
            raise ConfigError(f'[mesh] self = "{self.self_name}" is not a [[host]] name', file=mesh.file)
        tt = plan.timetable(mesh)
        derived = {p.name: p for p in plan.probes(mesh, self.self_name)}
        # the peers of the mesh before: their final records, written after this change, are
        # still named for their peer (not fed to the new rollup, which no longer expects them)
        self.gone = {n: self.mesh.by_name[p.peer] for n, p in self.derived.items() if n not in derived}
        self.previous = self.tt           # the timetable replaced (None at the start)
        self.mesh, self.tt, self.derived = mesh, tt, derived
        self.rollup = rollup.Rollup(mesh, self.self_name)
        self._built = {}
        self.background = self._background()
        self.flush_every = min((self._spec(p).config.interval for p in self.derived.values()
                                if p.kind == rollup.KIND), default=None)

    # ---- what runs when -----------------------------------------------------------------
    def _spec(self, p):
        spec = self._built.get(p.name)
        if spec is None:
            where = schema.Where(self.mesh.file, f"test[{p.test}]")
            spec = self._built[p.name] = ProbeSpec(p.kind, build_probe_config(p.kind, p.table, where),
                                                   p.table, p.test)
        return spec

    def _background(self):
        """The workers that run all the time: one per shared kind and identical settings, serving
        every peer those tests name (its peers entries named as the per-peer derived probes, so
        each peer's records are named and annotated as a probe of its own); any other background
        probe is a worker of its own."""
        out = {}
        shared = plan.shared_workers(self.mesh, self.derived.values())
        served = {p.name for members in shared.values() for p in members}
        for p in self.derived.values():
            if not p.exclusive and p.name not in served:
                out[p.name] = self._spec(p)
        for name, members in shared.items():
            first = members[0]
            table = {k: v for k, v in first.table.items() if k != "peer"}
            table.update(name=name, peers=[f"{p.name}={p.table['peer']}" for p in members])
            where = schema.Where(self.mesh.file, f"test[{first.test}]")
            out[name] = ProbeSpec(first.kind, build_probe_config(first.kind, table, where), table, first.test)
        return out

    def _runs(self, start, end):
        """The runs this host starts with a slot starting in [start, end): (to run, deferred). While
        a timetable that moves exclusive tests is not in force, only those its base places alike
        run (plan.transition_runs)."""
        if self.transition is None:
            kept, deferred = self.tt.runs(start, end, self.self_name), []
        else:
            until = self.transition.until
            kept, deferred = plan.transition_runs(self.tt, self.transition.base, start, end, self.self_name)
            kept += [r for r in deferred if r.start >= until]
            deferred = [r for r in deferred if r.start < until]
        me = self.self_name
        return [r for r in kept if r.slotted.a == me], [r for r in deferred if r.slotted.a == me]

    def _active_runs(self, now):
        """Exclusive runs this host starts whose window holds `now`: from the slot's start until
        the test's duration plus the connect time have passed."""
        return [r for r in self._runs(now - self.tt.slot, now + 1e-6)[0]
                if r.start <= now < r.end + self.mesh.schedule.connect_time]

    def _begin_transition(self, replaced, replaced_mesh, read_at, at):
        """The timetable just installed at `at` (read at `read_at`) replaces `replaced`: if it moves
        exclusive tests, hold back the moved ones until it is in force."""
        if self.transition is not None:
            replaced, replaced_mesh = self.transition.base, self.transition.base_mesh
        until = self.tt.in_force(read_at, self.mesh.schedule.rollout)
        if self.tt.same_runs(replaced) or until <= at:
            self.transition = None
            return
        self.transition, self._checked = Transition(replaced, until, replaced_mesh, read_at), at
        log.info("mesh version %s moves exclusive tests: tests not placed as in version %s are "
                 "deferred until %s", self.tt.version, replaced.version, iso_time(until))

    def _resume(self, now):
        """At the start: a mesh other than the one in force here before (cfg.state) is a change
        read now, or the one this host was rolling out when it stopped, read when it was then."""
        kept, error = state.load(self.cfg.state)
        if error:
            self._error(f"mesh state not used: {error}; the mesh's timetable is in force at once")
        if kept is not None and kept.in_force.version != self.mesh.version:
            read_at = kept.read_at if kept.rolling == self.mesh.version else now
            self._begin_transition(kept.timetable, kept.in_force, read_at, now)
        self._keep()

    def _keep(self):
        """Write cfg.state when what is in force or the rollout under way changed."""
        t = self.transition
        now_kept = (self.mesh, "", 0.0) if t is None else (t.base_mesh, self.mesh.version, t.read_at)
        key = (now_kept[0].version, *now_kept[1:])
        if not self.cfg.state or key == self._kept:
            return
        self._kept = key
        error = state.save(self.cfg.state, *now_kept)
        if error:
            self._error(f"{error}; a restart during a rollout will put the new timetable in force at once")

    def _error(self, text):
        log.error("%s", text)
        self._errors.append(Record(ERROR, "mesh", self.self_name, {"error": text}))

    def errors(self):
        """ERROR records about the mesh state, each handed out once."""
        out, self._errors = self._errors, []
        return out

    def specs(self, now):
        if self.pending is not None and now >= self.pending[1]:
            (mesh, at, _, read_at), replaced, replaced_mesh, self.pending = self.pending, self.tt, self.mesh, None
            self._install(mesh)
            self._begin_transition(replaced, replaced_mesh, read_at, at)
            self._keep()
            log.info("mesh version %s in effect", mesh.version)
        if self.transition is not None and now >= self.transition.until:
            self.transition = None
            self._keep()
            log.info("mesh version %s: its timetable is in force", self.tt.version)
        out = dict(self.background)
        for r in self._active_runs(now):
            s = r.slotted
            p = self.derived.get(f"{s.b}.t{s.test}")
            if p is not None:
                out[p.name] = self._spec(p)
        return out

    def due(self, now):
        """The next time specs() may answer differently, a refresh or a rollup is due."""
        times = [self.next_refresh]
        if self.next_flush is not None:
            times.append(self.next_flush)
        if self.pending is not None:
            times.append(self.pending[1])
        if self.transition is not None:
            times.append(self.transition.until)
        for r in self.tt.runs(now - self.tt.slot, now + self.tt.cycle * self.tt.slot, host=self.self_name):
            if r.slotted.a == self.self_name:
                for t in (r.start, r.end + self.mesh.schedule.connect_time):
                    if t > now:
                        times.append(t)
        return min(times)

    # ---- mesh changes ---------------------------------------------------------------------
    def refresh(self, now):
        """Re-read the source; a changed, valid mesh is pending until the next slot boundary.
        Returns ERROR records for a source that failed or a mesh that cannot run."""
        self.next_refresh = now + self.cfg.refresh
        got = self.source.get()
        out = []
        if got.error:
            out.append(Record(ERROR, "mesh", self.self_name, {"error": f"mesh source: {got.error}; "
                                                                       f"running version {self.mesh.version}"}))
        if got.mesh.version not in (self.mesh.version, self.pending and self.pending[0].version):
            try:
                if self.self_name not in got.mesh.by_name:
                    raise ConfigError(f'"{self.self_name}" is no longer a [[host]]', file=got.mesh.file)
                tt = plan.timetable(got.mesh)
            except ConfigError as exc:
                out.append(Record(ERROR, "mesh", self.self_name, {
                    "error": f"new mesh not used: {exc}; running version {self.mesh.version}"}))
                return out
            self.pending = (got.mesh, self.tt.next_boundary(now), tt, now)
            log.info("mesh version %s read; in effect at the next slot boundary", got.mesh.version)
        return out

    def also_accepted(self):
        """Other mesh versions whose timetabled tests the peer side serves too: the one pending and
        the one replaced, when their timetable holds the same tests in the same slots as the one in
        effect. A host still on such a version (or already on it) starts only tests this host's
        timetable holds, so serving them overlaps nothing; any other version is refused busy.
        While the timetable loaded is not in force, its base too: this host starts only runs the
        base holds, as does every host still on the base."""
        others = (self.pending[2] if self.pending else None, self.previous)
        base = self.transition.base.version if self.transition is not None else None
        key = (self.tt.version, base, *(tt and tt.version for tt in others))
        if self._also[0] != key:          # compared once per change: a timetable may hold 10,000 tests
            out = [base] if base not in (None, self.tt.version) else []
            for tt in others:
                if tt is not None and tt.version not in (self.tt.version, *out) and tt.same_runs(self.tt):
                    out.append(tt.version)
            self._also = (key, tuple(out))
        return self._also[1]

    # ---- records --------------------------------------------------------------------------
    def annotate(self, rec):
        p = self.derived.get(rec.name)
        host = self.mesh.by_name[p.peer] if p is not None else self.gone.get(rec.name)
        if host is None or rec.type not in ANNOTATED:
            return rec
        extra = {}
        if rec.type == BREACH and rec.fields.get("metric") == "connection" and rec.fields.get("state") == "busy":
            # a timetabled test's worker writes one such BREACH per run its peer refused: a missed run
            extra["busy_missed"] = self.missed[rec.name] = self.missed.get(rec.name, 0) + 1
        rec = replace(rec, fields={**rec.fields, "peer_name": host.name,
                                   **{f"peer_{k}": v for k, v in host.tags}, **extra})
        if p is not None:
            self.rollup.feed(rec)
        return rec

    def deferrals(self, now):
        """A GAP record for each run this host would start, deferred by a rollout, whose slot has
        started since the last call (the daemon adds the peer's name and tags, see annotate)."""
        if self.transition is None:
            self._checked = now
            return []
        start, self._checked = self._checked, now + 1e-6
        out = []
        for r in self._runs(start, now + 1e-6)[1]:
            s = r.slotted
            name = f"{s.b}.t{s.test}"
            self.deferred[name] = self.deferred.get(name, 0) + 1
            out.append(Record(GAP, s.kind, name, {
                "reason": f"deferred: mesh version {self.tt.version} moves this test; its timetable is "
                          f"in force from {iso_time(self.transition.until)}, until then only tests placed "
                          f"as in version {self.transition.base.version} run",
                "start": iso_time(r.start), "end": iso_time(r.end), "duration": seconds(r.end - r.start),
                "deferred_missed": self.deferred[name]}))
        return out

    def flush(self, now):
        """The rollup records, when an interval has ended."""
        if self.next_flush is None or now < self.next_flush:
            return []
        self.next_flush = now + self.flush_every
        return [r for r in self.rollup.flush(now) if r.type == RESULT]

