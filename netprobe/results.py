"""Records every probe emits, how they print, and breach hysteresis.

A Record is one line of output: an interval RESULT, a BREACH or CLEAR event,
a probe ERROR, a sink DROPS report, or a GAP (a span a probe did not measure,
with the reason: restart, crash, reload, a frozen or stale worker). Text form (one line, grep-able):

  2026-11-23T03:25:04.123Z BREACH probe=throughput name=dc1-dc2 dir=a->b metric=rate \
      value=812.4Mbit/s sla=>=950Mbit/s window=15s

JSON form (one object per line): the same keys, Quantity values as plain
numbers in base units (bit/s, s, B) with their unit under "units".
Both forms are scrubbed of the configured keys (netprobe.redact).
"""
import json
import math
import time
from dataclasses import dataclass, field

from netprobe import redact, units

RESULT, BREACH, CLEAR, ERROR, DROPS, GAP = "RESULT", "BREACH", "CLEAR", "ERROR", "DROPS", "GAP"
EVENT_TYPES = (RESULT, BREACH, CLEAR, ERROR, DROPS, GAP)


@dataclass(frozen=True)
class Quantity:
    """A number with a base unit: 'bit/s', 's', 'B', '%' or '' (count)."""
    value: float
    unit: str

    def __str__(self):
        if self.value is None or (isinstance(self.value, float) and not math.isfinite(self.value)):
            return "nan"
        if self.unit == "bit/s":
            return units.format_rate(self.value)
        if self.unit == "s":
            return units.format_duration(self.value)
        if self.unit == "B":
            return units.format_size(self.value)
        return f"{units.short(self.value)}{self.unit}"


def rate(bps):
    return Quantity(float(bps), "bit/s")


def seconds(s):
    return Quantity(float(s), "s")


def nbytes(n):
    return Quantity(float(n), "B")


def percent(p):
    return Quantity(float(p), "%")


@dataclass(frozen=True)
class Record:
    type: str                      # one of EVENT_TYPES
    probe: str                     # probe kind, e.g. "host"
    name: str                      # probe instance name from the config
    fields: dict = field(default_factory=dict)
    ts: float = field(default_factory=time.time)   # Unix time, seconds

    def to_text(self):
        parts = [iso_time(self.ts), self.type, f"probe={self.probe}", f"name={_text_value(self.name)}"]
        for k, v in self.fields.items():
            if k == "sla_op":
                continue
            if k == "threshold" and "sla_op" in self.fields:
                k, v = "sla", self.fields["sla_op"] + _text_value(v)
            parts.extend(f"{key}={text}" for key, text in _text_items(k, v))
        return redact.scrub(" ".join(parts))

    def to_dict(self):
        out = {"ts": iso_time(self.ts), "type": self.type, "probe": self.probe, "name": self.name}
        unit_map = {}
        for k, v in self.fields.items():
            if isinstance(v, Quantity):
                out[k] = _json_number(v.value)
                unit_map[k] = v.unit
            else:
                out[k] = _json_number(v) if isinstance(v, float) else v
        if unit_map:
            out["units"] = unit_map
        return redact.scrub_obj(out)

    def to_json(self):
        return redact.scrub(json.dumps(self.to_dict(), separators=(",", ":"), default=str))

    def to_wire(self):
        """Lossless form for the worker -> supervisor pipe."""
        return json.dumps({"type": self.type, "probe": self.probe, "name": self.name, "ts": self.ts,
                           "fields": {k: ({"q": v.value, "u": v.unit} if isinstance(v, Quantity) else v)
                                      for k, v in self.fields.items()}},
                          separators=(",", ":"), default=str)

    @classmethod
    def from_wire(cls, line):
        d = json.loads(line)
        fields = {k: (Quantity(v["q"], v["u"]) if isinstance(v, dict) and set(v) == {"q", "u"} else v)
                  for k, v in d["fields"].items()}
        return cls(d["type"], d["probe"], d["name"], fields, d["ts"])


def event(kind, probe, name, *, metric, value, op, threshold, window=None, ts=None, **extra):
    """A BREACH or CLEAR record: metric, measured value, and the SLA it is judged by.

    `value` and `threshold` are Quantity; `op` is '>=' or '<=' (what the SLA
    requires of the value). A yes/no SLA passes bools and op '' (value=no sla=yes).
    Extra keyword fields (dir=..., count=...) come first.
    """
    fields = dict(extra)
    fields["metric"] = metric
    fields["value"] = value
    fields["sla_op"] = op
    fields["threshold"] = threshold
    if window is not None:
        fields["window"] = window
    return Record(kind, probe, name, fields, ts if ts is not None else time.time())


def iso_time(ts):
    """UTC with milliseconds, e.g. 2026-11-23T03:25:04.123Z."""
    sec, ms = divmod(int(round(ts * 1000)), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ms:03d}Z"


def _json_number(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _text_items(key, v):
    """(key, text) pairs of one field for the key=value form: a dict becomes key.sub=...
    fields, a list of plain values a comma list, any other list compact JSON."""
    if isinstance(v, dict):
        for sub, sv in v.items():
            yield from _text_items(f"{key}.{sub}", sv)
    elif isinstance(v, (list, tuple)):
        if not v:
            yield key, "-"
        elif all(isinstance(x, (str, int, float, Quantity)) or x is None for x in v):
            yield key, _text_value(",".join(_text_value(x) for x in v))
        else:
            text = json.dumps(v, separators=(",", ":"), default=str)
            yield key, text if not any(c in text for c in " \n\t") else json.dumps(text)
    else:
        yield key, _text_value(v)


def _text_value(v):
    if v is None:
        text = "-"
    elif isinstance(v, bool):
        text = "yes" if v else "no"
    elif isinstance(v, float):
        text = units.short(v)
    else:
        text = str(v)
    if text == "" or any(c in text for c in ' "\n\t'):
        return json.dumps(text)
    return text


class Hysteresis:
    """BREACH after `breach_after` bad windows in a row, CLEAR after `clear_after` good ones.

    Keyed per (dir, metric) so one probe can track several SLAs independently.
    """

    def __init__(self, breach_after=3, clear_after=3):
        if breach_after < 1 or clear_after < 1:
            raise ValueError("breach_after and clear_after must be >= 1")
        self.breach_after = breach_after
        self.clear_after = clear_after
        self._state = {}   # key -> [in_breach, consecutive_bad, consecutive_good]

    def update(self, key, bad):
        """Feed one window's verdict; returns BREACH, CLEAR or None."""
        st = self._state.setdefault(key, [False, 0, 0])
        if bad:
            st[1] += 1
            st[2] = 0
            if not st[0] and st[1] >= self.breach_after:
                st[0] = True
                return BREACH
        else:
            st[2] += 1
            st[1] = 0
            if st[0] and st[2] >= self.clear_after:
                st[0] = False
                return CLEAR
        return None

    def active(self, key):
        return self._state.get(key, [False])[0]
