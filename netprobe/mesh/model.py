"""A mesh file -> validated hosts and tests.

One TOML file describes the fleet: `[[host]]` tables (name, address, tags)
and `[[test]]` tables (a kind, which host pairs, the kind's own settings;
for exclusive kinds also duration, every and exclusive_by), plus an
optional `[schedule]` table. Every host reads the same file, so everything
here is a pure function of the document. Errors are ConfigError one-liners
naming the file and the TOML path, as for the host config.
"""
import hashlib
import json
import re
from dataclasses import dataclass, field

from netprobe import probes
from netprobe.config import schema
from netprobe.config.load import parse_toml, read_toml
from netprobe.config.schema import DURATION, setting
from netprobe.errors import ConfigError
from netprobe.units import show

TOP_LEVEL = ("host", "test", "schedule")
PAIR_KINDS = ("oneway", "throughput", "capacity")     # kinds that measure between two hosts
EXCLUSIVE_KINDS = ("throughput", "capacity")          # kinds that load the path: timetabled
MESH_KEYS = ("kind", "between", "pairs", "duration", "every", "exclusive_by")
DERIVED_KEYS = ("name", "peer", "peers")              # set per derived probe, never written
BETWEEN = ("all", "site")
HOST_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,48}")    # leaves room in a derived probe's name
TAG_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
TAG_VALUE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_HOSTS = 10_000
MAX_PAIRS = 1_000_000        # host pairs over all tests: bounds memory on a hostile file
PLACEHOLDER_PEER = "192.0.2.1"


@dataclass(frozen=True)
class ScheduleConfig:
    """The [schedule] table: what every host assumes when it computes the timetable."""
    clock_error: float = setting(DURATION, 0.1, "worst clock error of any host (s); two hosts may "
                                 "disagree by twice this", min=0.0, max=60)
    connect_time: float = setting(DURATION, 2.0, "longest time a test takes to connect before it "
                                  "measures (s)", min=0.0, max=120)
    rollout: float = setting(DURATION, 600.0, "longest time a changed mesh file takes to reach every "
                             "host (s): a change that moves exclusive tests comes into force this long "
                             "after a host reads it, at a cycle boundary", min=0.0, max=7 * 86400)

    @property
    def guard(self):
        """Slack added to every slot: both clocks' error plus the connect time."""
        return 2 * self.clock_error + self.connect_time


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    tags: tuple                 # ((key, value), ...) sorted by key

    def tag(self, key):
        return dict(self.tags).get(key)


@dataclass(frozen=True)
class Test:
    index: int
    kind: str
    pairs: tuple                # ((a, b), ...): a runs the probe, b is its peer
    settings: dict              # the kind's own keys as written
    config: object              # the kind's Config built from them (validation, defaults)
    duration: float = None      # exclusive kinds only
    every: float = None
    exclusive_by: tuple = ()

    @property
    def exclusive(self):
        return self.kind in EXCLUSIVE_KINDS


@dataclass(frozen=True)
class Mesh:
    file: str
    hosts: tuple
    tests: tuple
    schedule: ScheduleConfig
    version: str                # hash of the canonical content: equal files, equal versions
    by_name: dict = field(repr=False, compare=False)
    doc: dict = field(repr=False, compare=False)     # the parsed file: what mesh state keeps (runtime)


def load_file(path):
    return load_dict(read_toml(path), path)


def load_bytes(data, file="<mesh>"):
    return load_dict(parse_toml(data, file), file)


