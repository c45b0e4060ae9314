"""One probe instance in its own process.

Started by the supervisor as `python -m netprobe.supervisor.worker` with a
JSON job on stdin ({"kind", "table", "file", "index"}). It validates the
table again (cheap, and the worker trusts nothing), runs the probe, and
writes each record as one wire-format JSON line on stdout, and an empty
line every second as a heartbeat. Later lines on stdin are whole jobs again,
each changing what the running probe takes without a restart (a oneway
worker's peers list): the probe's `update` checks and applies it, and a bad
one is one ERROR record with the probe running on unchanged. SIGTERM asks it
to stop: the runner emits its final interval and the worker exits 0.
SIGINT is ignored so that a terminal's Ctrl-C reaches only the supervisor,
which decides the shutdown order.
"""
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import traceback

from netprobe import probes
from netprobe.config import schema
from netprobe.config.load import build_probe_config
from netprobe.errors import NetprobeError
from netprobe.results import ERROR, Record
from netprobe.supervisor.liveness import HEARTBEAT

PR_SET_PDEATHSIG = 1
MAX_JOB = 1 << 22        # bytes of one job line on stdin (a 4096-peer list takes under 1/10 of it)
SERVE = "serve"          # the job kind of the peer side ([serve] table), run like a probe
MESH_ALSO_MAX = 3         # versions besides the one in effect: pending, replaced, and a rollout's base


def _die_with_parent():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class LineEmitter:
    """Writes records to the supervisor; a closed pipe means the supervisor is gone: stop."""

    def __init__(self, stream, stop):
        self.stream = stream
        self.stop = stop
        self.lock = threading.Lock()

    def __call__(self, record):
        self.write(record.to_wire() + "\n")

    def write(self, line):
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                self.stop.set()

    def heartbeat(self):
        """An empty line every HEARTBEAT s, so the supervisor can tell a frozen process (stopped,
        wedged, holding the interpreter) from a probe that has nothing to say."""
        while not self.stop.wait(HEARTBEAT):
            self.write("\n")


def take_updates(stream, job, update, emit):
    """Apply each further job line on `stream` with `update(job)` until it closes."""
    kind, name = job["kind"], str(job["table"].get("name", "?"))
    while True:
        line = stream.readline(MAX_JOB)
        if not line:
            return                            # the supervisor closed it, or is gone
        try:
            if not line.endswith("\n"):
                while line and not line.endswith("\n"):
                    line = stream.readline(MAX_JOB)
                raise ValueError(f"longer than {MAX_JOB} bytes")
            new = json.loads(line)
            if not isinstance(new, dict) or new.get("kind") != kind or not isinstance(new.get("table"), dict):
                raise ValueError(f"not a {kind} job")
            update(new)
        except (ValueError, TypeError, RecursionError, NetprobeError) as exc:
            emit(Record(ERROR, kind, name, {"error": f"update not applied, running the previous settings: {exc}"}))


def probe_update(kind, runner):
    """update(job) for a running probe: its runner's `update` with the job's config."""
    def update(new):
        apply = getattr(runner, "update", None)
        if apply is None:
            raise ValueError(f"a running {kind} probe takes no update (a new worker does)")
        apply(build_probe_config(kind, new["table"], _where(new, f"probe[{new.get('index', 0)}]")))
    return update


def mesh_version(job):
    """The job's "mesh" (the mesh version in effect), None without one; ValueError if malformed."""
    from netprobe.peer.server import MESH_VERSION_RE
    mesh = job.get("mesh")
    if mesh is not None and not (isinstance(mesh, str) and MESH_VERSION_RE.fullmatch(mesh)):
        raise ValueError("mesh is not a mesh version")
    return mesh


def mesh_also(job):
    """The job's "mesh_also": other mesh versions the peer side serves too (see MeshRuntime)."""
    from netprobe.peer.server import MESH_VERSION_RE
    also = job.get("mesh_also", [])
    if not (isinstance(also, list) and len(also) <= MESH_ALSO_MAX
            and all(isinstance(v, str) and MESH_VERSION_RE.fullmatch(v) for v in also)):
        raise ValueError(f"mesh_also is not a list of up to {MESH_ALSO_MAX} mesh versions")
    return tuple(also)


def serve_update(server, table):
    """update(job) for the peer side: a new mesh version; its [serve] settings need a new worker."""
    def update(new):
        if new["table"] != table:
            raise ValueError("changed [serve] settings need a new worker")
        server.set_mesh(mesh_version(new), mesh_also(new))
    return update


def _listen(updates, job, update, emit):
    if updates is not None:
        threading.Thread(target=take_updates, args=(updates, job, update, emit), name="updates",
                         daemon=True).start()


def _where(job, what):
    return schema.Where(job.get("file"), what)


def run_job(job, out, updates=None):
    """Run one probe job until SIGTERM, taking updates from the `updates` stream; returns the exit
    code."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)      # a probe that acts on it installs its own handler
    emit = LineEmitter(out, stop)
    threading.Thread(target=emit.heartbeat, name="heartbeat", daemon=True).start()
    kind, table = job["kind"], job["table"]
    name = str(table.get("name", "?"))
    try:
        mesh = mesh_version(job)
        if kind == SERVE:
            from netprobe import serve
            server = serve.make_server(schema.build(serve.ServeConfig, table, _where(job, "serve")))
            server.set_mesh(mesh, mesh_also(job))
            _listen(updates, job, serve_update(server, table), emit)
            server.serve_forever(stop)
            return 0
        if mesh is not None:                  # a mesh-timetabled test: its hellos name the mesh version
            from netprobe.peer import client
            client.HELLO_EXTRA["mesh"] = mesh
        cfg = build_probe_config(kind, table, _where(job, f"probe[{job.get('index', 0)}]"))
        runner = probes.load(kind).Runner(cfg, emit)
        _listen(updates, job, probe_update(kind, runner), emit)
        runner.run(stop)
        return 0
    except NetprobeError as exc:
        emit(Record(ERROR, kind, name, {"error": str(exc)}))
        return exc.exit_code
    except Exception as exc:   # a bug: report it in one line, details only at debug level
        emit(Record(ERROR, kind, name, {"error": f"internal error: {type(exc).__name__}: {exc}"}))
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        return 1


def main():
    _die_with_parent()
    level = os.environ.get("NETPROBE_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format=f"netprobe worker[{os.getpid()}]: %(levelname)s: %(message)s")
    job = json.loads(sys.stdin.readline(MAX_JOB))
    return run_job(job, sys.stdout, sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
