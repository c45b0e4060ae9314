"""Read jsonfile archives back: streaming, into numpy arrays per probe and direction or port.

An archive is any set of files the jsonfile sink wrote: the live file, rotated files
(`<path>.<stamp>[.N]`, plain or gzipped), in any order, from several runs (each file
starts with a HEADER line holding the effective config). Files are read in 2 MiB
blocks; RESULT lines of the known kinds are cut apart with numpy, all lines of one
layout at once (their keys come in a fixed order: Record.to_dict keeps the order the
runner wrote them), so no dict is built per record, and what is read equals what
json.loads would give. A line that does not fit its layout, and every other line
(HEADER, BREACH, CLEAR, GAP, ERROR: a few per hour), goes through json.loads.

Problems never stop the read: a corrupt or cut line, a truncated last gzip member,
an unreadable file, a file without a HEADER (an older version's or not an archive)
are counted and returned as data-quality items, one line each.
"""
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import stat
import zlib

import numpy as np

from netprobe import __version__
from netprobe.results import BREACH, CLEAR, GAP

BLOCK = 2 << 20
MAX_LINE = 16 << 20
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
    "host": (("late_p50", NUM), ("late_p99", NUM), ("clock_synced", BOOL)),
}
# The field that splits a kind's records into series (direction, source port), if any.
SPLIT = {"throughput": "dir", "oneway": "port"}

# {"ts":"2026-11-23T03:25:04.123Z","type":"RESULT","probe":"<kind>","name":"<name>",...}
_TS_AT, _TS_LEN, _KIND_AT = 7, 23, 58
_PREFIX = np.frombuffer(b'{"ts":"0000-00-00T00:00:00.000Z","type":"RESULT","probe":"', np.uint8)
_QUOTE, _COMMA, _NL, _OPEN, _CLOSE, _SPACE = 34, 44, 10, 123, 125, 32
# after every block: a window (or a key read where a damaged line has none) from any line
# start or separator stays inside the buffer
_PAD = b" " * (2 * NAME_WIDTH)


class _Words:
    """Bytes to find at a position, as 64-bit words and a mask (positions in `wild`: any byte)."""

    def __init__(self, text, wild=()):
        self.text = text
        n = -(-len(text) // 8) * 8
        raw, mask = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
        raw[:len(text)] = np.frombuffer(text, np.uint8)
        mask[:len(text)] = 0xFF
        mask[list(wild)] = 0
        self.words, self.mask = raw.view(np.uint64) & mask.view(np.uint64), mask.view(np.uint64)
        self.first = text[0]

    def __len__(self):
        return len(self.words) * 8


def _match(u64, pos, want):
    """Which positions of a block hold `want` (a _Words); u64[i]: the 8 bytes from i."""
    ok = (u64[pos] & want.mask[0]) == want.words[0]
    for k in range(1, len(want.words)):
        ok &= (u64[pos + 8 * k] & want.mask[k]) == want.words[k]
    return ok


_PREFIX_WORDS = _Words(bytes(_PREFIX), wild=range(_TS_AT, _TS_AT + _TS_LEN))
_KIND_TAGS = {k: _Words(k.encode() + b'","name":"') for k in FIELDS}
_FIELD_TAGS = {f.encode(): _Words(b',"' + f.encode() + b'":') for fs in FIELDS.values() for f, _ in fs}
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x2545F4914F6CDD1D, 0x94D049BB133111EB], dtype=np.uint64)


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
    """The file's bytes in blocks ending at a line end, followed by _PAD; gzip (any number of
    members) undone. A truncated or corrupt gzip stream ends the file with a data-quality item."""
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
            cut = data.rfind(b"\n") + 1
            if cut:
                yield b"".join((rest, memoryview(data)[:cut], _PAD))
                rest = data[cut:]
            else:
                rest += data
                if len(rest) > MAX_LINE:        # no line is this long: corrupt; memory stays bounded
                    yield rest + b"\n" + _PAD
                    rest = b""
        if rest and len(quality) == before:     # after a cut gzip stream the partial line is that cut
            yield rest + b"\n" + _PAD


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