def version_of(doc):
    """sha256 of the document as canonical JSON: comments, spacing and key order do not count."""
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def load_dict(doc, file="<mesh>"):
    root = schema.Where(file, "")
    for key in doc:
        if key not in TOP_LEVEL:
            raise schema.unknown_key_error(key, TOP_LEVEL, root)
    sched = schema.build(ScheduleConfig, doc.get("schedule", {}), schema.Where(file, "schedule"))
    hosts = _load_hosts(doc.get("host", []), file)
    by_name = {h.name: h for h in hosts}
    tag_keys = {k for h in hosts for k, _ in h.tags}
    tests, total = [], 0
    entries = doc.get("test", [])
    if not isinstance(entries, list):
        raise ConfigError("must be an array of tables: [[test]]", file=file, path="test")
    for i, table in enumerate(entries):
        t = _load_test(i, table, schema.Where(file, f"test[{i}]"), hosts, by_name, tag_keys)
        total += len(t.pairs)
        if total > MAX_PAIRS:
            raise ConfigError(f"more than {MAX_PAIRS} host pairs in all", file=file, path=f"test[{i}]")
        tests.append(t)
    return Mesh(file, tuple(hosts), tuple(tests), sched, version_of(doc), by_name, doc)


def _load_hosts(entries, file):
    if not isinstance(entries, list):
        raise ConfigError("must be an array of tables: [[host]]", file=file, path="host")
    if len(entries) > MAX_HOSTS:
        raise ConfigError(f"{len(entries)} hosts exceed the limit of {MAX_HOSTS}", file=file, path="host")
    from netprobe.serve import split_address
    hosts, names, addresses = [], {}, {}
    for i, table in enumerate(entries):
        where = schema.Where(file, f"host[{i}]")
        if not isinstance(table, dict):
            raise where.error(None, "must be a table")
        for key in table:
            if key not in ("name", "address", "tags"):
                raise schema.unknown_key_error(key, ("name", "address", "tags"), where)
        for key in ("name", "address"):
            if key not in table:
                raise where.error(key, "missing (required)")
        name, address, tags = table["name"], table["address"], table.get("tags", {})
        if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
            raise where.error("name", f"{show(name)} is not a host name: 1 to 48 letters, digits, "
                                      '".", "_" or "-"')
        if name in names:
            raise where.error("name", f'"{name}" is already host[{names[name]}]; names must be unique')
        names[name] = i
        try:
            host, _ = split_address(address) if isinstance(address, str) else ("", 0)
        except ValueError:
            host = ""
        if not host or any(c.isspace() for c in host):
            raise where.error("address", f"{show(address)} is not HOST or HOST:PORT")
        if address in addresses:
            raise where.error("address", f'"{address}" is already host[{addresses[address]}]')
        addresses[address] = i
        if not isinstance(tags, dict):
            raise where.error("tags", f"{show(tags)} is not a table (example: {{ site = \"fra\" }})")
        tw = schema.Where(file, where.key("tags"))
        for k, v in tags.items():
            if not TAG_KEY_RE.fullmatch(k) or k == "host":
                raise tw.error(k, 'is not a tag name: 1 to 32 letters, digits, "_" or "-", and not "host"')
            if not isinstance(v, str) or not TAG_VALUE_RE.fullmatch(v):
                raise tw.error(k, f'{show(v)} is not a tag value: 1 to 64 letters, digits, ".", "_" or "-"')
        hosts.append(Host(name, address, tuple(sorted(tags.items()))))
    return hosts


