"""The supervisor: starts a worker per probe, restarts failures with backoff,
fans records out to the sinks, and handles signals.

Liveness (supervisor/liveness.py): a periodic probe whose interval is overdue is
`BREACH metric=stale` until results resume; a worker silent past its heartbeat is
killed and restarted; every span a probe did not measure (restart, crash, reload,
frozen or stale worker) is written as a GAP record.

Signals: SIGTERM/SIGINT stop the probes (each writes its final interval),
flush every sink and exit 0; a second one exits 3 at once. SIGHUP re-reads
the file: an invalid file keeps the running config (and says why); probes
whose table is unchanged keep running, and a probe whose only change is one
its worker takes while running (LIVE: a oneway worker's peers list) gets the
new job on its stdin instead of a restart, so its other peers are untouched. SIGUSR1 is passed on to every probe
(flows writes its open flows; the others ignore it). With $NOTIFY_SOCKET set it speaks
sd_notify: READY, RELOADING, WATCHDOG, STOPPING, STATUS.
"""
import copy
import dataclasses
import errno
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time

from netprobe import __version__, outputs
from netprobe.config.load import ProbeSpec, load_file
from netprobe.errors import EXIT_OK, EXIT_RUNTIME, EXIT_SIGNAL, ConfigError
from netprobe.log import OnceFilter
from netprobe.results import BREACH, CLEAR, DROPS, ERROR, GAP, RESULT, Record, event, iso_time, seconds
from netprobe.supervisor.liveness import Liveness
from netprobe.supervisor.sdnotify import Notifier

log = logging.getLogger("netprobe.supervisor")


SERVE_NAME = "(serve)"        # the [serve] worker's name; probe names cannot contain parentheses
CHECK_EVERY = 0.25            # s between liveness checks
FEED_EVERY = 0.05             # s between attempts to write a job a worker has not read yet
LIVE = {"oneway": "peers"}    # kind -> the setting its running worker takes over stdin (worker.py)


BREACH_IDENTITY = ("metric", "dir", "port", "group", "peer", "scope")   # fields a CLEAR shares with its BREACH


def _breach_key(rec):
    return rec.name, rec.probe, tuple(str(rec.fields.get(k)) for k in BREACH_IDENTITY)


def _peer_names(spec):
    """The names of a shared worker's peers entries ("NAME=HOST[:PORT]")."""
    return {str(e).partition("=")[0] for e in spec.table.get("peers") or ()}


def live_change(old, new):
    """Whether `new` differs from the running `old` only in the setting its worker takes live."""
    key = LIVE.get(new.kind)
    if key is None or old.kind != new.kind or not old.table.get(key) or not new.table.get(key):
        return False
    return {k: v for k, v in old.table.items() if k != key} == {k: v for k, v in new.table.items() if k != key}


def specs(config, mesh=None):
    """Every worker the config asks for: the probes, the peer side if [serve] is set, and the
    probes the mesh derives for this host now."""
    out = {}
    if config.serve is not None:          # first, so that probes against it find it listening
        out[SERVE_NAME] = ProbeSpec("serve", config.serve, config.serve_table, 0, SERVE_NAME)
    out.update((p.name, p) for p in config.probes)
    if mesh is not None:
        out.update(mesh.specs(time.time()))
    return out


class Worker:
    """Book-keeping for one probe instance's process."""

    def __init__(self, spec, file, grace):
        self.spec = spec
        self.file = file
        cfg = spec.config
        self.live = Liveness(getattr(cfg, "interval", 10.0), grace,
                             periodic=spec.kind != "serve" and getattr(cfg, "periodic", False))
        self.kill_reason = None       # why the supervisor killed it (a frozen worker)
        self.proc = None
        self.buf = b""
        self.out = b""                # job lines the worker has not read yet (its stdin is non-blocking)
        self.mesh = None              # the mesh version its job carries (the peer side, a timetabled test)
        self.mesh_also = ()           # the peer side: other versions it serves too (MeshRuntime.also_accepted)
        self.failures = 0
        self.next_start = 0.0
        self.started_at = 0.0
        self.stopping = False
        self.retired = False          # removed by a reload: do not restart
        self.open = {}                # breach identity -> its BREACH record, until its CLEAR
        self.finished = False         # its probe ended on its own (exit 0, e.g. a one-time estimate)

    @property
    def name(self):
        return self.spec.name

    @property
    def job(self):
        job = {"kind": self.spec.kind, "table": self.spec.table, "file": self.file, "index": self.spec.index}
        if self.mesh is not None:
            job["mesh"] = self.mesh
        if self.mesh_also:
            job["mesh_also"] = list(self.mesh_also)
        return job


