"""Probe kinds. Each kind is a package netprobe.probes.<kind> exporting
`Config` (frozen dataclass, see config.schema), `Runner` (see base.ProbeRunner),
`SUMMARY` (one line for --help) and `EXAMPLE` (a command line for --help).
The kind name is the same everywhere: TOML `kind = "host"`, CLI
`netprobe probe host`, log field `probe=host`. A kind whose peer side runs
inside `netprobe serve` also has a module `responder` with `respond(session)`
(see netprobe.peer.server.Session).
"""
import importlib
import importlib.util

from netprobe.errors import ConfigError

KINDS = ("host", "throughput", "capacity", "flows", "oneway", "retrans")


def load(kind):
    """The module of a probe kind, or ConfigError listing the valid kinds."""
    if kind not in KINDS:
        raise ConfigError(f'"{kind}" is not a probe kind (valid: {", ".join(KINDS)})')
    return importlib.import_module(f"netprobe.probes.{kind}")


def responders():
    """kind -> respond(session) for every kind that answers as a peer."""
    out = {}
    for kind in KINDS:
        name = f"netprobe.probes.{kind}.responder"
        if importlib.util.find_spec(name) is not None:
            out[kind] = importlib.import_module(name).respond
    return out
