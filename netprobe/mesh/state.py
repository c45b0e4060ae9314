"""What a host keeps of its mesh across restarts (`[mesh] state`): the mesh whose timetable is in
force here and the rollout under way (the version loaded and when it was read).

A daemon that starts with a mesh other than the one in force before goes on with that rollout, or
begins one read now, instead of putting the new timetable in force at once: it cannot know that
every other host has read the change (docs/mesh.md, Rollout). Written atomically, 0600, when it
changes (once per mesh change); a missing file is a first start, an unreadable one is reported.
"""
import json
import math
from dataclasses import dataclass

from netprobe.errors import ConfigError
from netprobe.fileio import replace_private
from netprobe.mesh import fetch, model, plan

MAX_BYTES = 4 * fetch.MAX_BYTES       # a mesh as JSON is a little larger than as TOML


@dataclass(frozen=True)
class Kept:
    in_force: object          # model.Mesh whose timetable was in force
    timetable: object         # plan.Timetable of it
    rolling: str              # version being rolled out, "" when none
    read_at: float            # when that version was read (s since the epoch)


def load(path):
    """(Kept or None, error): (None, "") when nothing is kept (no file, or `state` is "")."""
    if not path:
        return None, ""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None, ""           # nothing kept yet (saving there is what reports a bad path)
    except OSError as exc:
        return None, f"{path}: {exc.strerror}"
    try:
        if len(data) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        top = json.loads(data)
        if not isinstance(top, dict) or not isinstance(top.get("in_force"), dict):
            raise ValueError("no in_force table")
        rolling = top.get("rolling") or {}
        if not isinstance(rolling, dict):
            raise ValueError("rolling is not a table")
        version, read_at = rolling.get("version", ""), rolling.get("read_at", 0.0)
        if not isinstance(version, str) or isinstance(read_at, bool) or not isinstance(read_at, (int, float)) \
                or not math.isfinite(read_at):
            raise ValueError("rolling needs a version string and a finite read_at")
        mesh = model.load_dict(top["in_force"], path)
        return Kept(mesh, plan.timetable(mesh), version, float(read_at)), ""
    except (ValueError, RecursionError, ConfigError) as exc:     # json's errors are ValueErrors
        return None, f"{path}: unreadable ({exc})"


def save(path, in_force, rolling="", read_at=0.0):
    """Write what is kept; "" or why it could not be."""
    body = json.dumps({"in_force": in_force.doc,
                       "rolling": {"version": rolling, "read_at": read_at} if rolling else None},
                      default=str, separators=(",", ":")).encode()
    try:
        replace_private(path, body)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != path else ""
        return f"cannot keep the mesh state in {path}: {exc.strerror}{where}"
    return ""
