"""Read jsonfile archives back: streaming, into numpy arrays per probe and direction or port.

An archive is any set of files the jsonfile sink wrote: the live file, rotated files
(`<path>.<stamp>[.N]`, plain or gzipped), in any order, from several runs (each file
starts with a HEADER line holding the effective config). Files are read in 4 MiB
blocks; RESULT lines of the known kinds are picked apart by one regular expression per
kind over the whole block (their keys come in a fixed order: Record.to_dict keeps the
order the runner wrote them), so no dict is built per record. Every other line (HEADER,
BREACH, CLEAR, GAP, ERROR: a few per hour) goes through json.loads.

Problems never stop the read: a corrupt or cut line, a truncated last gzip member,
an unreadable file, a file without a HEADER (an older version's or not an archive)
are counted and returned as data-quality items, one line each.
"""
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import re
import stat
import zlib

import numpy as np

from netprobe import __version__
from netprobe.results import BREACH, CLEAR, GAP

BLOCK = 4 << 20
NUM, STR, BOOL = "num", "str", "bool"
NUM_WIDTH, STR_WIDTH, NAME_WIDTH = 24, 24, 64

# RESULT fields read per kind. A field absent from a line reads as NaN (numbers and
# booleans: 1.0 true, 0.0 false) or "" (strings).
FIELDS = {
    "throughput": (("dir", STR), ("sla_rate", NUM), ("rate", NUM), ("ratio", NUM), ("rtt", NUM),
                   ("retrans_pct", NUM), ("limited_by", STR)),
    "oneway": (("port", NUM), ("loss", NUM), ("delay_p50", NUM), ("delay_p99", NUM), ("clock_synced", BOOL),
               ("delay_bound", NUM)),
    "capacity": (("capacity", NUM), ("ci_lo", NUM), ("ci_hi", NUM)),
    "host": (("late_p50", NUM), ("late_p99", NUM), ("clock_synced", BOOL), ("clock_maxerror", NUM)),
}
# The field that splits a kind's records into series (direction, source port), if any.
SPLIT = {"throughput": "dir", "oneway": "port"}

# {"ts":"2026-11-23T03:25:04.123Z","type":"RESULT","probe":"<kind>","name":"<name>",...}
_TS_AT, _TS_LEN, _KIND_AT = 7, 23, 58
_PREFIX = np.frombuffer(b'{"ts":"0000-00-00T00:00:00.000Z","type":"RESULT","probe":"', np.uint8)
_PREFIX_FIXED = np.r_[0:_TS_AT, _TS_AT + _TS_LEN:_KIND_AT]
_QUOTE, _COMMA, _NL, _CLOSE, _SPACE = 34, 44, 10, 125, 32


@dataclasses.dataclass
class Series:
    """One probe's intervals for one direction or port: `ts` (Unix s, interval end, sorted,
    unique) and one array per field in `cols`."""
    kind: str
    name: str
    sub: str                 # direction ("a->b"), source port, or "" for the probe as a whole
    ts: np.ndarray
    cols: dict


@dataclasses.dataclass
class Archive:
    series: list             # Series, sorted by (kind, name, sub)
    events: list             # BREACH / CLEAR dicts (ts as Unix s), sorted by ts
    gaps: list               # GAP dicts with start/end as Unix s, sorted by start
    errors: list             # ERROR dicts
    headers: list            # HEADER dicts with "started" as Unix s and "file", sorted by start
    quality: list            # one line per data problem
    lines: int = 0
    files: int = 0

    def probes(self):
        """{name: kind} of every probe seen in a series, event or header."""
        out = {}
        for h in self.headers:
            for p in (h.get("config_effective") or {}).get("probe") or ():
                if isinstance(p, dict) and isinstance(p.get("name"), str):
                    out[p["name"]] = str(p.get("kind"))
        for s in self.series:
            out[s.name] = s.kind
        return out

    def config(self, name, at=None):
        """The probe table of `name` from the latest HEADER started at or before `at`
        (default: the latest), or {}."""
        found = {}
        for h in self.headers:
            if at is not None and h["started"] > at and found:
                break
            for p in (h.get("config_effective") or {}).get("probe") or ():
                if isinstance(p, dict) and p.get("name") == name:
                    found = p
        return found


