"""Probe kinds. Each kind is a package netprobe.probes.<kind> exporting
`Config` (frozen dataclass, see config.schema), `Runner` (see base.ProbeRunner),
`SUMMARY` (one line for --help) and `EXAMPLE` (a command line for --help).
The kind name is the same everywhere: TOML `kind = "host"`, CLI
`netprobe probe host`, log field `probe=host`.
"""
import importlib

from netprobe.errors import ConfigError

KINDS = ("host", "throughput", "capacity", "flows", "oneway", "retrans")


def load(kind):
    """The module of a probe kind, or ConfigError listing the valid kinds."""
    if kind not in KINDS:
        raise ConfigError(f'"{kind}" is not a probe kind (valid: {", ".join(KINDS)})')
    return importlib.import_module(f"netprobe.probes.{kind}")
