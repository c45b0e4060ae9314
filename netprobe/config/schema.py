"""Typed settings for frozen config dataclasses, and their validation.

Every probe and sink config is a frozen dataclass whose fields are declared
with `setting(...)`: a value type, a default, a one-line doc with the unit,
and bounds. `build(cls, table, where)` turns a TOML table (or CLI options)
into an instance, raising ConfigError that names the file, the TOML path,
the value and what is valid. The same declarations generate CLI options and
the annotated documentation, so there is one source of truth.
"""
import dataclasses
import difflib
import ipaddress
import math
import re

from netprobe import redact, units
from netprobe.errors import ConfigError
from netprobe.units import show

RATE, DURATION, SIZE, INT, FLOAT, STR, BOOL, CHOICE, STR_LIST, PREFIX_LIST = (
    "rate", "duration", "size", "int", "float", "str", "bool", "choice", "str_list", "prefix_list")

_UNIT_HINT = {RATE: "bit/s", DURATION: "s", SIZE: "bytes"}


def setting(kind, default, doc, *, min=None, max=None, choices=None, required=False):
    """Declare a config field. `min`/`max` are in base units (s, bit/s, bytes)."""
    meta = {"kind": kind, "doc": doc, "min": min, "max": max, "choices": choices,
            "required": required}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields(cls):
    return [f for f in dataclasses.fields(cls) if "kind" in f.metadata]


def toml_key(name):
    """A key as a TOML path writes it: bare when it can be, else a quoted, escaped string
    (so a key holding a newline cannot split an error line)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else show(name)


class Where:
    """Location of a table for error messages: file and TOML path prefix."""

    def __init__(self, file, path):
        self.file = file
        self.path = path

    def key(self, key):
        key = toml_key(str(key))
        return f"{self.path}.{key}" if self.path else key

    def error(self, key, message):
        return ConfigError(message, file=self.file, path=self.key(key) if key else self.path)


def convert(f, value, where):
    """Check and convert one value for field `f` (a dataclasses.Field)."""
    m = f.metadata
    kind = m["kind"]
    shown = redact.REDACTED if redact.is_secret_name(f.name) else show(value)   # errors never quote a key
    try:
        if kind == RATE:
            out = units.parse_rate(value)
        elif kind == DURATION:
            out = units.parse_duration(value)
        elif kind == SIZE:
            out = units.parse_size(value)
        elif kind == INT:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{shown} is not an integer")
            out = value
        elif kind == FLOAT:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{shown} is not a number")
            out = float(value)
        elif kind == BOOL:
            if not isinstance(value, bool):
                raise ValueError(f"{shown} is not true or false")
            out = value
        elif kind == STR:
            if not isinstance(value, str) or (m["required"] and not value):
                raise ValueError(f"{shown} is not a{' non-empty' if m['required'] else ''} string")
            out = value
        elif kind == CHOICE:
            if value not in m["choices"]:
                valid = ", ".join(show(c) for c in m["choices"])
                raise ValueError(f"{shown} is not one of {valid}")
            out = value
        elif kind == STR_LIST:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{shown} is not a list of strings")
            out = tuple(value)
        elif kind == PREFIX_LIST:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{shown} is not a list of prefixes (example: [\"127.0.0.0/8\", \"::1/128\"])")
            try:
                out = tuple(ipaddress.ip_network(v, strict=False) for v in value)
            except (ValueError, TypeError):
                raise ValueError(f"{shown} is not a list of prefixes "
                                 '(example: ["10.0.0.0/8", "::1/128"])') from None
        else:
            raise AssertionError(kind)
    except ValueError as exc:
        raise where.error(f.name, str(exc)) from None
    lo, hi = m["min"], m["max"]
    if kind in (RATE, DURATION, SIZE, INT, FLOAT) and ((lo is not None and out < lo) or (hi is not None and out > hi)):
        raise where.error(f.name, f"{shown} is out of range ({_range_text(kind, lo, hi)})")
    return out


def _fmt(kind, v):
    if kind == RATE:
        return units.format_rate(v)
    if kind == DURATION:
        return units.format_duration(v)
    if kind == SIZE:
        return f"{v} bytes"
    return str(v)


def _range_text(kind, lo, hi):
    if lo is not None and hi is not None:
        return f"valid: {_fmt(kind, lo)} to {_fmt(kind, hi)}"
    if lo is not None:
        return f"valid: at least {_fmt(kind, lo)}"
    return f"valid: at most {_fmt(kind, hi)}"


def unknown_key_error(key, valid, where):
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return where.error(key, f"unknown key; {hint}")


def build(cls, table, where, *, ignore=()):
    """Validate a TOML table (dict) against dataclass `cls`; return an instance."""
    if not isinstance(table, dict):
        raise where.error(None, f"{show(table)} is not a table")
    known = {f.name: f for f in fields(cls)}
    for key in table:
        if key not in known and key not in ignore:
            raise unknown_key_error(key, list(known) + list(ignore), where)
    values = {}
    for name, f in known.items():
        if name in table:
            values[name] = convert(f, table[name], where)
            redact.register_config({name: values[name]})
        elif f.metadata["required"]:
            raise where.error(name, f"missing (required: {f.metadata['doc']})")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if default is not None:           # defaults take the same form as given values
                values[name] = convert(f, default, where)
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def describe(cls):
    """(name, kind, default, doc) per field, for --help and documentation."""
    out = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f.name, f.metadata["kind"], default, f.metadata["doc"]))
    return out


def default_text(kind, value):
    if value is None:
        return "none"
    if kind in (RATE, DURATION):
        return _fmt(kind, value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or "none"
    return str(value)