def iso_to_unix(text):
    """'2026-11-23T03:25:04.123Z' -> Unix seconds (float); ValueError if not that form."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError(f"not a UTC time: {text!r}")
    return float(np.datetime64(text[:-1], "ms").astype(np.int64)) / 1000.0


def discover(paths):
    """Regular files named or found (not recursively) in the directories named, sorted.
    A gzip temporary (.gz.tmp) is skipped: the sink replaces it with the .gz or removes it."""
    out, problems = [], []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            problems.append(f"{p}: cannot read: {exc.strerror}")
            continue
        if stat.S_ISDIR(st.st_mode):
            names = sorted(n for n in os.listdir(p) if not n.endswith(".tmp") and not n.startswith("."))
            out.extend(os.path.join(p, n) for n in names if os.path.isfile(os.path.join(p, n)))
        elif stat.S_ISREG(st.st_mode):
            out.append(p)
        else:
            problems.append(f"{p}: not a file or directory")
    seen, unique = set(), []
    for f in out:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def _blocks(path, quality):
    """The file's bytes in blocks ending at a line end; gzip (any number of members) undone.
    A truncated or corrupt gzip stream ends the file with a data-quality item."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
        fh.seek(0)
        before = len(quality)
        if magic == b"\x1f\x8b":
            raw = _gunzip(fh, path, quality)
        else:
            raw = iter(lambda: fh.read(BLOCK), b"")
        rest = b""
        for data in raw:
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield data[:cut]
        if rest and len(quality) == before:     # after a cut gzip stream the partial line is that cut
            yield rest + b"\n"


def _gunzip(fh, path, quality):
    d, started = zlib.decompressobj(wbits=31), False
    while chunk := fh.read(BLOCK):
        while chunk:
            started = True
            try:
                out = d.decompress(chunk, BLOCK)          # bounded: a 4 MiB block may hold 40 MiB of text
            except zlib.error as exc:
                quality.append(f"{path}: corrupt gzip data ({exc}); the rest of the file is skipped")
                return
            if out:
                yield out
            chunk = d.unconsumed_tail
            if chunk:
                continue
            if d.eof:                     # a member ended: another may follow
                chunk = d.unused_data
                d, started = zlib.decompressobj(wbits=31), False
    if started:
        tail = d.flush()
        if tail:
            yield tail
        quality.append(f"{path}: truncated gzip data (the file was cut short); records up to the cut are read")


def _gather(buf, pos, width):
    """Rows of `width` bytes of buf from each position (buf ends with NAME_WIDTH spaces)."""
    return np.lib.stride_tricks.sliding_window_view(buf, width)[pos]


def _unix_ms(stamps):
    """(n, 23) bytes 'YYYY-MM-DDTHH:MM:SS.mmm' -> Unix ms (int64); -1 where not digits."""
    d = stamps.astype(np.int64) - 48
    num = lambda a, b: (d[:, a:b] * 10 ** np.arange(b - a - 1, -1, -1)).sum(axis=1)   # noqa: E731
    y, m, day = num(0, 4), num(5, 7), num(8, 10)
    # days from civil (proleptic Gregorian), vectorized
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    ms = ((days * 24 + num(11, 13)) * 60 + num(14, 16)) * 60 + num(17, 19)
    ms = ms * 1000 + num(20, 23)
    digits = np.r_[0:4, 5:7, 8:10, 11:13, 14:16, 17:19, 20:23]
    good = ((d[:, digits] >= 0) & (d[:, digits] <= 9)).all(axis=1) & (m >= 1) & (m <= 12) & (day >= 1)
    return np.where(good, ms, -1)


def _cut(rows, length, fill=_SPACE):
    """Blank each row from its `length` on; as a fixed-width bytes array."""
    rows = rows.copy()
    rows[np.arange(rows.shape[1]) >= length[:, None]] = fill
    return np.ascontiguousarray(rows).view(f"S{rows.shape[1]}").ravel()


def _numbers(rows, length):
    """Rows of number text (each `length` long) -> (float64 values, valid). null is NaN and
    valid; text that is not a JSON number is invalid (the line then goes to json.loads)."""
    digit = (rows[:, 0] - 48 < 10) | ((rows[:, 0] == ord("-")) & (rows[:, 1] - 48 < 10))
    null = (length == 4) & (rows[:, :4] == np.frombuffer(b"null", np.uint8)).all(axis=1)
    raw = _cut(rows, np.where(digit, length, 0))
    raw[~digit] = b"nan"
    valid = digit | null
    try:
        return raw.astype(np.float64), valid
    except ValueError:             # a mangled number among them: one by one
        out = np.full(len(raw), np.nan)
        for i, t in enumerate(raw):
            try:
                out[i] = float(t)
            except ValueError:
                valid[i] = False
        return out, valid