def _windows(buf):
    """Every NAME_WIDTH-byte window of buf, as a view: rows are gathered from it with
    `win[pos, :width]` (buf ends with _PAD, so every position in a line has one)."""
    return np.lib.stride_tricks.as_strided(buf, (len(buf) - NAME_WIDTH + 1, NAME_WIDTH), (1, 1), writeable=False)


# 'YYYY-MM-DDTHH:MM:SS.mmm': the digits, their weights into (Y, M, D, h, m, s, ms), the separators
_TS_DIGITS = np.r_[0:4, 5:7, 8:10, 11:13, 14:16, 17:19, 20:23]
_TS_WEIGHTS = np.zeros((len(_TS_DIGITS), 7))
for _col, (_a, _b) in enumerate(((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14), (14, 17))):
    _TS_WEIGHTS[_a:_b, _col] = 10 ** np.arange(_b - _a - 1, -1, -1)
_TS_SEPS = np.array([4, 7, 10, 13, 16, 19])
_TS_SEP_BYTES = np.frombuffer(b"--T::.", np.uint8)
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _rows_with(mask):
    """Which rows of a 2-D boolean array hold a True (found through the few True cells: a
    reduction along a short axis costs more)."""
    out = np.zeros(mask.shape[0], dtype=bool)
    out[np.flatnonzero(mask) // max(1, mask.shape[1])] = True
    return out


def _unix_ms(stamps):
    """(n, 23) bytes 'YYYY-MM-DDTHH:MM:SS.mmm' -> Unix ms (int64); -1 where not a valid time
    (what np.datetime64 refuses: a non-digit, a wrong separator, a day or hour out of range)."""
    d = stamps[:, _TS_DIGITS] - np.uint8(48)                  # a non-digit wraps past 9
    good = ~_rows_with(d > 9) & ~_rows_with(stamps[:, _TS_SEPS] != _TS_SEP_BYTES)
    # exact in float64 (every figure < 2**53), and a matrix product there is fast
    y, m, day, hh, mm, ss, ms = (d.astype(np.float64) @ _TS_WEIGHTS).astype(np.int64).T
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(m, 0, 12)] + (leap & (m == 2))
    good &= (m >= 1) & (m <= 12) & (day >= 1) & (day <= month_days) & (hh < 24) & (mm < 60) & (ss < 60)
    # days from civil (proleptic Gregorian), vectorized
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    out = (((days * 24 + hh) * 60 + mm) * 60 + ss) * 1000 + ms
    return np.where(good, out, -1)




