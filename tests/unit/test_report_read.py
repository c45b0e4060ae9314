"""report.read against archives the real jsonfile sink wrote (rotation, gzip, restarts),
damaged on purpose; the oracle is the records written, and json.loads of the lines."""
import gzip
import json
import math
import os
import shutil

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.outputs.jsonfile import JsonFileConfig, JsonFileSink
from netprobe.report import read
from netprobe.results import GAP, RESULT, Record, event, iso_time, percent, rate, seconds

T0 = 1_795_000_000.0


def tput(i, d="a->b", ts=None, r=None):
    r = 190e6 + i * 1000.0 if r is None else r
    return Record(RESULT, "throughput", "wan", {
        "dir": d, "sla_rate": rate(200e6), "rate": rate(r), "ratio": round(r / 200e6, 4),
        "rtt": seconds(0.001 + i * 1e-6),
        "rtt_p50": seconds(0.001), "rtt_p99": seconds(0.002), "min_rtt": seconds(0.0005), "retrans": i % 3,
        "retrans_pct": percent(0.01 * (i % 5)), "fitness": 0.99, "angle": 0.01, "limited_by": "pacer",
        "window": seconds(2), "samples": 100, "retrans_total": i}, T0 + (i + 1) * 2 if ts is None else ts)


def oneway(i, port=None):
    f = {"peer": "10.0.0.2:7171", "interval_id": i}
    if port is None:
        f |= {"ports": 4, "sent": 1000, "received": 990, "lost": 10, "loss": percent(1.0), "dup": 0, "reordered": 0,
              "delay_p50": seconds(0.001), "delay_p99": seconds(0.003 + i * 1e-5), "delay_mean": None,
              "clock_synced": i % 2 == 0, "delay_bound": None if i % 3 == 0 else seconds(2e-4)}
    else:
        f |= {"port": port, "sent": 250, "received": 240, "lost": 10, "loss": percent(4.0), "dup": 0, "reordered": 0}
    return Record(RESULT, "oneway", "ow", f, T0 + (i + 1) * 2)


def sink(path, rotate_size=4096, gzip_=True):
    s = JsonFileSink(JsonFileConfig(path=str(path), rotate_size=rotate_size, gzip=gzip_, keep=1000))
    s.start({"version": "0.1.0", "config_effective": {"probe": [{"kind": "throughput", "name": "wan",
                                                                   "interval": 2.0, "rate": 200e6}]}})
    return s


def write(path, records, **kw):
    s = sink(path, **kw)
    for r in records:
        s.write(r)
    s.close()


def by_sub(archive, name):
    return {s.sub: s for s in archive.series if s.name == name}


def test_rotated_gzipped_archive_across_restarts_reads_every_interval_once(tmp_path):
    path = tmp_path / "results.json"
    first = [tput(i, d) for i in range(60) for d in ("a->b", "b->a")]
    second = [tput(i, d) for i in range(60, 100) for d in ("a->b", "b->a")]
    write(path, first)                    # one run, rotated many times
    write(path, second)                   # a restart: the previous file is rotated away
    names = os.listdir(tmp_path)
    assert sum(n.endswith(".gz") for n in names) > 3, names
    shutil.copy(next(tmp_path.glob("*.gz")), tmp_path / "copy-of-one.gz")     # read twice: counted once
    a = read.read([str(tmp_path), str(path)])
    assert a.quality == [], a.quality
    s = by_sub(a, "wan")
    assert set(s) == {"a->b", "b->a"}
    for d in ("a->b", "b->a"):
        want = [r for r in first + second if r.fields["dir"] == d]
        assert np.array_equal(s[d].ts, [round(r.ts, 3) for r in want])
        assert np.array_equal(s[d].cols["rate"], [r.fields["rate"].value for r in want])
        assert np.array_equal(s[d].cols["retrans_pct"], [r.fields["retrans_pct"].value for r in want])
        assert list(s[d].cols["limited_by"]) == ["pacer"] * len(want)
    assert len(a.headers) > 3 and a.config("wan")["interval"] == 2.0


def test_oneway_nulls_booleans_and_ports_are_split_and_kept(tmp_path):
    recs = [r for i in range(20) for r in (oneway(i), oneway(i, 41000), oneway(i, 41001))]
    write(tmp_path / "r.json", recs, rotate_size=0)
    s = by_sub(read.read([str(tmp_path)]), "ow")
    assert set(s) == {"", "41000", "41001"}
    whole = [r for r in recs if "port" not in r.fields]
    assert np.array_equal(s[""].cols["clock_synced"], [float(r.fields["clock_synced"]) for r in whole])
    bound = s[""].cols["delay_bound"]
    assert all((math.isnan(b) if r.fields["delay_bound"] is None else b == r.fields["delay_bound"].value)
               for b, r in zip(bound, whole, strict=True))
    assert np.all(s["41000"].cols["loss"] == 4.0) and np.all(np.isnan(s["41000"].cols["delay_p50"]))