class Supervisor:
    def __init__(self, config, *, duration=None, restart=True, stdout_json=False, notifier=None,
                 run_info_extra=None):
        self.config = config
        self.duration = duration
        self.restart = restart
        self.stdout_json = stdout_json
        self.notifier = notifier or Notifier()
        self.run_info_extra = run_info_extra or {}
        self.sel = selectors.DefaultSelector()
        self.workers = {}             # name -> Worker
        self.sinks = []
        self.signals = 0
        self.reload_pending = False
        self.once = OnceFilter()
        self.probe_errors = 0         # ERROR records seen (exit code of one-shot runs)
        self._drops_seen = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.mesh = None
        self._mesh_due = None         # wall time the mesh next needs a look (a slot edge, a refresh)
        if config.mesh is not None:           # a mesh that cannot run stops the start, as a bad config does
            from netprobe.mesh.runtime import MeshRuntime
            self.mesh = MeshRuntime(config.mesh, time.time())

    # ---- sinks -------------------------------------------------------------------------
    def _output_tables(self, config):
        tables = copy.deepcopy(config.output_tables)
        if self.stdout_json:
            for name, t in tables.items():
                if t.get("type", name) == "stdout":
                    t["format"] = "json"
        return tables

    def _run_info(self, config):
        try:
            from netprobe import sysinfo
            host = sysinfo.facts()
        except Exception as exc:        # host facts are best effort; never block a start
            host = {"error": str(exc)}
        info = {"version": __version__, "config_file": config.file, "config_supplied": config.supplied,
                "config_effective": config.effective(), "host": host}
        info.update(self.run_info_extra)
        return info

    def _start_sinks(self, config):
        sinks = outputs.build_sinks(self._output_tables(config), config.file)
        info = self._run_info(config)
        for s in sinks:
            s.start(info)
        return sinks

    def _close_sinks(self, sinks):
        for s in sinks:
            s.close()

    def publish(self, record):
        if self.mesh is not None:             # a derived probe's records name its peer and the peer's tags
            record = self.mesh.annotate(record)
        for s in self.sinks:
            s.submit(record)

    def _report_drops(self):
        """Records a sink lost since the last report, told to the other sinks: DROPS for a full
        queue (too slow), ERROR for writes that failed (a read-only or full disk, a dead server)."""
        for s in self.sinks:
            # a sink that delivers on its own threads (Alertmanager, Elasticsearch) counts its own drops
            dropped, failed = s.dropped + getattr(s.sink, "dropped", 0), s.failed
            seen_dropped, seen_failed = self._drops_seen.get(s, (0, 0))
            self._drops_seen[s] = (dropped, failed)
            recs = []
            if dropped > seen_dropped:
                new = dropped - seen_dropped
                log.warning("sink %s is too slow: dropped %d records (%d in all)", s.name, new, dropped)
                recs.append(Record(DROPS, "daemon", s.name, {"sink": s.name, "dropped": new,
                                                             "dropped_total": dropped}))
            if failed > seen_failed:
                recs.append(Record(ERROR, "daemon", s.name, {
                    "sink": s.name, "error": f"{failed - seen_failed} records not written: {s.last_error}",
                    "failed": failed - seen_failed, "failed_total": failed}))
            for rec in recs:
                for other in self.sinks:
                    if other is not s:
                        other.submit(rec)

    # ---- workers -----------------------------------------------------------------------
    def _spawn(self, w):
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)           # only the supervisor talks to systemd
        env["NETPROBE_LOG_LEVEL"] = self.config.daemon.log_level
        w.proc = subprocess.Popen([sys.executable, "-m", "netprobe.supervisor.worker"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                  close_fds=True)
        os.set_blocking(w.proc.stdin.fileno(), False)     # stays open for updates (worker.py)
        w.out = b""
        self._send_job(w)
        os.set_blocking(w.proc.stdout.fileno(), False)
        self.sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        w.buf = b""
        w.stopping = False
        w.kill_reason = None
        w.started_at = time.monotonic()
        w.live.started(w.started_at, time.time())
        if w.name == SERVE_NAME:
            log.info("started the peer side ([serve]) pid=%d", w.proc.pid)
        else:
            log.info("started probe %s (%s) pid=%d", w.name, w.spec.kind, w.proc.pid)

    def _send_job(self, w):
        """Queue the worker's current job on its stdin and write what the pipe takes now."""
        w.out += (json.dumps(w.job) + "\n").encode()
        self._feed(w)

    def _feed(self, w):
        try:
            while w.out:
                w.out = w.out[os.write(w.proc.stdin.fileno(), w.out):]
        except BlockingIOError:
            pass            # the rest on a later turn
        except OSError:
            w.out = b""     # it died (killed, say): its exit is handled like any other

    def _read(self, w):
        try:
            chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                chunk = b""
            else:
                return
        if chunk:
            w.live.beat(time.monotonic())
            w.buf += chunk
            *lines, w.buf = w.buf.split(b"\n")
            for line in lines:
                self._handle_line(w, line)
            return
        self._reap(w)

    def _handle_line(self, w, line):
        if not line:
            return                                # the worker's heartbeat
        try:
            rec = Record.from_wire(line.decode())
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            if self.once.first(("badline", w.name)):
                log.error("probe %s wrote a malformed record; dropped (further ones silently)", w.name)
            return
        if rec.type == ERROR:
            self.probe_errors += 1
            msg = str(rec.fields.get("error", ""))
            if not self.once.first(("error", w.name, msg)):
                return                            # the same error again: logged and published once
            log.error("probe %s: %s", w.name, msg)
        elif rec.type == RESULT and self.restart:
            self._resumed(w, rec)
        elif rec.type == BREACH:
            w.open[_breach_key(rec)] = rec
        elif rec.type == CLEAR:
            w.open.pop(_breach_key(rec), None)
        self.publish(rec)

    def _clear_open(self, w, why, names=None):
        """CLEAR the breaches a stopped worker (or its removed peers, `names`) left open: nothing
        measures them any more, and an alert must not stay active until a later run."""
        for key, rec in list(w.open.items()):
            if names is None or rec.name in names:
                del w.open[key]
                self.publish(Record(CLEAR, rec.probe, rec.name, {
                    **{k: rec.fields[k] for k in BREACH_IDENTITY if k in rec.fields},
                    "state": "stopped", "detail": why}))

    def _reap(self, w):
        self.sel.unregister(w.proc.stdout)
        w.proc.stdout.close()
        try:
            w.proc.stdin.close()
        except OSError:
            pass            # a broken pipe: nothing was left to write
        w.out = b""
        code = w.proc.wait()
        if w.buf:
            self._handle_line(w, w.buf)
            w.buf = b""
        w.proc = None
        if w.retired:
            self._clear_open(w, "the probe was stopped: removed, changed or its run ended")
        if w.stopping or w.retired:
            return
        if code == 0:                             # the probe ended on its own: that is not a failure
            w.finished = True
            log.info("probe %s finished", w.name)
            return
        how = w.kill_reason or (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
        if not self.restart:
            log.info("probe %s %s", w.name, how)
            self.probe_errors += 1
            return
        ran = time.monotonic() - w.started_at
        if ran > self.config.daemon.restart_backoff_max:
            w.failures = 0                        # it had been healthy: start the backoff afresh
        w.failures += 1
        delay = min(self.config.daemon.restart_backoff * 2 ** (w.failures - 1),
                    self.config.daemon.restart_backoff_max)
        w.next_start = time.monotonic() + delay
        w.live.lost(time.time(), f"worker {how}")
        if self.once.first(("exit", w.name, how)):
            log.error("probe %s %s; restarting in %.3gs (logged once; later restarts back off up to %.3gs)",
                      w.name, how, delay, self.config.daemon.restart_backoff_max)
            self.publish(Record(ERROR, w.spec.kind, w.name, {"error": f"worker {how}; restarting in {delay:.3g}s"}))
        else:
            log.debug("probe %s %s again; restarting in %.3gs", w.name, how, delay)

    # ---- liveness ----------------------------------------------------------------------
    def _gap(self, w, start, end, reasons):
        self.publish(Record(GAP, w.spec.kind, w.name, {
            "reason": "; ".join(reasons), "start": iso_time(start), "end": iso_time(end),
            "duration": seconds(round(end - start, 3))}))

    def _resumed(self, w, rec):
        """A RESULT arrived: close a stale stretch and the gap before it."""
        cleared, gap = w.live.result(time.monotonic(), rec.ts)
        if gap is not None:
            self._gap(w, *gap)
        if cleared is not None:
            log.info("probe %s: results resumed after %.1fs", w.name, cleared)
            self.publish(self._stale_event(CLEAR, w, cleared))

    def _stale_event(self, kind, w, age):
        return event(kind, w.spec.kind, w.name, metric="stale", value=seconds(round(age, 3)), op="<=",
                     threshold=seconds(w.live.allowed))

    def _check_liveness(self, now):
        wall = time.time()
        for w in self.workers.values():
            running = w.proc is not None and not w.stopping and w.kill_reason is None
            v = w.live.check(now, wall, running)
            if v.stale:
                log.warning("probe %s: no interval for %.1fs (due every %.3gs)", w.name, v.age, w.live.interval)
                self.publish(self._stale_event("BREACH", w, v.age))
            if v.frozen and running:
                w.kill_reason = f"frozen (no output for {now - w.live.last_beat:.1f}s); killed"
                try:
                    w.proc.kill()
                except OSError:
                    pass          # it exited just now: reaped on the next turn

    def _watchdog_ok(self, now):
        limit = self.config.daemon.watchdog_stale_limit
        if not limit:
            return True
        worst = max((w.live.stale_for(now) for w in self.workers.values()), default=0.0)
        if worst > limit and self.once.first(("watchdog", "stale")):
            log.error("a probe has been stale for more than %.3gs: no longer feeding the watchdog", limit)
        return worst <= limit

    def _stop_worker(self, w):
        if w.proc is not None and w.proc.poll() is None:
            w.stopping = True
            w.proc.send_signal(signal.SIGTERM)

    def _running(self):
        return [w for w in self.workers.values() if w.proc is not None]

    # ---- signals -----------------------------------------------------------------------
    def _on_stop_signal(self, _signum, _frame):
        self.signals += 1
        if self.signals >= 2:
            for w in self._running():
                try:
                    w.proc.kill()
                except OSError:
                    pass
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            os._exit(EXIT_SIGNAL)

    def _on_hup(self, _signum, _frame):
        self.reload_pending = True

    def _on_usr1(self, _signum, _frame):
        for w in self._running():
            try:
                w.proc.send_signal(signal.SIGUSR1)
            except OSError:
                pass        # it exited just now: reaped on the next turn

    def _install_signals(self):
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)

    # ---- reload ------------------------------------------------------------------------
    def reload(self):
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = load_file(self.config.file)
        except ConfigError as exc:
            why = f"reload failed, keeping the running config: {exc}"
            log.error("%s", why)
            self.publish(Record(ERROR, "daemon", "reload", {"error": why}))
            self.notifier.notify("READY=1", "STATUS=reload failed; running the previous config")
            return False
        if new.mesh != self.config.mesh:
            try:
                self.mesh = None if new.mesh is None else self._new_mesh(new.mesh)
            except ConfigError as exc:
                log.error("reload: %s; keeping the running mesh", exc)
                self.publish(Record(ERROR, "daemon", "reload", {"error": f"mesh not changed: {exc}"}))
                new = dataclasses.replace(new, mesh=self.config.mesh)
        elif self.mesh is not None:
            for rec in self.mesh.refresh(time.time()):
                self.publish(rec)
        self._mesh_due = None
        old_specs = {w.name: w.spec for w in self.workers.values()}
        if new.output_tables != self.config.output_tables:
            old_sinks, self.sinks = self.sinks, self._start_sinks(new)
            self._close_sinks(old_sinks)
            for s in old_sinks:           # their counts went with them; holding them kept every old sink alive
                self._drops_seen.pop(s, None)
        self.config = new
        new_specs = specs(new, self.mesh)
        self._apply(new_specs)
        kept = sum(1 for n in new_specs if n in old_specs and (old_specs[n].table == new_specs[n].table
                                                                or live_change(old_specs[n], new_specs[n])))
        log.info("reloaded %s: %d probes kept, %d started, %d stopped", new.file, kept,
                 len(new_specs) - kept, len(old_specs) - kept)
        self.notifier.notify("READY=1", f"STATUS=running {len(new_specs)} probes")
        return True

    def _new_mesh(self, cfg):
        from netprobe.mesh.runtime import MeshRuntime
        return MeshRuntime(cfg, time.time())

    def _apply(self, new_specs):
        """Stop workers whose spec went or changed, start new ones; unchanged ones run on, and
        those whose change their worker takes live get the new job on their stdin."""
        for name, w in list(self.workers.items()):
            spec = new_specs.get(name)
            if spec is None or spec.kind != w.spec.kind or (spec.table != w.spec.table
                                                            and not live_change(w.spec, spec)):
                w.retired = True
                self._stop_worker(w)
        for name, spec in new_specs.items():
            w = self.workers.get(name)
            if w is not None and not w.retired:
                changed = spec.table != w.spec.table
                if changed:
                    self._clear_open(w, "the peer was removed", _peer_names(w.spec) - _peer_names(spec))
                w.spec = spec                         # same table, or a live change; index may have moved
                w.file = self._file_of(spec)
                mesh, w.mesh = (w.mesh, w.mesh_also), self._mesh_of(spec)
                w.mesh_also = self._mesh_also(spec)
                if (changed or mesh != (w.mesh, w.mesh_also)) and w.proc is not None and not w.stopping:
                    log.info("%s: %s changed; sent to its running worker", name, LIVE[spec.kind] if changed
                             else f"mesh version {w.mesh} (also served: {', '.join(w.mesh_also) or 'none'})")
                    self._send_job(w)         # (a worker not running starts with the new job)
                continue
            self.workers[name] = nw = self._worker(spec)
            nw.next_start = 0.0
            if w is not None:       # the same name, restarted with changed settings: the old
                nw.live.lost(time.time(), "reload: settings changed")   # one measures until now

    def _worker(self, spec):
        w = Worker(spec, self._file_of(spec), self.config.daemon.stale_grace)
        w.mesh = self._mesh_of(spec)
        w.mesh_also = self._mesh_also(spec)
        return w

    def _mesh_of(self, spec):
        """The mesh version a worker's job carries: the one in effect, for the peer side (it refuses
        timetabled tests of another version) and for a timetabled test (its hellos name it)."""
        if self.mesh is None:
            return None
        p = self.mesh.derived.get(spec.name)
        if spec.name == SERVE_NAME or (p is not None and p.exclusive):
            return self.mesh.mesh.version
        return None

    def _mesh_also(self, spec):
        """The other mesh versions the peer side serves: those that run the same timetable."""
        return self.mesh.also_accepted() if self.mesh is not None and spec.name == SERVE_NAME else ()

    def _file_of(self, spec):
        """The file a worker's table came from: the mesh file for a derived probe."""
        if self.mesh is not None and spec.name in self.mesh.derived:
            return self.mesh.mesh.file
        return self.config.file

    def _mesh_tick(self):
        wall = time.time()
        if wall >= self.mesh.next_refresh:
            for rec in self.mesh.refresh(wall):
                self.publish(rec)
        for rec in self.mesh.flush(wall):
            self.publish(rec)
        self._apply(specs(self.config, self.mesh))
        for rec in self.mesh.deferrals(wall):     # after specs(): a pending mesh installs there
            self.publish(rec)
        for rec in self.mesh.errors():           # the mesh state could not be read or kept
            self.publish(rec)

    # ---- main loop ---------------------------------------------------------------------
    def run(self):
        self._install_signals()
        self.sinks = self._start_sinks(self.config)
        for name, spec in specs(self.config, self.mesh).items():
            self.workers[name] = self._worker(spec)
        if not self.workers:
            log.warning("%s has no [[probe]] tables; nothing to run", self.config.file)
        t0 = time.monotonic()
        deadline = t0 + self.duration if self.duration else None
        wd = self.notifier.watchdog_interval()
        next_wd = t0
        next_drops = t0 + self.config.daemon.drops_interval
        next_check = t0 + CHECK_EVERY
        ready = False
        while self.signals == 0:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if self.reload_pending:
                self.reload_pending = False
                self.reload()
            mesh_due = None
            if self.mesh is not None:
                if self._mesh_due is None or time.time() >= self._mesh_due:
                    self._mesh_tick()
                    self._mesh_due = self.mesh.due(time.time())
                mesh_due = now + max(0.0, self._mesh_due - time.time())
            for w in list(self.workers.values()):
                if w.retired and w.proc is None:
                    del self.workers[w.name]
                elif w.proc is None and not w.retired and not w.finished and (self.restart or not w.started_at) \
                        and now >= w.next_start:      # a one-shot run starts each probe once
                    self._spawn(w)
            if not self.restart and self.workers and not self._running():
                break                               # one-shot run: every probe has finished
            if not ready:
                ready = True
                self.notifier.notify("READY=1", f"MAINPID={os.getpid()}",
                                     f"STATUS=running {len(self.workers)} probes")
            if self.restart and now >= next_check:
                self._check_liveness(now)
                next_check = now + CHECK_EVERY
            if wd and now >= next_wd:
                if self._watchdog_ok(now):
                    self.notifier.notify("WATCHDOG=1")
                next_wd = now + wd
            if now >= next_drops:
                self._report_drops()
                next_drops = now + self.config.daemon.drops_interval
            unfed = [w for w in self._running() if w.out]
            for w in unfed:
                self._feed(w)
            timeout = self._next_timeout(now, deadline, next_wd if wd else None, next_drops,
                                         next_check if self.restart else None, mesh_due,
                                         now + FEED_EVERY if unfed else None)
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    self._drain_wakeup()
                else:
                    self._read(key.data)
        return self.shutdown()

    def _next_timeout(self, now, *times):
        pending = [w.next_start for w in self.workers.values() if w.proc is None and not w.retired]
        cands = [t for t in (*times, *pending) if t is not None]
        return max(0.0, min(cands) - now) if cands else 1.0

    def _drain_wakeup(self):
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def shutdown(self):
        self.notifier.notify("STOPPING=1", "STATUS=stopping: writing final results")
        for w in self.workers.values():
            self._stop_worker(w)
        end = time.monotonic() + self.config.daemon.stop_timeout
        while self._running() and time.monotonic() < end:
            for key, _ in self.sel.select(max(0.0, end - time.monotonic())):
                if key.data is None:
                    self._drain_wakeup()
                else:
                    self._read(key.data)
        for w in self._running():
            log.error("probe %s did not stop within %.3gs; killed (its last interval is lost)",
                      w.name, self.config.daemon.stop_timeout)
            w.live.lost(time.time(), f"did not stop within {self.config.daemon.stop_timeout:.3g}s; killed")
            w.proc.kill()
            self._read_until_eof(w)
        if self.restart:
            wall = time.time()
            for w in self.workers.values():
                gap = w.live.pending(wall)
                if gap is not None:
                    self._gap(w, *gap)
        self._report_drops()
        self._close_sinks(self.sinks)
        if not self.restart and self.probe_errors:
            return EXIT_RUNTIME
        return EXIT_OK

    def _read_until_eof(self, w):
        os.set_blocking(w.proc.stdout.fileno(), True)
        while w.proc is not None:
            self._read(w)