def _numbers(rows, length):
    """Rows of number text (each `length` long, space-filled after; overwritten) -> (float64
    values, valid). null is NaN and valid. Text that is not a JSON number is invalid (the line
    then goes to json.loads): what float() takes and JSON does not (a leading zero, a '.'
    without a digit after it, '_' between digits); the rest of the grammar float() checks."""
    c0, c1 = rows[:, 0], rows[:, 1]
    minus = c0 == ord("-")
    lead = np.where(minus, c1, c0)
    after = np.where(minus, rows[:, 2], c1)
    num = ((lead - np.uint8(48)) <= 9) & ~((lead == ord("0")) & ((after - np.uint8(48)) <= 9))   # 01: not JSON
    num &= ~_rows_with(rows == ord("_"))
    flat = rows.ravel()
    dots = np.flatnonzero(flat == ord("."))
    num[dots[(flat[np.minimum(dots + 1, len(flat) - 1)] - np.uint8(48)) > 9] // rows.shape[1]] = False   # 1.
    null = (length == 4) & (c0 == ord("n")) & (c1 == ord("u")) & (rows[:, 2] == ord("l")) & (rows[:, 3] == ord("l"))
    raw = rows.view(f"S{rows.shape[1]}").ravel()
    raw[~num] = b"nan"
    valid = num | null
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


def _text(rows, length):
    """Rows of JSON string content (each `length` long) -> (rows zero-filled after the
    length, valid). A backslash (an escape) or a control byte is for json.loads."""
    within = np.arange(rows.shape[1]) < length[:, None]
    bad = _rows_with(within & ((rows < 32) | (rows == 92)))
    return np.where(within, rows, 0).astype(np.uint8, copy=False), ~bad


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
        """Strings -> int32 codes. `strings`: a bytes array, or rows of bytes zero-filled after
        each string, compared as 64-bit words (their hash, checked: a collision goes the slow way)."""
        if strings.ndim == 2:
            n, w = strings.shape
            packed = np.zeros((n, -(-w // 8) * 8), np.uint8)
            packed[:, :w] = strings
            words = packed.view(np.uint64)
            h = words[:, 0] if words.shape[1] == 1 else (words * _MIX[:words.shape[1]]).sum(axis=1)
            _, first, inv = np.unique(h, return_index=True, return_inverse=True)
            if words.shape[1] > 1 and not (words[first][inv.ravel()] == words).all():
                return self.codes(packed.view(f"S{packed.shape[1]}").ravel())
            keys = [packed[i].tobytes().rstrip(b"\0") for i in first.tolist()]
        else:
            uniq, inv = np.unique(strings, return_inverse=True)
            keys = [bytes(u) for u in uniq]
        table = np.array([self.words.setdefault(k, len(self.words)) for k in keys], dtype=np.int32)
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
        self.data = data                               # ends with _PAD
        self.buf = np.frombuffer(data, np.uint8)
        self.win = _windows(self.buf)
        self.u64 = np.ndarray((len(data) - 7,), np.uint64, data, 0, (1,))     # unaligned: 8 bytes from each
        self.ends = np.flatnonzero(self.buf == _NL)
        self.starts = np.r_[0, self.ends[:-1] + 1]
        self._found = {}

    def parse(self, kinds):
        buf, starts, ends = self.buf, self.starts, self.ends
        done = np.zeros(len(starts), dtype=bool)
        cand = np.flatnonzero(((ends - starts) > _KIND_AT + 12) & (buf[np.maximum(ends - 1, 0)] == _CLOSE))
        cand = cand[_match(self.u64, starts[cand], _PREFIX_WORDS)]
        if len(cand):
            # every ',"' starts a key (or sits in a string: such a line fails its layout)
            comma = np.flatnonzero(buf == _COMMA)
            self.sep = sep = comma[buf[comma + 1] == _QUOTE]
            # braces per line, and their balance: a line cut short, or cut and run into the next
            # (a crash, then a restart's HEADER), is not balanced or has another count than the
            # whole lines of its layout
            brace = np.flatnonzero((buf == _OPEN) | (buf == _CLOSE))
            depth = np.r_[0, np.cumsum(np.where(buf[brace] == _OPEN, 1, -1))]
            at = np.searchsorted(brace, np.r_[starts, len(buf)])
            self.braces = np.where(depth[at[1:]] == depth[at[:-1]], np.diff(at), -1)
            first_all = np.searchsorted(sep, starts)              # the line's first separator
            count_all = np.diff(np.r_[first_all, len(sep)])         # and how many it has
            letter = buf[starts[cand] + _KIND_AT]
            for kind, acc in kinds.items():
                tag = _KIND_TAGS[kind]
                rows = cand[letter == tag.first]
                rows = rows[_match(self.u64, starts[rows] + _KIND_AT, tag)]
                if not len(rows):
                    continue
                first, count = first_all[rows], count_all[rows]
                for c in np.unique(count):
                    same = count == c
                    ok = self._layout(kind, acc, rows[same], sep, first[same], int(c))
                    done[rows[same][ok]] = True
        keep = np.flatnonzero(~done & (ends > starts))
        return [self.data[a:b] for a, b in zip(starts[keep].tolist(), ends[keep].tolist(), strict=True)]

    def _lines_with(self, tag):
        """Indices of the lines holding `tag` (',"key":', so at a separator; found once per block)."""
        if tag.text not in self._found:
            at = self.sep[self.buf[self.sep + 2] == tag.text[2]]
            at = at[_match(self.u64, at, tag)]
            self._found[tag.text] = np.searchsorted(self.starts, at, side="right") - 1
        return self._found[tag.text]

    def _layout(self, kind, acc, rows, sep, first, nsep):
        """Lines of one kind with `nsep` keys after the first: take each wanted field at the
        key its name is at in the first line, where every line has that key there. Returns
        which rows were read (the rest go to json.loads)."""
        buf, win, starts, ends = self.buf, self.win, self.starts, self.ends
        s0 = int(starts[rows[0]])
        line = self.data[s0:int(ends[rows[0]])]
        keys = [line[p + 2:line.find(b'"', p + 2)] for p in (sep[first[0]:first[0] + nsep] - s0).tolist()]
        if nsep < 4 or keys[:3] != [b"type", b"probe", b"name"]:
            return np.zeros(len(rows), dtype=bool)
        ok = (self.braces[rows] == self.braces[rows[0]]) & (self.braces[rows] > 0)
        name_at = sep[first + 2] + 9                     # ,"name":"
        name_end = sep[first + 3] - 1
        nlen = name_end - name_at
        ok &= (nlen > 0) & (nlen <= NAME_WIDTH) & (buf[name_end] == _QUOTE)
        names, valid = _text(win[name_at, :max(1, min(int(nlen.max()), NAME_WIDTH))], nlen)
        ok &= valid
        out, numeric = {}, []
        for f, t in FIELDS[kind]:
            key = f.encode()
            if key not in keys:
                out[f] = np.full(len(rows), np.nan) if t != STR else np.zeros((len(rows), 1), np.uint8)
                ok &= ~np.isin(rows, self._lines_with(_FIELD_TAGS[key]))     # elsewhere in a line: not this layout
                continue
            j = keys.index(key)
            at = sep[first + j]
            tag = _FIELD_TAGS[key]
            ok &= _match(self.u64, at, tag)
            vstart = at + len(tag.text)
            vend = sep[first + j + 1] if j + 1 < nsep else ends[rows] - 1     # the last: before the "}"
            width = vend - vstart
            if t == STR:
                ok &= (buf[vstart] == _QUOTE) & (buf[vend - 1] == _QUOTE) & (width >= 2) & (width - 2 <= STR_WIDTH)
                out[f], valid = _text(win[vstart + 1, :max(1, min(int(width.max()) - 2, STR_WIDTH))], width - 2)
                ok &= valid
            elif t == BOOL:
                c0 = buf[vstart]
                ok &= ((c0 == ord("t")) & (width == 4)) | ((c0 == ord("f")) & (width == 5)) | \
                    ((c0 == ord("n")) & (width == 4))
                out[f] = np.where(c0 == ord("t"), 1.0, np.where(c0 == ord("f"), 0.0, np.nan))
            else:
                ok &= width < NUM_WIDTH
                numeric.append((f, vstart, np.minimum(width, NUM_WIDTH - 1)))
        if numeric:                                      # every number of the layout in one conversion
            w = max(5, int(max(int(n.max()) for _, _, n in numeric)) + 1)    # a space after the longest
            pos = np.concatenate([v for _, v, _ in numeric])
            length = np.concatenate([n for _, _, n in numeric])
            text = np.where(np.arange(w) < length[:, None], win[pos, :w], _SPACE).astype(np.uint8)
            values, valid = _numbers(text, length)
            for k, (f, _, _) in enumerate(numeric):
                part = slice(k * len(rows), (k + 1) * len(rows))
                out[f] = values[part]
                ok &= valid[part]
        ms = _unix_ms(win[starts[rows] + _TS_AT, :_TS_LEN])
        ok &= ms >= 0
        if ok.all():
            acc.add(ms, names, out)
        else:
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
