"""Parse and format the units users write: rates, durations, sizes.

Rates are bits per second with decimal SI prefixes (100M, 9.5G, 1.2Gbit/s);
"bps"/"Bps" are refused because users mix up bits and bytes with them.
Durations are seconds (100ms, 15s, 2m). Sizes are bytes (1400, 64K = 65536).
Parsers raise ValueError with a message that shows valid examples; config
and CLI code wrap it with the location.
"""
import json
import math
import re

_SI = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_BIN = {"": 1, "k": 1024, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
_DUR = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
        "min": 60.0, "h": 3600.0}

_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKMGT]?)"
                      r"\s*(bit/s|bit)?\s*$")
_DUR_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ns|us|µs|ms|s|min|m|h)\s*$")
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([kKMG]?)(i?B)?\s*$")

RATE_EXAMPLES = "examples: 100M, 9.5G, 1.2Gbit/s, 500k"
DURATION_EXAMPLES = "examples: 100ms, 15s, 2m, 250us"
SIZE_EXAMPLES = "examples: 1400, 64K, 1M"


def show(value):
    """A value as the user wrote it in TOML: strings as basic strings, quoted and escaped (so a
    newline in a value cannot split a one-line error)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_rate(value):
    """Bits per second from '100M', '9.5G', '1.2Gbit/s' or a plain number."""
    if _finite_number(value):
        return float(value)
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if m:
            return float(m.group(1)) * _SI[m.group(2)]
    raise ValueError(f"{show(value)} is not a rate ({RATE_EXAMPLES})")


def parse_duration(value):
    """Seconds from '100ms', '15s', '2m' or a plain number of seconds."""
    if _finite_number(value):
        return float(value)
    if isinstance(value, str):
        m = _DUR_RE.match(value)
        if m:
            return float(m.group(1)) * _DUR[m.group(2)]
    raise ValueError(f"{show(value)} is not a duration ({DURATION_EXAMPLES})")


def parse_size(value):
    """Bytes from '1400', '64K' (binary prefixes) or a plain integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _BIN[m.group(2)]
    raise ValueError(f"{show(value)} is not a size in bytes ({SIZE_EXAMPLES})")


def _scaled(value, steps, unit):
    for factor, prefix in steps:
        if abs(value) >= factor:
            return f"{short(value / factor)}{prefix}{unit}"
    return f"{short(value)}{unit}"


def short(x):
    """Four significant digits, no trailing zeros: 812.4, 9.5, 0.0123."""
    if x == 0 or not math.isfinite(x):
        return str(x) if not math.isfinite(x) else "0"
    text = f"{x:.4g}"
    return text if "e" not in text else f"{x:.3e}"


def format_rate(bps):
    return _scaled(bps, [(1e9, "G"), (1e6, "M"), (1e3, "k")], "bit/s")


def format_duration(seconds):
    if seconds == 0:
        return "0s"
    a = abs(seconds)
    if a >= 1:
        return f"{short(seconds)}s"
    if a >= 1e-3:
        return f"{short(seconds * 1e3)}ms"
    if a >= 1e-6:
        return f"{short(seconds * 1e6)}us"
    return f"{short(seconds * 1e9)}ns"


def format_size(nbytes):
    return _scaled(nbytes, [(1e9, "G"), (1e6, "M"), (1e3, "k")], "B")