def test_truncated_gzip_member_is_a_quality_line_and_the_records_before_it_count(tmp_path):
    path = tmp_path / "results.json"
    write(path, [tput(i) for i in range(400)], rotate_size=64 * 1024)
    gz = sorted(tmp_path.glob("*.gz"))[-1]
    with gzip.open(gz) as fh:
        whole = fh.read().count(b"\n") - 1             # its records (less the HEADER)
    data = gz.read_bytes()
    gz.write_bytes(data[:len(data) * 2 // 3])
    a = read.read([str(tmp_path)])
    assert [q for q in a.quality if "truncated gzip" in q and gz.name in q], a.quality
    got = len(by_sub(a, "wan")["a->b"].ts)
    assert 400 - whole < got < 400                    # part of the cut file, all of the others


def test_corrupt_and_cut_lines_are_counted_the_rest_read(tmp_path):
    path = tmp_path / "results.json"
    write(path, [tput(i) for i in range(30)], rotate_size=0)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5][:40] + b"\n"                               # cut short
    lines[9] = lines[9].replace(b'"rate":', b'"rate":"x",')        # not JSON any more
    lines.insert(12, b"\x00\xffgarbage\n")
    path.write_bytes(b"".join(lines))
    a = read.read([str(path)])
    assert [q for q in a.quality if "3 corrupt line(s)" in q], a.quality
    ts = by_sub(a, "wan")["a->b"].ts
    assert len(ts) == 28 and T0 + 10 not in ts and T0 + 18 not in ts


def test_older_archive_without_header_or_with_another_version_is_reported(tmp_path):
    old = tmp_path / "old.json"
    old.write_text("".join(r.to_json() + "\n" for r in [tput(i) for i in range(5)]))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"type": "HEADER", "version": "0.0.9", "started": iso_time(T0)}) + "\n"
                     + tput(7).to_json() + "\n")
    a = read.read([str(tmp_path)])
    assert [q for q in a.quality if "old.json" in q and "no HEADER" in q], a.quality
    assert [q for q in a.quality if "other.json" in q and "0.0.9" in q], a.quality
    assert len(by_sub(a, "wan")["a->b"].ts) == 6


def test_events_and_gaps_come_back_with_unix_times(tmp_path):
    recs = [tput(i) for i in range(5)]
    recs.insert(2, event("BREACH", "throughput", "wan", metric="rate", value=rate(1e8), op=">=",
                         threshold=rate(1.9e8), dir="a->b", ts=T0 + 5))
    recs.append(Record(GAP, "throughput", "wan", {"reason": "worker crashed", "start": iso_time(T0 + 20),
                                                 "end": iso_time(T0 + 80), "duration": seconds(60)}, T0 + 81))
    write(tmp_path / "r.json", recs, rotate_size=0)
    a = read.read([str(tmp_path)])
    (b,) = a.events
    assert b["type"] == "BREACH" and b["ts"] == T0 + 5 and b["dir"] == "a->b"
    (g,) = a.gaps
    assert (g["start"], g["end"], g["reason"]) == (T0 + 20, T0 + 80, "worker crashed")


def test_missing_paths_are_quality_lines_not_errors(tmp_path):
    a = read.read([str(tmp_path / "nope")])
    assert a.files == 0 and "cannot read" in a.quality[0]


# -- the fast path against json.loads, on lines Hypothesis makes ------------------------------

number = st.one_of(st.none(), st.integers(-10**12, 10**12),
                   st.floats(allow_nan=False, allow_infinity=False, width=64))
quantity = st.one_of(st.none(), st.floats(min_value=-1e15, max_value=1e15, allow_nan=False))


@st.composite
def result_line(draw):
    kind = draw(st.sampled_from(sorted(read.FIELDS)))
    name = draw(st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True))
    fields = {}
    for f, t in read.FIELDS[kind]:
        if draw(st.booleans()):
            continue                                         # absent field
        if f == "port":
            fields[f] = draw(st.integers(0, 65535))          # a source port: the series it splits into
        elif t == read.STR:
            fields[f] = draw(st.from_regex(r"[a-z>-]{0,12}", fullmatch=True))
        elif t == read.BOOL:
            fields[f] = draw(st.one_of(st.none(), st.booleans()))
        else:
            fields[f] = draw(number)
        if draw(st.booleans()):                              # unknown fields between
            fields[f"x{draw(st.integers(0, 9))}"] = draw(st.one_of(number, st.text(max_size=8)))
    ts = draw(st.integers(946684800000, 4102444800000)) / 1000
    return Record(RESULT, kind, name, fields, ts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(result_line(), min_size=1, max_size=40))