def _load_test(i, table, where, hosts, by_name, tag_keys):
    if not isinstance(table, dict):
        raise where.error(None, "must be a table")
    kind = table.get("kind")
    if kind is None:
        raise where.error("kind", f"missing (one of: {', '.join(PAIR_KINDS)})")
    if kind not in PAIR_KINDS:
        raise where.error("kind", f"{show(kind)} is not a test kind (valid: {', '.join(PAIR_KINDS)})")
    for key in DERIVED_KEYS:
        if key in table:
            raise where.error(key, "is derived from the mesh for each host pair; remove it")
    exclusive = kind in EXCLUSIVE_KINDS
    if not exclusive:
        for key in ("duration", "every", "exclusive_by"):
            if key in table:
                raise where.error(key, f"applies to exclusive kinds only ({', '.join(EXCLUSIVE_KINDS)}); "
                                       f"{kind} runs all the time")
    pairs = _pairs(table, where, hosts, by_name)
    settings = {k: v for k, v in table.items() if k not in MESH_KEYS}
    # the kind's own Config validates its keys; name and peer are stand-ins until derived
    config = schema.build(probes.load(kind).Config,
                          {**settings, "name": f"t{i}", "peer": PLACEHOLDER_PEER}, where)
    if not exclusive:
        return Test(i, kind, pairs, settings, config)
    for key in ("duration", "every"):
        if key not in table:
            raise where.error(key, f"missing (required for {kind}: how long one test runs, and how often)")
    duration = _duration(table["duration"], where, "duration", 1.0, 86400.0)
    every = _duration(table["every"], where, "every", 1.0, 30 * 86400.0)
    if every < duration:
        raise where.error("every", "must be at least duration")
    if kind == "throughput" and duration < config.interval:
        raise where.error("duration", f"must be at least the interval ({show(table.get('interval', '10s'))}): "
                                      "a test shorter than one interval reports nothing")
    if kind == "capacity" and duration < config.max_time:
        raise where.error("duration", "must be at least max_time (the time one estimate may take)")
    excl = table.get("exclusive_by", ["host"])
    valid = ["host", *sorted(tag_keys)]
    if not isinstance(excl, list) or not all(isinstance(x, str) for x in excl):
        raise where.error("exclusive_by", f"{show(excl)} is not a list of strings "
                                          f"(valid entries: {', '.join(valid)})")
    for x in excl:
        if x not in valid:
            raise where.error("exclusive_by", f"{show(x)} is neither \"host\" nor a tag any host has "
                                              f"(valid: {', '.join(valid)})")
    return Test(i, kind, pairs, settings, config, duration, every, tuple(dict.fromkeys(excl)))


def _duration(value, where, key, lo, hi):
    from netprobe import units
    try:
        out = units.parse_duration(value)
    except ValueError as exc:
        raise where.error(key, str(exc)) from None
    if not lo <= out <= hi:
        raise where.error(key, f"{show(value)} is out of range (valid: {units.format_duration(lo)} "
                               f"to {units.format_duration(hi)})")
    return out


def _pairs(table, where, hosts, by_name):
    """The host pairs of a test, in a deterministic order; a is the host that runs the probe."""
    if ("between" in table) == ("pairs" in table):
        raise where.error(None, 'needs exactly one of between = "all" | "site" and pairs = [["a", "b"], ...]')
    if "between" in table:
        between = table["between"]
        if between not in BETWEEN:
            raise where.error("between", f"{show(between)} is not one of {', '.join(show(b) for b in BETWEEN)}")
        names = sorted(h.name for h in hosts)
        if between == "all":
            return tuple((a, b) for i, a in enumerate(names) for b in names[i + 1:])
        return _site_pairs(hosts, where)
    raw = table["pairs"]
    if not isinstance(raw, list):
        raise where.error("pairs", f"{show(raw)} is not a list of host-name pairs (example: [[\"fra1\", \"ams2\"]])")
    out, seen = [], {}
    for j, pair in enumerate(raw):
        at = schema.Where(where.file, f"{where.key('pairs')}[{j}]")
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise at.error(None, f"{show(pair)} is not a pair of host names")
        for x in pair:
            if x not in by_name:
                raise at.error(None, f"{show(x)} is not a [[host]] name")
        if pair[0] == pair[1]:
            raise at.error(None, f"a host cannot test itself ({show(pair[0])})")
        key = frozenset(pair)
        if key in seen:
            raise at.error(None, f"the same hosts as pairs[{seen[key]}]")
        seen[key] = j
        out.append(tuple(pair))
    return tuple(out)


def _site_pairs(hosts, where):
    """One host pair per pair of sites. Hosts are taken in name order within a site and rotated
    across the site pairs, so that the load spreads over each site's hosts."""
    sites = {}
    for h in hosts:
        site = h.tag("site")
        if site is None:
            raise where.error("between", f'"site" needs tags.site on every host; host "{h.name}" has none')
        sites.setdefault(site, []).append(h.name)
    order = sorted(sites)
    for s in order:
        sites[s].sort()
    out = []
    for i, s in enumerate(order):
        for j in range(i + 1, len(order)):
            t = order[j]
            out.append((sites[s][(j - 1) % len(sites[s])], sites[t][i % len(sites[t])]))
    return tuple(out)