class _Kind:
    """Column blocks of one kind, concatenated at the end. Strings (names, directions) are
    kept as int32 codes into `words`: a month of records holds no per-record bytes."""

    def __init__(self, kind):
        self.kind = kind
        self.fields = FIELDS[kind]
        self.ts, self.names = [], []
        self.cols = {f: [] for f, _ in self.fields}
        self.words = {}

    def codes(self, strings):
        """Fixed-width bytes array -> int32 codes."""
        uniq, inv = np.unique(strings, return_inverse=True)
        table = np.array([self.words.setdefault(bytes(u), len(self.words)) for u in uniq], dtype=np.int32)
        return table[inv.ravel()]

    def add(self, ts, names, cols):
        self.ts.append(ts)
        self.names.append(self.codes(names))
        for f, t in self.fields:
            self.cols[f].append(self.codes(cols[f]) if t == STR else cols[f])

    def export(self):
        """The blocks concatenated, with the words their codes index (to merge elsewhere)."""
        return {"ts": np.concatenate(self.ts), "names": np.concatenate(self.names),
                "cols": {f: np.concatenate(v) for f, v in self.cols.items()},
                "words": sorted(self.words, key=self.words.get)}

    def merge(self, part):
        """Add another _Kind's export, its codes mapped to this one's words."""
        remap = np.array([self.words.setdefault(w, len(self.words)) for w in part["words"]], dtype=np.int32)
        self.ts.append(part["ts"])
        self.names.append(remap[part["names"]])
        for f, t in self.fields:
            v = part["cols"][f]
            self.cols[f].append(remap[v] if t == STR else v)

    def add_dicts(self, objs):
        """Records that took the slow path (json.loads), as columns."""
        if not objs:
            return
        ts = np.array([round(o["ts"] * 1000) for o in objs], dtype=np.int64)
        names = np.array([o["name"].encode() for o in objs], dtype=object)
        cols = {}
        for f, t in self.fields:
            vals = [o.get(f) for o in objs]
            if t == STR:
                cols[f] = np.array([v.encode() if isinstance(v, str) else b"" for v in vals], dtype=object)
            elif t == BOOL:
                cols[f] = np.array([float(v) if isinstance(v, bool) else np.nan for v in vals])
            else:
                cols[f] = np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                                    else np.nan for v in vals])
        self.add(ts, names, cols)

    def series(self):
        if not self.ts:
            return []
        ts = np.concatenate(self.ts)
        names = np.concatenate(self.names)
        self.ts = self.names = None
        words = np.empty(len(self.words), dtype=object)
        for w, i in self.words.items():
            words[i] = w.decode(errors="replace")
        split = SPLIT.get(self.kind)
        if split is None:
            sub = np.zeros(len(ts), dtype=np.int64)
        else:
            sub = np.concatenate(self.cols[split])
            if sub.dtype.kind == "f":                   # a port number; -1: the probe as a whole
                sub = np.where(np.isnan(sub), -1, sub).astype(np.int64)
        name_codes, name_idx = np.unique(names, return_inverse=True)
        sub_codes, sub_idx = np.unique(sub, return_inverse=True)
        key = name_idx.astype(np.int64) * len(sub_codes) + sub_idx
        del names, sub, name_idx, sub_idx
        order = np.lexsort((ts, key))
        key, ts = key[order], ts[order]
        # de-duplicate: the same interval read twice (an archive copied, a file named twice)
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (key[1:] != key[:-1]) | (ts[1:] != ts[:-1])
        order, key, ts = order[keep], key[keep], ts[keep]
        cols = {}
        for f, t in self.fields:                        # one field at a time: the blocks freed as we go
            if f != split:
                v = np.concatenate(self.cols.pop(f))[order]
                cols[f] = words[v] if t == STR else v
        self.cols = None
        out = []
        bounds = np.flatnonzero(np.diff(key)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(key)], strict=True):
            k = key[lo]
            name = words[name_codes[k // len(sub_codes)]]
            s = sub_codes[k % len(sub_codes)]
            if split is None:
                s = ""
            elif self.kind == "oneway":
                s = "" if s < 0 else str(int(s))
            else:
                s = words[s]
            out.append(Series(self.kind, name, s, ts[lo:hi] / 1000.0, {f: v[lo:hi] for f, v in cols.items()}))
        return out


class _Block:
    """One block of whole lines: RESULT lines of the kinds read are cut apart with numpy
    (separators found once, then each field taken at its column for every line of a given
    layout); every other line is returned for json.loads."""

    def __init__(self, data):
        self.data = data
        self.buf = np.frombuffer(data + b" " * NAME_WIDTH, np.uint8)
        ends = np.flatnonzero(self.buf == _NL)
        self.starts = np.r_[0, ends[:-1] + 1]
        self.ends = ends
        self._found = {}

    def parse(self, kinds):
        buf, starts, ends = self.buf, self.starts, self.ends
        n = len(starts)
        long = (ends - starts) > _KIND_AT + 12
        head = _gather(buf, starts, _KIND_AT)
        result = long & (head[:, _PREFIX_FIXED] == _PREFIX[_PREFIX_FIXED]).all(axis=1) & \
            (buf[np.maximum(ends - 1, 0)] == _CLOSE)
        done = np.zeros(n, dtype=bool)
        if result.any():
            # every ',"' starts a field; count them per line
            sep = np.flatnonzero((buf[:-1] == _COMMA) & (buf[1:] == _QUOTE))
            first = np.searchsorted(sep, starts)
            count = np.searchsorted(sep, ends) - first
            for kind, acc in kinds.items():
                tag = np.frombuffer(kind.encode() + b'","name":"', np.uint8)
                rows = np.flatnonzero(result)
                rows = rows[(_gather(buf, starts[rows] + _KIND_AT, len(tag)) == tag).all(axis=1)]
                for c in np.unique(count[rows]):
                    same = rows[count[rows] == c]
                    ok = self._layout(kind, acc, same, sep, first, int(c))
                    done[same[ok]] = True
        blank = ends == starts
        return [self.data[a:b] for a, b in zip(starts[~done & ~blank], ends[~done & ~blank], strict=True)]

    def _lines_with(self, tag):
        """Indices of the lines holding `tag` (found with re, once per block)."""
        if tag not in self._found:
            pos = np.array([m.start() for m in re.finditer(re.escape(tag), self.data)], dtype=np.int64)
            self._found[tag] = np.searchsorted(self.starts, pos, side="right") - 1
        return self._found[tag]

    def _layout(self, kind, acc, rows, sep, first, nsep):
        """Lines of one kind with `nsep` fields after the name: take each wanted field at
        the column its key is at in the first line, where every line has that key there.
        Returns which rows were read (the rest go to json.loads)."""
        buf, starts, ends = self.buf, self.starts, self.ends
        cols_at = sep[first[rows][:, None] + np.arange(nsep)]          # (rows, nsep)
        line = self.data[starts[rows[0]]:ends[rows[0]]]
        keys = [line[p - starts[rows[0]] + 2:line.find(b'"', p - starts[rows[0]] + 2)] for p in cols_at[0]]
        ok = np.ones(len(rows), dtype=bool)
        if nsep < 4 or keys[:3] != [b"type", b"probe", b"name"]:
            return np.zeros(len(rows), dtype=bool)
        name_at = cols_at[:, 2] + 9                     # ,"name":"
        name_end = cols_at[:, 3] - 1
        nlen = name_end - name_at
        ok &= (nlen > 0) & (nlen <= NAME_WIDTH) & (buf[name_end] == _QUOTE)
        names = _cut(_gather(buf, name_at, NAME_WIDTH), nlen, 0)
        out = {}
        for f, t in FIELDS[kind]:
            key = f.encode()
            if key not in keys:
                out[f] = np.full(len(rows), np.nan) if t != STR else np.full(len(rows), b"", dtype="S1")
                ok &= ~np.isin(rows, self._lines_with(b',"' + key + b'":'))     # elsewhere in a line: not this layout
                continue
            j = keys.index(key)
            at = cols_at[:, j]
            tag = np.frombuffer(b',"' + key + b'":', np.uint8)
            ok &= (_gather(buf, at, len(tag)) == tag).all(axis=1)
            vstart = at + len(tag)
            vend = cols_at[:, j + 1] if j + 1 < nsep else ends[rows] - 1     # the last: before the "}"
            width = vend - vstart
            if t == STR:
                raw = _gather(buf, vstart + 1, STR_WIDTH)
                ok &= (buf[vstart] == _QUOTE) & (width - 2 <= STR_WIDTH)
                out[f] = _cut(raw, width - 2, 0)
            elif t == BOOL:
                c0 = buf[vstart]
                ok &= ((c0 == ord("t")) & (width == 4)) | ((c0 == ord("f")) & (width == 5)) | \
                    ((c0 == ord("n")) & (width == 4))
                out[f] = np.where(c0 == ord("t"), 1.0, np.where(c0 == ord("f"), 0.0, np.nan))
            else:
                ok &= width <= NUM_WIDTH
                out[f], valid = _numbers(_gather(buf, vstart, NUM_WIDTH), width)
                ok &= valid
        ms = _unix_ms(_gather(buf, starts[rows] + _TS_AT, _TS_LEN))
        ok &= ms >= 0
        acc.add(ms[ok], names[ok], {f: v[ok] for f, v in out.items()})
        return ok


def read(paths, workers=None):
    """Read every archive file under `paths` into an Archive. Never raises for bad data.
    Files are read in parallel by up to `workers` processes (default: one per CPU)."""
    files, quality = discover(paths)
    kinds = {k: _Kind(k) for k in FIELDS}
    events, gaps, errors, headers = {}, {}, [], []
    lines = 0
    for cols, others, file_headers, file_quality, n in _map(_read_file, files, workers):
        for k, part in cols.items():
            kinds[k].merge(part)
        for obj in others:
            _file_other(obj, events, gaps, errors)
        headers.extend(file_headers)
        quality.extend(file_quality)
        lines += n
    series = [s for k in kinds.values() for s in k.series()]
    series.sort(key=lambda s: (s.kind, s.name, _sub_key(s.sub)))
    headers.sort(key=lambda h: h["started"])
    for h in headers:
        if h.get("version") != __version__:
            quality.append(f"{h['file']}: written by netprobe {h.get('version')} (this is {__version__}); "
                           "fields it did not write read as missing")
    return Archive(series, sorted(events.values(), key=lambda e: e["ts"]),
                   sorted(gaps.values(), key=lambda g: g["start"]), errors, headers, quality, lines, len(files))


def _map(fn, files, workers):
    """fn over files, in order; in forked worker processes when there are several files."""
    workers = min(workers or os.cpu_count() or 1, len(files))
    if workers <= 1:
        yield from map(fn, files)
        return
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        yield from pool.map(fn, files)


def _read_file(path):
    """One file: (columns per kind, other records, HEADERs, data-quality lines, lines read)."""
    kinds = {k: _Kind(k) for k in FIELDS}
    slow = {k: [] for k in FIELDS}
    others, headers, quality = [], [], []
    first, corrupt, lines = True, 0, 0
    try:
        for data in _blocks(path, quality):
            if first:
                first = False
                if not data.startswith(b'{"type":"HEADER"'):
                    quality.append(f"{path}: no HEADER line (an older netprobe's archive, "
                                   "or not a netprobe archive): read with the current layout")
            block = _Block(data)
            for line in block.parse(kinds):
                obj = _parse_other(line, path, headers)
                if obj is None:
                    corrupt += 1
                elif obj.get("type") == "RESULT" and obj.get("probe") in slow:
                    slow[obj["probe"]].append(obj)
                elif obj:
                    others.append(obj)
            lines += len(block.starts)
    except OSError as exc:
        quality.append(f"{path}: cannot read: {exc.strerror or exc}")
    if corrupt:
        quality.append(f"{path}: {corrupt} corrupt line(s) skipped")
    for k, objs in slow.items():
        kinds[k].add_dicts(objs)
    return {k: acc.export() for k, acc in kinds.items() if acc.ts}, others, headers, quality, lines


def _sub_key(sub):
    return (0, int(sub), "") if sub.isdigit() else (1, 0, sub)


def _parse_other(line, path, headers):
    """A non-RESULT line as a dict with ts as Unix seconds; a HEADER goes to `headers`.
    None for a line that is not a well-formed record."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("type") is None:
        return None
    try:
        if obj.get("type") == "HEADER":
            obj["started"] = iso_to_unix(obj.get("started"))
            obj["file"] = path
            headers.append(obj)
            return {}
        obj["ts"] = iso_to_unix(obj.get("ts"))
        if not isinstance(obj.get("type"), str) or not isinstance(obj.get("name"), str):
            return None
        if obj["type"] == GAP:
            obj["start"] = iso_to_unix(obj.get("start"))
            obj["end"] = iso_to_unix(obj.get("end"))
    except ValueError:
        return None
    return obj


def _file_other(obj, events, gaps, errors):
    t = obj.get("type")
    if t in (BREACH, CLEAR):
        key = (obj["ts"], t, obj["name"], str(obj.get("metric")), str(obj.get("dir")), str(obj.get("port")))
        events[key] = obj
    elif t == GAP:
        gaps[(obj["name"], obj["start"], obj["end"])] = obj
    elif t == "ERROR":
        errors.append(obj)