def test_fast_path_reads_what_json_loads_reads(tmp_path_factory, recs):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "r.json").write_text("".join(r.to_json() + "\n" for r in recs))
    a = read.read([str(d)])
    got = {(s.kind, s.name, s.sub, t): {f: v[i] for f, v in s.cols.items()}
           for s in a.series for i, t in enumerate(s.ts)}
    want = {}
    for line in (d / "r.json").read_text().splitlines():
        o = json.loads(line)
        kind = o["probe"]
        split = read.SPLIT.get(kind)
        sub = o.get(split) if split else ""
        if kind == "oneway":
            sub = "" if sub is None else str(sub)
        elif not isinstance(sub, str):
            sub = ""
        ts = read.iso_to_unix(o["ts"])
        key = (kind, o["name"], sub, ts)
        want[key] = None if key in want else o              # one interval twice: which is kept is not said
    assert set(want) == set(got)
    for key, o in want.items():
        if o is None:
            continue
        row = got[key]
        for f, t in read.FIELDS[key[0]]:
            if f not in row:
                continue
            v = o.get(f)
            if t == read.STR:
                assert row[f] == (v if isinstance(v, str) else "")
            elif t == read.BOOL:
                assert (row[f] == float(v)) if isinstance(v, bool) else math.isnan(row[f])
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                assert row[f] == float(v) or math.isclose(row[f], float(v), rel_tol=1e-15)
            else:
                assert math.isnan(row[f])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 29), st.sampled_from(["cut", "junk", "dup", "swap"]),
                          st.integers(0, 400), st.binary(max_size=20)), max_size=8))
def test_damaged_archives_never_raise(tmp_path_factory, damage):
    d = tmp_path_factory.mktemp("dmg")
    lines = [r.to_json().encode() for r in (tput(i) for i in range(30))]
    for n, how, at, junk in damage:
        line = lines[n]
        if how == "cut":
            lines[n] = line[:at]
        elif how == "junk":
            lines[n] = line[:at] + junk + line[at:]
        elif how == "dup":
            lines.insert(n, line)
        else:
            lines[n] = line.replace(b'"rate":', b'"rate":' + junk + b",", 1)
    data = b"\n".join(lines) + b"\n"
    (d / "plain.json").write_bytes(data)
    (d / "cut.json.gz").write_bytes(gzip.compress(data)[:max(10, len(data) // 3)])
    a = read.read([str(d)])
    for s in a.series:
        assert np.all(np.diff(s.ts) > 0)


# -- the fast path against a json.loads-per-line reader, on an archive with every edge case --------

def reference_read(directory):
    """What a plain reader gets: each file whole (gzip members one after another until the data
    ends or breaks; the part line a cut leaves is dropped), json.loads per line, the fields as
    read.FIELDS says (absent or mistyped: NaN or ""), one series per kind, name and direction or
    port, sorted by time. Returns ({(kind, name, sub): (ts, {field: values})}, corrupt lines)."""
    rows, corrupt = {}, 0
    for name in sorted(os.listdir(directory)):
        data = (directory / name).read_bytes()
        if data[:2] == b"\x1f\x8b":
            out, rest, whole = [], data, True
            while rest:
                d = __import__("zlib").decompressobj(wbits=31)
                try:
                    out.append(d.decompress(rest))
                except __import__("zlib").error:
                    whole = False
                    break
                if not d.eof:
                    whole = False
                    break
                rest = d.unused_data
            data = b"".join(out)
            if not whole:
                data = data[:data.rfind(b"\n") + 1]
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                o = json.loads(line)
                if not isinstance(o, dict):
                    raise ValueError
                if o.get("type") == "HEADER":
                    read.iso_to_unix(o.get("started"))
                    continue
                ts = read.iso_to_unix(o.get("ts"))
                if not isinstance(o.get("type"), str) or not isinstance(o.get("name"), str):
                    raise ValueError
            except ValueError:
                corrupt += 1
                continue
            kind = o.get("probe")
            if o["type"] != "RESULT" or kind not in read.FIELDS:
                continue
            vals = {}
            for f, t in read.FIELDS[kind]:
                v = o.get(f)
                if t == read.STR:
                    vals[f] = v if isinstance(v, str) else ""
                elif t == read.BOOL:
                    vals[f] = float(v) if isinstance(v, bool) else math.nan
                else:
                    vals[f] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
            split = read.SPLIT.get(kind)
            sub = "" if split is None else vals.pop(split)
            if kind == "oneway":
                sub = "" if math.isnan(sub) else str(int(sub))
            rows.setdefault((kind, o["name"], sub), {})[round(ts * 1000)] = vals
    out = {}
    for key, by_ts in rows.items():
        stamps = sorted(by_ts)
        fields = [f for f, _ in read.FIELDS[key[0]] if f != read.SPLIT.get(key[0])]
        out[key] = (np.array(stamps) / 1000.0, {f: [by_ts[t][f] for t in stamps] for f in fields})
    return out, corrupt


def edge_case_archive(d):
    """An archive with what the field brings: rotated gzip files written by the sink, every
    kind, fields missing or null, names with escapes, a file of two gzip members the second cut
    short, corrupt lines of several sorts, an older version's file with other key orders."""
    recs = []
    for i in range(40):
        recs += [tput(i, "a->b"), tput(i, "b->a"), oneway(i), oneway(i, 41000 + i % 3)]
        recs.append(Record(RESULT, "capacity", "cap", {"capacity": rate(9e8 + i) if i % 7 else None,
                                                       "ci_lo": rate(8.9e8), "ci_hi": rate(9.1e8), "trains": 20,
                                                       "confidence": "high"}, T0 + (i + 1) * 2 + 0.5))
        host = {"late_p50": seconds(1e-5 * i), "late_p99": seconds(2e-4 + i * 1e-7), "clock_synced": i % 5 != 0,
                "clocksource": "tsc"}
        if i % 6 == 0:
            del host["late_p99"]                                        # a field missing
        recs.append(Record(RESULT, "host", "self" if i % 4 else 'se"lf\u00e9', host, T0 + (i + 1) * 2 + 0.7))
    write(d / "results.json", recs, rotate_size=8192)
    good = [r.to_json().encode() for r in recs[:30]]
    cut = gzip.compress(b"\n".join(good[15:]) + b"\n")
    (d / "two-members.json.gz").write_bytes(gzip.compress(b"\n".join(good[:15]) + b"\n") + cut[:len(cut) // 2])
    line = tput(50).to_json().encode()
    bad = [
        line[:len(line) // 2],                                          # cut short
        line[:200] + tput(51).to_json().encode(),                       # cut and run into the next
        line[:-1],                                                       # the last brace lost
        line.replace(b'"rate":', b'"rate":01', 1).replace(b'"rate":01' + b"2", b'"rate":012', 1),
        line.replace(b'"rtt":', b'"rtt":1.', 1).split(b'"rtt":1.')[0] + b'"rtt":1.,"x":1}',
        line.replace(b'"ratio":', b'"ratio":1_0,"y":', 1),
        b"\x00" * 40 + line[40:],
        b"\xff\xfe not json at all",
        line.replace(b'"ts":"', b'"ts":"2026-02-30', 1)[:7] + b"2026-02-30T00:00:00.000Z" + line[31:],
    ]
    older = [tput(60 + i).to_dict() for i in range(8)]
    for o in older:                                                      # another key order, no units
        o.pop("units", None)
        o["rate"], o["dir"] = o.pop("rate"), o.pop("dir")
    older.append({**oneway(70).to_dict(), "delay_bound": None})
    plain = [json.dumps(o, separators=(",", ":")).encode() for o in older[:4]] + bad + \
        [json.dumps(o, separators=(",", ":")).encode() for o in older[4:]]
    (d / "old.json").write_bytes(b"\n".join(plain) + b"\n")
    (d / "other.json").write_text(json.dumps({"type": "HEADER", "version": "0.0.9", "started": iso_time(T0)},
                                             separators=(",", ":")) + "\n"
                                  + "\n".join(r.to_json() for r in [tput(80), oneway(80, 41005)]) + "\n")
    return len(bad)


def test_fast_reader_gives_exactly_the_arrays_json_loads_gives(tmp_path):
    nbad = edge_case_archive(tmp_path)
    want, corrupt = reference_read(tmp_path)
    a = read.read([str(tmp_path)], workers=1)
    got = {(s.kind, s.name, s.sub): s for s in a.series}
    assert set(got) == set(want)
    for key, (ts, cols) in want.items():
        s = got[key]
        assert np.array_equal(s.ts, ts), key
        assert set(s.cols) == set(cols), key
        for f, v in cols.items():
            if isinstance(v[0], str):
                assert list(s.cols[f]) == v, (key, f)
            else:
                assert np.array_equal(s.cols[f], np.array(v, dtype=np.float64), equal_nan=True), (key, f)
    assert corrupt == nbad
    assert [q for q in a.quality if "old.json" in q and f"{nbad} corrupt line(s)" in q], a.quality
    assert [q for q in a.quality if "two-members.json.gz" in q and "truncated gzip" in q], a.quality
    assert [q for q in a.quality if "old.json" in q and "no HEADER" in q], a.quality
    assert [q for q in a.quality if "other.json" in q and "0.0.9" in q], a.quality
    # the escaped name came through json.loads, the rest through the fast path: both are here
    assert {'se"lf\u00e9', "self"} <= {s.name for s in a.series if s.kind == "host"}
